"""The inbound listener (aiosmtpd): delivery for the hosted domains, and authenticated submission.

Two kinds of port, each an aiosmtpd `Controller` with its own thread and event loop:

- **delivery** (SMTP, or LMTP with `lmtp=True`): an MTA hands over mail for hosted
  mailboxes. RCPT is accepted only for existing, enabled hosted addresses (never a relay);
  after DATA the exact bytes received go through `deliver()` once per recipient, each in
  its own transaction, and the reply is sent only after the commit. Temporary trouble is a
  4xx, so the sending MTA keeps the message and retries; the source key (see
  `webapp.services.inbound.delivery_source_key`) makes the retry store only what is missing.
- **submission**: hosted users' mail clients send through us after AUTH (PLAIN/LOGIN,
  over STARTTLS, or in the clear from loopback only); the exact bytes are queued for the
  organization relay by `webapp.services.outbox.queue_raw_submission`.

Database and password work runs in a thread pool inside an app context, never on the event
loop. One log line per transaction; never a message body or a password.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword
from flask import Flask

from webapp.extensions import db
from webapp.services import inbound as rules
from webapp.services.delivery import MessageTooLargeError, deliver
from webapp.services.quota import QuotaExceededError

log = logging.getLogger("skydesk.inbound")

Mode = Literal["smtp", "lmtp", "submission"]
T = TypeVar("T")

DEFAULT_MAX_RECIPIENTS = 100
# RFC 5321 allows 1,000-octet lines, but real mail breaks it (one-line HTML, long encoded
# Subjects); refusing would bounce mail a user is waiting for. Postfix accepts and rewraps
# such lines; we keep them as they are, up to this length.
MAX_LINE_BYTES = 1024 * 1024


class _LoginDeprecationFilter(logging.Filter):
    """aiosmtpd 1.4 logs a deprecation warning on every successful AUTH; it is not ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


_aiosmtpd_log = logging.getLogger("mail.log")
_aiosmtpd_log.addFilter(_LoginDeprecationFilter())


def _parse_declared_size(mail_options: list[str]) -> int | None:
    """The SIZE= the client declared at MAIL FROM (RFC 1870), if any."""
    for option in mail_options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit():
            return int(value)
    return None


def _peer_ip(session: Any) -> str:
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) and peer else str(peer or "")


def _uses_tls(server: Any, session: Any) -> bool:
    # session.ssl is set by STARTTLS; an implicitly-TLS transport carries its context.
    transport = getattr(server, "transport", None)
    return session.ssl is not None or (
        transport is not None and transport.get_extra_info("sslcontext") is not None)


@dataclass
class _Transaction:
    """What one mail transaction has gathered so far (kept on aiosmtpd's envelope)."""

    queue_id: str = field(default_factory=lambda: secrets.token_hex(6))
    accepted: list[rules.RecipientCheck] = field(default_factory=list)


def _transaction(envelope: Any) -> _Transaction:
    # aiosmtpd makes a fresh Envelope for every transaction (MAIL … DATA / RSET).
    state = getattr(envelope, "skydesk", None)
    if state is None:
        state = envelope.skydesk = _Transaction()
    return state


class _Handler:
    """What the delivery and submission handlers share: the app, the pool, the EHLO rule."""

    def __init__(self, app: Flask, executor: ThreadPoolExecutor, mode: Mode):
        self.app = app
        self.executor = executor
        self.mode = mode
        self.max_recipients = int(app.config.get("INBOUND_MAX_RECIPIENTS")
                                  or DEFAULT_MAX_RECIPIENTS)

    async def in_app(self, work: Callable[..., T], *args: Any) -> T:
        """Run blocking database work in the pool, inside an app context."""
        def call() -> T:
            with self.app.app_context():
                try:
                    return work(db.session, *args)
                finally:
                    db.session.remove()
        return await asyncio.get_running_loop().run_in_executor(self.executor, call)

    def auth_offered(self, server: Any, session: Any) -> bool:
        """Whether this session may see and use AUTH."""
        return False

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        """Advertise AUTH only where a password may be sent (never in the clear to the net)."""
        session.host_name = hostname  # the 5-argument hook must set it itself
        if self.auth_offered(server, session):
            return responses
        return [line for line in responses if not line[4:].upper().startswith("AUTH")]

    async def handle_AUTH(self, server: Any, session: Any, envelope: Any, args: list[str]) -> Any:
        """Refuse AUTH where it is not offered, before any mechanism reads a password."""
        if not self.auth_offered(server, session):
            if self.mode == "submission":
                return rules.REPLY_AUTH_NEEDS_TLS
            return "502 5.5.1 AUTH not available on this port"
        return MISSING

    async def handle_exception(self, error: Exception) -> str:
        """An unexpected error in a command: temporary, so the client retries and loses nothing."""
        log.error("inbound %s: unexpected error %s: %s", self.mode, type(error).__name__, error)
        return rules.REPLY_TEMPORARY


