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
import gc
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
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
from webapp.services import quota
from webapp.services.delivery import Incoming, deliver_many, wait_durable
from webapp.services.mime import parse_envelope
from webapp.services.pop_accounts import (FETCH_JOB, lock_key, mark_failure, own_addresses,
                                          pop_setting, progress_key, queued_key)
from webapp.services.secrets import SecretDecryptError, decrypt_secret
from worker import pop3

log = logging.getLogger("skydesk.fetch")

# One pipelined RETR round, delivered together: at most this many messages and bytes (by
# their LIST sizes), so memory stays bounded whatever the messages weigh. No round starts
# past the batch's time budget; progress is published after each round is stored.
CHUNK_MESSAGES = 100
CHUNK_BYTES = 8 * 1024 * 1024


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
    # The cyclic garbage collector's passes measured 6-9% of a first import (its full
    # passes walked every object of the app; `flask worker` now freezes those, but tests
    # and other callers of run_worker do not). A batch frees what it allocates by reference
    # counting; the few cycles it leaves wait for the end of the batch, which is bounded
    # in messages and time.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _run_locked(account, owner, progress)
    except BaseException:
        session.rollback()
        raise
    finally:
        if collecting:
            gc.enable()
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
    stored_rows: list[dict] = []  # ledger rows of stored messages, inserted in one statement

    if batch and not quota.has_room(session, owner.id, sizes.get(batch[0][0], 1)):
        quota_full = True
    by_message_id: dict[str, int | None] = {}  # recent: Message-IDs stored in this batch
    poisoned = False
    flushing: list = []  # the rounds' blob flushes, all done before the batch's commit
    rounds = _Prefetch(pop, [] if quota_full else list(_chunks(batch, sizes)),
                       deadline=started + budget)
    try:
        for received in rounds:
            entries = _prepare(session, account, received, recent, mine, by_message_id, result)
            try:
                outcomes = deliver_many(session, mail_account, [item for _, _, item in entries],
                                        max_bytes=limit, pending_syncs=flushing)
            except Exception as exc:  # noqa: BLE001 - a database error: find the message
                flushing.clear()  # rolled back below: what they flush is no longer referenced
                poison = _find_poison(session, mail_account, entries, limit, exc)
                # The rollback took this batch's work back: record only the quarantine, and
                # let the next batch fetch the others again (nothing is deleted now).
                session.add(PopUidl(account_id=account.id, uidl=poison.uidl, state="quarantined",
                                    size=poison.size, reason=poison.reason[:500]))
                account.messages_quarantined += 1
                account.next_fetch_at = utcnow()
                session.commit()
                result.quarantined, result.stored, result.bytes, result.sent = 1, 0, 0, 0
                result.skipped = 0
                result.left = len(wanted) - 1
                result.status = "more" if result.left else "done"
                poisoned = True
                break
            for (number, uidl, item), outcome in zip(entries, outcomes):
                if outcome.status == "quota":
                    quota_full = True
                    break
                result.left -= 1
                size = len(item.raw)
                if outcome.status in ("stored", "duplicate"):
                    stored_rows.append({"account_id": account.id, "uidl": uidl, "state": "stored",
                                        "size": size, "reason": "",
                                        "message_pk": outcome.message_pk})
                    result.stored += 1
                    result.bytes += size
                    result.sent += item.folder_role == "sent"
                    stored_numbers.append(number)
                    if recent and outcome.envelope and outcome.envelope.message_id:
                        by_message_id[outcome.envelope.message_id[:998]] = outcome.message_pk
                elif outcome.status == "too_large":
                    session.add(PopUidl(account_id=account.id, uidl=uidl, state="skipped",
                                        size=size,
                                        reason=f"{outcome.reason} Left on the server."[:500]))
                    result.skipped += 1
                else:  # failed: quarantined, never retried on its own, never deleted
                    log.warning("pop account %s: quarantined %s: %s", account.id, uidl,
                                outcome.reason)
                    session.add(PopUidl(account_id=account.id, uidl=uidl, state="quarantined",
                                        size=size, reason=_stored_failure(outcome.error)[:500]))
                    result.quarantined += 1
            elapsed = max(time.monotonic() - started, 1e-6)
            _publish(result, base_fetched, result.stored / elapsed)
            if progress:
                progress(result)
            if quota_full:
                break
    except pop3.PopError:
        # What was delivered before the failure is committed by the caller: with its ledger rows.
        rounds.close()
        wait_durable(flushing)
        if stored_rows:
            session.execute(insert(PopUidl.__table__), stored_rows)
        raise
    finally:
        rounds.close()  # the connection is in sync again (a round being read is read whole)
    if poisoned:
        pop.quit()
        return

    if stored_rows:
        session.execute(insert(PopUidl.__table__), stored_rows)
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
    # The commit that makes the batch durable: messages, ledger rows and counters together,
    # after the bytes they reference.
    wait_durable(flushing)
    session.commit()

    if delete_mode:
        doomed = stored_still_on_server + stored_numbers
        if doomed:
            pop.delete_many(doomed)
            result.deleted = len(doomed)
    pop.quit()  # DELEs take effect only now


