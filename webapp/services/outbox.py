"""The outbox: every outgoing message is queued here with its exact bytes and a fixed Message-ID.

Compose, SMTP submission (Outlook/Thunderbird through the inbound listener), system mail
(password resets) and filter forwards all end up as one `OutgoingMessage` row whose raw
bytes are in the blob store; `worker.jobs.send.send_message(id)` sends exactly those bytes
and files exactly those bytes in Sent. The caller commits; the send job is enqueued only
after the commit (`enqueue_after_commit`).
"""
from __future__ import annotations

import dataclasses
import re
import secrets
import uuid
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from email.parser import BytesHeaderParser
from email.policy import compat32

from flask import current_app
from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from webapp.models import Domain, Folder, MailAccount, Message, Organization, User
from webapp.models._types import utcnow
from webapp.models.sending import (OrgRelay, OutgoingMessage, OutgoingRecipient, SendCounter,
                                   SendIdentity)
from webapp.services import blobs, compose, quota
from webapp.services.delivery import deliver
from webapp.services.mime import (MIME_MAX_ADDRESSES_PER_HEADER, MIME_MAX_HEADER_VALUE_CHARS,
                                  Envelope, envelope_as_json, get_part, parse_envelope,
                                  parse_message)
from webapp.services.secrets import decrypt_secret

SEND_QUEUE = "send"
SEND_JOB = "worker.jobs.send.send_message"
# A job sends its message and then a batch of others (worker/jobs/send.py keeps well inside
# this); the claim lease is a little longer.
SEND_JOB_TIMEOUT = 300


def send_job_id(outgoing_id: int) -> str:
    """The RQ job id of a message's first send job.

    Known in advance, so that a batch that sends the message first can take this job out
    of the queue instead of letting a worker run it for nothing.
    """
    return f"send-{outgoing_id}"


class OutboxError(ValueError):
    """A message cannot be queued; the message says why in words a user can act on."""


@dataclasses.dataclass(frozen=True)
class RelaySettings:
    """Where the organization relay is and how to use it (from OrgRelay, else configuration)."""

    host: str
    port: int
    security: str
    username: str
    password: str
    envelope_policy: str
    envelope_sender: str
    daily_limit_user: int
    daily_limit_org: int

    @property
    def configured(self) -> bool:
        """Whether there is a host to send to at all."""
        return bool(self.host)


def relay_settings(session: Session, org_id: int) -> RelaySettings:
    """The org's relay: its OrgRelay row, else the MAIL_RELAY_* configuration defaults."""
    row = session.scalar(select(OrgRelay).where(OrgRelay.org_id == org_id))
    config = current_app.config
    if row is not None and row.host:
        password = (decrypt_secret(config["MAIL_SECRET_KEYS"], row.password_encrypted)
                    if row.password_encrypted else "")
        return RelaySettings(row.host, row.port, row.security, row.username, password,
                             row.envelope_policy, row.envelope_sender,
                             row.daily_limit_user, row.daily_limit_org)
    return RelaySettings(
        host=config.get("MAIL_RELAY_HOST") or "",
        port=int(config.get("MAIL_RELAY_PORT") or 25),
        security=config.get("MAIL_RELAY_SECURITY") or "none",
        username=config.get("MAIL_RELAY_USERNAME") or "",
        password=config.get("MAIL_RELAY_PASSWORD") or "",
        envelope_policy=row.envelope_policy if row is not None else "hosted",
        envelope_sender=row.envelope_sender if row is not None else "",
        daily_limit_user=row.daily_limit_user if row is not None else 500,
        daily_limit_org=row.daily_limit_org if row is not None else 5000)


def hosted_domains(session: Session, org_id: int) -> set[str]:
    """The domains the organization hosts (lowercase)."""
    return {name.lower() for name in
            session.scalars(select(Domain.name).where(Domain.org_id == org_id))}


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def _envelope_policy(session: Session, org_id: int) -> tuple[str, str]:
    """The org's envelope sender policy and fixed sender (what relay_settings would say,
    without decrypting a password that queueing does not need)."""
    row = session.execute(select(OrgRelay.envelope_policy, OrgRelay.envelope_sender)
                          .where(OrgRelay.org_id == org_id)).first()
    return (row[0], row[1]) if row is not None else ("hosted", "")


def _envelope_from(policy: tuple[str, str], hosted_address: str, from_email: str) -> str:
    """MAIL FROM for the relay, per the organization's envelope sender policy."""
    envelope_policy, envelope_sender = policy
    if envelope_policy == "from" and from_email:
        return from_email
    if envelope_policy == "fixed" and envelope_sender:
        return envelope_sender
    return hosted_address or from_email


