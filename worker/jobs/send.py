"""The send job: one outgoing message, its exact bytes, over the identity's transport.

States: queued → sending → sent; sending → retry-wait → sending … → sent | failed;
sending → uncertain; queued | retry-wait → cancelled (by the user). The Message-ID and
the bytes never change across attempts; a retry goes only to recipients still pending.

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

SMTP sessions are reused within a worker process (keyed by transport, closed after
`IDLE_SECONDS` unused): connecting, STARTTLS and AUTH cost more than sending a message.
"""
from __future__ import annotations

import atexit
import hashlib
import logging
import time
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from webapp.extensions import db
from webapp.models import MailAccount, User
from webapp.models._types import utcnow
from webapp.models.sending import OutgoingMessage, SendIdentity
from webapp.services import blobs, outbox, sendas
from webapp.services.delivery import deliver
from worker.smtp import SendOutcome, SmtpConnection, SmtpError

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

# transport key → (open session, last use on the monotonic clock)
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
            del _connections[key]
            connection.close()


class _Transport:
    """Where and how to send one message: host, port, security, login, and a cache key."""

    def __init__(self, host: str, port: int, security: str, username: str, password: str):
        self.host, self.port, self.security = host, port, security
        self.username, self.password = username, password
        # The password's hash only: the key must not keep a second plaintext copy around.
        self.key = (host, port, security, username,
                    hashlib.sha256(password.encode()).hexdigest())

    def connect(self) -> SmtpConnection:
        """A new signed-in SMTP session."""
        connection = SmtpConnection(self.host, self.port, security=self.security,
                                    username=self.username or None,
                                    password=self.password or None, timeout=60.0,
                                    ca_bundle=current_app.config.get("MAIL_CA_BUNDLE"))
        connection.open()
        return connection


def _send_over(transport: _Transport, envelope_from: str, recipients: list[str],
               raw: bytes) -> SendOutcome:
    """Send through a cached session if one is open, else a new one; keep it for the next."""
    now = time.monotonic()
    _close_idle(now)
    cached = _connections.pop(transport.key, None)
    if cached is not None:
        connection = cached[0]
        try:
            outcome = connection.send(envelope_from, recipients, raw)
        except SmtpError as error:
            if error.kind != "connect":
                _keep(transport, connection)
                raise
            # The server closed the idle session before MAIL FROM went through: nothing of
            # this message was sent, so a fresh session is safe.
            connection.close()
        else:
            _keep(transport, connection)
            return outcome
    connection = transport.connect()
    try:
        outcome = connection.send(envelope_from, recipients, raw)
    except SmtpError:
        _keep(transport, connection)
        raise
    _keep(transport, connection)
    return outcome


def _keep(transport: _Transport, connection: SmtpConnection) -> None:
    if connection.is_open:
        _connections[transport.key] = (connection, time.monotonic())
    else:
        connection.close()


def _transport_for(session: Session, outgoing: OutgoingMessage
                   ) -> tuple[_Transport | None, outbox.RelaySettings | None, str]:
    """The transport of this message (and the relay settings when it is the relay), or why not."""
    if outgoing.transport == "smtp":
        identity = session.get(SendIdentity, outgoing.identity_id) if outgoing.identity_id else None
        if identity is None or identity.transport != "smtp":
            # The custom server was removed since queueing: the relay is the only way left,
            # and the From address may not be allowed through it; say so.
            return None, None, ("The SMTP server set for this address was removed. Choose a "
                                "transport in Settings » Send Mail As, then press Retry.")
        return _Transport(identity.smtp_host, identity.smtp_port, identity.smtp_security,
                          identity.smtp_username, sendas.smtp_password(identity)), None, ""
    relay = outbox.relay_settings(session, outgoing.org_id)
    if not relay.configured:
        return None, relay, ("The organization's outgoing relay is not set up. Ask your "
                             "administrator to configure it (Admin » Relay & limits).")
    return _Transport(relay.host, relay.port, relay.security, relay.username,
                      relay.password), relay, ""


