"""The POP fetch job: one batch of one account, stored and committed before anything is deleted.

Order of a batch (DESIGN.md, "POP fetch"): UIDL + LIST, the oldest unknown messages up to
the batch size, each delivered with its ledger row in one commit, then DELE (delete mode)
and QUIT. A crash before the commit stores nothing (the next run fetches the same UIDLs
again); a crash after it but before QUIT deletes nothing (the server undoes the DELEs) and
the next run deletes what the ledger says is stored. One fetch per account at a time: a
Redis lock that expires shortly after a crashed worker, kept alive by a heartbeat thread.
"""
from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import timedelta

from flask import current_app
from redis.exceptions import LockError
from sqlalchemy import insert, select

from webapp.extensions import db
from webapp.models import MailAccount, Message, User
from webapp.models._types import utcnow
from webapp.models.pop import PopAccount, PopFetchRun, PopUidl
from webapp.queue import enqueue_now, get_redis
from webapp.services import blobs, quota
from webapp.services.delivery import MessageTooLargeError, deliver
from webapp.services.mime import parse_envelope
from webapp.services.pop_accounts import (FETCH_JOB, lock_key, mark_failure, own_addresses,
                                          pop_setting, progress_key, queued_key)
from webapp.services.secrets import SecretDecryptError, decrypt_secret
from worker import pop3

log = logging.getLogger("skydesk.fetch")

# Messages per pipelined RETR round: between rounds the batch checks its time budget and
# publishes progress, and the connection is always back in sync.
CHUNK = 50
# Parallel blob writers per chunk: fsync waits on the disk, not the CPU.
PRESTORE_THREADS = 8


@dataclass
class BatchResult:
    """What one batch did; ``status`` is done, more, busy, inactive, paused or error."""

    account_id: int
    status: str
    stored: int = 0
    skipped: int = 0
    quarantined: int = 0
    deleted: int = 0
    bytes: int = 0
    on_server: int = 0
    left: int = 0
    error_kind: str = ""
    error: str = ""
    seconds: float = 0.0
    sent: int = field(default=0)  # own messages filed in Sent (recent: mode)


ProgressCallback = Callable[[BatchResult], None]


class _Quarantine(Exception):
    """A message failed to store in a way that may have left partial writes in the batch."""

    def __init__(self, uidl: str, size: int, reason: str):
        super().__init__(reason)
        self.uidl, self.size, self.reason = uidl, size, reason


class _LockHeartbeat(threading.Thread):
    """Keeps the account lock alive while the batch runs; dies with the process."""

    def __init__(self, lock, ttl: float):
        super().__init__(daemon=True, name="pop-lock-heartbeat")
        self.lock, self.ttl, self.stopped = lock, ttl, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.ttl / 3):
            try:
                self.lock.reacquire()
            except LockError:
                return

    def stop(self) -> None:
        self.stopped.set()
        self.join()


def fetch_account(account_id: int) -> dict:
    """RQ job: fetch one batch of the account; enqueue the next at once while mail is left."""
    result = run_batch(account_id)
    if result.status == "more":
        enqueue_fetch(account_id)
    return asdict(result)


def enqueue_fetch(account_id: int) -> None:
    """Enqueue a fetch of the account now, marking it queued so the sweeper does not double it."""
    config = current_app.config
    get_redis().set(queued_key(account_id), "1", ex=int(pop_setting(config, "POP_QUEUED_MARKER_SECONDS")))
    enqueue_now(FETCH_JOB, account_id, queue="fetch",
                job_timeout=int(pop_setting(config, "POP_JOB_TIMEOUT")))


def run_batch(account_id: int, progress: ProgressCallback | None = None) -> BatchResult:
    """Fetch one batch of the account under its lock; used by the job and `flask pop fetch`."""
    redis = get_redis()
    redis.delete(queued_key(account_id))
    session = db.session
    account = session.get(PopAccount, account_id)
    if account is None:
        return BatchResult(account_id, "inactive", error="no such account")
    owner = session.get(User, account.user_id)
    if account.state == "disabled" or owner is None or owner.is_disabled:
        return BatchResult(account_id, "inactive", error=f"account is {account.state}")
    ttl = int(pop_setting(current_app.config, "POP_LOCK_SECONDS"))
    # Not thread-local: the heartbeat thread extends the lock this thread took.
    lock = redis.lock(lock_key(account_id), timeout=ttl, blocking=False, thread_local=False)
    if not lock.acquire():
        return BatchResult(account_id, "busy")
    heartbeat = _LockHeartbeat(lock, ttl)
    heartbeat.start()
    try:
        return _run_locked(account, owner, progress)
    except BaseException:
        session.rollback()
        raise
    finally:
        heartbeat.stop()
        redis.delete(progress_key(account_id))
        with contextlib.suppress(LockError):
            lock.release()