def _store_and_queue(session: Session, *, org_id: int, user_id: int | None,
                     identity_id: int | None, kind: str, transport: str, raw: bytes,
                     message_id: str, subject: str, from_email: str, envelope_from: str,
                     recipients: Sequence[str], file_in_sent: bool,
                     envelope: Envelope | None = None) -> OutgoingMessage:
    """Store the bytes, add the row with one recipient row each, and enqueue the send job.

    A message filed in Sent keeps its envelope (``envelope``, else parsed here): the worker
    files the copy without parsing the bytes again.
    """
    from webapp.queue import enqueue_after_commit

    limit = current_app.config["MAIL_MAX_MESSAGE_BYTES"]
    if len(raw) > limit:
        raise OutboxError(f"The message is {quota.human_bytes(len(raw))}, over the "
                          f"{quota.human_bytes(limit)} limit. Remove or shrink attachments.")
    unique: dict[str, str] = {}
    for address in recipients:
        unique.setdefault(address.lower(), address)
    if not unique:
        raise OutboxError("A message needs at least one recipient.")
    store = blobs.get_store(current_app.config["BLOB_DIR"])
    digest = store.put(raw)
    # The outbox row holds its own reference: "send again" needs the bytes after the Sent
    # copy is deleted.
    blobs.add_references(session, {digest: (len(raw), 1)})
    now = utcnow()
    outgoing = OutgoingMessage(
        org_id=org_id, user_id=user_id, identity_id=identity_id, kind=kind, transport=transport,
        state="queued", message_id=message_id[:998], blob_sha256=digest, size=len(raw),
        subject=subject[:2000], from_email=from_email[:320], envelope_from=envelope_from[:320],
        file_in_sent=file_in_sent, next_attempt_at=now, created_at=now,
        sent_envelope=envelope_as_json(envelope or parse_envelope(raw)) if file_in_sent else None)
    session.add(outgoing)
    session.flush()
    # One statement for the recipients; the collection loads from them when first read.
    session.execute(insert(OutgoingRecipient.__table__), [
        {"outgoing_id": outgoing.id, "address": address[:320], "state": "pending",
         "text": "", "updated_at": now} for address in unique.values()])
    session.expire(outgoing, ["recipients"])
    enqueue_after_commit(SEND_JOB, outgoing.id, queue=SEND_QUEUE, job_timeout=SEND_JOB_TIMEOUT,
                         job_id=send_job_id(outgoing.id), session=session)
    return outgoing


def _address_items(value: str | Sequence[compose.AddressInput], field: str
                   ) -> list[compose.AddressInput]:
    """A compose field: a typed comma-separated string, or already-split addresses."""
    if isinstance(value, str):
        return list(compose.parse_address_list(value, field=field))
    return list(value or ())


def _load_identity(session: Session, user: User, identity_id: int | None) -> SendIdentity:
    from webapp.services.sendas import ensure_hosted_identity

    if identity_id is None:
        return ensure_hosted_identity(session, user)
    identity = session.scalar(select(SendIdentity).where(SendIdentity.id == identity_id,
                                                         SendIdentity.user_id == user.id))
    if identity is None:
        raise OutboxError("That From address is not one of yours.")
    if not identity.is_verified:
        raise OutboxError(f"{identity.email} is not confirmed yet: open the link or enter the "
                          "code mailed to it (Settings » Send Mail As).")
    return identity


