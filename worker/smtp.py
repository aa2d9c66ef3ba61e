"""SMTP submission client: verified TLS, classified errors, several messages per connection.

Plain values in, plain values out; nothing here knows about Flask or the database. The
send job picks the transport, opens one `SmtpConnection` and sends its batch through it.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import select
import smtplib
import socket
import ssl
from collections.abc import Callable, Iterable
from typing import Literal

Security = Literal["ssl", "starttls", "none"]
ErrorKind = Literal[
    "auth", "tls", "cert_invalid", "connect", "timeout",
    "relay_denied", "rejected", "temporary", "uncertain",
]

SETTINGS_HINT = "Settings » Send Mail As"

# Kinds that a later retry (with backoff) may cure without anyone changing a setting.
_TEMPORARY_KINDS = frozenset({"connect", "timeout", "temporary"})


class SmtpError(Exception):
    """A classified SMTP failure: what went wrong, the server's words, and whether to retry."""

    def __init__(
        self,
        kind: ErrorKind,
        user_message: str,
        *,
        code: int | None = None,
        server_text: str = "",
        refused: dict[str, RecipientRefusal] | None = None,
    ) -> None:
        super().__init__(f"{kind}: {code or ''} {server_text}".strip() if server_text else f"{kind}: {user_message}")
        self.kind: ErrorKind = kind
        self.code = code
        self.server_text = server_text
        self.user_message = user_message
        self.temporary = kind in _TEMPORARY_KINDS
        # Per-recipient replies when every recipient was refused (kind then follows the first
        # permanent refusal, or "temporary" when all of them were 4xx).
        self.refused: dict[str, RecipientRefusal] = refused or {}

    def __reduce__(self) -> tuple:
        # Keyword-only arguments: the default Exception pickling (used by job queues) would fail.
        return (_rebuild_smtp_error, (self.kind, self.user_message, self.code, self.server_text, self.refused))


def _rebuild_smtp_error(kind: ErrorKind, user_message: str, code: int | None, server_text: str,
                        refused: dict[str, RecipientRefusal]) -> SmtpError:
    return SmtpError(kind, user_message, code=code, server_text=server_text, refused=refused)


@dataclasses.dataclass(frozen=True)
class RecipientRefusal:
    """The server's reply to one refused RCPT TO."""

    code: int
    text: str

    @property
    def temporary(self) -> bool:
        """True for a 4xx reply: retry this recipient later."""
        return 400 <= self.code < 500


@dataclasses.dataclass(frozen=True)
class SendOutcome:
    """What happened to one message: who got it, who was refused and why, the final reply."""

    accepted: list[str]
    refused: dict[str, RecipientRefusal]
    reply_code: int
    reply_text: str

    @property
    def temporarily_refused(self) -> list[str]:
        """Recipients refused with 4xx: send to these (only) again later."""
        return [rcpt for rcpt, refusal in self.refused.items() if refusal.temporary]

    @property
    def permanently_refused(self) -> list[str]:
        """Recipients refused with 5xx: never retry these."""
        return [rcpt for rcpt, refusal in self.refused.items() if not refusal.temporary]


@functools.lru_cache(maxsize=8)
def _tls_context_for(ca_bundle: str | None, bundle_mtime_ns: int | None) -> ssl.SSLContext:
    """Build (once per bundle version) a verifying context: system CAs plus the bundle."""
    # create_default_context(cafile=...) would trust ONLY the bundle; load both instead.
    context = ssl.create_default_context()
    if ca_bundle:
        context.load_verify_locations(cafile=ca_bundle)
    return context


def tls_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    """Return the process-wide verifying TLS context for this CA bundle (None: system CAs only)."""
    # A context costs ~21 ms to build; keyed on mtime so a replaced bundle is picked up.
    mtime = os.stat(ca_bundle).st_mtime_ns if ca_bundle else None
    return _tls_context_for(ca_bundle, mtime)


class EndOfDataWithheld(Exception):
    """Raised by a `before_end_of_data` hook: this message must not be sent after all.

    The session is closed without the line that ends the data, so the server discards what
    it read of the body.
    """