def _publish(result: BatchResult, base_fetched: int, rate: float) -> None:
    """Live numbers for the account page while the batch runs."""
    get_redis().set(progress_key(result.account_id), json.dumps({
        "on_server": result.on_server, "fetched": base_fetched + result.stored,
        "left": result.left, "rate": round(rate, 2)}), ex=3600)


def _run_locked(account: PopAccount, owner: User, progress: ProgressCallback | None) -> BatchResult:
    session = db.session
    config = current_app.config
    started = time.monotonic()
    now = utcnow()
    result = BatchResult(account.id, "done")

    if account.state == "paused":
        if not quota.has_room(session, owner.id):
            account.next_fetch_at = now + timedelta(
                seconds=int(pop_setting(config, "POP_PAUSED_RECHECK_SECONDS")))
            session.commit()
            return BatchResult(account.id, "paused", error_kind="quota", error=account.last_error)
        account.state, account.state_reason = "active", ""
        account.last_error_kind, account.last_error = "", ""

    run = PopFetchRun(account_id=account.id, started_at=now)
    session.add(run)
    session.commit()  # the journal shows the run even if this process dies in it

    def finish(error_kind: str = "", message: str = "", counts_as: str | None = None,
               retry_after: timedelta | None = None) -> BatchResult:
        result.seconds = round(time.monotonic() - started, 3)
        run.ended_at = utcnow()
        run.fetched, run.skipped, run.bytes = result.stored, result.skipped + result.quarantined, result.bytes
        run.error_kind = error_kind or ("quota" if result.status == "paused" else "")
        if error_kind:
            result.status, result.error_kind, result.error = "error", error_kind, message
            mark_failure(session, account.id, kind=error_kind, counts_as=counts_as, message=message,
                         retry_after=retry_after or timedelta(seconds=account.interval_seconds))
        session.commit()
        return result

    try:
        password = decrypt_secret(config["MAIL_SECRET_KEYS"], account.password_encrypted)
    except SecretDecryptError as exc:
        return finish("secret", str(exc))
    try:
        pop = pop3.open_session(account.host, account.port, account.security, account.username,
                                password, timeout=float(pop_setting(config, "POP_TIMEOUT_SECONDS")),
                                ca_bundle=config.get("MAIL_CA_BUNDLE"))
    except pop3.PopError as exc:
        log.info("pop account %s: %s", account.id, exc)
        return finish(exc.kind, exc.user_message, exc.counts_as)

    with pop:
        try:
            _fetch_in_session(pop, account, owner, result, progress, started)
        except pop3.PopError as exc:
            log.info("pop account %s: %s", account.id, exc)
            session.commit()  # whatever was stored whole before the failure stays stored
            return finish(exc.kind, exc.user_message, exc.counts_as)
    if result.status == "paused":
        account.state, account.state_reason = "paused", "storage_full"
        account.next_fetch_at = utcnow() + timedelta(
            seconds=int(pop_setting(config, "POP_PAUSED_RECHECK_SECONDS")))
    return finish()


