"""The send job: outgoing messages, their exact bytes, over the identity's transport.

States: queued → sending → sent; sending → retry-wait → sending … → sent | failed;
sending → uncertain; queued | retry-wait → cancelled (by the user). The Message-ID and
the bytes never change across attempts; a retry goes only to recipients still pending.

One job sends its own message, then keeps taking the other due messages of the same
transport (the organization's relay, or one Send Mail As SMTP server) in groups of
`BATCH_SIZE`, over the same SMTP sessions (two at once), until none are due or
`BATCH_SECONDS` have passed. Each group is claimed (a lease) and counted against the
daily limits in one commit before a byte of it leaves; each message's outcome (who
accepted, who refused, its state) is committed right after its SMTP reply. The jobs of
messages a batch already sent find them not due and return at once.

The SMTP exchanges run on threads of their own (`_SmtpPipeline`, one per session, messages
taking turns) while the job's thread commits outcomes: the next messages' MAIL, RCPT,
DATA and body go out during the commit of the one before, and only their end of DATA (the
line that ends the body) waits for it, whichever session they use. So no more than one
message is ever between its end of DATA and its recorded outcome, as when sending one at
a time. A server that refuses a second session gets one at a time.
An outcome's commit does not wait for the disk (webapp.durability): a killed worker loses
nothing; a power cut can take back the outcomes since the last synced commit (each
group's claim is one), and those messages are then sent again like any claimed by a dead
worker (Postfix's delivery agents make the same choice).

Policy for the RFC 1047 window (the connection is lost after the end of DATA went out and
before the server's reply came back): the server may well have accepted the message, and
resending would deliver a second copy to everyone. We do NOT resend automatically: the
message becomes "uncertain", the Outbox says "may have been sent" and offers "Send again",
which resends (same Message-ID, so receivers that de-duplicate can) only when the user
decides to. The window is one round trip long, so this costs a click rarely and never
duplicates mail on its own.

A worker killed while holding a claim (state "sending") leaves a lease that expires;
`sweep()` then sends the message again to the recipients not yet recorded as accepted.
The claim is committed before the SMTP session starts, so a crash before DATA resends
exactly once; a crash inside the RFC 1047 window itself (one round trip) may duplicate,
with the same Message-ID.

Sent copies are filed after each group, one `deliver_many` per account. Until then a sent
message keeps its lease: a message that is no longer "sending" but still has a lease is
owed its Sent copy, is not claimed again (a retry of its deferred recipients waits), and
once the lease runs out (the worker died) `sweep()` files it.

SMTP sessions are reused within a worker process (keyed by transport, closed after
`IDLE_SECONDS` unused): connecting, STARTTLS and AUTH cost more than sending a message.
"""
from __future__ import annotations

import atexit
import dataclasses
import hashlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta

from flask import current_app
from redis.exceptions import RedisError
from sqlalchemy import bindparam, case, exists, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from webapp import durability
from webapp.extensions import db
from webapp.models import MailAccount, User
from webapp.models._types import utcnow
from webapp.models.sending import OutgoingMessage, OutgoingRecipient, SendIdentity
from webapp.services import blobs, outbox, sendas
from webapp.services.delivery import Incoming, deliver_many
from webapp.services.mime import Envelope, envelope_from_json
from worker.smtp import EndOfDataWithheld, SendOutcome, SmtpConnection, SmtpError

log = logging.getLogger("skydesk.send")

# Backoff between attempts after a temporary failure; the last delay is reused. Bounded
# by MAX_ATTEMPTS and LIFETIME, whichever comes first.
RETRY_DELAYS = (60, 300, 900, 3600, 4 * 3600)
MAX_ATTEMPTS = 6
LIFETIME = timedelta(hours=24)
LEASE = timedelta(seconds=outbox.SEND_JOB_TIMEOUT + 60)
# More claims than this without a recorded outcome means the message crashes workers.
CRASH_LIMIT = MAX_ATTEMPTS + 3
SWEEP_KEY = "skydesk:outbox:sweep-scheduled"
SWEEP_INTERVAL = timedelta(seconds=60)
IDLE_SECONDS = 20.0
_RETRYABLE = ("temporary", "connect", "timeout")
# A batch claims this many messages at a time: one statement, one commit for the group.
BATCH_SIZE = 200
# A batch claims no new group after this long; a group still being sent this long after
# the job began gives its unsent messages back. Both well inside the job timeout (whose
# end raises in the middle of a message) and the lease (so no claim outlives its job).
BATCH_SECONDS = outbox.SEND_JOB_TIMEOUT // 3
GROUP_DEADLINE_SECONDS = outbox.SEND_JOB_TIMEOUT * 3 // 4
# Errors of the session rather than of one message: the rest of the group would meet the
# same, so the batch stops and gives them back to their own jobs.
_TRANSPORT_ERRORS = ("connect", "timeout", "auth", "tls", "cert_invalid")
# Bytes of sent messages a group holds for their Sent copies; beyond, they are read again.
OWED_BYTES = 64 * 1024 * 1024
# Owed Sent copies filed per sweep (the rest at the next one).
SWEEP_COPIES = 500

# How long a sending session waits for each reply of the server.
REPLY_SECONDS = 60.0

_OUTGOING = OutgoingMessage.__table__
_RECIPIENT = OutgoingRecipient.__table__
_USER = User.__table__

# (transport key, slot) → (open session, last use on the monotonic clock)
_connections: dict[tuple, tuple[SmtpConnection, float]] = {}


def close_cached_connections() -> None:
    """QUIT and close every SMTP session this process keeps for reuse."""
    while _connections:
        _key, (connection, _used) = _connections.popitem()
        connection.close()


atexit.register(close_cached_connections)


def _close_idle(now: float) -> None:
    for key, (connection, used) in list(_connections.items()):
        if now - used > IDLE_SECONDS or not connection.is_open:
            # pop, not del: a sending thread a timed-out job left behind may take it first.
            if _connections.pop(key, None) is not None:
                connection.close()


class _Transport:
    """Where and how to send one message: host, port, security, login, and a cache key."""

    def __init__(self, host: str, port: int, security: str, username: str, password: str):
        self.host, self.port, self.security = host, port, security
        self.username, self.password = username, password
        # The password's hash only: the key must not keep a second plaintext copy around.
        self.key = (host, port, security, username,
                    hashlib.sha256(password.encode()).hexdigest())
        # Read here, on the job's thread: the session may be opened on the sending thread.
        self.ca_bundle = current_app.config.get("MAIL_CA_BUNDLE")

    def connect(self, timeout: float = REPLY_SECONDS) -> SmtpConnection:
        """A new signed-in SMTP session (`timeout`: for each step of opening it; each reply
        after that gets REPLY_SECONDS)."""
        connection = SmtpConnection(self.host, self.port, security=self.security,
                                    username=self.username or None,
                                    password=self.password or None, timeout=timeout,
                                    ca_bundle=self.ca_bundle)
        connection.open()
        connection.set_timeout(REPLY_SECONDS)
        return connection