class _TrackingMixin:
    """smtplib additions: TCP_NODELAY, knowing whether the end of DATA went out, and a hook
    called just before it goes (after the body: see send)."""

    end_of_data_sent: bool = False
    before_end_of_data = None

    def _get_socket(self, host: str, port: int, timeout: float | None) -> socket.socket:
        sock = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        # Nagle + delayed ACK cost ~40 ms per message with STARTTLS (22 → 374 msg/s measured).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def send(self, s: bytes | str) -> None:
        # smtplib.data() writes the dot-stuffed payload and its terminator in ONE send() and
        # commands are single lines, so a completed send ending in CRLF.CRLF is the end of DATA.
        # sendall() raising means the terminator did not fully reach the kernel.
        end_of_data = isinstance(s, bytes) and s.endswith(b"\r\n.\r\n")
        if end_of_data and self.before_end_of_data is not None:
            # The body goes first, the ".\r\n" that ends it only after the hook: the body
            # crosses the network (and the server reads it) while the hook waits, and a
            # withheld message is still only a session closed before its end of DATA.
            super().send(memoryview(s)[:-3])  # type: ignore[misc]
            self.before_end_of_data()  # may raise EndOfDataWithheld
            # A server says nothing during DATA. One that hung up while the hook waited has
            # dropped the body, and the end of DATA would look sent (the first write after
            # a FIN succeeds): a session lost before its end of DATA, so the message is
            # retried, not "uncertain". One that spoke (a 421, a 552) is answered by what
            # it said. (Over TLS only words already decrypted are seen: a record with none,
            # such as a TLS 1.3 key update, must not end a healthy session. A hang-up there,
            # or one after this look, still ends "uncertain".)
            heard = _heard_during_data(self.sock)
            if heard == "closed":
                raise smtplib.SMTPServerDisconnected(
                    "The server closed the session during DATA")
            if heard == "spoke":
                raise smtplib.SMTPResponseException(*self.getreply())  # type: ignore[misc]
            super().send(s[-3:])  # type: ignore[misc]
        else:
            super().send(s)  # type: ignore[misc]
        if end_of_data:
            self.end_of_data_sent = True


def _heard_during_data(sock: socket.socket) -> str:
    """What the server did since its last reply, without waiting and without reading it:
    "spoke", "closed" or "" (nothing)."""
    if isinstance(sock, ssl.SSLSocket):
        return "spoke" if sock.pending() else ""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    if not poller.poll(0):
        return ""  # (recv below would wait for the socket's timeout first)
    try:
        return "spoke" if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) else "closed"
    except BlockingIOError:
        return ""
    except OSError:  # reset
        return "closed"


class _PlainOrStarttlsSMTP(_TrackingMixin, smtplib.SMTP):
    pass


class _ImplicitTlsSMTP(_TrackingMixin, smtplib.SMTP_SSL):
    pass


def _decode(text: bytes | str) -> str:
    """Server replies are meant to be ASCII; be tolerant of anything else."""
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)


def _user_message_for_reply(kind: ErrorKind, code: int, text: str) -> str:
    """Words a user can act on for a classified server reply."""
    said = f"{code} {text}".strip()
    if kind == "auth":
        if code == 530:
            return ("The SMTP server requires signing in before sending "
                    f"(it said: {said}). Add the username and password in {SETTINGS_HINT}.")
        if code == 534:
            return ("The SMTP server refused this way of signing in "
                    f"(it said: {said}). Some providers need an app password or a web login first; "
                    f"then update the password in {SETTINGS_HINT}.")
        return ("The SMTP server rejected the username or password for this address. "
                f"Update them in {SETTINGS_HINT}.")
    if kind == "relay_denied":
        return ("The SMTP server refused to relay this message "
                f"(it said: {said}). It may require signing in, or may not allow sending as this "
                f"From address; check {SETTINGS_HINT}.")
    if kind == "temporary":
        return f"The SMTP server is temporarily unable to accept the message (it said: {said}). It will be retried."
    if kind == "tls":
        return ("The SMTP server could not start a secure connection "
                f"(it said: {said}). Check the security setting in {SETTINGS_HINT}.")
    return f"The SMTP server rejected the message (it said: {said})."