def _claim(session: Session, outgoing_id: int, now: datetime) -> bool:
    """Take the message for this worker: one conditional UPDATE, so two jobs never both send."""
    claimed = session.execute(
        update(OutgoingMessage)
        .where(OutgoingMessage.id == outgoing_id,
               or_(OutgoingMessage.state.in_(("queued", "retry-wait"))
                   & or_(OutgoingMessage.next_attempt_at.is_(None),
                         OutgoingMessage.next_attempt_at <= now + timedelta(seconds=5)),
                   (OutgoingMessage.state == "sending") & (OutgoingMessage.lease_until < now)))
        .values(state="sending", lease_until=now + LEASE, attempts=OutgoingMessage.attempts + 1)
        .execution_options(synchronize_session=False)).rowcount
    return bool(claimed)


def _fail(outgoing: OutgoingMessage, kind: str, message: str, code: int | None = None,
          server_text: str = "", state: str = "failed") -> None:
    outgoing.state = state
    outgoing.last_error_kind = kind
    outgoing.last_error_code = code
    outgoing.last_error_text = server_text[:4000]
    outgoing.last_error_message = message[:4000]
    outgoing.next_attempt_at = None
    outgoing.lease_until = None


def _record_refusals(outgoing: OutgoingMessage, refused: dict) -> None:
    by_address = {r.address.lower(): r for r in outgoing.recipients}
    now = utcnow()
    for address, refusal in refused.items():
        row = by_address.get(address.lower())
        if row is not None:
            row.state = "deferred" if refusal.temporary else "refused"
            row.code, row.text, row.updated_at = refusal.code, refusal.text[:2000], now