def _send_over(transport: _Transport, envelope_from: str, recipients: list[str],
               raw: bytes, before_end_of_data: Callable[[], None] | None = None,
               slot: int = 0) -> SendOutcome:
    """Send through a cached session if one is open, else a new one; keep it for the next.

    `before_end_of_data` runs after the server's 354 and the body, before the end of DATA
    (it may withhold it: see SmtpConnection.send). `slot` tells apart the sessions one job
    keeps open to the same server at once (see _SmtpPipeline).
    """
    now = time.monotonic()
    _close_idle(now)
    key = (*transport.key, slot)
    cached = _connections.pop(key, None)
    if cached is not None:
        connection = cached[0]
        try:
            outcome = connection.send(envelope_from, recipients, raw, before_end_of_data)
        except SmtpError as error:
            if error.kind != "connect":
                _keep(key, connection)
                raise
            # The server closed the idle session before MAIL FROM went through, or during
            # DATA before its end (SmtpConnection.send): nothing of this message was
            # delivered, so a fresh session is safe.
            connection.close()
        else:
            _keep(key, connection)
            return outcome
    connection = transport.connect()
    try:
        outcome = connection.send(envelope_from, recipients, raw, before_end_of_data)
    except SmtpError:
        _keep(key, connection)
        raise
    _keep(key, connection)
    return outcome


def _keep(key: tuple, connection: SmtpConnection) -> None:
    if connection.is_open:
        _connections[key] = (connection, time.monotonic())
    else:
        connection.close()


@dataclasses.dataclass(frozen=True)
class _Lane:
    """The messages that share one transport: an org's relay, or one Send Mail As server."""

    transport: str
    org_id: int
    identity_id: int | None

    def where(self):
        """The condition selecting this lane's messages."""
        c = _OUTGOING.c
        if self.transport == "smtp":
            return (c.transport == "smtp") & (c.identity_id == self.identity_id)
        return (c.transport == "relay") & (c.org_id == self.org_id)


def _transport_for(session: Session, lane: _Lane
                   ) -> tuple[_Transport | None, outbox.RelaySettings | None, str]:
    """The transport of this lane (and the relay settings when it is the relay), or why not."""
    if lane.transport == "smtp":
        identity = session.get(SendIdentity, lane.identity_id) if lane.identity_id else None
        if identity is None or identity.transport != "smtp":
            # The custom server was removed since queueing: the relay is the only way left,
            # and the From address may not be allowed through it; say so.
            return None, None, ("The SMTP server set for this address was removed. Choose a "
                                "transport in Settings » Send Mail As, then press Retry.")
        return _Transport(identity.smtp_host, identity.smtp_port, identity.smtp_security,
                          identity.smtp_username, sendas.smtp_password(identity)), None, ""
    relay = outbox.relay_settings(session, lane.org_id)
    if not relay.configured:
        return None, relay, ("The organization's outgoing relay is not set up. Ask your "
                             "administrator to configure it (Admin » Relay & limits).")
    return _Transport(relay.host, relay.port, relay.security, relay.username,
                      relay.password), relay, ""


def _due():
    """Queued or waiting and due (a few seconds early is fine), or claimed by a dead worker.

    Bound as ``b_now`` and ``b_soon`` (now, and now plus those few seconds). A message
    that still owes its Sent copy from an earlier attempt (its lease outlived "sending")
    waits until the copy is filed: a new claim would overwrite the lease that says so.
    """
    c = _OUTGOING.c
    return or_(c.state.in_(("queued", "retry-wait")) & c.lease_until.is_(None)
               & or_(c.next_attempt_at.is_(None), c.next_attempt_at <= bindparam("b_soon")),
               (c.state == "sending") & (c.lease_until < bindparam("b_now")))


def _due_at(now: datetime) -> dict:
    return {"b_now": now, "b_soon": now + timedelta(seconds=5), "b_lease": now + LEASE}


_CLAIMED = {"state": "sending", "lease_until": bindparam("b_lease"),
            "attempts": _OUTGOING.c.attempts + 1}
# One statement takes the message, only if it is due and its user may send, and says whose
# transport it needs; a job whose message a batch already sent costs this and one query.
_CLAIM_ONE = (update(_OUTGOING)
              .where(_OUTGOING.c.id == bindparam("b_id"), _due(),
                     or_(_OUTGOING.c.user_id.is_(None),
                         exists().where(_USER.c.id == _OUTGOING.c.user_id,
                                        _USER.c.is_disabled.is_(False))))
              .values(_CLAIMED)
              .returning(_OUTGOING.c.org_id, _OUTGOING.c.transport, _OUTGOING.c.identity_id))


def _claim(session: Session, outgoing_id: int, now: datetime):
    """Take the message for this worker: one conditional UPDATE, so two jobs never both send.

    Returns (org_id, transport, identity_id) if it was taken, else None.
    """
    return session.connection().execute(_CLAIM_ONE, {"b_id": outgoing_id, **_due_at(now)}
                                        ).first()


def _claim_group(session: Session, lane: _Lane, now: datetime) -> list[int]:
    """Take up to BATCH_SIZE more due messages of the lane, oldest first: one UPDATE … RETURNING.

    Messages of a disabled user wait (their own job does nothing either).
    """
    c = _OUTGOING.c
    connection = session.connection()
    candidates = (select(c.id).select_from(_OUTGOING.outerjoin(_USER, _USER.c.id == c.user_id))
                  .where(lane.where(), _due(),
                         or_(c.user_id.is_(None), _USER.c.is_disabled.is_(False)))
                  .order_by(c.id).limit(BATCH_SIZE))
    if connection.dialect.name == "postgresql":
        # Concurrent batches on one lane split the queue instead of queueing on row locks.
        candidates = candidates.with_for_update(of=_OUTGOING, skip_locked=True)
    # The conditions again on the UPDATE: a row another worker took meanwhile is skipped.
    return sorted(connection.scalars(
        update(_OUTGOING).where(c.id.in_(candidates.scalar_subquery()), _due())
        .values(_CLAIMED).returning(c.id), _due_at(now)))


@dataclasses.dataclass
class _Recipient:
    """One envelope recipient of a claimed message, and whether this attempt changed it."""

    id: int
    address: str
    state: str
    code: int | None
    text: str
    updated_at: datetime | None = None
    changed: bool = False

    def set(self, state: str, code: int | None, text: str, now: datetime) -> None:
        """Record the server's answer for this recipient."""
        self.state, self.code, self.text, self.updated_at = state, code, text[:2000], now
        self.changed = True


