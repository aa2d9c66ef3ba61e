"""The one path for every incoming message: POP fetch, hosted delivery, submission, Sent copies.

`deliver_many()` stores a batch of messages for one account; `deliver()` is the same path
for one message. For each message: the raw bytes go to the blob store, the header block
is parsed for what listing, filters and linking need (a full parse costs several times
more and is done by the index job), and the user's filters decide the folder. Then, for
the whole batch at once: one query for source keys already stored, one quota charge, one
blob-count upsert (none for Sent copies that take over their outbox rows' counts), one
insert of the messages and one of their addresses, while the batch's bytes are written
to one pack file and flushed in the background (a single message is a file of its own,
fsynced). The caller commits: a crash before the commit leaves nothing half-done (at
most an unreferenced pack or file, which garbage collection removes), and a retry stores
each message once (the source key is unique per account).
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from flask import current_app
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from webapp.models import Folder, MailAccount, Message, MessageAddress
from webapp.models._types import utcnow
from webapp.services import blobs, filters, quota
from webapp.services.mime import Envelope, parse_envelope

log = logging.getLogger("skydesk.delivery")

# Dates outside this range are typos or spam tricks; the list sorts them by arrival instead.
_MIN_YEAR, _FUTURE_SLACK_DAYS = 1990, 2
# Source keys per IN (...) list: well under every database's parameter limit.
_KEYS_PER_QUERY = 500

_threads: dict[str, ThreadPoolExecutor] = {}
_threads_lock = threading.Lock()


def _forget_threads() -> None:
    """In a forked child (an RQ work horse) the parent's threads do not exist: start afresh."""
    global _threads, _threads_lock
    _threads, _threads_lock = {}, threading.Lock()


os.register_at_fork(after_in_child=_forget_threads)


class MessageTooLargeError(ValueError):
    """The message is over the configured size limit; nothing was stored."""


@dataclass
class Delivered:
    """The outcome of one delivery."""

    message: Message | None
    duplicate: bool
    envelope: Envelope | None = None


@dataclass
class Incoming:
    """One message to deliver: its exact bytes, its source key, where it goes."""

    raw: bytes
    source_key: str
    folder_role: str = "inbox"
    is_read: bool = False
    envelope: Envelope | None = None  # parse_envelope(raw), when the caller already has it
    # The bytes' SHA-256 when they are already in the store, durable, and referenced by a row
    # that outlives this delivery's commit (a Sent copy of an outbox blob): not written again.
    sha256: str | None = None
    # With sha256: the caller hands its own reference to the bytes over (a sent message's
    # outbox row, done with them). Stored, the message takes that reference instead of
    # counting one more; not stored, the caller still holds it.
    takes_reference: bool = False


@dataclass
class Outcome:
    """What happened to one message of a batch.

    ``status`` is stored, duplicate (the source key was stored before: ``message_pk`` is
    that message), too_large, quota (it, and every later one, did not fit) or failed (its
    bytes could not be written: ``error``). Only stored and duplicate have a message.
    """

    status: str
    message_pk: int | None = None
    envelope: Envelope | None = None
    error: Exception | None = None

    @property
    def reason(self) -> str:
        """The error in words, for a ledger row or a log."""
        return str(self.error) if self.error else ""


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


def _thread(name: str) -> ThreadPoolExecutor:
    """A process-wide background thread: "blob-write" writes batches, "blob-sync" flushes them.

    Two threads, so that a batch's bytes are written while the previous batch is flushed.
    """
    with _threads_lock:
        if name not in _threads:
            _threads[name] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        return _threads[name]


def wait_durable(pending: list[Future]) -> None:
    """Wait for the flushes ``deliver_many(..., pending_syncs=pending)`` left running.

    Call it before the commit that makes those messages visible; a failed flush raises,
    and the caller's rollback drops the batch.
    """
    while pending:
        pending.pop(0).result()


def _flush(durable: Future, flush, *args) -> None:
    try:
        flush(*args)
    except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
        durable.set_exception(exc)
    else:
        durable.set_result(None)


@dataclass
class _Written:
    """Where a batch's bytes went: one digest (or OSError) per message, and the pack if any."""

    digests: list[str | OSError]
    pack: str | None = None
    offsets: dict[str, int] | None = None


def _write_batch(store: blobs.BlobStore, raws: list[bytes], hashes: list[str],
                 written: Future, durable: Future) -> None:
    """Write a batch's bytes: one pack, or failing that a file each; then have them flushed.

    ``written`` gets where every message went as soon as the bytes are written, so the
    caller can go on to the rows; ``durable`` is set once the flush (on the "blob-sync"
    thread) is done. An unexpected error reaches both. The fallback keeps one message's
    bad bytes or path from failing the others.
    """
    try:
        try:
            pack, located = store.write_pack(raws, digests=hashes, durable=False)
        except OSError as exc:
            log.warning("pack not written (%s); storing the batch a file per message", exc)
            results: list[str | OSError] = []
            for raw in raws:
                try:
                    results.append(store.put(raw, durable=False))
                except OSError as error:
                    results.append(error)
            outcome = _Written(results)
            flush = (store.sync, [digest for digest in results if isinstance(digest, str)])
        else:
            outcome = _Written([digest for digest, _ in located], pack,
                               {digest: offset for digest, offset in reversed(located)})
            flush = (store.sync_pack, pack)
    except BaseException as exc:
        written.set_exception(exc)
        durable.set_exception(exc)
        raise
    written.set_result(outcome)
    _thread("blob-sync").submit(_flush, durable, *flush)