class DeliveryHandler(_Handler):
    """Final delivery for hosted mailboxes (from an MTA, over SMTP or LMTP)."""

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        """Accept only existing, enabled hosted mailboxes with room; never relay."""
        state = _transaction(envelope)
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return rules.REPLY_TOO_MANY_RECIPIENTS
        declared = _parse_declared_size(envelope.mail_options)
        try:
            check = await self.in_app(rules.check_recipient, address, declared)
        except Exception as error:  # database down: the MTA must retry, not bounce
            log.error("inbound %s qid=%s rcpt check failed (%s: %s)", self.mode, state.queue_id,
                      type(error).__name__, error)
            return rules.REPLY_TEMPORARY
        if not check.accepted:
            log.info("inbound %s qid=%s peer=%s from=<%s> refused rcpt=<%s> reply=%r",
                     self.mode, state.queue_id, _peer_ip(session), envelope.mail_from,
                     address, check.reply)
            return check.reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        state.accepted.append(check)
        return check.reply

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        """Store the exact bytes for every accepted recipient, commit, then answer."""
        state = _transaction(envelope)
        started = time.monotonic()
        raw: bytes = envelope.original_content
        raw_sha256 = hashlib.sha256(raw).hexdigest()
        replies = []
        for recipient in state.accepted:
            try:
                reply = await self.in_app(_store_for_recipient, raw, raw_sha256, recipient,
                                          state.queue_id)
            except Exception as error:  # no app context at all: still one reply per RCPT
                log.error("inbound %s qid=%s: %s: %s", self.mode, state.queue_id,
                          type(error).__name__, error)
                reply = rules.REPLY_TEMPORARY
            replies.append(reply)
        if self.mode == "lmtp":
            # LMTP (RFC 2033): one reply per accepted RCPT, in order, after the final dot.
            answer = "\r\n".join(replies)
            summary = ",".join(reply[:3] for reply in replies)
        else:
            answer = rules.combine_smtp_replies(replies)
            if answer.startswith("250"):
                answer = f"250 2.0.0 delivered as {state.queue_id}"
            summary = answer[:3]
        log.info("inbound %s qid=%s peer=%s from=<%s> size=%d rcpts=%s reply=%s ms=%d",
                 self.mode, state.queue_id, _peer_ip(session), envelope.mail_from, len(raw),
                 ",".join(f"{r.address}:{reply[:3]}" for r, reply in zip(state.accepted, replies)),
                 summary, (time.monotonic() - started) * 1000)
        return answer


def _store_for_recipient(session, raw: bytes, raw_sha256: str, recipient: rules.RecipientCheck,
                         queue_id: str) -> str:
    """Deliver to one mailbox in its own transaction; return that recipient's reply."""
    try:
        account = rules.hosted_account_usable(session, recipient.account_id)
        if account is None:  # disabled or deleted since RCPT
            return rules.REPLY_UNKNOWN_MAILBOX
        deliver(session, account, raw, rules.delivery_source_key(raw_sha256, recipient.address))
        session.commit()
        return "250 2.0.0 delivered"
    except QuotaExceededError:
        session.rollback()
        return rules.REPLY_MAILBOX_FULL
    except MessageTooLargeError:
        session.rollback()
        return rules.REPLY_TOO_BIG
    except Exception as error:
        # Database, Redis, disk: anything else is temporary and the MTA keeps the message.
        # The commit may have happened (e.g. Redis failed after it): the retry then finds
        # the source key and answers 250 without storing twice.
        session.rollback()
        log.error("inbound qid=%s delivery to %s failed, answering 451 (%s: %s)", queue_id,
                  recipient.address, type(error).__name__, error)
        return rules.REPLY_TEMPORARY


@dataclass(frozen=True)
class _Submitter:
    """Who authenticated on a submission session (aiosmtpd keeps it as auth_data)."""

    user_id: int
    email: str