@dataclasses.dataclass
class _Claimed:
    """One claimed message as loaded for sending, and what its attempt makes of it.

    Plain values, written back with Core statements: ORM objects cost more per message
    than the SMTP transaction does.
    """

    id: int
    org_id: int
    user_id: int | None
    blob_sha256: str
    envelope_from: str
    from_email: str
    file_in_sent: bool
    counted: bool
    attempts: int
    created_at: datetime
    sent_at: datetime | None
    sent_message_pk: int | None
    state: str
    last_error_kind: str
    last_error_code: int | None
    last_error_text: str
    last_error_message: str
    next_attempt_at: datetime | None
    lease_until: datetime | None
    sent_envelope: dict | None
    recipients: list[_Recipient] = dataclasses.field(default_factory=list)
    # The _WRITTEN values as the database has them: _write sends only what differs.
    stored: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def owes_sent_copy(self) -> bool:
        """Whether this message, once accepted by someone, still needs its copy in Sent."""
        return self.file_in_sent and self.user_id is not None and not self.sent_message_pk


_CLAIMED_COLUMNS = [_OUTGOING.c[f.name] for f in dataclasses.fields(_Claimed)
                    if f.name not in ("recipients", "stored")]
_WRITTEN = ("state", "last_error_kind", "last_error_code", "last_error_text",
            "last_error_message", "next_attempt_at", "lease_until", "sent_at")


def _load(session: Session, ids: list[int], with_recipients: bool = True) -> list[_Claimed]:
    """The messages with these ids (and their recipients), in id order: two queries."""
    connection = session.connection()
    rows = [_Claimed(*row) for row in connection.execute(
        select(*_CLAIMED_COLUMNS).where(_OUTGOING.c.id.in_(ids)).order_by(_OUTGOING.c.id))]
    for row in rows:
        row.stored = {name: getattr(row, name) for name in _WRITTEN}
    if with_recipients and rows:
        by_id = {row.id: row for row in rows}
        r = _RECIPIENT.c
        for outgoing_id, *values in connection.execute(
                select(r.outgoing_id, r.id, r.address, r.state, r.code, r.text)
                .where(r.outgoing_id.in_(ids)).order_by(r.id)):
            by_id[outgoing_id].recipients.append(_Recipient(*values))
    return rows


_UNSET = object()
# Built once: per message, building and keying a statement costs more than running it.
_SAVE_RECIPIENTS = update(_RECIPIENT).where(_RECIPIENT.c.id == bindparam("b_id"))
_SAVE_OUTGOING = update(_OUTGOING).where(_OUTGOING.c.id == bindparam("b_id"))
# PostgreSQL: one recipient's UPDATE rides in the message's as a data-modifying WITH (run
# whether or not the outer statement reads it): one round trip instead of two per outcome.
_SAVE_OUTGOING_AND_RECIPIENT = _SAVE_OUTGOING.add_cte(
    update(_RECIPIENT).where(_RECIPIENT.c.id == bindparam("r_id"))
    .values(state=bindparam("r_state"), code=bindparam("r_code"), text=bindparam("r_text"),
            updated_at=bindparam("r_updated_at"))
    .returning(_RECIPIENT.c.id).cte("saved_recipient"))


def _write(connection: Connection, row: _Claimed) -> None:
    """Write what the attempt made of the message and its recipients (the caller commits).

    Only what changed, and one recipient without executemany: per outcome, SQLAlchemy's
    work on parameters costs more than SQLite's on the rows. On PostgreSQL one changed
    recipient goes in the message's statement (a round trip costs more than either). (A
    rollback after this leaves `stored` ahead of the database; the rows are written again
    only by _write_failure, which writes every column it sets.)
    """
    changed = [r for r in row.recipients if r.changed]
    values = {name: value for name in _WRITTEN
              if (value := getattr(row, name)) != row.stored.get(name, _UNSET)}
    if len(changed) == 1 and values and connection.dialect.name == "postgresql":
        [recipient] = changed
        connection.execute(_SAVE_OUTGOING_AND_RECIPIENT, {
            "b_id": row.id, **values, "r_id": recipient.id, "r_state": recipient.state,
            "r_code": recipient.code, "r_text": recipient.text,
            "r_updated_at": recipient.updated_at})
    else:
        if changed:
            recipients = [{"b_id": r.id, "state": r.state, "code": r.code, "text": r.text,
                           "updated_at": r.updated_at} for r in changed]
            connection.execute(_SAVE_RECIPIENTS,
                               recipients[0] if len(recipients) == 1 else recipients)
        if values:
            connection.execute(_SAVE_OUTGOING, {"b_id": row.id, **values})
    for recipient in changed:
        recipient.changed = False
    row.stored.update(values)


def _write_failure(connection: Connection, outgoing_id: int, kind: str, message: str,
                   server_text: str = "", state: str = "failed") -> None:
    """Record a failure on a message not loaded (after a rollback); the caller commits."""
    connection.execute(
        update(_OUTGOING).where(_OUTGOING.c.id == outgoing_id)
        .values(state=state, last_error_kind=kind, last_error_code=None,
                last_error_text=server_text[:4000], last_error_message=message[:4000],
                next_attempt_at=None, lease_until=None))


def _fail(outgoing: _Claimed, kind: str, message: str, code: int | None = None,
          server_text: str = "", state: str = "failed") -> None:
    outgoing.state = state
    outgoing.last_error_kind = kind
    outgoing.last_error_code = code
    outgoing.last_error_text = server_text[:4000]
    outgoing.last_error_message = message[:4000]
    outgoing.next_attempt_at = None
    outgoing.lease_until = None


def _record_refusals(outgoing: _Claimed, refused: dict) -> None:
    by_address = {r.address.lower(): r for r in outgoing.recipients}
    now = utcnow()
    for address, refusal in refused.items():
        row = by_address.get(address.lower())
        if row is not None:
            row.set("deferred" if refusal.temporary else "refused", refusal.code, refusal.text,
                    now)


def _schedule_retry(outgoing: _Claimed, error_kind: str, message: str,
                    code: int | None, server_text: str, now: datetime) -> datetime | None:
    """retry-wait with backoff, or failed once the attempts or the lifetime are used up."""
    if outgoing.attempts >= MAX_ATTEMPTS or now - outgoing.created_at >= LIFETIME:
        _fail(outgoing, error_kind,
              f"Gave up after {outgoing.attempts} attempts: {message}", code, server_text)
        return None
    delay = RETRY_DELAYS[min(outgoing.attempts - 1, len(RETRY_DELAYS) - 1)]
    when = now + timedelta(seconds=delay)
    _fail(outgoing, error_kind, message, code, server_text, state="retry-wait")
    outgoing.next_attempt_at = when
    return when