def _fetch_in_session(pop: pop3.PopSession, account: PopAccount, owner: User,
                      result: BatchResult, progress: ProgressCallback | None,
                      started: float) -> None:
    """List, store a batch, commit, DELE, QUIT; fills ``result`` and the account row."""
    session = db.session
    config = current_app.config
    listing = sorted(pop.uidls())  # oldest first: message numbers follow arrival order
    sizes = pop.sizes()
    result.on_server = len(listing)
    known = dict(session.execute(select(PopUidl.uidl, PopUidl.state)
                                 .where(PopUidl.account_id == account.id)).all())

    seen: set[str] = set()
    todo: list[tuple[int, str]] = []
    stored_still_on_server: list[int] = []
    for number, uidl in listing:
        if not uidl or uidl in seen:
            # A UIDL listed twice (broken server): fetch the first, never delete the others.
            continue
        seen.add(uidl)
        state = known.get(uidl)
        if state is None:
            todo.append((number, uidl))
        elif state == "stored":
            stored_still_on_server.append(number)

    if account.baseline_pending:
        # "From now on" whose baseline could not be read at creation: this is the first look.
        for _, uidl in todo:
            session.add(PopUidl(account_id=account.id, uidl=uidl, state="skipped",
                                reason="Already on the server when the account was added."))
        account.baseline_pending = False
        todo = []

    limit = int(pop_setting(config, "POP_MAX_MESSAGE_BYTES"))
    wanted: list[tuple[int, str]] = []
    for number, uidl in todo:
        size = sizes.get(number, 0)
        if size > limit:
            session.add(PopUidl(account_id=account.id, uidl=uidl, state="skipped", size=size,
                                reason=f"Over the size limit ({quota.human_bytes(size)} > "
                                       f"{quota.human_bytes(limit)}); left on the server."))
            result.skipped += 1
        else:
            wanted.append((number, uidl))

    batch = wanted[:max(1, account.batch_size)]
    result.left = len(wanted)
    mail_account = session.get(MailAccount, account.mail_account_id)
    recent = account.is_gmail_recent
    mine = own_addresses(session, owner.id) if recent else set()
    delete_mode = account.delete_from_server and not recent
    budget = float(pop_setting(config, "POP_BATCH_SECONDS"))
    base_fetched = sum(1 for state in known.values() if state == "stored")
    stored_numbers: list[int] = []
    quota_full = False
    quarantined: _Quarantine | None = None
    store = blobs.get_store(config["BLOB_DIR"])
    stored_rows: list[dict] = []  # ledger rows of stored messages, inserted in one statement

    if batch and not quota.has_room(session, owner.id, sizes.get(batch[0][0], 1)):
        quota_full = True
    try:
        for start in range(0, len(batch), CHUNK):
            if quota_full or quarantined is not None or time.monotonic() - started > budget:
                break
            chunk = batch[start:start + CHUNK]
            uidl_of = dict(chunk)
            received = list(pop.retrieve_many([n for n, _ in chunk]))
            _prestore_blobs(store, [raw for _, raw in received])
            for number, raw in received:
                if quota_full or quarantined is not None:
                    break
                try:
                    outcome = _store_one(session, account, mail_account, uidl_of[number], raw,
                                         recent, mine, limit, stored_rows)
                except _Quarantine as failure:
                    quarantined = failure
                    break
                if outcome == "quota":
                    quota_full = True
                    break
                result.left -= 1
                if outcome in ("stored", "sent"):
                    result.stored += 1
                    result.bytes += len(raw)
                    result.sent += outcome == "sent"
                    stored_numbers.append(number)
                else:
                    result.skipped += 1
            elapsed = max(time.monotonic() - started, 1e-6)
            _publish(result, base_fetched, result.stored / elapsed)
            if progress:
                progress(result)
    except pop3.PopError:
        # What was delivered before the failure is committed by the caller: with its ledger rows.
        if stored_rows:
            session.execute(insert(PopUidl), stored_rows)
        raise

    if quarantined is not None:
        # The failure may have left partial writes: drop this batch's work, record only the
        # quarantine (never retried on its own, never deleted from the server), and let the
        # next batch fetch the others again.
        session.rollback()
        session.add(PopUidl(account_id=account.id, uidl=quarantined.uidl, state="quarantined",
                            size=quarantined.size, reason=quarantined.reason[:500]))
        account.messages_quarantined += 1
        account.next_fetch_at = utcnow()
        session.commit()
        result.quarantined, result.stored, result.bytes, result.sent = 1, 0, 0, 0
        result.skipped = 0
        result.left = len(wanted) - 1
        result.status = "more" if result.left else "done"
        stored_numbers = []
        if delete_mode and stored_still_on_server:
            pop.delete_many(stored_still_on_server)
            result.deleted = len(stored_still_on_server)
        pop.quit()
        return

    if stored_rows:
        session.execute(insert(PopUidl), stored_rows)
    elapsed = max(time.monotonic() - started, 1e-6)
    now = utcnow()
    account.server_messages = result.on_server
    account.messages_fetched = base_fetched + result.stored
    account.messages_left = result.left
    account.messages_skipped += result.skipped
    account.messages_quarantined += result.quarantined
    if result.stored:
        rate = result.stored / elapsed
        account.rate_per_second = rate if not account.rate_per_second else (
            0.5 * account.rate_per_second + 0.5 * rate)
    account.last_fetch_at = account.last_success_at = now
    account.auth_failures = account.connection_failures = 0  # any success resets both
    account.last_error_kind, account.last_error = "", ""
    if quota_full:
        result.status = "paused"
        account.last_error_kind, account.last_error = "quota", (
            "Paused: your storage is full, so the rest of the mail stays on the server. It is "
            "fetched as soon as there is room: delete mail (and empty Trash) or ask your "
            "administrator for more space.")
    elif result.left > 0:
        result.status = "more"
        account.next_fetch_at = now
    else:
        account.next_fetch_at = now + timedelta(seconds=account.interval_seconds)
    # The commit that makes the batch durable: messages, ledger rows and counters together.
    session.commit()

    if delete_mode:
        doomed = stored_still_on_server + stored_numbers
        if doomed:
            pop.delete_many(doomed)
            result.deleted = len(doomed)
    pop.quit()  # DELEs take effect only now


