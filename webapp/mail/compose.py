"""Compose (/mail/compose): write, reply, reply all, forward, drafts with autosave, send."""
from __future__ import annotations

import mimetypes
from email.headerregistry import Address

from flask import abort, current_app, flash, jsonify, redirect, request, url_for
from flask_login import current_user, login_required
from sqlalchemy.exc import IntegrityError
from wtforms import SelectChoice

from webapp.extensions import db
from webapp.mail.blueprint import bp
from webapp.mail.compose_forms import ComposeForm
from webapp.mail.index import render_mail_page
from webapp.models import Message
from webapp.services import blobs, compose, mailbox, outbox, sendas
from webapp.services.mime import ParsedMessage, get_part, parse_message
from webapp.services.quota import QuotaExceededError, human_bytes

# Which form field shows a HeaderInjectionError / ComposeError raised for a header.
_FIELD_OF_HEADER = {"To": "to", "Cc": "cc", "Bcc": "bcc", "Recipient": "to", "Subject": "subject",
                    "Attachment filename": "attachments", "Attachment content type": "attachments",
                    "In-Reply-To": "in_reply_to", "References": "references"}


def _owned_message(message_id: str | int | None) -> Message | None:
    """The signed-in user's message by id from a query/form value; 404 for a foreign or bad id."""
    if message_id in (None, ""):
        return None
    try:
        return mailbox.get_message(db.session, current_user.id, int(message_id))
    except (mailbox.NotFoundError, ValueError):
        abort(404)


def _attachment_source(message_id: str | None, draft_key: str | None) -> Message | None:
    """The message whose attachments the form keeps; 404 for a foreign or bad id.

    A draft the page named may have been replaced by a save whose answer the page never
    read (the beacon sent when the tab is hidden): the page's keyed draft is its successor.
    """
    if message_id in (None, ""):
        return None
    try:
        return mailbox.get_message(db.session, current_user.id, int(message_id))
    except ValueError:
        abort(404)
    except mailbox.NotFoundError:
        successor = outbox.keyed_draft(db.session, current_user.id, draft_key) \
            if draft_key else None
        if successor is None:
            abort(404)
        return successor


def _posted_draft_key() -> str | None:
    """The compose page's draft key as posted (None when missing or malformed)."""
    return outbox.valid_draft_key(request.form.get("draft_key"))


def _raw(message: Message) -> bytes:
    return blobs.get_store(current_app.config["BLOB_DIR"]).get(message.blob_sha256)


def _format(name: str, email: str) -> str:
    """One address as the To field shows it, quoted by the email package when needed."""
    try:
        return str(Address(display_name=name, addr_spec=email)) if name else email
    except (ValueError, IndexError):
        return email


def _quote(parsed: ParsedMessage, message: Message) -> str:
    sender = next(iter(parsed.envelope.addresses_for("from")), None)
    who = (sender.name or sender.email) if sender else "someone"
    when = parsed.envelope.date.strftime("%a, %d %b %Y at %H:%M") if parsed.envelope.date else ""
    quoted = "\n".join("> " + line if line else ">" for line in (parsed.text or "").splitlines())
    intro = f"On {when}, {who} wrote:" if when else f"{who} wrote:"
    return f"\n\n{intro}\n{quoted}\n"


def _subject_with(prefix: str, subject: str) -> str:
    subject = outbox.clean_header_text(subject)
    return subject if subject.lower().startswith(prefix.lower()) else f"{prefix} {subject}"


def _valid_id(value: str) -> str | None:
    value = (value or "").strip()
    if not value.startswith("<") or any(c in value for c in "\r\n\x00 "):
        return None
    return value