def _apply_outcome(outgoing: _Claimed, outcome: SendOutcome, now: datetime) -> datetime | None:
    """Record who got it; retry only those refused for now. Returns the retry time, if any.

    A message that owes its Sent copy keeps its lease until the copy is filed.
    """
    lease = outgoing.lease_until
    by_address = {r.address.lower(): r for r in outgoing.recipients}
    for address in outcome.accepted:
        row = by_address.get(address.lower())
        if row is not None:
            row.set("accepted", outcome.reply_code, outcome.reply_text, now)
    _record_refusals(outgoing, outcome.refused)
    outgoing.sent_at = outgoing.sent_at or now
    retry_at = None
    if outcome.temporarily_refused:
        first = outcome.refused[outcome.temporarily_refused[0]]
        retry_at = _schedule_retry(
            outgoing, "temporary",
            f"Sent to {len(outcome.accepted)} recipient(s); {len(outcome.temporarily_refused)} "
            f"will be retried (the server said: {first.code} {first.text}).",
            first.code, first.text, now)
    else:
        outgoing.state = "sent"
        outgoing.next_attempt_at = outgoing.lease_until = None
        refused = [r for r in outgoing.recipients if r.state == "refused"]
        if refused:
            # Over all attempts: the final word names everyone who will never get it.
            first = refused[0]
            outgoing.last_error_kind = "rejected"
            outgoing.last_error_code = first.code
            outgoing.last_error_text = first.text[:4000]
            outgoing.last_error_message = (
                f"Not delivered to {', '.join(r.address for r in refused)} "
                f"(the server said: {first.code} {first.text}).")[:4000]
        else:
            outgoing.last_error_kind = ""
            if not outgoing.last_error_message.startswith("Sent, but"):
                outgoing.last_error_message = ""
    if outgoing.owes_sent_copy:
        outgoing.lease_until = lease
    return retry_at


def _apply_error(outgoing: _Claimed, error: SmtpError, now: datetime) -> datetime | None:
    """Classify a failed attempt into retry-wait, failed or uncertain."""
    if error.refused:
        _record_refusals(outgoing, error.refused)
    if error.kind == "uncertain":
        _fail(outgoing, "uncertain", error.user_message, error.code, error.server_text,
              state="uncertain")
        return None
    temporary_recipients = any(r.temporary for r in error.refused.values())
    if error.kind in _RETRYABLE or temporary_recipients:
        return _schedule_retry(outgoing, error.kind, error.user_message, error.code,
                               error.server_text, now)
    _fail(outgoing, error.kind, error.user_message, error.code, error.server_text)
    return None


def _enqueue_retry(outgoing_id: int, when: datetime) -> None:
    from webapp.queue import get_queue

    get_queue(outbox.SEND_QUEUE).enqueue_at(when, outbox.SEND_JOB, outgoing_id,
                                            job_timeout=outbox.SEND_JOB_TIMEOUT)


_sweep_checked_at = -1e9


def _ensure_sweep_scheduled() -> None:
    """Keep a sweep job scheduled (at most one per interval, by a Redis key with a TTL).

    Checked at most every few seconds per process: a Redis round trip per message would
    cost more than the check is worth.
    """
    global _sweep_checked_at
    from webapp.queue import get_queue, get_redis

    now = time.monotonic()
    if now - _sweep_checked_at < 5:
        return
    _sweep_checked_at = now
    seconds = int(SWEEP_INTERVAL.total_seconds())
    if get_redis().set(SWEEP_KEY, 1, nx=True, ex=max(seconds - 5, 1)):
        get_queue(outbox.SEND_QUEUE).enqueue_in(SWEEP_INTERVAL, "worker.jobs.send.sweep")


# --- Sent copies ------------------------------------------------------------------------


def _sent_copy_account(session: Session, user_id: int, from_email: str,
                       cache: dict[tuple[int, str], MailAccount]) -> MailAccount:
    """The POP account whose address is the From address, else the user's hosted account."""
    key = (user_id, from_email)
    if key not in cache:
        matching = session.scalar(select(MailAccount).where(
            MailAccount.user_id == user_id, MailAccount.kind == "pop",
            MailAccount.email == from_email))
        cache[key] = matching or outbox.hosted_account(session, user_id)
    return cache[key]


def _kept_envelope(row: _Claimed) -> Envelope | None:
    """The envelope read when the message was queued; None (deliver parses the bytes) for a
    row queued before it was kept, or one that cannot be read back."""
    if not row.sent_envelope:
        return None
    try:
        return envelope_from_json(row.sent_envelope)
    except (TypeError, ValueError, AttributeError) as error:
        log.warning("outgoing %s: kept envelope unreadable, parsing the bytes: %s", row.id, error)
        return None


def _file_sent_copies(session: Session, owed: list[tuple[_Claimed, bytes | Exception]],
                      accounts: dict[tuple[int, str], MailAccount] | None = None) -> None:
    """File the exact bytes sent in Sent, one deliver_many per account; the caller commits.

    Each message then gives up its lease (unless it is being sent again right now), and a
    message that is sent for good hands the outbox's reference to its bytes over to its
    copy in Sent, or drops it when no copy can be kept. A copy found filed already (another
    worker filed it meanwhile) counts nothing and drops nothing: that worker settled the
    reference, by the state it saw. A full mailbox must not turn a sent message into a failure: the copy is then
    given up, and the Outbox says so. A database error (say, another worker filing the
    same copy at once) leaves the copy owed, for the sweep.
    """
    accounts = {} if accounts is None else accounts
    by_account: dict[int, tuple[MailAccount, list[tuple[_Claimed, bytes]]]] = {}
    filed: list[dict] = []
    given_up: list[dict] = []
    for row, raw in owed:
        if isinstance(raw, Exception):
            given_up.append({"b_id": row.id, "b_note": str(raw)})
            continue
        try:
            account = _sent_copy_account(session, row.user_id, row.from_email, accounts)
        except LookupError as error:
            given_up.append({"b_id": row.id, "b_note": str(error)})
            continue
        by_account.setdefault(account.id, (account, []))[1].append((row, raw))
    for account, entries in by_account.values():
        try:
            with session.begin_nested():
                # No filters: they sort incoming mail, and a "To contains …" rule must not
                # move the user's own sent copy out of Sent.
                outcomes = deliver_many(
                    session, account,
                    # The bytes are the outbox blob's, durable and referenced since queueing.
                    [Incoming(raw, f"sent:{row.id}", "sent", True, sha256=row.blob_sha256,
                              envelope=_kept_envelope(row),
                              # Sent for good: the outbox needs its bytes no more.
                              takes_reference=row.state == "sent")
                     for row, raw in entries],
                    run_filters=False)
        except SQLAlchemyError as error:
            log.warning("Sent copies of %s not filed yet: %s", [r.id for r, _ in entries], error)
            continue
        except Exception as error:  # noqa: BLE001 - the messages are out either way
            outcomes = [error] * len(entries)
        for (row, _raw), outcome in zip(entries, outcomes):
            if isinstance(outcome, Exception):
                given_up.append({"b_id": row.id, "b_note": str(outcome)})
            elif outcome.message_pk is None:
                given_up.append({"b_id": row.id, "b_note": outcome.reason})
            else:
                filed.append({"b_id": row.id, "b_pk": outcome.message_pk})
    c = _OUTGOING.c
    # A message claimed again meanwhile keeps the lease of its new claim.
    lease = case((c.state == "sending", c.lease_until), else_=None)
    connection = session.connection()
    if filed:
        # The kept envelope has served its one use.
        connection.execute(update(_OUTGOING).where(c.id == bindparam("b_id"))
                           .values(sent_message_pk=bindparam("b_pk"), lease_until=lease,
                                   sent_envelope=None), filed)
    if given_up:
        for entry in given_up:
            log.warning("outgoing %s sent but not filed in Sent: %s", entry["b_id"],
                        entry["b_note"])
            entry["b_note"] = f"Sent, but no copy could be kept in Sent: {entry['b_note']}"[:4000]
        # The words stay only where nothing more important is said (a retry, a refusal).
        connection.execute(
            update(_OUTGOING).where(c.id == bindparam("b_id"))
            .values(lease_until=lease, last_error_message=case(
                ((c.state == "sent") & (c.last_error_kind == ""), bindparam("b_note")),
                else_=c.last_error_message)), given_up)
    # Sent for good and no copy kept: nothing needs the bytes any more.
    gone = {entry["b_id"] for entry in given_up}
    blobs.drop_references(session, [row.blob_sha256 for row, _raw in owed
                                    if row.id in gone and row.state == "sent"])