def queue_message(session: Session, user: User, identity_id: int | None,
                  to: str | Sequence[compose.AddressInput],
                  cc: str | Sequence[compose.AddressInput],
                  bcc: str | Sequence[compose.AddressInput], subject: str, text: str,
                  html: str | None, attachments: Sequence[compose.Attachment],
                  in_reply_to: str | None, references: str | Sequence[str] | None,
                  draft_id: int | None = None, *,
                  auto_submitted: str | None = None,
                  draft_key: str | None = None) -> OutgoingMessage:
    """Build a composed message, queue it for sending and delete its draft; the caller commits.

    The draft is the one ``draft_id`` names and the one saved under the compose page's
    ``draft_key`` (see save_draft).

    ``auto_submitted`` marks mail no person wrote (RFC 3834), so that other systems, and
    our own filters, do not answer or forward it again.
    Raises compose.ComposeError (HeaderInjectionError, InvalidAddressError) or OutboxError.
    """
    identity = _load_identity(session, user, identity_id)
    to_items = _address_items(to, "To")
    cc_items = _address_items(cc, "Cc")
    bcc_items = _address_items(bcc, "Bcc")
    if isinstance(references, str):
        references = references.split()
    sender = None
    if identity.transport == "relay" and \
            _domain_of(identity.email) not in hosted_domains(session, user.org_id):
        # Mail clients show "on behalf of": the relay vouches only for the hosted address.
        sender = (user.display_name, user.email)
    message_id = compose.make_message_id(_domain_of(identity.email) or _domain_of(user.email))
    msg = compose.build_message(
        from_addr=(identity.display_name, identity.email), to=to_items, cc=cc_items,
        bcc=bcc_items, subject=subject, text=text, html=html, attachments=attachments,
        message_id=message_id, in_reply_to=in_reply_to or None, references=references or (),
        reply_to=identity.reply_to or None, sender=sender)
    if auto_submitted:
        msg["Auto-Submitted"] = auto_submitted
    raw = compose.as_bytes(msg)
    recipients = compose.envelope_recipients(to_items, cc_items, bcc_items)
    if identity.transport == "relay":
        envelope_from = _envelope_from(_envelope_policy(session, user.org_id), user.email,
                                       identity.email)
    else:
        envelope_from = identity.email
    outgoing = _store_and_queue(
        session, org_id=user.org_id, user_id=user.id, identity_id=identity.id, kind="compose",
        transport=identity.transport, raw=raw, message_id=message_id, subject=subject,
        from_email=identity.email, envelope_from=envelope_from, recipients=recipients,
        file_in_sent=True)
    if draft_id is not None:
        delete_draft(session, user.id, draft_id)
    draft_key = valid_draft_key(draft_key)
    keyed = keyed_draft(session, user.id, draft_key) if draft_key else None
    if keyed is not None:
        delete_draft(session, user.id, keyed.id)
    return outgoing


def _check_header_senders(raw: bytes, envelope: Envelope, allowed: set[str]) -> None:
    """Refuse submitted bytes whose From or Sender names anyone but the user.

    The relay sends the bytes as they are, so the header is what recipients see: checking
    MAIL FROM alone would let a user send as a colleague. RFC 5322 section 3.6 allows one
    From and at most one Sender; more are refused, because a recipient's client may show any
    of them, and counting them on the whole header block (not only what parse_envelope
    reads within its limits) leaves no copy unchecked.
    """
    headers = BytesHeaderParser(policy=compat32).parsebytes(raw, headersonly=True)
    from_values = headers.get_all("from") or []
    sender_values = headers.get_all("sender") or []
    if len(from_values) != 1 or len(sender_values) > 1:
        raise OutboxError("The message must have exactly one From header (and at most one "
                          "Sender header) naming one of your addresses.")
    if any(len(str(value)) > MIME_MAX_HEADER_VALUE_CHARS
           for value in (*from_values, *sender_values)):
        raise OutboxError("The From or Sender header is too long.")
    senders = envelope.addresses_for("from") + envelope.addresses_for("sender")
    if not envelope.addresses_for("from") or \
            len(senders) >= MIME_MAX_ADDRESSES_PER_HEADER:
        raise OutboxError("The message has no readable From address.")
    for address in senders:
        if not address.email:
            raise OutboxError("The From or Sender header has an address that cannot be read.")
        if address.email.lower() not in allowed:
            raise OutboxError(f"The From or Sender header names {address.email}, which is not "
                              "one of your addresses: add and confirm it in Settings » Send "
                              "Mail As first.")


def queue_raw_submission(session: Session, user_id: int, raw: bytes, mail_from: str,
                         rcpt_tos: list[str]) -> OutgoingMessage:
    """Queue a message submitted over authenticated SMTP: the exact bytes go out through the
    organization relay and the same bytes are filed in Sent; the caller commits.

    MAIL FROM, and every From and Sender header address, must be the user's hosted address
    or one of their confirmed Send Mail As addresses (else OutboxError: answer it with
    550 5.7.1); the relay's envelope policy then picks the MAIL FROM it uses.
    """
    from webapp.services.inbound import allowed_senders
    from webapp.services.sendas import ensure_hosted_identity

    user = session.get(User, user_id)
    if user is None or user.is_disabled:
        raise OutboxError("This account cannot send mail.")
    hosted = ensure_hosted_identity(session, user)
    sender = (mail_from or "").strip().lower()
    allowed = {i.email.lower(): i for i in session.scalars(
        select(SendIdentity).where(SendIdentity.user_id == user.id,
                                   SendIdentity.is_verified.is_(True)))}
    identity = allowed.get(sender) if sender else hosted
    if identity is None:
        raise OutboxError(f"{mail_from} is not one of your addresses: add and confirm it in "
                          "Settings » Send Mail As first.")
    envelope = parse_envelope(raw)
    _check_header_senders(raw, envelope, allowed_senders(session, user.id))
    return _store_and_queue(
        session, org_id=user.org_id, user_id=user.id, identity_id=identity.id,
        kind="submission", transport="relay", raw=raw,
        message_id=envelope.message_id, subject=envelope.subject,
        from_email=identity.email,
        envelope_from=_envelope_from(_envelope_policy(session, user.org_id), user.email,
                                     identity.email),
        recipients=list(rcpt_tos), file_in_sent=True, envelope=envelope)