def _prefill(form: ComposeForm, identities, kind: str, message: Message) -> list:
    """Fill the form for a reply, reply all, forward or draft; return the keepable attachments."""
    raw = _raw(message)
    parsed = parse_message(raw)
    env = parsed.envelope
    mine = {i.email.lower() for i in identities}
    if kind == "draft":
        form.to.data = ", ".join(_format(a.name, a.email) for a in env.addresses_for("to") if a.email)
        form.cc.data = ", ".join(_format(a.name, a.email) for a in env.addresses_for("cc") if a.email)
        form.bcc.data = ", ".join(_format(a.name, a.email) for a in env.addresses_for("bcc") if a.email)
        form.subject.data = outbox.clean_header_text(env.subject)
        form.body.data = parsed.text
        form.in_reply_to.data = _valid_id(env.in_reply_to or "") or ""
        form.references.data = " ".join(r for r in env.references if _valid_id(r))
        form.draft_id.data = str(message.id)
        form.attachment_source.data = str(message.id)
        sender = next(iter(env.addresses_for("from")), None)
        chosen = next((i for i in identities if sender and i.email.lower() == sender.email), None)
        if chosen is not None:
            form.from_identity.data = chosen.id
        return parsed.attachments
    # Reply to the address the original arrived at, if it is one of ours.
    for address in env.addresses_for("to") + env.addresses_for("cc"):
        chosen = next((i for i in identities if i.email.lower() == address.email), None)
        if chosen is not None:
            form.from_identity.data = chosen.id
            break
    if kind == "forward":
        subject, text, _attachments = outbox.forward_parts(raw)
        form.subject.data = outbox.clean_header_text(subject)
        form.body.data = "\n\n" + text
        form.attachment_source.data = str(message.id)
        if _valid_id(message.message_id):
            form.references.data = message.message_id
        return parsed.attachments
    reply_to = [a for a in env.addresses_for("reply_to") if a.email]
    senders = reply_to or [a for a in env.addresses_for("from") if a.email]
    to = [(a.name, a.email) for a in senders]
    cc: list[tuple[str, str]] = []
    if kind == "reply_all":
        to += [(a.name, a.email) for a in env.addresses_for("to") if a.email]
        cc = [(a.name, a.email) for a in env.addresses_for("cc") if a.email]
    seen: set[str] = set()

    def keep(pairs):
        result = []
        for name, email in pairs:
            if email.lower() in seen or (email.lower() in mine and kind == "reply_all"):
                continue
            seen.add(email.lower())
            result.append(_format(name, email))
        return result

    form.to.data = ", ".join(keep(to))
    form.cc.data = ", ".join(keep(cc))
    form.subject.data = _subject_with("Re:", env.subject)
    form.body.data = _quote(parsed, message)
    original_id = _valid_id(message.message_id)
    if original_id:
        form.in_reply_to.data = original_id
        refs = [r for r in env.references if _valid_id(r)][-20:]  # bounded, newest kept
        form.references.data = " ".join(refs + [original_id])
    return []


def _identities():
    identities = sendas.list_identities(db.session, current_user._get_current_object(),
                                        verified_only=True)
    # The hosted identity may have just been created: its id is in the page's From select,
    # so it must outlive this request.
    db.session.commit()
    return identities


def _kept_attachments(source: Message | None, keep_ids: list[str]) -> list[compose.Attachment]:
    """The source message's attachments the user kept ticked, as (filename, type, bytes)."""
    if source is None or not keep_ids:
        return []
    raw = _raw(source)
    result = []
    for part in parse_message(raw).attachments:
        if part.part_id in keep_ids:
            found = get_part(raw, part.part_id)
            if found is not None:
                content_type, filename, data = found
                # A received name may carry encoded line breaks (RFC 2231): fold, never refuse.
                name = outbox.clean_header_text(filename or part.filename or "") or "attachment"
                result.append((name, content_type, data))
    return result


def _uploaded() -> list[compose.Attachment]:
    result = []
    for upload in request.files.getlist("attachments"):
        if not upload or not upload.filename:
            continue
        data = upload.read()
        content_type = upload.mimetype or ""
        maintype, slash, subtype = content_type.partition("/")
        if not slash or not maintype or not subtype or " " in content_type:
            content_type = mimetypes.guess_type(upload.filename)[0] or "application/octet-stream"
        result.append((upload.filename, content_type, data))
    return result


def _show_error(form: ComposeForm, error: Exception) -> None:
    field_name = _FIELD_OF_HEADER.get(getattr(error, "field", ""), None)
    if field_name is None and isinstance(error, compose.InvalidAddressError):
        field_name = "to"
    field = getattr(form, field_name) if field_name else None
    if field is not None:
        field.errors = list(field.errors) + [str(error)]
    else:
        form.form_errors.append(str(error))


def _source_parts(source: Message | None) -> list:
    return parse_message(_raw(source)).attachments if source is not None else []