def _bytes_or_error(store: blobs.LocalBlobStore, sha256: str) -> bytes | Exception:
    """A sent message's bytes for its Sent copy, or why they cannot be read (the copy is
    then given up, and the Outbox says so)."""
    try:
        return store.get(sha256)
    except Exception as error:  # noqa: BLE001 - sent all the same
        return error


def recover_sent_copies(session: Session, now: datetime | None = None) -> list[int]:
    """File the Sent copies owed by workers that died (lease run out); return their ids."""
    now = now or utcnow()
    c = _OUTGOING.c
    owed_ids = (select(c.id).where(c.state != "sending", c.lease_until < now)
                .order_by(c.id).limit(SWEEP_COPIES))
    if session.connection().dialect.name == "postgresql":
        # Two sweeps at once (a slow one and the next) must not both file a copy and both
        # settle its reference: the second skips the rows the first holds until it commits,
        # and then finds them filed. (SQLite has one writer at a time.)
        owed_ids = owed_ids.with_for_update(skip_locked=True)
    ids = list(session.connection().scalars(owed_ids))
    if not ids:
        return []
    store = blobs.get_store(current_app.config["BLOB_DIR"])
    owed: list[tuple[_Claimed, bytes | Exception]] = []
    settled: list[int] = []
    for row in _load(session, ids, with_recipients=False):
        if not row.owes_sent_copy or row.sent_at is None:
            settled.append(row.id)
            continue
        owed.append((row, _bytes_or_error(store, row.blob_sha256)))
    _file_sent_copies(session, owed)
    if settled:
        # A lease outside "sending" that owes no copy has nothing left to guard.
        session.connection().execute(
            update(_OUTGOING).where(c.id.in_(settled), c.state != "sending",
                                    c.lease_until < now)
            .values(lease_until=None))
    session.commit()
    return [row.id for row, _raw in owed]


# --- the job ----------------------------------------------------------------------------


# transport key → until when (monotonic) its server gets one session at a time: it would
# not open a second one (some servers allow one connection per client).
_one_session_until: dict[tuple, float] = {}
ONE_SESSION_SECONDS = 3600.0
# A further session not open within this (a server that queues a second connection
# instead of refusing it) is given up, and the server gets one session at a time.
FURTHER_SESSION_SECONDS = 15.0


