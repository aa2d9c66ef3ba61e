"""One message: the view, its sanitized HTML body, raw source, attachments, cid: images, actions.

Mail is hostile input. HTML bodies are sanitized (nh3) and then served by their own route,
inside an iframe sandboxed without scripts and without the app's origin, under a CSP that
lets nothing but same-origin images load (remote ones too once the user asks). Parts are
downloads (Content-Disposition: attachment, nosniff), never documents of this origin.
"""
from __future__ import annotations

import datetime as dt
import io
import unicodedata

from flask import (Response, abort, current_app, flash, redirect, render_template, request,
                   send_file, url_for)
from flask_login import current_user, login_required
from itsdangerous import BadSignature, URLSafeTimedSerializer

from webapp.extensions import db
from webapp.mail.blueprint import bp
from webapp.mail.forms import MessageActionForm
from webapp.mail.index import owned_or_404, render_mail_page
from webapp.models import Message, User
from webapp.services import blobs, filters, ipfilter, mailbox
from webapp.services.mime import UNREADABLE_SUBJECT, ParsedMessage, get_part, parse_message
from webapp.services.mime import find_content_id
from webapp.services.sanitize import sanitize_html, text_to_html

# Types a browser could run or render as a page of our origin if they were ever opened
# inline; as downloads they are harmless, but they are never labelled as what they are.
_ACTIVE_TYPES = {"text/html", "application/xhtml+xml", "image/svg+xml", "text/xml",
                 "application/xml", "text/javascript", "application/javascript",
                 "application/x-javascript", "text/css", "application/pdf", "text/xsl",
                 "multipart/x-mixed-replace"}
# cid: images are shown inline only in these raster formats (SVG can carry script).
_INLINE_IMAGE_TYPES = {"image/png", "image/gif", "image/jpeg", "image/pjpeg", "image/webp",
                       "image/bmp"}
_DOWNLOAD_CSP = "default-src 'none'; sandbox"
# The body frame is sandboxed without the app's origin, and Chromium treats its subresource
# requests as cross-site: the SameSite=Lax session cookie is not sent with them. Its cid:
# images therefore carry a signed token that names the owner and the message, valid this long.
CID_TOKEN_MAX_AGE = 12 * 3600


@bp.app_template_filter("mail_date")
def mail_date(value: dt.datetime | None, full: bool = False) -> str:
    """A message date as a list or a header shows it (UTC)."""
    if value is None:
        return ""
    value = value.astimezone(dt.timezone.utc)
    if full:
        return value.strftime("%a, %d %b %Y %H:%M UTC")
    now = dt.datetime.now(dt.timezone.utc)
    if value.date() == now.date():
        return value.strftime("%H:%M")
    if value.year == now.year:
        return value.strftime("%d %b")
    return value.strftime("%d %b %Y")


def _load_raw(message: Message) -> bytes | None:
    """The stored bytes of a message, or None when the store has lost them (logged)."""
    try:
        return blobs.get_store(current_app.config["BLOB_DIR"]).get(message.blob_sha256)
    except blobs.BlobMissingError:
        current_app.logger.error("message %s: blob %s missing", message.id, message.blob_sha256)
        return None


def _parse(raw: bytes | None) -> ParsedMessage | None:
    """parse_message() never raises; the guard keeps the view up if that promise ever breaks."""
    if raw is None:
        return None
    try:
        return parse_message(raw)
    except Exception:  # noqa: BLE001 - a message must always open, with its raw download
        current_app.logger.exception("parse_message failed")
        return None


def _cid_signer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt="mail-cid-image")


def _cid_url(message_id: int):
    # The session version rides along: a password change or a disable ends these links too.
    token = _cid_signer().dumps([current_user.id, message_id, current_user.session_version])

    def build(content_id: str) -> str:
        return url_for("mail.message_cid", message_id=message_id, content_id=content_id, t=token)
    return build