class SubmissionHandler(_Handler):
    """Authenticated submission for hosted users' mail clients; relays through the outbox."""

    def auth_offered(self, server: Any, session: Any) -> bool:
        """Passwords only over TLS, or over loopback (a local webmail/proxy)."""
        return _uses_tls(server, session) or rules.is_loopback(_peer_ip(session))

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str,
                     auth_data: Any) -> AuthResult:
        """aiosmtpd's authenticator: check the password under the login throttle.

        Called synchronously on this port's event loop (aiosmtpd's API); the argon2 check
        blocks only other submission sessions, never delivery, which has its own loop.
        """
        if not isinstance(auth_data, LoginPassword) or not self.auth_offered(server, session):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        ip = _peer_ip(session)
        try:
            with self.app.app_context():
                from webapp.queue import get_redis

                try:
                    check = rules.authenticate_submitter(
                        db.session, get_redis(self.app), rules.throttle_limits(self.app.config),
                        login, password, ip)
                    db.session.commit()  # the audit row of a login refused by the allowlist
                finally:
                    db.session.remove()
        except Exception as error:
            log.error("inbound submission: login check failed (%s: %s)", type(error).__name__,
                      error)
            return AuthResult(success=False, handled=False,
                              message="454 4.7.0 temporary authentication failure")
        log.info("inbound submission peer=%s login=%s result=%s", ip, login.strip().lower()[:320],
                 check.reply[:3])
        if not check.accepted:
            return AuthResult(success=False, handled=False, message=check.reply)
        return AuthResult(success=True, auth_data=_Submitter(check.user_id, check.email),
                          message=rules.REPLY_AUTH_OK)

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          mail_options: list[str]) -> str:
        """Only after AUTH, and only from one of the user's own addresses."""
        submitter = session.auth_data if session.authenticated else None
        if not isinstance(submitter, _Submitter):
            return rules.REPLY_AUTH_REQUIRED
        try:
            reply = await self.in_app(rules.check_sender, submitter.user_id, address)
        except Exception as error:
            log.error("inbound submission: sender check failed (%s: %s)", type(error).__name__,
                      error)
            return rules.REPLY_TEMPORARY
        if reply.startswith("2"):
            # A hook that answers must record the sender itself (aiosmtpd only does so
            # when the hook returns MISSING).
            envelope.mail_from = address
            envelope.mail_options.extend(mail_options)
        else:
            log.info("inbound submission peer=%s login=%s refused from=<%s> reply=%r",
                     _peer_ip(session), submitter.email, address, reply)
        return reply

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        """Any syntactically valid recipient: the user is authenticated (limits apply at send)."""
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return rules.REPLY_TOO_MANY_RECIPIENTS
        if rules.split_address(address) is None:
            return rules.REPLY_BAD_ADDRESS
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return rules.REPLY_OK_RECIPIENT

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        """Queue the exact bytes for the relay; answer 250 only once that is committed."""
        state = _transaction(envelope)
        submitter: _Submitter = session.auth_data
        raw: bytes = envelope.original_content
        reply = await self.in_app(_queue_submission, submitter.user_id, raw, envelope.mail_from,
                                  list(envelope.rcpt_tos), state.queue_id)
        log.info("inbound submission qid=%s peer=%s login=%s from=<%s> size=%d rcpts=%d reply=%s",
                 state.queue_id, _peer_ip(session), submitter.email, envelope.mail_from, len(raw),
                 len(envelope.rcpt_tos), reply[:3])
        return reply


def _queue_submission(session, user_id: int, raw: bytes, mail_from: str, rcpt_tos: list[str],
                      queue_id: str) -> str:
    """Hand a submitted message to the outbox in one transaction; return the reply."""
    from webapp.services.outbox import OutboxError, queue_raw_submission

    try:
        outgoing = queue_raw_submission(session, user_id, raw, mail_from, rcpt_tos)
        session.commit()
        return f"250 2.0.0 queued as {queue_id} (outgoing {outgoing.id})"
    except OutboxError as error:
        # The outbox's refusals are the user's to fix (sender not theirs, account disabled):
        # permanent, with its words so the mail client can show them.
        session.rollback()
        return f"550 5.7.1 {rules.reply_text(str(error))}"
    except Exception as error:
        session.rollback()
        log.error("inbound submission qid=%s failed, answering 451 (%s: %s)", queue_id,
                  type(error).__name__, error)
        return rules.REPLY_TEMPORARY


def _server_class(base: type[SMTP]) -> type[SMTP]:
    class _Server(base):  # type: ignore[valid-type, misc]
        line_length_limit = MAX_LINE_BYTES
    _Server.__name__ = f"Skydesk{base.__name__}"
    return _Server


_SMTP_SERVER = _server_class(SMTP)
_LMTP_SERVER = _server_class(LMTP)


class ListenerController(Controller):
    """aiosmtpd's threaded controller, serving a socket we bound, with our SMTP or LMTP class.

    Binding first (instead of letting aiosmtpd bind in its thread) reports a busy port at
    once rather than after aiosmtpd's ready timeout, and allows port 0 (any free port).
    """

    def __init__(self, handler: _Handler, *, sock: socket.socket, lmtp: bool = False,
                 **kwargs: Any):
        self.server_class = _LMTP_SERVER if lmtp else _SMTP_SERVER
        self.sock = sock
        host, port = sock.getsockname()[:2]
        super().__init__(handler, hostname=host, port=port, **kwargs)

    def factory(self) -> SMTP:
        """One protocol object per connection."""
        return self.server_class(self.handler, **self.SMTP_kwargs)

    def _create_server(self):
        return self.loop.create_server(self._factory_invoker, sock=self.sock,
                                       ssl=self.ssl_context)