def no_reply_address(session: Session, org_id: int) -> str:
    """The no-reply address of the organization's primary domain."""
    org = session.get(Organization, org_id)
    if org is None or org.primary_domain is None:
        raise OutboxError("The organization has no domain to send from.")
    return f"no-reply@{org.primary_domain.name}"


def queue_system_message(session: Session, org_id: int, to_addr: str, subject: str,
                         text: str) -> OutgoingMessage:
    """Queue a plain-text message from the org's no-reply address through its relay (not filed).

    OutboxError when the organization has no relay (or no domain) to send it with.
    """
    relay = relay_settings(session, org_id)
    if not relay.configured:
        # Nobody would ever see this message fail: refuse now, so the caller can say so.
        raise OutboxError("The organization's outgoing relay is not set up, so no mail can "
                          "be sent; ask your administrator (Admin » Relay & limits).")
    sender = no_reply_address(session, org_id)
    org = session.get(Organization, org_id)
    message_id = compose.make_message_id(_domain_of(sender))
    msg = compose.build_message(from_addr=(org.name, sender), to=[("", to_addr)], subject=subject,
                                text=text, message_id=message_id)
    raw = compose.as_bytes(msg)
    return _store_and_queue(
        session, org_id=org_id, user_id=None, identity_id=None, kind="system", transport="relay",
        raw=raw, message_id=message_id, subject=subject, from_email=sender,
        envelope_from=relay.envelope_sender if relay.envelope_policy == "fixed"
        and relay.envelope_sender else sender,
        recipients=compose.envelope_recipients([("", to_addr)]), file_in_sent=False)


def forward_parts(raw: bytes) -> tuple[str, str, list[compose.Attachment]]:
    """(subject, quoted text, attachments) to forward a stored message with."""
    parsed = parse_message(raw)
    env = parsed.envelope
    sender = next(iter(env.addresses_for("from")), None)
    header = ["---------- Forwarded message ----------"]
    if sender is not None:
        header.append(f"From: {sender.name} <{sender.email}>" if sender.name else f"From: {sender.email}")
    if env.date is not None:
        header.append(f"Date: {env.date.strftime('%a, %d %b %Y %H:%M %z')}")
    header.append(f"Subject: {env.subject}")
    to = ", ".join(a.email for a in env.addresses_for("to"))
    if to:
        header.append(f"To: {to}")
    text = "\n".join(header) + "\n\n" + (parsed.text or "")
    attachments: list[compose.Attachment] = []
    for part in parsed.attachments:
        found = get_part(raw, part.part_id)
        if found is not None:
            content_type, filename, data = found
            # A received name may carry encoded line breaks (RFC 2231): fold, never refuse.
            name = clean_header_text(filename or part.filename or "") or "attachment"
            attachments.append((name, content_type, data))
    subject = env.subject if env.subject.lower().startswith("fwd:") else f"Fwd: {env.subject}"
    return subject, text, attachments


def is_auto_submitted(raw: bytes) -> bool:
    """Whether a message says it was sent by a program (Auto-Submitted other than "no")."""
    from email.parser import BytesHeaderParser

    value = BytesHeaderParser(policy=compose.SEND_POLICY).parsebytes(raw).get("Auto-Submitted")
    return value is not None and str(value).strip().lower().split(";")[0].strip() != "no"


def clean_header_text(value: str) -> str:
    """A header value from a received message, with line breaks folded to spaces."""
    return " ".join(value.replace("\x00", " ").split())