class _SmtpPipeline:
    """The SMTP side of a group, on threads of their own, while the job's thread records.

    Messages are put in order and come back in the same order from `result()`, as
    ("sent", SendOutcome), ("error", SmtpError), ("unsent", None) or ("crash", exception).
    They go out over `SESSIONS` SMTP sessions in turn, each on a thread of its own and
    opened when it gets its first message. The end of DATA of a message is held until
    every message put before it is settled (`settle()`: its outcome committed), whichever
    session it went over. So a crash can still leave at most one message whose fate is
    unknown, as when sending one at a time, while the other messages' MAIL, RCPT, DATA and
    body go out during that commit and during the server's work on the message before.

    After a transport error, the deadline, or `settle(False)`, nothing more is sent: a
    message held at its end of DATA is withheld (its session closed, nothing delivered),
    and every further one comes back "unsent" (one put before the failing message, on the
    other session, still goes: as over one session). The second session is opened only
    beside an open first one; a server that will not open it (or not within
    FURTHER_SESSION_SECONDS) is not in error: that message comes back "unsent" (the batch
    gives it back to the queue, attempt not spent) and the server gets one session at a
    time from then on (for ONE_SESSION_SECONDS).
    """

    # SMTP sessions at once. With one, a message waits for its four round trips in turn;
    # with two, three of them and its body overlap the other session's end of DATA and its
    # commit. On the send bench (bench/send.py, SQLite, 2 cores) one session gave 0.64-0.66
    # of raw smtplib, two 0.75-0.82, three 0.76-0.78 (before the body went ahead of the
    # gate; after it, three measured no better than two either).
    SESSIONS = 2
    # An end of DATA waits this long at most for the commit before it, then is withheld:
    # should the job's thread be gone without stopping the pipeline (a timeout striking
    # inside close()), the threads still end. Far above any commit (SQLite's busy timeout
    # is 30 s).
    GATE_SECONDS = 300.0

    def __init__(self, transport: _Transport, deadline: float | None):
        self._transport = transport
        self._deadline = deadline
        single = _one_session_until.get(transport.key, 0.0) > time.monotonic()
        self.sessions = 1 if single else self.SESSIONS
        # Messages handed over ahead of the one being recorded (their bytes held in
        # memory): one for each session besides the one just recorded.
        self.ahead = self.sessions + 1
        self._feeds = [queue.SimpleQueue() for _ in range(self.sessions)]
        self._results = [queue.SimpleQueue() for _ in range(self.sessions)]
        self._put = 0
        self._returned = 0
        self._settled = 0
        self._stopped = False  # by the job's thread: settle(False) or close()
        # By a sending thread: from this message on nothing goes, over either session (the
        # messages before it still may: they come before it, as over one session).
        self._halted_from: int | None = None
        self._condition = threading.Condition()
        # The first session: whether its first message is done, and whether it is open
        # (kept) after its latest one. A further session is opened only beside an open one.
        self._first_tried = False
        self._first_open = False
        self._threads: list[threading.Thread] = []

    def put(self, envelope_from: str, recipients: list[str], raw: bytes) -> None:
        """Hand over the next message."""
        slot = self._put % self.sessions
        if slot == len(self._threads):
            thread = threading.Thread(target=self._run, args=(slot,),
                                      name=f"smtp-send-{slot}", daemon=True)
            thread.start()  # then noted: close() must never join a thread not started
            self._threads.append(thread)
        self._feeds[slot].put((self._put, envelope_from, recipients, raw))
        self._put += 1

    def result(self) -> tuple[str, object]:
        """What became of the oldest message not yet returned (waits for it)."""
        outcome = self._results[self._returned % self.sessions].get()
        self._returned += 1
        return outcome

    def settle(self, go_on: bool = True) -> None:
        """The oldest message's outcome is committed; with go_on False, send nothing more."""
        with self._condition:
            self._settled += 1
            self._stopped = self._stopped or not go_on
            self._condition.notify_all()

    def close(self) -> None:
        """Send nothing more, and let the threads end.

        After a normal group the threads are idle and end at once. If the job's thread is
        leaving on an exception (the job timeout), a thread may be waiting for a reply: it
        is not waited for long, since no end of DATA can leave after this.
        """
        with self._condition:
            self._stopped = True
            self._condition.notify_all()
        for feed in self._feeds:
            feed.put(None)
        for thread in self._threads:
            thread.join(timeout=5)

    def _halt(self, index: int) -> None:
        with self._condition:
            if self._halted_from is None or index < self._halted_from:
                self._halted_from = index
            self._condition.notify_all()  # a later message held at its end of DATA is withheld

    def _halted(self, index: int) -> bool:
        return self._halted_from is not None and self._halted_from <= index

    def _run(self, slot: int) -> None:
        feed, results = self._feeds[slot], self._results[slot]
        while (item := feed.get()) is not None:
            # Exactly one result per message, whatever happens: the job's thread waits for it.
            results.put(self._send_one(slot, *item))

    def _send_one(self, slot: int, index: int, envelope_from: str, recipients: list[str],
                  raw: bytes) -> tuple[str, object]:
        try:
            if self._halted(index) or self._stopped or (
                    self._deadline is not None and time.monotonic() > self._deadline):
                self._halt(index)
                return ("unsent", None)
            if slot and not self._opened(slot, index):
                self._halt(index)
                return ("unsent", None)
            outcome = _send_over(self._transport, envelope_from, recipients, raw,
                                 lambda: self._wait_settled(index), slot)
        except EndOfDataWithheld:
            self._halt(index)
            return ("unsent", None)
        except SmtpError as error:
            if error.kind in _TRANSPORT_ERRORS:
                self._halt(index + 1)
            return ("error", error)
        except BaseException as error:  # noqa: BLE001 - reported to the job's thread
            self._halt(index + 1)
            return ("crash", error)
        finally:
            if slot == 0:
                with self._condition:
                    self._first_tried = True
                    self._first_open = (*self._transport.key, 0) in _connections  # kept
                    self._condition.notify_all()
        return ("sent", outcome)

    def _opened(self, slot: int, index: int) -> bool:
        """Whether this further session is open, opening it if need be.

        It is opened only beside an open first session (else the server is in trouble, or
        it would take the first one's place), and within FURTHER_SESSION_SECONDS. If the
        server will not open it then, the server gets one session at a time from now on.
        """
        key = (*self._transport.key, slot)
        if key in _connections:
            return True
        with self._condition:
            self._condition.wait_for(
                lambda: self._first_tried or self._stopped or self._halted(index),
                timeout=self.GATE_SECONDS)
            if not self._first_open or self._stopped or self._halted(index):
                return False
        try:
            _keep(key, self._transport.connect(timeout=FURTHER_SESSION_SECONDS))
        except SmtpError as error:
            log.info("%s:%s: no second SMTP session (%s); one at a time from now on",
                     self._transport.host, self._transport.port, error)
            _one_session_until[self._transport.key] = time.monotonic() + ONE_SESSION_SECONDS
            return False
        return True

    def _wait_settled(self, count: int) -> None:
        """Hold the end of DATA of message `count` until the `count` messages before it are
        settled; withhold it if stopped or halted."""
        with self._condition:
            if not self._condition.wait_for(
                    lambda: self._settled >= count or self._stopped or self._halted(count),
                    timeout=self.GATE_SECONDS) or self._stopped or self._halted(count):
                raise EndOfDataWithheld()