def deliver(session: Session, account: MailAccount, raw: bytes, source_key: str, *,
            folder_role: str = "inbox", run_filters: bool = True, is_read: bool = False,
            store: blobs.BlobStore | None = None, max_bytes: int | None = None) -> Delivered:
    """Store one message for the account's user; the caller commits.

    Raises QuotaExceededError or MessageTooLargeError and stores nothing in those cases,
    and the store's error when the bytes cannot be written.
    """
    [outcome] = deliver_many(session, account, [Incoming(raw, source_key, folder_role, is_read)],
                             run_filters=run_filters, store=store, max_bytes=max_bytes)
    if outcome.error is not None:
        raise outcome.error
    return Delivered(session.get(Message, outcome.message_pk),
                     duplicate=outcome.status == "duplicate", envelope=outcome.envelope)


def deliver_many(session: Session, account: MailAccount, items: list[Incoming], *,
                 run_filters: bool = True, store: blobs.BlobStore | None = None,
                 max_bytes: int | None = None,
                 pending_syncs: list[Future] | None = None) -> list[Outcome]:
    """Store messages for the account's user, in order; one Outcome per item. The caller commits.

    A batch's bytes are durable when this returns, unless ``pending_syncs`` is given: the
    flush is then appended to it, and the caller must call ``wait_durable(pending_syncs)``
    before it commits (a caller that commits several batches at once overlaps their flushes).

    No row is written for a message that is a duplicate, too large, over quota or failed.
    A database error raises, and the caller's rollback takes the whole batch back.
    """
    if any(item.takes_reference and item.sha256 is None for item in items):
        raise ValueError("takes_reference is for bytes already stored (give their sha256)")
    config = current_app.config
    limit = max_bytes or config["MAIL_MAX_MESSAGE_BYTES"]
    store = store or blobs.get_store(config["BLOB_DIR"])
    outcomes: list[Outcome | None] = [None] * len(items)
    digests: dict[int, str] = {}
    keys = [item.source_key[:255] for item in items]
    stored_before = _stored_keys(session, account.id, keys)
    first_of: dict[str, int] = {}
    later_copies: dict[int, int] = {}  # index -> index of the same key earlier in this batch
    todo: list[int] = []
    for index, (item, key) in enumerate(zip(items, keys)):
        if key in stored_before:
            outcomes[index] = Outcome("duplicate", stored_before[key])
        elif key in first_of:
            later_copies[index] = first_of[key]
        elif len(item.raw) > limit:
            outcomes[index] = Outcome("too_large", error=MessageTooLargeError(
                f"The message is {quota.human_bytes(len(item.raw))}, over the "
                f"{quota.human_bytes(limit)} limit."))
        else:
            first_of[key] = index
            todo.append(index)

    # In a batch, a background thread writes the bytes (one pack) and another flushes them,
    # while this thread parses headers, runs filters and writes the rows; every write is
    # known before the rows, and the flush ends before the caller commits (before this
    # returns, or in wait_durable). A single message is written and fsynced here.
    for index in todo:
        if items[index].sha256 is not None:
            digests[index] = items[index].sha256
    to_write = [index for index in todo if index not in digests]
    batch = len(to_write) > 1
    deciding = filters.DeliveryFilters(session, account.user_id) if run_filters and todo else None
    envelopes: dict[int, Envelope] = {}
    decisions: dict[int, filters.FilterDecision] = {}
    written: Future | None = None
    durable: Future | None = None
    if batch:
        written, durable = Future(), Future()
        raws = [items[i].raw for i in to_write]
        # Hashed here: on the writer thread each hash waits for the interpreter lock after it.
        _thread("blob-write").submit(_write_batch, store, raws,
                                     [hashlib.sha256(raw).hexdigest() for raw in raws],
                                     written, durable)
    for index in todo:
        if not batch and index not in digests:
            try:
                digests[index] = store.put(items[index].raw)
            except OSError as exc:
                log.warning("account %s: message %s not stored: %s", account.id, keys[index], exc)
                outcomes[index] = Outcome("failed", error=exc)
                continue
        envelopes[index] = items[index].envelope or parse_envelope(items[index].raw)
        decisions[index] = (deciding.decide(envelopes[index], items[index].raw) if deciding
                            else filters.FilterDecision())
    packed = None
    if written is not None:
        result = written.result()
        if result.pack is not None:
            packed = (result.pack, result.offsets)
        for index, digest in zip(to_write, result.digests):
            if isinstance(digest, OSError):
                log.warning("account %s: message %s not stored: %s", account.id, keys[index],
                            digest)
                outcomes[index] = Outcome("failed", error=digest)
            else:
                digests[index] = digest
    todo = [index for index in todo if index in digests]

    charged = quota.charge_prefix(session, account.user_id, [len(items[i].raw) for i in todo])
    if charged < len(todo):
        free = quota.free_bytes(session, account.user_id)
        for index in todo[charged:]:
            outcomes[index] = Outcome("quota", envelope=envelopes[index], error=(
                quota.QuotaExceededError(account.user_id, len(items[index].raw), free)))
        todo = todo[:charged]

    if todo:
        pks = _insert(session, account, items, todo, keys, envelopes, decisions, digests, packed)
        for index, pk in zip(todo, pks):
            outcomes[index] = Outcome("stored", pk, envelopes[index])
            if decisions[index].filter_id is not None:
                filters.after_delivery(session, account.user_id, pk, decisions[index])
        from webapp.queue import enqueue_after_commit

        # One index job per user per transaction, however many messages a batch delivers.
        enqueue_after_commit("worker.jobs.index.index_pending", account.user_id,
                             session=session, dedupe=True)
    if durable is not None:
        if pending_syncs is not None:
            pending_syncs.append(durable)  # the caller waits (wait_durable) before committing
        else:
            durable.result()  # a failed flush raises: the caller's rollback drops the batch
    for index, first in later_copies.items():
        earlier = outcomes[first]
        outcomes[index] = (Outcome("duplicate", earlier.message_pk, earlier.envelope)
                           if earlier.message_pk else earlier)
    return outcomes  # type: ignore[return-value]