@bp.route("/compose", methods=["GET", "POST"], endpoint="compose")
@login_required
def compose_message():
    """Write a message; ?reply= / ?reply_all= / ?forward= / ?draft= start from a stored one,
    ?to= fills the To field."""
    user = current_user._get_current_object()
    identities = _identities()
    form = ComposeForm()
    form.from_identity.choices = [
        SelectChoice(i.id, f"{i.display_name} <{i.email}>" if i.display_name else i.email)
        for i in identities]
    source_parts: list = []
    if request.method == "GET":
        # One key per compose page, kept across re-renders: every save of this page,
        # including one whose answer the page never reads, replaces the same draft.
        draft_key = outbox.new_draft_key()
        form.from_identity.data = identities[0].id
        # ?to= from other pages (CRM "Mail" buttons); shown, validated when sent.
        form.to.data = outbox.clean_header_text(request.args.get("to", ""))[:2000]
        for kind in ("reply", "reply_all", "forward", "draft"):
            if request.args.get(kind):
                message = _owned_message(request.args[kind])
                if kind == "draft" and message.folder.role != "drafts":
                    abort(404)
                if kind == "draft":
                    # Opening a draft adopts its key, so saving replaces it (never copies it).
                    draft_key = outbox.draft_key_of(message) or draft_key
                source_parts = _prefill(form, identities, kind, message)
                break
        return _page(form, source_parts, keep_ids=[p.part_id for p in source_parts],
                     draft_key=draft_key)

    draft_key = _posted_draft_key() or outbox.new_draft_key()
    source = _attachment_source(form.attachment_source.data, draft_key)
    keep_ids = request.form.getlist("keep_part")
    if form.validate_on_submit():
        try:
            attachments = _kept_attachments(source, keep_ids) + _uploaded()
            # A draft already gone (sent from another tab) is simply not deleted again;
            # another user's id deletes nothing (the delete is scoped to the owner).
            draft_id = int(form.draft_id.data) if (form.draft_id.data or "").isdigit() else None
            if form.save_draft.data:
                draft, problems = outbox.save_draft(
                    db.session, user, form.from_identity.data, form.to.data, form.cc.data,
                    form.bcc.data, form.subject.data or "", form.body.data or "", attachments,
                    form.in_reply_to.data or None, form.references.data or None, draft_id,
                    draft_key=draft_key)
                db.session.commit()
                flash("Draft saved." + (" Not kept: " + "; ".join(problems) if problems else ""),
                      "success")
                return redirect(url_for("mail.compose", draft=draft.id))
            if not form.recipients_given():
                form.to.errors = list(form.to.errors) + ["Add at least one recipient."]
            else:
                outgoing = outbox.queue_message(
                    db.session, user, form.from_identity.data, form.to.data, form.cc.data,
                    form.bcc.data, form.subject.data or "", form.body.data or "", None,
                    attachments, form.in_reply_to.data or None, form.references.data or None,
                    draft_id=draft_id, draft_key=draft_key)
                db.session.commit()
                flash(f"Your message is on its way ({len(outgoing.recipients)} recipient"
                      f"{'s' if len(outgoing.recipients) != 1 else ''}). The Outbox shows "
                      "where it stands.", "success")
                return redirect(url_for("mail.outbox_index"))
        except (compose.ComposeError, outbox.OutboxError, QuotaExceededError) as error:
            db.session.rollback()
            _show_error(form, error)
    if request.files.getlist("attachments") and any(f.filename for f in
                                                   request.files.getlist("attachments")):
        form.attachments.errors = list(form.attachments.errors) + [
            "Browsers cannot keep chosen files after an error: choose them again."]
    return _page(form, _source_parts(source), keep_ids=keep_ids, draft_key=draft_key,
                 status=400)


def _page(form: ComposeForm, source_parts: list, keep_ids: list[str], draft_key: str,
          status: int = 200):
    autocomplete = url_for("crm.autocomplete") \
        if "crm.autocomplete" in current_app.view_functions else ""
    return render_mail_page("mail/compose.html", form=form, source_parts=source_parts,
                            keep_ids=set(keep_ids), human_bytes=human_bytes,
                            draft_key=draft_key,
                            autocomplete_url=autocomplete,
                            autosave_url=url_for("mail.compose_autosave"), status=status)


@bp.route("/compose/autosave", methods=["POST"])
@login_required
def compose_autosave():
    """Save the compose form as the draft (replacing the previous version); JSON for compose.js."""
    user = current_user._get_current_object()
    form = ComposeForm()
    form.from_identity.choices = [SelectChoice(i.id, i.email) for i in _identities()]
    draft_key = _posted_draft_key()
    source = _attachment_source(form.attachment_source.data, draft_key)
    keep_ids = request.form.getlist("keep_part")
    try:
        draft_id = int(form.draft_id.data) if (form.draft_id.data or "").isdigit() else None
        identity_id = int(form.from_identity.data) if form.from_identity.data else None
    except (TypeError, ValueError):
        abort(400)
    if identity_id not in {choice.value for choice in form.from_identity.choices}:
        identity_id = None
    try:
        draft, problems = outbox.save_draft(
            db.session, user, identity_id, form.to.data or "", form.cc.data or "",
            form.bcc.data or "", form.subject.data or "", form.body.data or "",
            _kept_attachments(source, keep_ids), form.in_reply_to.data or None,
            form.references.data or None, draft_id, draft_key=draft_key)
        db.session.commit()
    except (compose.ComposeError, outbox.OutboxError, QuotaExceededError) as error:
        db.session.rollback()
        return jsonify(ok=False, error=str(error)), 400
    except IntegrityError:
        # Another save of this page (the leaving beacon while a timed save was on its way)
        # took the key at the same moment: that version stands, this one is not kept.
        db.session.rollback()
        return jsonify(ok=False, error="saved from another request at the same moment"), 409
    parts = parse_message(_raw(draft)).attachments
    return jsonify(ok=True, draft_id=draft.id, attachment_source=draft.id, problems=problems,
                   attachments=[{"part_id": p.part_id, "filename": p.filename or "attachment",
                                 "size": human_bytes(p.size)} for p in parts])