def queue_forward(session: Session, user_id: int, message_id: int, to_addr: str
                  ) -> OutgoingMessage:
    """Forward one of the user's stored messages (by Message row id) from their default address."""
    user = session.get(User, user_id)
    if user is None or user.is_disabled:
        raise OutboxError("This account cannot send mail.")
    message = session.scalar(select(Message).where(Message.id == message_id,
                                                   Message.user_id == user_id))
    if message is None:
        raise OutboxError("No such message.")
    raw = blobs.get_store(current_app.config["BLOB_DIR"]).get(message.blob_sha256)
    if is_auto_submitted(raw):
        # RFC 3834: automatic mail is never forwarded automatically again; two mailboxes
        # forwarding to each other would otherwise loop until a daily limit stops them.
        raise OutboxError("Not forwarded: the message was sent automatically "
                          "(Auto-Submitted), and forwarding it again could loop.")
    subject, text, attachments = forward_parts(raw)
    references = [message.message_id] if message.message_id.startswith("<") else []
    outgoing = queue_message(session, user, None, [("", to_addr)], [], [],
                             clean_header_text(subject), text, None, attachments, None,
                             references, auto_submitted="auto-forwarded")
    outgoing.kind = "forward"
    return outgoing


# --- drafts ---------------------------------------------------------------------------


def delete_draft(session: Session, user_id: int, draft_id: int) -> bool:
    """Delete the user's draft (a message in their Drafts folder), releasing its quota and
    blob in the same transaction; False if there is no such draft."""
    from webapp.services.mailbox import delete_forever

    draft = session.scalar(
        select(Message.id).join(Folder, Folder.id == Message.folder_id)
        .where(Message.id == draft_id, Message.user_id == user_id, Folder.role == "drafts"))
    if draft is None:
        return False
    return bool(delete_forever(session, user_id, [draft]))


# A compose page's draft key: what secrets.token_urlsafe makes, bounded; anything else is
# ignored (the key is posted by the browser and becomes part of a source key).
_DRAFT_KEY = re.compile(r"[A-Za-z0-9_-]{16,64}")
_DRAFT_SOURCE_PREFIX = "draft:"


def new_draft_key() -> str:
    """A fresh random key for one compose page; every save of that page replaces one draft."""
    return secrets.token_urlsafe(16)


def valid_draft_key(value: str | None) -> str | None:
    """The posted draft key if it has the shape new_draft_key makes, else None."""
    value = (value or "").strip()
    return value if _DRAFT_KEY.fullmatch(value) else None


def draft_key_of(message: Message) -> str | None:
    """The draft key a stored draft was saved under (None for one saved some other way)."""
    if not message.source_key.startswith(_DRAFT_SOURCE_PREFIX):
        return None
    return valid_draft_key(message.source_key[len(_DRAFT_SOURCE_PREFIX):])


def keyed_draft(session: Session, user_id: int, draft_key: str) -> Message | None:
    """The user's draft saved under this compose page's key, if it is still in Drafts."""
    return session.scalar(
        select(Message).join(Folder, Folder.id == Message.folder_id)
        .join(MailAccount, MailAccount.id == Message.account_id)
        .where(Message.user_id == user_id, MailAccount.kind == "hosted",
               Message.source_key == f"{_DRAFT_SOURCE_PREFIX}{draft_key}",
               Folder.role == "drafts"))


def _release_draft_key(session: Session, user_id: int, draft_key: str) -> None:
    """Delete the draft saved under the key, so the next version can take the key.

    A message with the key that the user moved out of Drafts is theirs to keep: it only
    gives the key up (the key is unique per account, and deliver() would return it instead
    of storing the new version).
    """
    source_key = f"{_DRAFT_SOURCE_PREFIX}{draft_key}"
    draft = keyed_draft(session, user_id, draft_key)
    if draft is not None:
        delete_draft(session, user_id, draft.id)
    session.execute(update(Message).where(Message.user_id == user_id,
                                          Message.source_key == source_key)
                    .values(source_key=f"{source_key}:kept:{uuid.uuid4().hex}")
                    .execution_options(synchronize_session=False))


def _draft_addresses(value: str | Sequence[compose.AddressInput], field: str
                     ) -> tuple[list[compose.AddressInput], str | None]:
    """A draft keeps what parses; a half-typed field is reported rather than blocking the save."""
    try:
        return _address_items(value, field), None
    except compose.HeaderInjectionError:
        raise
    except compose.ComposeError as error:
        return [], f"{field}: {error}"