def _prestore_blobs(store: blobs.LocalBlobStore, raws: list[bytes]) -> None:
    """Write a chunk's blobs in parallel, so their fsyncs overlap instead of queueing.

    deliver() then finds each blob present (put() is idempotent by hash) and only counts it.
    A blob left by a message that then fails (quota, quarantine) is an orphan the garbage
    collector removes; a failing store is reported by deliver() itself.
    """
    def put(raw: bytes) -> None:
        with contextlib.suppress(OSError):
            store.put(raw)

    with ThreadPoolExecutor(max_workers=PRESTORE_THREADS) as pool:
        list(pool.map(put, raws))


def _store_one(session, account: PopAccount, mail_account: MailAccount, uidl: str, raw: bytes,
               recent: bool, mine: set[str], limit: int, stored_rows: list[dict]) -> str:
    """Deliver one message with its ledger row: stored, sent, skipped or quota (or raise _Quarantine)."""
    folder_role = "inbox"
    if recent:
        envelope = parse_envelope(raw)
        if envelope.message_id and not envelope.message_id_substituted:
            # recent: lists the last 30 days again, and sent mail comes back as well.
            existing = session.scalar(select(Message.id).where(
                Message.user_id == account.user_id,
                Message.message_id == envelope.message_id[:998]).limit(1))
            if existing is not None:
                session.add(PopUidl(account_id=account.id, uidl=uidl, state="skipped",
                                    size=len(raw), message_pk=existing,
                                    reason="Same Message-ID as a message already stored."))
                return "skipped"
        sender = next((a.email.lower() for a in envelope.addresses if a.role == "from"), "")
        if sender and sender in mine:
            folder_role = "sent"
    # No savepoint per message: deliver() writes nothing before it raises QuotaExceededError
    # or MessageTooLargeError, and any other failure rolls the whole batch back (see below).
    try:
        delivered = deliver(session, mail_account, raw, uidl, folder_role=folder_role,
                            max_bytes=limit)
    except quota.QuotaExceededError:
        return "quota"
    except MessageTooLargeError as exc:
        session.add(PopUidl(account_id=account.id, uidl=uidl, state="skipped", size=len(raw),
                            reason=f"{exc} Left on the server."[:500]))
        return "skipped"
    except Exception as exc:  # noqa: BLE001 - one bad message must not stop the mailbox
        log.exception("pop account %s: quarantined %s", account.id, uidl)
        raise _Quarantine(uidl, len(raw), f"Could not be stored: {type(exc).__name__}: {exc}") from exc
    stored_rows.append({"account_id": account.id, "uidl": uidl, "state": "stored",
                        "size": len(raw), "reason": "",
                        "message_pk": delivered.message.id if delivered.message else None})
    return "sent" if folder_role == "sent" else "stored"