class _Batch:
    """One job's run over one transport: its own message, then more due ones, group by group."""

    def __init__(self, session: Session, lane: _Lane):
        self.session = session
        # The connection the session is bound to: outcomes are written on it directly.
        self.connection = session.get_bind()
        self.lane = lane
        self.store = blobs.get_store(current_app.config["BLOB_DIR"], session=session)
        self.started = time.monotonic()
        self.states: dict[int, str] = {}
        self.retries: list[tuple[int, datetime]] = []
        self.released: list[int] = []
        self.accounts: dict[tuple[int, str], MailAccount] = {}

    def run(self, first_id: int) -> str:
        """Send the claimed first message, then further groups; the first one's state."""
        transport, relay, problem = _transport_for(self.session, self.lane)
        go_on = self._group([first_id], transport, relay, problem, first=True)
        while go_on and time.monotonic() - self.started < BATCH_SECONDS:
            # A claim is committed durably: it is what stops a second send after a crash.
            durability.strict(self.session)
            transport, relay, problem = _transport_for(self.session, self.lane)
            if transport is None:
                self.session.rollback()
                break
            ids = _claim_group(self.session, self.lane, utcnow())
            if not ids:
                self.session.rollback()
                break
            go_on = self._group(ids, transport, relay, problem)
        self._enqueue_follow_ups()
        return self.states.get(first_id, "sending")

    def _group(self, ids: list[int], transport: _Transport | None,
               relay: outbox.RelaySettings | None, problem: str, first: bool = False) -> bool:
        """Send a claimed group (its claim not yet committed); whether the batch may go on."""
        session = self.session
        try:
            rows = _load(session, ids)
            ready = self._check(rows, transport, relay, problem)
            # The claim and the count are durable before a byte leaves: a crash from here
            # on is recovered by the sweep, and the count is never taken twice.
            session.commit()
        except Exception as error:  # noqa: BLE001 - the row must say what happened
            log.exception("outgoing %s: unexpected failure before sending", ids)
            session.rollback()
            if first:
                _write_failure(session.connection(), ids[0], "internal",
                               f"Could not send: {error}. Your administrator can see the "
                               "details in the worker's log; press Retry once it is fixed.",
                               repr(error))
                session.commit()
                self.states[ids[0]] = "failed"
            return False
        _ensure_sweep_scheduled()
        go_on, owed = self._send_all(ready, transport, first) if ready else (True, [])
        self._file_copies(owed)
        # Given-back messages get new jobs (_enqueue_follow_ups): the first ones can go too.
        self._discard_first_jobs([row.id for row in rows])
        return go_on

    def _check(self, rows: list[_Claimed], transport: _Transport | None,
               relay: outbox.RelaySettings | None, problem: str) -> list[_Claimed]:
        """Fail what cannot go (crash loops, no transport, daily limits); the rest, to send."""
        ready: list[_Claimed] = []
        for row in rows:
            if row.attempts > CRASH_LIMIT:
                # Only dead claims get this far without an outcome being written: the
                # message kills whatever worker takes it. Stop rather than take every
                # worker down.
                _fail(row, "internal", "Sending this message stopped the sending worker "
                      "repeatedly; it was not retried again. Your administrator can see why "
                      "in the worker's log.")
            elif transport is None:
                _fail(row, "config", problem)
            else:
                ready.append(row)
        if relay is not None:
            uncounted = [row for row in ready if not row.counted]
            verdicts = outbox.count_many_against_limits(
                self.session, self.lane.org_id, [row.user_id for row in uncounted], relay,
                utcnow().date()) if uncounted else []
            refused = {row.id for row, refusal in zip(uncounted, verdicts)
                       if refusal is not None}
            for row, refusal in zip(uncounted, verdicts):
                if refusal is not None:
                    _fail(row, "limit", refusal)
            counted = [row.id for row, refusal in zip(uncounted, verdicts) if refusal is None]
            if counted:
                self.session.connection().execute(
                    update(_OUTGOING).where(_OUTGOING.c.id.in_(counted)).values(counted=True))
            ready = [row for row in ready if row.id not in refused]
        going = {row.id for row in ready}
        for row in rows:
            if row.id not in going:
                _write(self.session.connection(), row)
                self.states[row.id] = row.state
        return ready

    def _file_copies(self, owed: list[tuple[_Claimed, bytes | None]]) -> None:
        """File the Sent copies of a group and commit (bytes not held are read again); on
        failure their leases stay, and the sweep files them later."""
        if not owed:
            return
        with_bytes = [(row, _bytes_or_error(self.store, row.blob_sha256) if raw is None else raw)
                      for row, raw in owed]
        try:
            _file_sent_copies(self.session, with_bytes, self.accounts)
            self.session.commit()
        except Exception:  # noqa: BLE001 - the leases stay: the sweep files them later
            log.exception("Sent copies of %s not filed", [r.id for r, _ in owed])
            self.session.rollback()

    def _send_all(self, ready: list[_Claimed], transport: _Transport, first: bool
                  ) -> tuple[bool, list[tuple[_Claimed, bytes | None]]]:
        """Send the group through a pipeline, recording each outcome as it comes back.

        Returns whether the batch may go on, and the messages owed a Sent copy (with their
        bytes while they fit in OWED_BYTES, else None: read again when filed). What is not
        sent (the batch stopped, the group ran out of time) is given back.

        While a message may be out and unrecorded, this thread writes nothing but outcomes:
        a database error elsewhere must not leave that message unrecorded (it would be sent
        again). Messages settled without sending are written once nothing is in flight.
        """
        deadline = None if first else self.started + GROUP_DEADLINE_SECONDS
        pipeline = _SmtpPipeline(transport, deadline)
        waiting = deque(ready)
        fed: deque[tuple[_Claimed, bytes]] = deque()
        unsent: list[_Claimed] = []
        settled: list[_Claimed] = []
        owed: list[tuple[_Claimed, bytes | None]] = []
        held = 0
        go_on = True
        failed = True
        try:
            while True:
                # The next message is read and handed over while this one is out: its MAIL,
                # RCPT, DATA and body can go while this thread commits the outcome before it.
                while go_on and waiting and len(fed) < pipeline.ahead:
                    row = waiting.popleft()
                    prepared = self._prepare(row)
                    if prepared is None:
                        settled.append(row)
                    else:
                        pipeline.put(row.envelope_from, *prepared)
                        fed.append((row, prepared[1]))
                if not fed:
                    break
                if not go_on:
                    # Stopped: nothing handed over can reach its end of DATA any more, so
                    # it goes back as it was, without waiting for its session (which may be
                    # stuck connecting to a server in trouble).
                    unsent.extend(row for row, _raw in fed)
                    break
                row, raw = fed.popleft()
                kind, result = pipeline.result()
                if kind == "unsent":
                    unsent.append(row)
                    go_on = False
                    continue
                ok, sent_out = self._record(row, kind, result)
                pipeline.settle(ok)
                go_on = go_on and ok
                if sent_out and row.sent_at is not None and row.owes_sent_copy \
                        and row.lease_until is not None:
                    keep = held + len(raw) <= OWED_BYTES
                    held += len(raw) if keep else 0
                    owed.append((row, raw if keep else None))
            failed = False
        finally:
            pipeline.close()
            if failed:
                # Leaving on an exception (the job's timeout, a database gone): the messages
                # never handed over go back now; those handed over keep their claim (one
                # may be out) for the sweep.
                self._give_back_after_failure(list(waiting))
        if unsent or waiting:
            self._release(unsent + list(waiting))
        self._write_settled(settled)
        return go_on, owed

    def _prepare(self, row: _Claimed) -> tuple[list[str], bytes] | None:
        """The recipients still to send to and the bytes; or None when the row is settled
        without sending (nobody left to send to, or its bytes are unreadable), to be
        written by _write_settled. Writes nothing."""
        pending = [r.address for r in row.recipients if r.state in ("pending", "deferred")]
        if not pending:
            row.state = "sent"
            row.lease_until = None
            return None
        try:
            return pending, self.store.get(row.blob_sha256)
        except Exception as error:  # noqa: BLE001 - this message's bytes; the others may go
            log.exception("outgoing %s: bytes not readable", row.id)
            _fail(row, "internal", f"Could not send: {error}. Your administrator can see the "
                  "details in the worker's log; press Retry once it is fixed.",
                  server_text=repr(error))
            return None

    def _write_settled(self, rows: list[_Claimed]) -> None:
        """Write the rows _prepare settled without sending, in one commit."""
        if not rows:
            return
        for row in rows:
            _write(self.session.connection(), row)
            self.states[row.id] = row.state
        # Sent to everyone before (a retry with nobody left): the outbox's bytes can go.
        blobs.drop_references(self.session, [row.blob_sha256 for row in rows
                                             if row.state == "sent"])
        self.session.commit()

    def _give_back_after_failure(self, rows: list[_Claimed]) -> None:
        try:
            self.session.rollback()
            self.connection.rollback()  # an outcome's transaction, if one was left open
        except Exception:  # noqa: BLE001 - their leases run out and the sweep requeues them
            log.exception("outgoing %s: not given back", [row.id for row in rows])
            return
        if rows:
            self._release(rows)

    def _record(self, row: _Claimed, kind: str, result) -> tuple[bool, bool]:
        """Commit what the server made of one message; (may the batch go on, was it sent).

        The commit does not wait for the disk (see webapp.durability): a killed worker
        loses nothing, and what a power cut could take back is a message that then looks
        claimed by a dead worker and is sent again. Postfix's delivery agents make the same
        choice: they mark a recipient done in the queue file without syncing it.
        """
        # On the job's connection itself, not through the Session: beginning and committing
        # a Session transaction costs about as much as the two statements written here.
        connection = self.connection
        # Known before anything below can fail: a message the server accepted, or may have
        # (the connection lost after its end of DATA), is never recorded as not sent.
        sent_out = kind == "sent"
        maybe_delivered = sent_out or (kind == "error" and result.kind == "uncertain")
        go_on = True
        try:
            if self.session.in_transaction():
                # Reads only (a packed blob's place): the outcome must not join them.
                self.session.rollback()
            durability.relax(connection)
            if kind == "crash":
                raise result
            if kind == "error":
                retry_at = _apply_error(row, result, utcnow())
                go_on = result.kind not in _TRANSPORT_ERRORS
                log.info("outgoing %s attempt %s: %s", row.id, row.attempts, result)
            else:
                retry_at = _apply_outcome(row, result, utcnow())
            _write(connection, row)
            if row.state == "sent" and not row.owes_sent_copy:
                # Nothing more will be sent or filed: the outbox's copy of the bytes can go.
                blobs.drop_references(connection, [row.blob_sha256])
            connection.commit()
        except Exception as error:  # noqa: BLE001 - the row must say what happened, whatever it was
            log.exception("outgoing %s: unexpected failure", row.id)
            connection.rollback()
            if sent_out:
                _write_failure(connection, row.id, "uncertain", "The server accepted the message "
                               "but recording that failed; it was probably delivered. Check "
                               "before sending it again.", str(error), state="uncertain")
                self.states[row.id] = "uncertain"
            elif maybe_delivered:
                _write_failure(connection, row.id, "uncertain", result.user_message,
                               f"{result.server_text} (then recording it failed: {error})",
                               state="uncertain")
                self.states[row.id] = "uncertain"
            else:
                _write_failure(connection, row.id, "internal",
                               f"Could not send: {error}. Your administrator can see the "
                               "details in the worker's log; press Retry once it is fixed.",
                               repr(error))
                self.states[row.id] = "failed"
            connection.commit()
            return False, False
        self.states[row.id] = row.state
        if retry_at is not None:
            self.retries.append((row.id, retry_at))
        return go_on, sent_out

    def _release(self, rows: list[_Claimed]) -> None:
        """Give claimed, unsent messages back to the queue as they were (attempt not used)."""
        ids = [row.id for row in rows]
        c = _OUTGOING.c
        try:
            self.session.connection().execute(
                update(_OUTGOING).where(c.id.in_(ids), c.state == "sending")
                .values(state="queued", lease_until=None, next_attempt_at=utcnow(),
                        attempts=c.attempts - 1))
            self.session.commit()
        except Exception:  # noqa: BLE001 - their leases run out and the sweep requeues them
            log.exception("outgoing %s: not given back", ids)
            self.session.rollback()
            return
        self.released.extend(ids)

    @staticmethod
    def _discard_first_jobs(ids: list[int]) -> None:
        """The first jobs of messages this batch took would find nothing to do: drop them."""
        from webapp.queue import discard_queued

        try:
            discard_queued(outbox.SEND_QUEUE, [outbox.send_job_id(i) for i in ids])
        except RedisError as error:  # they run then, and return at once
            log.warning("send jobs of %s not discarded: %s", ids, error)

    def _enqueue_follow_ups(self) -> None:
        """After every commit: the retries' delayed jobs, and new jobs for given-back messages."""
        from webapp.queue import enqueue_now

        for outgoing_id, when in self.retries:
            _enqueue_retry(outgoing_id, when)
        for outgoing_id in self.released:
            enqueue_now(outbox.SEND_JOB, outgoing_id, queue=outbox.SEND_QUEUE,
                        job_timeout=outbox.SEND_JOB_TIMEOUT)