def save_draft(session: Session, user: User, identity_id: int | None,
               to: str | Sequence[compose.AddressInput],
               cc: str | Sequence[compose.AddressInput],
               bcc: str | Sequence[compose.AddressInput], subject: str, text: str,
               attachments: Sequence[compose.Attachment], in_reply_to: str | None,
               references: str | Sequence[str] | None, replace_id: int | None = None,
               draft_key: str | None = None) -> tuple[Message, list[str]]:
    """Store the compose form as a message in Drafts, replacing the previous version.

    The previous version is the draft saved under ``draft_key`` (the compose page's key,
    known even to a save whose answer the page never read, such as a beacon's), and the
    draft ``replace_id`` names. Returns the new draft and the fields that could not be kept
    (half-typed addresses). The old version is deleted (quota and blob released) in the
    same transaction.
    Raises HeaderInjectionError for a line break in any header field.
    """
    identity = _load_identity(session, user, identity_id)
    kept: dict[str, list[compose.AddressInput]] = {}
    problems: list[str] = []
    for field, value in (("To", to), ("Cc", cc), ("Bcc", bcc)):
        kept[field], problem = _draft_addresses(value, field)
        if problem:
            problems.append(problem)
    if isinstance(references, str):
        references = references.split()
    from_addr = (identity.display_name, identity.email)
    msg = compose.build_message(
        from_addr=from_addr, to=kept["To"], cc=kept["Cc"],
        # build_message wants a recipient and never writes Bcc; a draft may have neither.
        bcc=kept["Bcc"] or [from_addr], subject=subject, text=text, attachments=attachments,
        message_id=compose.make_message_id(_domain_of(identity.email)),
        in_reply_to=in_reply_to or None, references=references or ())
    if kept["Bcc"]:
        # Drafts keep Bcc (the sent message never does).
        msg["Bcc"] = [compose.validated_address("Bcc", *pair) if isinstance(pair, tuple)
                      else compose.validated_address("Bcc", "", pair) for pair in kept["Bcc"]]
    raw = compose.as_bytes(msg)
    if replace_id is not None:
        delete_draft(session, user.id, replace_id)
    draft_key = valid_draft_key(draft_key)
    if draft_key is not None:
        _release_draft_key(session, user.id, draft_key)
    delivered = deliver(session, hosted_account(session, user.id), raw,
                        source_key=_DRAFT_SOURCE_PREFIX + (draft_key or uuid.uuid4().hex),
                        folder_role="drafts", run_filters=False, is_read=True)
    return delivered.message, problems


def hosted_account(session: Session, user_id: int) -> MailAccount:
    """The user's hosted mail account."""
    account = session.scalar(select(MailAccount).where(MailAccount.user_id == user_id,
                                                       MailAccount.kind == "hosted"))
    if account is None:
        raise LookupError(f"user {user_id} has no hosted account")
    return account


# --- outbox actions -------------------------------------------------------------------


def get_outgoing(session: Session, user_id: int, outgoing_id: int) -> OutgoingMessage | None:
    """One of the user's outgoing messages, or None (another user's id included)."""
    return session.scalar(select(OutgoingMessage).where(OutgoingMessage.id == outgoing_id,
                                                        OutgoingMessage.user_id == user_id))


def list_outbox(session: Session, user_id: int, limit: int = 200) -> list[OutgoingMessage]:
    """The user's outgoing messages, newest first."""
    return list(session.scalars(
        select(OutgoingMessage).where(OutgoingMessage.user_id == user_id)
        .order_by(OutgoingMessage.created_at.desc(), OutgoingMessage.id.desc()).limit(limit)))


def cancel(session: Session, user_id: int, outgoing_id: int) -> bool:
    """Cancel a queued or waiting message; False if it is not (or no longer) cancellable.

    One conditional UPDATE: a worker that claimed it a moment ago wins, and the message goes.
    A message that reached some recipients a moment ago and whose copy in Sent is not filed
    yet (it still has a lease) waits until it is: cancelling drops the outbox's reference
    to the bytes, which that copy still needs.
    """
    done = session.execute(
        update(OutgoingMessage)
        .where(OutgoingMessage.id == outgoing_id, OutgoingMessage.user_id == user_id,
               OutgoingMessage.state.in_(("queued", "retry-wait")),
               OutgoingMessage.lease_until.is_(None))
        .values(state="cancelled", next_attempt_at=None)
        .execution_options(synchronize_session=False)).rowcount
    if done:
        # Cancelling is final: the queued bytes can be collected.
        digest = session.scalar(select(OutgoingMessage.blob_sha256)
                                .where(OutgoingMessage.id == outgoing_id))
        blobs.drop_reference(session, digest)
    session.expire_all()
    return bool(done)