def _cid_owner(message_id: int) -> int | None:
    """Who may see this message's inline images: the signed-in user, or the token's owner."""
    if current_user.is_authenticated:
        return current_user.id
    token = request.args.get("t")
    if not token:
        return None
    try:
        user_id, signed_message_id, version = _cid_signer().loads(token,
                                                                  max_age=CID_TOKEN_MAX_AGE)
    except (BadSignature, ValueError, TypeError):
        abort(404)
    owner = db.session.get(User, int(user_id)) if signed_message_id == message_id else None
    if owner is None or owner.is_disabled or owner.session_version != version:
        abort(404)
    # The frame's requests carry no session, so the organization's IP rules are checked here.
    if not ipfilter.address_allowed(request.remote_addr,
                                    ipfilter.org_networks(db.session, owner.org_id)):
        abort(403)
    return owner.id


def _sanitized(message: Message, parsed: ParsedMessage, allow_remote: bool):
    return sanitize_html(parsed.html or "", allow_remote=allow_remote, cid_url=_cid_url(message.id))


def _allow_remote() -> bool:
    return request.args.get("remote") == "1"


@bp.route("/message/<int:message_id>")
@login_required
def message_show(message_id: int):
    """Read a message (opening it marks it read)."""
    message = owned_or_404(mailbox.get_message, message_id)
    if not message.is_read:
        message.is_read = True
        db.session.commit()
    raw = _load_raw(message)
    parsed = _parse(raw)
    allow_remote = _allow_remote()
    blocked_remote = 0
    text_html = None
    if parsed is not None and parsed.html:
        blocked_remote = _sanitized(message, parsed, allow_remote=False).blocked_remote
    elif parsed is not None:
        text_html = text_to_html(parsed.text)
    form = MessageActionForm()
    folders = mailbox.folder_counts(db.session, current_user.id)
    form.target_folder.choices = [(0, "Move to…")] + [(f.id, f.name) for f in folders
                                                       if f.id != message.folder_id]
    envelope = parsed.envelope if parsed is not None else None
    # A missing Message-ID is common and harmless; anything else means the sender's bytes are off.
    damaged = parsed is not None and any(d != "missing Message-ID" for d in parsed.defects)
    return render_mail_page(
        "mail/message.html", current_folder_id=message.folder_id, folders=folders,
        message=message,
        parsed=parsed, envelope=envelope, raw_missing=raw is None,
        subject=(envelope.subject if envelope and envelope.subject else message.subject)
        or ("(no subject)" if parsed is not None else UNREADABLE_SUBJECT),
        damaged=damaged, text_html=text_html, allow_remote=allow_remote, blocked_remote=blocked_remote,
        form=form, filed_by=filters.filter_name_for(db.session, message.id),
        labels=filters.labels_for(db.session, message.id))


@bp.route("/message/<int:message_id>/body")
@login_required
def message_body(message_id: int):
    """The sanitized HTML body, as its own document for the sandboxed frame, with a strict CSP."""
    message = owned_or_404(mailbox.get_message, message_id)
    parsed = _parse(_load_raw(message))
    if parsed is None or not parsed.html:
        abort(404)
    allow_remote = _allow_remote()
    body = _sanitized(message, parsed, allow_remote=allow_remote).html
    document = render_template("mail/_body_frame.html", body=body)
    response = Response(document, mimetype="text/html")
    images = "'self' data:" + (" https: http:" if allow_remote else "")
    # The frame is also sandboxed by the CSP itself, so opening this URL directly is as inert.
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; img-src {images}; style-src 'unsafe-inline'; "
        "frame-ancestors 'self'; base-uri 'none'; form-action 'none'; "
        "sandbox allow-popups allow-popups-to-escape-sandbox")
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "private, no-store"
    return response