def _schedule_retry(outgoing: OutgoingMessage, error_kind: str, message: str,
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


def _sent_copy_account(session: Session, outgoing: OutgoingMessage) -> MailAccount:
    """The POP account whose address is the From address, else the user's hosted account."""
    matching = session.scalar(select(MailAccount).where(
        MailAccount.user_id == outgoing.user_id, MailAccount.kind == "pop",
        MailAccount.email == outgoing.from_email))
    return matching or outbox.hosted_account(session, outgoing.user_id)


def _file_in_sent(session: Session, outgoing: OutgoingMessage, raw: bytes) -> None:
    """The exact bytes sent, in Sent; a full mailbox must not turn a sent message into a failure."""
    if not outgoing.file_in_sent or outgoing.user_id is None or outgoing.sent_message_pk:
        return
    try:
        with session.begin_nested():
            # No filters: they sort incoming mail, and a "To contains …" rule must not move
            # the user's own sent copy out of Sent.
            delivered = deliver(session, _sent_copy_account(session, outgoing), raw,
                                source_key=f"sent:{outgoing.id}", folder_role="sent",
                                is_read=True, run_filters=False)
        outgoing.sent_message_pk = delivered.message.id if delivered.message else None
    except Exception as error:  # noqa: BLE001 - quota, size: the message is out either way
        log.warning("outgoing %s sent but not filed in Sent: %s", outgoing.id, error)
        outgoing.last_error_message = (f"Sent, but no copy could be kept in Sent: {error}")[:4000]


def _apply_outcome(session: Session, outgoing: OutgoingMessage, outcome: SendOutcome,
                   raw: bytes, now: datetime) -> datetime | None:
    """Record who got it; retry only those refused for now. Returns the retry time, if any."""
    by_address = {r.address.lower(): r for r in outgoing.recipients}
    for address in outcome.accepted:
        row = by_address.get(address.lower())
        if row is not None:
            row.state, row.code, row.text, row.updated_at = "accepted", outcome.reply_code, \
                outcome.reply_text[:2000], now
    _record_refusals(outgoing, outcome.refused)
    outgoing.sent_at = outgoing.sent_at or now
    _file_in_sent(session, outgoing, raw)
    if outcome.temporarily_refused:
        first = outcome.refused[outcome.temporarily_refused[0]]
        return _schedule_retry(
            outgoing, "temporary",
            f"Sent to {len(outcome.accepted)} recipient(s); {len(outcome.temporarily_refused)} "
            f"will be retried (the server said: {first.code} {first.text}).",
            first.code, first.text, now)
    outgoing.state = "sent"
    outgoing.next_attempt_at = outgoing.lease_until = None
    # The Sent copy holds its own reference to these bytes; the outbox's is no longer needed.
    blobs.drop_reference(session, outgoing.blob_sha256)
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
    return None


def _apply_error(outgoing: OutgoingMessage, error: SmtpError, now: datetime) -> datetime | None:
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


def send_message(outgoing_id: int) -> str:
    """Send one outgoing message (idempotent: a message not due or not ours is left alone)."""
    session = db.session
    now = utcnow()
    outgoing = session.get(OutgoingMessage, outgoing_id)
    if outgoing is None:
        return "gone"
    if outgoing.user_id is not None:
        user = session.get(User, outgoing.user_id)
        if user is None or user.is_disabled:
            return "user disabled"  # nothing goes out for a disabled account; Retry once enabled
    if not _claim(session, outgoing_id, now):
        session.rollback()
        return "not due"
    session.expire(outgoing)
    sent_out = False
    try:
        if outgoing.attempts > CRASH_LIMIT:
            # Only dead claims get this far without an outcome being written: the message
            # kills whatever worker takes it. Stop rather than take every worker down.
            _fail(outgoing, "internal", "Sending this message stopped the sending worker "
                  "repeatedly; it was not retried again. Your administrator can see why in "
                  "the worker's log.")
            session.commit()
            return outgoing.state
        transport, relay, problem = _transport_for(session, outgoing)
        if transport is None:
            _fail(outgoing, "config", problem)
            session.commit()
            return outgoing.state
        if relay is not None and not outgoing.counted:
            refusal = outbox.count_against_limits(session, outgoing.org_id, outgoing.user_id,
                                                  relay, now.date())
            if refusal is not None:
                _fail(outgoing, "limit", refusal)
                session.commit()
                return outgoing.state
            outgoing.counted = True
        # The claim and the count are durable before a byte leaves: a crash from here on
        # is recovered by the sweep, and the count is never taken twice.
        session.commit()
        _ensure_sweep_scheduled()

        pending = [r.address for r in outgoing.recipients if r.state in ("pending", "deferred")]
        if not pending:
            outgoing.state = "sent"
            outgoing.lease_until = None
            blobs.drop_reference(session, outgoing.blob_sha256)
            session.commit()
            return outgoing.state
        raw = blobs.get_store(current_app.config["BLOB_DIR"]).get(outgoing.blob_sha256)
        retry_at: datetime | None
        try:
            outcome = _send_over(transport, outgoing.envelope_from, pending, raw)
        except SmtpError as error:
            retry_at = _apply_error(outgoing, error, utcnow())
            log.info("outgoing %s attempt %s: %s", outgoing.id, outgoing.attempts, error)
        else:
            sent_out = True
            retry_at = _apply_outcome(session, outgoing, outcome, raw, utcnow())
        state = outgoing.state
        session.commit()
    except Exception as error:  # noqa: BLE001 - the row must say what happened, whatever it was
        log.exception("outgoing %s: unexpected failure", outgoing_id)
        session.rollback()
        outgoing = session.get(OutgoingMessage, outgoing_id)
        if outgoing is None:
            return "gone"
        if sent_out:
            _fail(outgoing, "uncertain", "The server accepted the message but recording that "
                  "failed; it was probably delivered. Check before sending it again.",
                  server_text=str(error), state="uncertain")
        else:
            _fail(outgoing, "internal", f"Could not send: {error}. Your administrator can see "
                  "the details in the worker's log; press Retry once it is fixed.",
                  server_text=repr(error))
        session.commit()
        return outgoing.state
    if retry_at is not None:
        _enqueue_retry(outgoing_id, retry_at)
    return state


def recover(session: Session, now: datetime | None = None) -> list[int]:
    """Enqueue a send job for every message whose job may be lost; return their ids."""
    from webapp.queue import enqueue_now

    ids = outbox.due_for_sweep(session, now)
    for outgoing_id in ids:
        enqueue_now(outbox.SEND_JOB, outgoing_id, queue=outbox.SEND_QUEUE,
                    job_timeout=outbox.SEND_JOB_TIMEOUT)
    return ids


def sweep() -> int:
    """The periodic safety net: requeue due retries and expired claims, then reschedule itself."""
    ids = recover(db.session)
    pending = db.session.scalar(
        select(OutgoingMessage.id).where(
            OutgoingMessage.state.in_(("queued", "retry-wait", "sending"))).limit(1))
    db.session.rollback()
    if pending is not None:
        _ensure_sweep_scheduled()
    return len(ids)