class _Prefetch:
    """The RETR rounds of a batch, read by a thread one round ahead of the one being stored.

    While a round's messages are written and committed, the next round crosses the
    network, so the server's and the disk's time overlap instead of adding up. Iterating
    yields each round as ``[(number, uidl, raw), …]`` and raises the reader's error (a
    PopError) in its place. ``close()`` stops the reader after the round it is reading,
    which it reads whole, so the connection is in sync for DELE and QUIT; at most two
    rounds are held in memory besides the one being stored.
    """

    def __init__(self, pop: pop3.PopSession, chunks: list[list[tuple[int, str]]],
                 deadline: float):
        self._rounds: queue.Queue = queue.Queue(maxsize=1)
        self._stopped = threading.Event()
        self._deadline = deadline
        self._thread = threading.Thread(target=self._read, args=(pop, chunks), daemon=True,
                                        name="pop-prefetch")
        self._thread.start()

    def _read(self, pop: pop3.PopSession, chunks: list[list[tuple[int, str]]]) -> None:
        try:
            for chunk in chunks:
                # Past the batch's time budget no new round starts: the rest is the next batch's.
                if self._stopped.is_set() or time.monotonic() > self._deadline:
                    break
                uidl_of = dict(chunk)
                received = [(number, uidl_of[number], raw)
                            for number, raw in pop.retrieve_many([n for n, _ in chunk])]
                self._hand_over(received)
        except BaseException as exc:  # noqa: BLE001 - raised in the storing thread
            self._hand_over(exc)
            return
        self._hand_over(None)

    def _hand_over(self, item) -> None:
        while not self._stopped.is_set():
            try:
                self._rounds.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def __iter__(self):
        while True:
            item = self._rounds.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stopped.set()
        self._thread.join()


def _chunks(batch: list[tuple[int, str]], sizes: dict[int, int]):
    """Split a batch into RETR rounds of at most CHUNK_MESSAGES messages and CHUNK_BYTES bytes."""
    chunk: list[tuple[int, str]] = []
    weight = 0
    for number, uidl in batch:
        size = sizes.get(number, 0)
        if chunk and (len(chunk) >= CHUNK_MESSAGES or weight + size > CHUNK_BYTES):
            yield chunk
            chunk, weight = [], 0
        chunk.append((number, uidl))
        weight += size
    if chunk:
        yield chunk


def _prepare(session, account: PopAccount, received: list[tuple[int, str, bytes]], recent: bool,
             mine: set[str], by_message_id: dict[str, int | None],
             result: BatchResult) -> list[tuple[int, str, Incoming]]:
    """What to deliver of a chunk, and where.

    recent: lists the last 30 days again, and the user's sent mail comes back as well: a
    Message-ID already stored (before or earlier in this batch) is skipped with a ledger
    row, and mail from one of the user's own addresses goes to Sent.
    """
    if not recent:
        return [(number, uidl, Incoming(raw, uidl)) for number, uidl, raw in received]
    envelopes = [parse_envelope(raw) for _, _, raw in received]
    ids = {e.message_id[:998] for e in envelopes if e.message_id and not e.message_id_substituted}
    if ids:
        by_message_id.update(session.execute(select(Message.message_id, Message.id).where(
            Message.user_id == account.user_id, Message.message_id.in_(ids))).all())
    entries = []
    for (number, uidl, raw), envelope in zip(received, envelopes):
        message_id = envelope.message_id[:998]
        if envelope.message_id and not envelope.message_id_substituted:
            if message_id in by_message_id:
                session.add(PopUidl(account_id=account.id, uidl=uidl, state="skipped",
                                    size=len(raw), message_pk=by_message_id[message_id],
                                    reason="Same Message-ID as a message already stored."))
                result.skipped += 1
                result.left -= 1
                continue
            by_message_id[message_id] = None  # a later copy in this chunk is skipped too
        sender = next((a.email.lower() for a in envelope.addresses if a.role == "from"), "")
        role = "sent" if sender and sender in mine else "inbox"
        entries.append((number, uidl, Incoming(raw, uidl, folder_role=role, envelope=envelope)))
    return entries


def _stored_failure(error: BaseException | None) -> str:
    return f"Could not be stored: {type(error).__name__}: {error}"


def _find_poison(session, mail_account: MailAccount, entries: list[tuple[int, str, Incoming]],
                 limit: int, error: Exception) -> _Quarantine:
    """After a database error in a chunk: the message that fails on its own, or re-raise.

    The batch is rolled back (nothing of it was deleted from the server, and the next batch
    fetches it again); each message of the chunk is then tried alone and rolled back, and
    the first that fails is the one to quarantine. When none fails alone, the error was not
    a message's: it is raised, and the job is retried at the account's next turn.
    """
    session.rollback()
    for _number, uidl, item in entries:
        try:
            deliver_many(session, mail_account, [item], max_bytes=limit)
        except Exception as exc:  # noqa: BLE001 - this is the message that cannot be stored
            session.rollback()
            log.exception("pop account %s: quarantined %s", mail_account.id, uidl)
            return _Quarantine(uidl, len(item.raw), _stored_failure(exc))
        session.rollback()
    raise error