def _error_from_reply(code: int, raw_text: bytes | str, stage: str) -> SmtpError:
    """Classify one SMTP reply code/text seen at a given stage (AUTH, MAIL, RCPT, DATA...)."""
    text = _decode(raw_text)
    lowered = text.lower()
    kind: ErrorKind
    if code in (534, 535) or (code == 530 and "starttls" not in lowered):
        kind = "auth"
    elif code == 538 or (code == 530 and "starttls" in lowered):
        kind = "tls"  # RFC 4954 538 / "530 Must issue a STARTTLS command first"
    elif 400 <= code < 500:
        kind = "temporary"
    elif code in (550, 551, 553, 554) and (
        "relay" in lowered or (stage in ("MAIL", "RCPT") and text.startswith("5.7.1"))
    ):
        kind = "relay_denied"
    else:
        kind = "rejected"  # any other 5xx, and nonsense codes (-1 from smtplib)
    return SmtpError(kind, _user_message_for_reply(kind, code, text), code=code, server_text=text)


def _cert_message(error: ssl.SSLCertVerificationError, host: str) -> str:
    """A sentence for each certificate failure a user can meet (OpenSSL verify codes)."""
    code = getattr(error, "verify_code", None)
    detail = getattr(error, "verify_message", "") or str(error)
    if code in (18, 19):
        problem = "is self-signed and not trusted"
    elif code in (62, 64):  # host name / IP address mismatch
        problem = f"is not valid for the name {host} (use the server name written on its certificate)"
    elif code == 10:
        problem = "has expired"
    elif code in (2, 20, 21):
        problem = "was issued by an authority that is not trusted"
    else:
        problem = f"could not be verified ({detail})"
    return (f"The SMTP server's certificate {problem}. The connection was not used. "
            f"Check the server name in {SETTINGS_HINT}, or ask the server's administrator.")