@bp.route("/message/<int:message_id>/raw")
@login_required
def message_raw(message_id: int):
    """The exact stored bytes, as a text/plain download."""
    message = owned_or_404(mailbox.get_message, message_id)
    try:
        handle = blobs.get_store(current_app.config["BLOB_DIR"]).open(message.blob_sha256)
    except blobs.BlobMissingError:
        abort(404)
    response = send_file(handle, mimetype="text/plain", as_attachment=True,
                         download_name=f"message-{message.id}.eml", max_age=0)
    response.headers["Content-Security-Policy"] = _DOWNLOAD_CSP
    return response


def safe_download_name(filename: str | None, fallback: str) -> str:
    """A file name fit for Content-Disposition: no path, no control characters, bounded."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip().strip(".")
    return name[:200] or fallback


def _part_response(data: bytes, content_type: str, download_name: str, inline: bool) -> Response:
    mimetype = content_type if content_type and "/" in content_type and \
        content_type not in _ACTIVE_TYPES and not content_type.startswith("text/") \
        else "application/octet-stream"
    response = send_file(io.BytesIO(data), mimetype=mimetype, as_attachment=not inline,
                         download_name=download_name, max_age=0)
    response.headers["Content-Security-Policy"] = _DOWNLOAD_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "private, no-store"
    return response


@bp.route("/message/<int:message_id>/part/<part_id>")
@login_required
def message_part(message_id: int, part_id: str):
    """Download one attachment (always as a download, never as a page of this site)."""
    message = owned_or_404(mailbox.get_message, message_id)
    raw = _load_raw(message)
    found = get_part(raw, part_id) if raw is not None and len(part_id) <= 64 else None
    if found is None:
        abort(404)
    content_type, filename, data = found
    return _part_response(data, content_type,
                          safe_download_name(filename, f"attachment-{part_id}"), inline=False)


@bp.route("/message/<int:message_id>/cid/<path:content_id>")
def message_cid(message_id: int, content_id: str):
    """An inline image that the HTML body references as cid: (raster images only inline)."""
    owner = _cid_owner(message_id)
    if owner is None:
        return current_app.login_manager.unauthorized()
    try:
        message = mailbox.get_message(db.session, owner, message_id)
    except mailbox.NotFoundError:
        abort(404)
    raw = _load_raw(message)
    part_id = find_content_id(raw, content_id) if raw is not None else None
    found = get_part(raw, part_id) if part_id else None
    if found is None:
        abort(404)
    content_type, filename, data = found
    return _part_response(data, content_type, safe_download_name(filename, f"image-{part_id}"),
                          inline=content_type in _INLINE_IMAGE_TYPES)


@bp.route("/message/<int:message_id>/action", methods=["POST"])
@login_required
def message_action(message_id: int):
    """The buttons of the message view: mark unread, flag, unflag, move, delete."""
    message = owned_or_404(mailbox.get_message, message_id)
    folder_id = message.folder_id
    form = MessageActionForm()
    if not form.validate_on_submit():
        for error in form.action.errors + form.target_folder.errors:
            flash(error, "error")
        return redirect(url_for("mail.message_show", message_id=message.id))
    action = form.action.data
    try:
        if action == "move":
            mailbox.move(db.session, current_user.id, [message.id], form.target_folder.data)
            text = "Message moved."
        elif action == "delete":
            _trashed, deleted = mailbox.trash_or_delete(db.session, current_user.id, [message.id])
            text = "Message deleted for good." if deleted else "Message moved to Trash."
        else:
            mailbox.set_flags(db.session, current_user.id, [message.id], action)
            text = {"unread": "Marked as unread.", "flag": "Flagged.", "unflag": "Unflagged."}[action]
    except mailbox.NotFoundError:
        db.session.rollback()
        abort(404)
    db.session.commit()
    flash(text, "success")
    if action in ("flag", "unflag", "move"):
        return redirect(url_for("mail.message_show", message_id=message_id))
    return redirect(url_for("mail.folder_show", folder_id=folder_id))