def bind_listening_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port); OSError when taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=100)


def tls_context_from_config(config: Any) -> ssl.SSLContext | None:
    """A server TLS context from INBOUND_TLS_CERT / INBOUND_TLS_KEY, or None when unset."""
    cert, key = config.get("INBOUND_TLS_CERT"), config.get("INBOUND_TLS_KEY")
    if not cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key or None)
    return context


def start_listener(app: Flask, host: str, port: int, *, mode: Mode = "smtp",
                   tls_context: ssl.SSLContext | None = None,
                   executor: ThreadPoolExecutor | None = None,
                   hostname: str | None = None) -> ListenerController:
    """Start one listening port in a background thread and return its running controller.

    `mode`: "smtp" or "lmtp" for delivery to hosted mailboxes, "submission" for AUTH users.
    Port 0 picks a free port (read it from `controller.port`). Stop it with
    `stop_listener(controller)`; a pool passed in is the caller's to shut down.
    """
    if mode not in ("smtp", "lmtp", "submission"):
        raise ValueError(f"unknown listener mode {mode!r}")
    sock = bind_listening_socket(host, port)
    pool = executor or ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"inbound-{mode}")
    handler: _Handler = (SubmissionHandler if mode == "submission" else DeliveryHandler)(
        app, pool, mode)
    options: dict[str, Any] = {
        "data_size_limit": app.config["MAIL_MAX_MESSAGE_BYTES"],
        "decode_data": False,  # the exact bytes, 8-bit included
        "enable_SMTPUTF8": True,
        "auth_require_tls": False,  # our handle_AUTH/EHLO decide: TLS, or loopback
        "auth_required": False,  # MAIL refuses unauthenticated submission itself
        "ident": "SkyDesk Mail",
        "timeout": 300,
    }
    if mode == "submission":
        options["authenticator"] = handler.authenticate  # type: ignore[attr-defined]
    if tls_context is not None and mode != "lmtp":
        options["tls_context"] = tls_context
    controller = ListenerController(
        handler, sock=sock, lmtp=mode == "lmtp", ready_timeout=10.0,
        server_hostname=hostname or app.config.get("INBOUND_HOSTNAME") or socket.getfqdn(),
        **options)
    try:
        controller.start()
    except BaseException:
        controller.stop(no_assert=True)
        if not controller.loop.is_closed():
            controller.loop.close()
        sock.close()
        if executor is None:
            pool.shutdown(wait=False)
        raise
    if executor is None:
        controller.owned_executor = pool  # type: ignore[attr-defined]
    log.info("inbound %s listening on %s:%d%s", mode, host, controller.port,
             " (STARTTLS)" if "tls_context" in options else "")
    return controller


def stop_listener(controller: ListenerController) -> None:
    """Stop accepting, then let deliveries already in the pool finish their commits."""
    controller.stop()
    pool = getattr(controller, "owned_executor", None)
    if pool is not None:
        pool.shutdown(wait=True)


def run_listeners(app: Flask, host: str, port: int, *, lmtp: bool = False,
                  submission_port: int | None = None,
                  tls_context: ssl.SSLContext | None = None,
                  on_ready: Callable[[list[str]], None] | None = None) -> None:
    """Run the delivery port (and the submission port) until SIGTERM or SIGINT.

    TLS (STARTTLS) comes from `tls_context`, else from INBOUND_TLS_CERT/INBOUND_TLS_KEY.
    """
    tls_context = tls_context or tls_context_from_config(app.config)
    hostname = app.config.get("INBOUND_HOSTNAME") or socket.getfqdn()
    controllers = []
    try:
        controllers.append(start_listener(app, host, port, mode="lmtp" if lmtp else "smtp",
                                          tls_context=tls_context, hostname=hostname))
        if submission_port:
            controllers.append(start_listener(app, host, submission_port, mode="submission",
                                              tls_context=tls_context, hostname=hostname))
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda _s, _f: stop.set())
        if on_ready:
            lines = [f"{'LMTP' if lmtp else 'SMTP'} delivery for hosted domains on "
                     f"{host}:{controllers[0].port}"]
            if submission_port:
                security = "STARTTLS" if tls_context else "loopback only"
                lines.append(f"Submission (AUTH, {security}) on {host}:{controllers[1].port}")
            on_ready(lines)
        while not stop.wait(1.0):
            pass
        log.info("inbound: stopping")
    finally:
        for controller in controllers:
            stop_listener(controller)