def retry(session: Session, user_id: int, outgoing_id: int) -> bool:
    """Send a failed, uncertain or waiting message again now, to recipients still without it.

    An "uncertain" retry is the user's explicit decision to accept a possible duplicate:
    every recipient that was not confirmed is tried again with the same Message-ID (so the
    receiving side can recognise the copy).
    """
    from webapp.queue import enqueue_after_commit

    outgoing = get_outgoing(session, user_id, outgoing_id)
    if outgoing is None or outgoing.state not in ("failed", "uncertain", "retry-wait"):
        return False
    for recipient in outgoing.recipients:
        if recipient.state in ("deferred", "pending") or (
                outgoing.state == "failed" and recipient.state == "refused"
                and outgoing.last_error_kind in ("auth", "tls", "cert_invalid", "connect",
                                                 "relay_denied", "limit", "config")):
            recipient.state = "pending"
    if not any(r.state == "pending" for r in outgoing.recipients):
        # Everyone either has it or refused it for good; retrying the refused is the user's
        # call: let them retry those too.
        for recipient in outgoing.recipients:
            if recipient.state == "refused":
                recipient.state = "pending"
    outgoing.state = "queued"
    outgoing.next_attempt_at = utcnow()
    outgoing.attempts = 0
    session.flush()
    enqueue_after_commit(SEND_JOB, outgoing.id, queue=SEND_QUEUE, job_timeout=SEND_JOB_TIMEOUT,
                         session=session)
    return True


# --- daily limits ---------------------------------------------------------------------


def _user_limit_message(relay: RelaySettings) -> str:
    return (f"You reached your daily sending limit ({relay.daily_limit_user} messages "
            "through the organization's relay). It resets at midnight UTC; press Retry "
            "then, or ask your administrator to raise it.")


def _org_limit_message(relay: RelaySettings) -> str:
    return (f"Your organization reached its daily sending limit "
            f"({relay.daily_limit_org} messages). It resets at midnight UTC; press "
            "Retry then, or ask your administrator to raise it.")


def count_many_against_limits(session: Session, org_id: int, user_ids: Sequence[int | None],
                              relay: RelaySettings, today: date | None = None
                              ) -> list[str | None]:
    """Count relay messages of one org today, in order; per message None if allowed, else why not.

    Each message is judged as if counted alone, one after the other: over the user's limit it
    is refused with the user's message, else over the org's with the org's (and then it does
    not use up the user's count). The counters are read under a lock (FOR UPDATE; on SQLite
    the INSERT before it has taken the database's write lock) and moved once per counter, so
    concurrent workers never exceed a limit and a whole group costs four statements. The
    caller commits.
    """
    today = today or utcnow().date()
    table = SendCounter.__table__
    keys = sorted({("org", org_id)} | {("user", u) for u in user_ids if u is not None})
    connection = session.connection()
    module = postgresql if connection.dialect.name == "postgresql" else sqlite
    # Sorted keys: two workers lock the same counters in the same order (no deadlock).
    connection.execute(module.insert(table).values(
        [{"scope": scope, "scope_id": scope_id, "day": today, "count": 0}
         for scope, scope_id in keys]).on_conflict_do_nothing())
    read = (select(table.c.scope, table.c.scope_id, table.c.count)
            .where(table.c.day == today,
                   or_(*[(table.c.scope == scope) & (table.c.scope_id == scope_id)
                         for scope, scope_id in keys]))
            .order_by(table.c.scope, table.c.scope_id).with_for_update())
    counts = {(scope, scope_id): count for scope, scope_id, count in connection.execute(read)}
    taken = dict.fromkeys(keys, 0)
    verdicts: list[str | None] = []
    for user_id in user_ids:
        user_key = ("user", user_id)
        if user_id is not None and relay.daily_limit_user > 0 and \
                counts[user_key] + taken[user_key] >= relay.daily_limit_user:
            verdicts.append(_user_limit_message(relay))
        elif relay.daily_limit_org > 0 and \
                counts[("org", org_id)] + taken[("org", org_id)] >= relay.daily_limit_org:
            verdicts.append(_org_limit_message(relay))
        else:
            taken[("org", org_id)] += 1
            if user_id is not None:
                taken[user_key] += 1
            verdicts.append(None)
    moved = [{"b_scope": scope, "b_scope_id": scope_id, "b_taken": n}
             for (scope, scope_id), n in taken.items() if n]
    if moved:
        connection.execute(
            update(table).where(table.c.scope == bindparam("b_scope"),
                                table.c.scope_id == bindparam("b_scope_id"),
                                table.c.day == today)
            .values(count=table.c.count + bindparam("b_taken")), moved)
    return verdicts