def send_message(outgoing_id: int) -> str:
    """Send one outgoing message, then the other due messages of its transport.

    Idempotent: a message not due or not ours is left alone, and the job returns at once.
    Returns the state of the message the job was for.

    The job holds one database connection throughout: a transaction per message, each
    taking a connection from the pool (and checking it) would cost more than the message.
    """
    with db.engine.connect() as connection:
        session = Session(bind=connection)
        try:
            return _send_message(session, outgoing_id)
        finally:
            session.close()


def _send_message(session: Session, outgoing_id: int) -> str:
    claimed = _claim(session, outgoing_id, utcnow())
    if claimed is None:
        session.rollback()
        c = _OUTGOING.c
        found = session.connection().execute(
            select(c.user_id, _USER.c.is_disabled)
            .select_from(_OUTGOING.outerjoin(_USER, _USER.c.id == c.user_id))
            .where(c.id == outgoing_id)).first()
        session.rollback()
        if found is None:
            return "gone"
        user_id, disabled = found
        if user_id is not None and disabled is not False:
            return "user disabled"  # nothing goes out for a disabled account; Retry once enabled
        return "not due"
    org_id, transport, identity_id = claimed
    return _Batch(session, _Lane(transport, org_id, identity_id)).run(outgoing_id)


def recover(session: Session, now: datetime | None = None) -> list[int]:
    """Enqueue a send job for every message whose job may be lost; return their ids."""
    from webapp.queue import enqueue_now

    ids = outbox.due_for_sweep(session, now)
    for outgoing_id in ids:
        enqueue_now(outbox.SEND_JOB, outgoing_id, queue=outbox.SEND_QUEUE,
                    job_timeout=outbox.SEND_JOB_TIMEOUT)
    return ids


def sweep() -> int:
    """The periodic safety net: requeue due retries and expired claims, file Sent copies
    owed by dead workers, then reschedule itself."""
    # Copies first: a message waiting for its copy can then be requeued by the same sweep.
    recover_sent_copies(db.session)
    ids = recover(db.session)
    c = _OUTGOING.c
    pending = db.session.connection().scalar(
        select(c.id).where(or_(c.state.in_(("queued", "retry-wait", "sending")),
                               c.lease_until.is_not(None))).limit(1))
    db.session.rollback()
    if pending is not None:
        _ensure_sweep_scheduled()
    return len(ids)