class SmtpConnection:
    """One SMTP session (connect, EHLO, STARTTLS, AUTH) that can send several messages."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        security: Security,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
        ca_bundle: str | None = None,
        local_hostname: str | None = None,
    ) -> None:
        if security not in ("ssl", "starttls", "none"):
            raise ValueError(f"security must be 'ssl', 'starttls' or 'none', not {security!r}")
        self.host = host
        self.port = port
        self.security = security
        self.username = username
        self.password = password
        self.timeout = timeout
        self.ca_bundle = ca_bundle
        self.local_hostname = local_hostname
        self._client: _PlainOrStarttlsSMTP | _ImplicitTlsSMTP | None = None

    def __enter__(self) -> SmtpConnection:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        """True while the session can still carry a message."""
        return self._client is not None and self._client.sock is not None

    def set_timeout(self, seconds: float) -> None:
        """Wait this long for each reply from now on (a session opened with a shorter one)."""
        self.timeout = seconds
        if self._client is not None and self._client.sock is not None:
            self._client.sock.settimeout(seconds)

    def open(self) -> None:
        """Connect, greet, secure and sign in; raise a classified SmtpError on any failure."""
        if self._client is not None:
            raise RuntimeError("this SmtpConnection is already open")
        self._refuse_line_breaks()  # before connecting: nothing of these credentials leaves
        # Outside the try: an unreadable CA bundle is the operator's error, not a server's.
        context = tls_context(self.ca_bundle) if self.security != "none" else None
        try:
            if self.security == "ssl":
                self._client = _ImplicitTlsSMTP(
                    self.host, self.port, local_hostname=self.local_hostname,
                    timeout=self.timeout, context=context,
                )
            else:
                self._client = _PlainOrStarttlsSMTP(
                    self.host, self.port, local_hostname=self.local_hostname, timeout=self.timeout,
                )
            self._client.ehlo_or_helo_if_needed()
            if self.security == "starttls":
                if not self._client.has_extn("starttls"):
                    raise SmtpError(
                        "tls",
                        f"The SMTP server {self.host}:{self.port} does not offer STARTTLS. "
                        f"Choose SSL (usually port 465) in {SETTINGS_HINT}.",
                    )
                self._client.starttls(context=context)
                self._client.ehlo()  # RFC 3207: forget pre-TLS capabilities, ask again
            if self.username:
                self._login()
        except BaseException as error:
            self._abandon()
            if isinstance(error, Exception) and not isinstance(error, SmtpError):
                raise self._classify(error, stage="CONNECT") from error
            raise

    def _refuse_line_breaks(self) -> None:
        # smtplib base64-encodes AUTH, so a CR/LF cannot become a command here as it can in
        # POP3; refused anyway, so that every mail login follows one rule.
        for what, value in (("username", self.username), ("password", self.password)):
            if value and any(c in value for c in "\r\n\0"):
                raise SmtpError(
                    "auth",
                    f"The {what} for {self.host}:{self.port} contains a line break, which "
                    f"cannot be sent. Enter the username and password again in {SETTINGS_HINT}.",
                )

    def _login(self) -> None:
        assert self._client is not None
        if not self._client.has_extn("auth"):
            # aiosmtpd, Postfix, Exchange: AUTH is not advertised before TLS.
            raise SmtpError(
                "auth",
                f"The SMTP server {self.host}:{self.port} does not offer signing in on this "
                f"connection. Choose SSL or STARTTLS in {SETTINGS_HINT}.",
            )
        self._client.login(self.username or "", self.password or "")

    def send(self, envelope_from: str, recipients: Iterable[str], raw: bytes,
             before_end_of_data: Callable[[], None] | None = None) -> SendOutcome:
        """Send one message's exact bytes; report per-recipient refusals, raise if nobody got it.

        `before_end_of_data` is called after the server said 354 and the body went, before
        the line that ends the data; raising EndOfDataWithheld there closes the session
        with nothing delivered.
        """
        client = self._client
        if client is None or client.sock is None:
            raise SmtpError("connect", f"The connection to the SMTP server {self.host}:{self.port} is closed; it will be retried.")
        recipients = list(recipients)
        if not recipients:
            raise ValueError("a message needs at least one envelope recipient")
        mail_options: list[str] = []
        if client.has_extn("size"):
            mail_options.append(f"SIZE={len(raw)}")  # lets the server refuse an oversized message early
        if client.has_extn("8bitmime") and not raw.isascii():
            mail_options.append("BODY=8BITMIME")
        if not envelope_from.isascii() or not all(r.isascii() for r in recipients):
            if not client.has_extn("smtputf8"):
                raise SmtpError("rejected", "The SMTP server cannot send to or from addresses with non-ASCII characters.")
            mail_options.append("SMTPUTF8")
        try:
            code, text = client.mail(envelope_from, mail_options)
            if code != 250:
                client._rset()
                raise _error_from_reply(code, text, "MAIL")
            accepted: list[str] = []
            refused: dict[str, RecipientRefusal] = {}
            for recipient in recipients:
                code, text = client.rcpt(recipient)
                if code == 421:  # the server is closing the session: nothing more will be accepted
                    self._abandon()
                    raise _error_from_reply(code, text, "RCPT")
                if code in (250, 251):
                    accepted.append(recipient)
                else:
                    refused[recipient] = RecipientRefusal(code, _decode(text))
            if not accepted:
                client._rset()
                raise self._all_refused(refused)
            client.end_of_data_sent = False
            client.before_end_of_data = before_end_of_data
            try:
                code, text = client.data(raw)
            except smtplib.SMTPDataError as error:  # the DATA command itself was refused: nothing sent
                client._rset()
                raise _error_from_reply(error.smtp_code, error.smtp_error, "DATA") from error
            except (smtplib.SMTPServerDisconnected, OSError) as error:
                if client.end_of_data_sent:
                    # RFC 1047: the server may have accepted it and died before saying so.
                    self._abandon()
                    raise SmtpError(
                        "uncertain",
                        "The connection was lost after the message was transmitted and before the "
                        "server confirmed it, so it may have been delivered. Check with the recipients "
                        "before sending it again.",
                        server_text=str(error),
                    ) from error
                raise
            finally:
                client.before_end_of_data = None
            if code != 250:
                client._rset()
                raise _error_from_reply(code, text, "DATA")
            return SendOutcome(accepted=accepted, refused=refused, reply_code=code, reply_text=_decode(text))
        except SmtpError:
            raise
        except EndOfDataWithheld:
            self._abandon()  # the server is reading the body: only closing ends it unsent
            raise
        except Exception as error:
            self._abandon()
            raise self._classify(error, stage="SEND") from error

    def _all_refused(self, refused: dict[str, RecipientRefusal]) -> SmtpError:
        """Classify a transaction where no recipient was accepted."""
        permanent = [r for r in refused.values() if not r.temporary]
        chosen = permanent[0] if permanent else next(iter(refused.values()))
        error = _error_from_reply(chosen.code, chosen.text, "RCPT")
        error.refused = dict(refused)
        return error

    def close(self) -> None:
        """Say QUIT if the session is alive, then close the socket; never raises."""
        client = self._client
        if client is not None and client.sock is not None:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                pass  # the server going away during QUIT changes nothing for us
        self._abandon()

    def _abandon(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _classify(self, error: Exception, *, stage: str) -> SmtpError:
        """Turn smtplib/ssl/socket exceptions into one SmtpError with a user message."""
        where = f"{self.host}:{self.port}"
        if isinstance(error, ssl.SSLCertVerificationError):
            return SmtpError("cert_invalid", _cert_message(error, self.host), server_text=str(error))
        if isinstance(error, smtplib.SMTPResponseException):
            # SMTPAuthenticationError, SMTPConnectError (non-220 greeting), SMTPResponseException
            # from a refused STARTTLS, SMTPHeloError.
            classified = _error_from_reply(error.smtp_code, error.smtp_error, stage)
            if stage == "CONNECT" and classified.kind == "rejected":
                if isinstance(error, smtplib.SMTPConnectError):  # 5xx greeting: not accepting us
                    return SmtpError("connect", f"The SMTP server {where} refused the connection "
                                     f"(it said: {error.smtp_code} {classified.server_text}).",
                                     code=error.smtp_code, server_text=classified.server_text)
                if type(error) is smtplib.SMTPResponseException:  # STARTTLS refused (501 etc.)
                    return SmtpError("tls", _user_message_for_reply("tls", error.smtp_code, classified.server_text),
                                     code=error.smtp_code, server_text=classified.server_text)
            return classified
        if isinstance(error, smtplib.SMTPNotSupportedError):
            return SmtpError("tls", f"The SMTP server {where} does not support what this setting needs ({error}). "
                             f"Check the security setting in {SETTINGS_HINT}.", server_text=str(error))
        if isinstance(error, ssl.SSLError):
            return SmtpError(
                "tls",
                f"Could not set up a secure connection with {where} ({error.reason or error}). "
                f"Check the port and security setting in {SETTINGS_HINT} "
                "(SSL is usually port 465, STARTTLS port 587).",
                server_text=str(error),
            )
        # smtplib turns a timeout while reading a reply into SMTPServerDisconnected; the
        # original socket error is its __context__.
        cause = error.__context__ if isinstance(error, smtplib.SMTPServerDisconnected) else error
        if isinstance(cause, TimeoutError):
            return SmtpError("timeout", f"The SMTP server {where} did not answer within {self.timeout:g} s. "
                             "It will be retried.", server_text=str(error))
        if isinstance(error, socket.gaierror):
            return SmtpError("connect", f"The SMTP server name {self.host} could not be found. "
                             f"Check it in {SETTINGS_HINT}.", server_text=str(error))
        if isinstance(error, (smtplib.SMTPServerDisconnected, OSError)):
            return SmtpError("connect", f"Could not talk to the SMTP server {where} ({error}). "
                             f"Check the server name and port in {SETTINGS_HINT}; it will be retried.",
                             server_text=str(error))
        if isinstance(error, smtplib.SMTPException):  # "No suitable authentication method found."
            return SmtpError("auth", f"The SMTP server {where} offers no sign-in method we support ({error}).",
                             server_text=str(error))
        return SmtpError("connect", f"Unexpected failure talking to {where}: {error!r}", server_text=str(error))


def test_connection(
    host: str,
    port: int,
    *,
    security: Security,
    username: str | None = None,
    password: str | None = None,
    timeout: float = 15.0,
    ca_bundle: str | None = None,
) -> None:
    """Check that these settings connect, secure and sign in (then QUIT); raise SmtpError if not."""
    with SmtpConnection(host, port, security=security, username=username, password=password,
                        timeout=timeout, ca_bundle=ca_bundle):
        pass


# pytest would collect the module-level test_connection when a test imports it by name.
test_connection.__test__ = False  # type: ignore[attr-defined]
