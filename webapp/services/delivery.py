"""The one path for every incoming message: POP fetch, hosted delivery, submission, Sent copies.

`deliver()` stores the raw bytes, parses what listing, filters and linking need (headers
only: a full parse costs several times more and is done by the index job), runs the
filters, and adds the Message and its addresses to the session together with the source
key. The caller commits, alone or in a batch: a crash before the commit leaves nothing
half-done, and a retry stores the message once (the source key is unique per account).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import current_app
from sqlalchemy import select
from sqlalchemy.orm import Session

from webapp.models import Folder, MailAccount, Message, MessageAddress
from webapp.models._types import utcnow
from webapp.services import blobs, filters, quota
from webapp.services.mime import Envelope, parse_envelope

log = logging.getLogger("skydesk.delivery")

# Dates outside this range are typos or spam tricks; the list sorts them by arrival instead.
_MIN_YEAR, _FUTURE_SLACK_DAYS = 1990, 2


class MessageTooLargeError(ValueError):
    """The message is over the configured size limit; nothing was stored."""


@dataclass
class Delivered:
    """The outcome of one delivery."""

    message: Message | None
    duplicate: bool
    envelope: Envelope | None = None


def folder_for_role(session: Session, user_id: int, role: str) -> Folder:
    """The user's system folder with this role."""
    folder = session.scalar(select(Folder).where(Folder.user_id == user_id, Folder.role == role))
    if folder is None:
        raise LookupError(f"user {user_id} has no {role} folder")
    return folder


def _sort_date(envelope: Envelope, received):
    date = envelope.date
    if date is None or date.year < _MIN_YEAR or (date - received).days > _FUTURE_SLACK_DAYS:
        return received
    return date


def deliver(session: Session, account: MailAccount, raw: bytes, source_key: str, *,
            folder_role: str = "inbox", run_filters: bool = True, is_read: bool = False,
            store: blobs.BlobStore | None = None, max_bytes: int | None = None) -> Delivered:
    """Store one message for the account's user; the caller commits.

    Raises QuotaExceededError or MessageTooLargeError and stores nothing in those cases.
    """
    existing = session.scalar(select(Message).where(Message.account_id == account.id,
                                                    Message.source_key == source_key))
    if existing is not None:
        return Delivered(existing, duplicate=True)
    limit = max_bytes or current_app.config["MAIL_MAX_MESSAGE_BYTES"]
    if len(raw) > limit:
        raise MessageTooLargeError(
            f"The message is {quota.human_bytes(len(raw))}, over the "
            f"{quota.human_bytes(limit)} limit.")

    envelope = parse_envelope(raw)
    quota.charge(session, account.user_id, len(raw))
    store = store or blobs.get_store(current_app.config["BLOB_DIR"])
    digest = store.put(raw)
    blobs.add_reference(session, digest, len(raw))

    folder = folder_for_role(session, account.user_id, folder_role)
    decision = filters.decide(session, account.user_id, envelope, raw) if run_filters \
        else filters.FilterDecision()
    received = utcnow()
    from_address = next((a for a in envelope.addresses if a.role == "from"), None)
    message = Message(
        user_id=account.user_id, account_id=account.id,
        folder_id=decision.folder_id or folder.id, blob_sha256=digest,
        source_key=source_key[:255], size=len(raw), message_id=envelope.message_id[:998],
        in_reply_to=(envelope.in_reply_to or "")[:998],
        references=" ".join(envelope.references)[:20000],
        subject=envelope.subject, from_name=(from_address.name if from_address else "")[:320],
        from_email=(from_address.email if from_address else "")[:320],
        date=envelope.date, received_at=received, sort_date=_sort_date(envelope, received),
        is_read=is_read or decision.is_read, is_flagged=decision.is_flagged,
        has_attachments=envelope.has_attachments,
        parse_defects="\n".join(envelope.parse_defects)[:4000])
    message.addresses = [
        MessageAddress(user_id=account.user_id, role=a.role, email=a.email[:320],
                       name=a.name[:320], ambiguous=a.ambiguous)
        for a in envelope.addresses if a.email]
    session.add(message)
    session.flush()
    _after_delivery(session, message, decision)
    return Delivered(message, duplicate=False, envelope=envelope)


def _after_delivery(session: Session, message: Message, decision: filters.FilterDecision) -> None:
    """Work that follows a delivery: the filter's record, labels and forwards; the search index."""
    from webapp.queue import enqueue_after_commit

    filters.after_delivery(session, message, decision)
    # One index job per user per transaction, however many messages a batch delivers.
    enqueue_after_commit("worker.jobs.index.index_pending", message.user_id, session=session,
                         dedupe=True)