def _stored_keys(session: Session, account_id: int, keys: list[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    unique = list(dict.fromkeys(keys))
    for start in range(0, len(unique), _KEYS_PER_QUERY):
        found.update(session.execute(select(Message.source_key, Message.id).where(
            Message.account_id == account_id,
            Message.source_key.in_(unique[start:start + _KEYS_PER_QUERY]))).all())
    return found


def _insert(session: Session, account: MailAccount, items: list[Incoming], todo: list[int],
            keys: list[str], envelopes: dict[int, Envelope],
            decisions: dict[int, filters.FilterDecision], digests: dict[int, str],
            packed: tuple[str, dict[str, int]] | None) -> list[int]:
    """The batch's blob counts, messages and addresses: three statements; the new ids in order."""
    user_id = account.user_id
    uses: dict[str, tuple[int, int]] = {}
    for index in todo:
        if items[index].takes_reference:
            continue  # the caller's reference becomes this message's
        size, count = uses.get(digests[index], (len(items[index].raw), 0))
        uses[digests[index]] = (size, count + 1)
    blobs.add_references(session, uses, packed)

    roles = {items[index].folder_role for index in todo}
    folder_ids = dict(session.execute(select(Folder.role, Folder.id).where(
        Folder.user_id == user_id, Folder.role.in_(roles))).all())
    missing = roles - folder_ids.keys()
    if missing:
        raise LookupError(f"user {user_id} has no {sorted(missing)[0]} folder")

    received = utcnow()
    rows = []
    for index in todo:
        item, envelope, decision = items[index], envelopes[index], decisions[index]
        sender = next((a for a in envelope.addresses if a.role == "from"), None)
        rows.append({
            "user_id": user_id, "account_id": account.id,
            "folder_id": decision.folder_id or folder_ids[item.folder_role],
            "blob_sha256": digests[index], "source_key": keys[index], "size": len(item.raw),
            "message_id": envelope.message_id[:998],
            "in_reply_to": (envelope.in_reply_to or "")[:998],
            "references": " ".join(envelope.references)[:20000],
            "subject": envelope.subject,
            "from_name": (sender.name if sender else "")[:320],
            "from_email": (sender.email if sender else "")[:320],
            "snippet": "", "date": envelope.date, "received_at": received,
            "sort_date": _sort_date(envelope, received),
            "is_read": item.is_read or decision.is_read, "is_flagged": decision.is_flagged,
            "has_attachments": envelope.has_attachments,
            "parse_defects": "\n".join(envelope.parse_defects)[:4000], "indexed": False})
    # Plain executemany, then the new ids by source key (unique per account): RETURNING in
    # parameter order makes SQLite run one INSERT per row.
    session.execute(_INSERT_MESSAGES, rows)
    new_ids = _stored_keys(session, account.id, [keys[index] for index in todo])
    pks = [new_ids[keys[index]] for index in todo]
    addresses = [
        {"message_pk": pk, "user_id": user_id, "role": a.role, "email": a.email[:320],
         "name": a.name[:320], "ambiguous": a.ambiguous}
        for index, pk in zip(todo, pks) for a in envelopes[index].addresses if a.email]
    if addresses:
        session.execute(_INSERT_ADDRESSES, addresses)
    return pks


# Core statements on the tables: the ORM's bulk insert inspects every row's keys and costs
# more than the database does. Rows carry every column the tables require.
_INSERT_MESSAGES = insert(Message.__table__)
_INSERT_ADDRESSES = insert(MessageAddress.__table__)