def sent_today(session: Session, scope: str, scope_id: int) -> int:
    """How many messages the user or org sent through the relay today (UTC)."""
    return session.scalar(select(SendCounter.count).where(
        SendCounter.scope == scope, SendCounter.scope_id == scope_id,
        SendCounter.day == utcnow().date())) or 0


def due_for_sweep(session: Session, now: datetime | None = None) -> list[int]:
    """Ids of messages whose job may be lost: due retries, and claims whose lease expired."""
    now = now or utcnow()
    # A disabled user's mail waits (their job does nothing) without being requeued forever.
    stale = select(OutgoingMessage.id).outerjoin(User, User.id == OutgoingMessage.user_id).where(
        or_(User.id.is_(None), User.is_disabled.is_(False)),
        ((OutgoingMessage.state.in_(("queued", "retry-wait")))
         & (OutgoingMessage.next_attempt_at <= now - timedelta(seconds=60))
         # A lease here guards a Sent copy still owed: sent again once it is filed.
         & OutgoingMessage.lease_until.is_(None))
        | ((OutgoingMessage.state == "sending") & (OutgoingMessage.lease_until < now)))
    return list(session.scalars(stale.limit(1000)))



# --- organization relay settings --------------------------------------------------------


def get_or_create_relay(session: Session, org_id: int) -> OrgRelay:
    """The org's relay row (a new, unsaved-to-disk one with defaults if there is none yet)."""
    row = session.scalar(select(OrgRelay).where(OrgRelay.org_id == org_id))
    if row is None:
        row = OrgRelay(org_id=org_id, host="", port=587, security="starttls", username="",
                       password_encrypted="", envelope_policy="hosted", envelope_sender="",
                       daily_limit_user=500, daily_limit_org=5000)
        session.add(row)
    return row


def save_relay(session: Session, org_id: int, *, host: str, port: int, security: str,
               username: str, password: str | None, envelope_policy: str,
               envelope_sender: str, daily_limit_user: int, daily_limit_org: int) -> dict:
    """Change the org's relay settings; return what changed (passwords as "changed") for the audit.

    A None or empty password keeps the stored one; OutboxError for bad values.
    """
    from webapp.models.sending import ENVELOPE_POLICIES, SECURITIES
    from webapp.services.secrets import encrypt_secret

    host = (host or "").strip().lower()
    if any(c in host for c in " \r\n\x00/@"):
        raise OutboxError("Enter the relay's host name only (for example smtp.example.com).")
    if security not in SECURITIES:
        raise OutboxError("Choose SSL, STARTTLS or none.")
    if envelope_policy not in ENVELOPE_POLICIES:
        raise OutboxError("Choose whose address the relay names as the envelope sender.")
    envelope_sender = (envelope_sender or "").strip()
    if envelope_policy == "fixed":
        try:
            parsed = compose.parse_address_list(envelope_sender, field="Envelope sender")
        except compose.ComposeError as error:
            raise OutboxError(str(error)) from None
        if len(parsed) != 1:
            raise OutboxError("Enter one envelope sender address (for example bounces@example.com).")
        envelope_sender = parsed[0][1]
    if not 1 <= int(port) <= 65535 or daily_limit_user < 0 or daily_limit_org < 0:
        raise OutboxError("The port is 1 to 65535 and limits are 0 (no limit) or more.")
    if password and any(c in password for c in "\r\n\x00"):
        raise OutboxError("The password must not contain line breaks.")
    row = get_or_create_relay(session, org_id)
    login_moved = (row.host or "") != host or row.port != int(port) or row.security != security \
        or (row.username or "") != (username or "").strip()
    if login_moved and row.password_encrypted and not password:
        if (username or "").strip():
            # The stored password must never follow the settings to another server: an admin
            # session used by someone else would otherwise hand it to their host.
            raise OutboxError("Enter the password again: the server or login changed.")
        row.password_encrypted = ""
    wanted = {"host": host, "port": int(port), "security": security,
              "username": (username or "").strip(), "envelope_policy": envelope_policy,
              "envelope_sender": envelope_sender, "daily_limit_user": int(daily_limit_user),
              "daily_limit_org": int(daily_limit_org)}
    changes = {}
    for name, value in wanted.items():
        if getattr(row, name) != value:
            changes[name] = {"from": getattr(row, name), "to": value}
            setattr(row, name, value)
    if password:
        row.password_encrypted = encrypt_secret(current_app.config["MAIL_SECRET_KEYS"], password)
        changes["password"] = "changed"
    row.updated_at = utcnow()
    session.flush()
    return changes
