"""POP3 client for fetching external mailboxes: plain values in, bytes and PopError out.

Built on poplib, with what poplib lacks for real mailboxes: verified TLS by default, lines
longer than poplib's 2,048-byte limit (HTML mail has them), pipelined RETR (RFC 2449
PIPELINING), sockets closed on every failure path, and errors sorted into kinds a caller
can count and sentences a user can act on (RFC 3206 response codes included).
"""

from __future__ import annotations

import functools
import poplib
import re
import socket
import ssl
import time
from collections import deque
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Literal

Security = Literal["ssl", "starttls", "none"]
SECURITY_MODES: tuple[str, ...] = ("ssl", "starttls", "none")
DEFAULT_TIMEOUT_SECONDS = 30.0

# How many RETR commands may be outstanding at once when pipelining. The commands are tiny,
# so the client never blocks on sending while the server blocks on its own output.
PIPELINE_WINDOW = 64
# readline() chunk for message bodies: bounds one read, not the line length.
_READ_CHUNK = 65536
# The end of a multi-line answer: a line holding only "." (CRLF, or a bare LF from a lax server).
_BODY_END = re.compile(rb"\n\.\r?\n")


def _terminator_end(buffer: bytearray, start: int) -> int:
    """The end of a "." line starting at ``start`` if the buffer holds it whole, else 0."""
    for ending in (b".\r\n", b".\n"):
        if buffer[start:start + len(ending)] == ending:
            return start + len(ending)
    return 0

ERROR_KINDS: tuple[str, ...] = (
    "auth",
    "web_login_required",
    "in_use",
    "login_delay",
    "sys_temp",
    "sys_perm",
    "cert_invalid",
    "tls",
    "connect",
    "timeout",
    "protocol",
)

# Which failure counter each kind feeds. RFC 3206 [IN-USE] and [LOGIN-DELAY] say "come back
# later", not "wrong password": they count against nothing, so a busy mailbox never disables
# an account. [SYS/TEMP] and [SYS/PERM] are server-side trouble, counted like a connection
# failure.
_COUNTS_AS: dict[str, str | None] = {
    "auth": "auth",
    "web_login_required": "auth",
    "in_use": None,
    "login_delay": None,
    "sys_temp": "connection",
    "sys_perm": "connection",
    "cert_invalid": "connection",
    "tls": "connection",
    "connect": "connection",
    "timeout": "connection",
    "protocol": "connection",
}

_RESPONSE_CODE = re.compile(r"^-ERR\s*\[([A-Za-z0-9/-]+)\]", re.IGNORECASE)
# Gmail: "-ERR [AUTH] Web login required: https://support.google.com/mail/answer/78754";
# older Gmail and others say "please log in via your web browser".
_WEB_LOGIN = re.compile(r"web login required|log ?in via your web browser", re.IGNORECASE)


class PopError(Exception):
    """A POP3 failure, sorted: what kind, which failure counter, what to tell the user."""

    def __init__(self, kind: str, user_message: str, server_text: str = "") -> None:
        if kind not in _COUNTS_AS:
            raise ValueError(f"unknown PopError kind {kind!r}")
        super().__init__(f"{kind}: {user_message}" + (f" (server: {server_text})" if server_text else ""))
        self.kind = kind
        self.counts_as: str | None = _COUNTS_AS[kind]
        self.server_text = server_text
        self.user_message = user_message

    def __reduce__(self) -> tuple[type[PopError], tuple[str, str, str]]:
        # Picklable with all its fields (job queues pickle exceptions).
        return (PopError, (self.kind, self.user_message, self.server_text))


@functools.lru_cache(maxsize=None)
def tls_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    """Return the process-wide verifying TLS context: system CAs plus ca_bundle's, if given."""
    # create_default_context() costs ~21 ms, so one per bundle per process. It verifies the
    # chain and the host name; poplib without a context verifies neither.
    context = ssl.create_default_context()
    if ca_bundle:
        context.load_verify_locations(cafile=ca_bundle)
    return context


def _decode(value: object) -> str:
    """Server text as str, whatever poplib handed us (bytes or str)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _server_error(text: str, host: str, port: int, during_login: bool) -> PopError:
    """Map an -ERR line (with an RFC 3206 code, or none) to a PopError."""
    match = _RESPONSE_CODE.match(text)
    code = match.group(1).upper() if match else ""
    if _WEB_LOGIN.search(text):
        return PopError(
            "web_login_required",
            "The provider wants you to sign in on its website before this app may log in. "
            "Sign in on the web, use an app password, or for Gmail visit "
            "https://accounts.google.com/DisplayUnlockCaptcha, then try again.",
            text,
        )
    if code == "IN-USE":
        return PopError(
            "in_use",
            "Another program is reading this mailbox right now. Close it (or wait a few "
            "minutes); we will try again.",
            text,
        )
    if code == "LOGIN-DELAY":
        return PopError(
            "login_delay",
            "The provider allows logins to this mailbox only every few minutes. "
            "We will try again later; nothing to change.",
            text,
        )
    if code == "SYS/TEMP":
        return PopError(
            "sys_temp",
            f"The mail server {host} has a temporary problem. We will try again later.",
            text,
        )
    if code == "SYS/PERM":
        return PopError(
            "sys_perm",
            "The provider refuses POP access to this mailbox. Change it in the provider's "
            "settings (for Gmail: Settings, Forwarding and POP/IMAP, enable POP).",
            text,
        )
    if code == "AUTH" or during_login:
        return PopError(
            "auth",
            "The server rejected the username or password. Check them, and for Gmail use an "
            "app password.",
            text,
        )
    return PopError(
        "protocol", f"The mail server {host} answered with an error: {text[:200]}", text
    )


def _certificate_error(exc: ssl.SSLCertVerificationError, host: str) -> PopError:
    """A sentence for each certificate failure a user or admin can do something about."""
    text = f"{exc.verify_message} (verify code {exc.verify_code})"
    code = exc.verify_code
    if code in (18, 19):
        message = (
            f"The server {host} presents a self-signed certificate, so we cannot check it is "
            "the real server. Ask your provider for the correct server name, or ask your "
            "administrator to trust this certificate."
        )
    elif code == 10:
        message = (
            f"The security certificate of {host} has expired. The provider must renew it; "
            "until then the connection is not safe."
        )
    elif code in (62, 64):  # 62: host name, 64: IP address mismatch
        message = (
            f"The server's certificate is not valid for the name {host}. Check the server "
            "name: use exactly the one your provider documents."
        )
    elif code == 9:
        message = (
            f"The security certificate of {host} is not valid yet. Check this computer's clock, "
            "or ask the provider."
        )
    elif code in (2, 20, 21):
        message = (
            f"The certificate of {host} was issued by an authority we do not trust. Ask your "
            "administrator to add that authority, or check the server name."
        )
    else:
        message = f"The security certificate of {host} is not valid ({exc.verify_message})."
    return PopError("cert_invalid", message, text)


def classify_error(
    exc: BaseException, host: str, port: int, *, during_login: bool = False
) -> PopError:
    """Turn any exception raised while talking to a POP server into a PopError."""
    if isinstance(exc, PopError):
        return exc
    if isinstance(exc, poplib.error_proto):
        text = _decode(exc.args[0] if exc.args else "")
        if text == "-ERR EOF":
            return PopError(
                "connect",
                f"The mail server {host} closed the connection unexpectedly. We will try again.",
                text,
            )
        if "STLS not supported" in text:
            return PopError(
                "tls",
                f"The server {host} does not offer STARTTLS on port {port}. Choose SSL "
                "(usually port 995) instead.",
                text,
            )
        if text == "line too long":
            return PopError("protocol", f"The mail server {host} sent a malformed answer.", text)
        return _server_error(text, host, port, during_login)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _certificate_error(exc, host)
    if isinstance(exc, ssl.SSLError):
        if exc.reason == "WRONG_VERSION_NUMBER":
            return PopError(
                "tls",
                f"Port {port} on {host} does not speak SSL. Choose STARTTLS for this port, or "
                "use SSL on port 995.",
                str(exc),
            )
        return PopError(
            "tls",
            f"A secure connection to {host} could not be set up ({exc.reason or exc}). Check "
            "the port and security setting.",
            str(exc),
        )
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError since 3.10
        hint = " If this is the SSL port, choose SSL as the security setting." if port in (995, 465) else ""
        return PopError(
            "timeout",
            f"The mail server {host} did not answer in time on port {port}.{hint} We will try "
            "again.",
            str(exc),
        )
    if isinstance(exc, socket.gaierror):
        return PopError(
            "connect",
            f"The server name {host} could not be found. Check its spelling.",
            str(exc),
        )
    if isinstance(exc, ConnectionRefusedError):
        return PopError(
            "connect",
            f"{host} refused the connection on port {port}. Check the server name, port and "
            "security setting.",
            str(exc),
        )
    if isinstance(exc, (ConnectionError, EOFError)):
        return PopError(
            "connect",
            f"The connection to {host} was lost. We will try again.",
            str(exc),
        )
    if isinstance(exc, OSError):
        return PopError(
            "connect",
            f"Could not reach {host} on port {port} ({exc.strerror or exc}). Check the server "
            "name and port.",
            str(exc),
        )
    return PopError("protocol", f"Unexpected answer from the mail server {host}.", repr(exc))


class _Pop3Connection(poplib.POP3):
    """poplib.POP3 that can start in TLS, never leaks its socket, and reads long lines."""

    def __init__(
        self, host: str, port: int, timeout: float, context: ssl.SSLContext | None
    ) -> None:
        self._implicit_tls_context = context
        self.sock = None
        self.file = None
        try:
            super().__init__(host, port, timeout)
        except BaseException:
            # poplib leaves the socket open when the greeting fails or times out.
            self.close()
            raise

    @property
    def file(self):
        return self._file

    @file.setter
    def file(self, value) -> None:
        # poplib reads through sock.makefile("rb"), whose 8 KB buffer makes a 20 KB message
        # three system calls; in the fetch job's reader thread each one gives the
        # interpreter lock to the thread storing messages and waits to get it back. A
        # buffer of _READ_CHUNK reads several pipelined messages per call. poplib sets the
        # file right after the socket (and after STARTTLS), before anything is read from it.
        sock = getattr(self, "sock", None)
        if sock is not None and isinstance(getattr(value, "raw", None), socket.SocketIO):
            value.close()
            value = sock.makefile("rb", buffering=_READ_CHUNK)
        self._file = value

    def _create_socket(self, timeout: float) -> socket.socket:
        sock = super()._create_socket(timeout)
        try:
            # Pipelined commands are small writes; don't let Nagle hold them back.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._implicit_tls_context is not None:
                sock = self._implicit_tls_context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        return sock

    def _getline(self) -> tuple[bytes, int]:
        # No _MAXLINE: status and listing lines are short, but TOP bodies may not be, and
        # poplib's limit desynchronizes the connection when hit.
        line = self.file.readline()
        if not line:
            raise poplib.error_proto("-ERR EOF")
        octets = len(line)
        if line[-2:] == b"\r\n":
            return line[:-2], octets
        if line[:1] == b"\r":
            return line[1:-1], octets
        return line[:-1], octets

    def read_message(self) -> bytes:
        """Read one multi-line body after its +OK: raw bytes, dot-unstuffed, line ends kept.

        Reads what the buffer holds and looks for the terminating "." line with one search
        per read, instead of a Python call per line: a 20 KB message is a few reads, not
        hundreds of lines. Bytes after the terminator (a pipelined answer) stay buffered.
        """
        peek, read = self.file.peek, self.file.read
        body = bytearray()
        while True:
            chunk = peek(_READ_CHUNK)
            if not chunk:
                raise poplib.error_proto("-ERR EOF")
            searched_from = max(len(body) - 3, 0)  # a terminator split across reads
            body += chunk
            if len(body) >= 2 and body[0] == 0x2E and body[1:2] in (b"\r", b"\n"):
                end = _terminator_end(body, 0)  # an empty body: the first line is "."
                if end:
                    read(end - (len(body) - len(chunk)))
                    return b""
            found = _BODY_END.search(body, searched_from)
            if found is None:
                read(len(chunk))
                continue
            read(found.end() - (len(body) - len(chunk)))
            del body[found.start() + 1:]  # keep the last line's line end
            if body[:1] == b".":
                del body[:1]  # RFC 1939 byte-stuffing, first line
            return bytes(body).replace(b"\n.", b"\n")  # ... and every other line

    def send_raw(self, data: bytes) -> None:
        """Send several already-terminated command lines in one write."""
        self.sock.sendall(data)

    def close(self) -> None:
        try:
            super().close()
        except OSError:
            pass  # the peer (or a failed TLS handshake) already closed it


class PopSession:
    """A logged-in POP3 session; use it as a context manager.

    Server and network failures raise only PopError. Sending another command while a
    pipelined retrieve_many() is still being iterated is a programming error (RuntimeError).
    """

    def __init__(self, connection: _Pop3Connection, host: str, port: int) -> None:
        self._connection: _Pop3Connection | None = connection
        self.host = host
        self.port = port
        self._capabilities: dict[str, list[str]] | None = None
        self._pipelined_reads_pending = False

    def __enter__(self) -> PopSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _live(self) -> _Pop3Connection:
        if self._pipelined_reads_pending:
            # A command now would read a RETR answer still in flight as its own reply.
            raise RuntimeError(
                "finish (or close) retrieve_many() before sending other commands; "
                "to delete, collect the numbers and call delete_many() afterwards"
            )
        if self._connection is None:
            raise PopError("protocol", "The connection to the mail server is already closed.")
        return self._connection

    def _fail(self, exc: BaseException) -> PopError:
        """Classify exc; drop the connection unless it was a plain -ERR answer (still in sync)."""
        server_answered = isinstance(exc, poplib.error_proto) and bool(exc.args) and isinstance(
            exc.args[0], bytes
        )
        if not server_answered:
            self.close()
        return classify_error(exc, self.host, self.port)

    def capabilities(self) -> dict[str, list[str]]:
        """The server's CAPA answer after login ({} when the server has no CAPA)."""
        if self._capabilities is None:
            connection = self._live()
            try:
                self._capabilities = connection.capa()
            except poplib.error_proto:
                self._capabilities = {}  # RFC 1939 servers without CAPA: that is not an error
            except Exception as exc:
                raise self._fail(exc) from exc
        return self._capabilities

    def stat(self) -> tuple[int, int]:
        """(message count, total octets) from STAT."""
        connection = self._live()
        try:
            return connection.stat()
        except Exception as exc:
            raise self._fail(exc) from exc

    def uidls(self) -> list[tuple[int, str]]:
        """Every (message number, UIDL) as the server lists them, duplicates included."""
        result = []
        for line in self._listing("UIDL"):
            number, _, uidl = line.partition(b" ")
            # UIDLs are printable ASCII (RFC 1939); latin-1 keeps any stray byte round-trippable.
            result.append((int(number), uidl.strip().decode("latin-1")))
        return result

    def sizes(self) -> dict[int, int]:
        """Message number -> size in octets, from LIST."""
        result = {}
        for line in self._listing("LIST"):
            number, size = line.split()[:2]
            result[int(number)] = int(size)
        return result

    def _listing(self, command: str) -> list[bytes]:
        """The lines of a multi-line listing, read in bulk (a large mailbox lists 10,000s)."""
        connection = self._live()
        try:
            connection._putcmd(command)
            connection._getresp()
            body = connection.read_message()
        except Exception as exc:
            raise self._fail(exc) from exc
        return [line for line in body.replace(b"\r\n", b"\n").split(b"\n") if line.strip()]

    def retrieve(self, num: int) -> bytes:
        """The message's bytes as sent (CRLF line ends), after dot-unstuffing."""
        connection = self._live()
        try:
            connection._putcmd(f"RETR {int(num)}")
            connection._getresp()
            return connection.read_message()
        except Exception as exc:
            raise self._fail(exc) from exc

    def retrieve_many(self, nums: Iterable[int]) -> Iterator[tuple[int, bytes]]:
        """Yield (num, bytes) for each num in order; pipelined when the server allows it."""
        numbers = [int(n) for n in nums]
        if "PIPELINING" not in self.capabilities():
            for num in numbers:
                yield num, self.retrieve(num)
            return
        connection = self._live()
        pending: deque[int] = deque()
        next_index = 0
        self._pipelined_reads_pending = True
        try:
            while next_index < len(numbers) or pending:
                # Refill the window in one write once half of it has been read.
                if next_index < len(numbers) and len(pending) <= PIPELINE_WINDOW // 2:
                    batch = numbers[next_index : next_index + PIPELINE_WINDOW - len(pending)]
                    connection.send_raw(b"".join(b"RETR %d\r\n" % n for n in batch))
                    pending.extend(batch)
                    next_index += len(batch)
                num = pending[0]
                connection._getresp()
                body = connection.read_message()
                pending.popleft()
                yield num, body
        except Exception as exc:
            raise self._fail(exc) from exc
        finally:
            self._pipelined_reads_pending = False
            # The caller stopped early or an error struck: answers still in flight would
            # desynchronize the next command, so give up on this connection.
            if pending:
                self.close()

    def delete(self, num: int) -> None:
        """Mark a message for deletion; the server deletes it only when quit() succeeds."""
        connection = self._live()
        try:
            connection.dele(int(num))
        except Exception as exc:
            raise self._fail(exc) from exc

    def delete_many(self, nums: Iterable[int]) -> None:
        """Mark many messages for deletion, pipelined when the server allows it."""
        numbers = [int(n) for n in nums]
        if "PIPELINING" not in self.capabilities():
            for num in numbers:
                self.delete(num)
            return
        connection = self._live()
        try:
            for start in range(0, len(numbers), PIPELINE_WINDOW):
                batch = numbers[start : start + PIPELINE_WINDOW]
                connection.send_raw(b"".join(b"DELE %d\r\n" % n for n in batch))
                for _ in batch:
                    connection._getresp()
        except Exception as exc:
            # Even a plain -ERR leaves later answers in flight: the connection cannot be reused.
            self.close()
            raise classify_error(exc, self.host, self.port) from exc

    def quit(self) -> None:
        """Send QUIT (which commits DELEs on the server) and close the connection."""
        connection = self._live()
        try:
            connection.quit()
        except Exception as exc:
            raise self._fail(exc) from exc
        finally:
            self.close()

    def close(self) -> None:
        """Close the socket without QUIT: the server forgets any DELE of this session."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


def refuse_line_breaks(username: str, password: str) -> None:
    """Raise PopError ("auth") for credentials that would be sent as extra POP3 commands."""
    # poplib writes "USER x" and "PASS y" as text lines without checking: "pw\r\nDELE 1"
    # would reach the server as a second command. Such credentials can never log in, so
    # they are an authentication problem the user fixes by typing them again.
    for what, value in (("username", username), ("password", password)):
        if any(c in value for c in "\r\n\0"):
            raise PopError(
                "auth",
                f"The {what} contains a line break, which POP3 cannot send. Enter the "
                "username and password again in Settings » Mail Accounts.",
            )


def open_session(
    host: str,
    port: int,
    security: Security,
    username: str,
    password: str,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ca_bundle: str | None = None,
) -> PopSession:
    """Connect, secure and log in; return a PopSession or raise PopError."""
    if security not in SECURITY_MODES:
        raise ValueError(f"security must be one of {SECURITY_MODES}, not {security!r}")
    refuse_line_breaks(username, password)  # before connecting: nothing of them leaves
    try:
        context = tls_context(ca_bundle) if security != "none" else None
    except (OSError, ssl.SSLError) as exc:
        raise PopError(
            "tls",
            "The extra CA certificates configured for mail (MAIL_CA_BUNDLE) cannot be read. "
            "Ask your administrator.",
            str(exc),
        ) from exc
    try:
        connection = _Pop3Connection(
            host, port, timeout, context if security == "ssl" else None
        )
    except Exception as exc:
        raise classify_error(exc, host, port) from exc
    session = PopSession(connection, host, port)
    try:
        if security == "starttls":
            connection.stls(context=context)
    except poplib.error_proto as exc:
        # No CAPA, no STLS in it, or -ERR to STLS: never fall back to sending the password in clear.
        session.close()
        raise PopError(
            "tls",
            f"The server {host} does not offer STARTTLS on port {port}. Choose SSL (usually "
            "port 995) instead.",
            _decode(exc.args[0] if exc.args else ""),
        ) from exc
    except Exception as exc:
        raise session._fail(exc) from exc
    try:
        # A username such as Gmail's "recent:me@gmail.com" is passed through unchanged.
        connection.user(username)
        connection.pass_(password)
    except Exception as exc:
        session.close()
        raise classify_error(exc, host, port, during_login=True) from exc
    return session


def test_connection(
    host: str,
    port: int,
    security: Security,
    username: str,
    password: str,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ca_bundle: str | None = None,
) -> dict[str, object]:
    """Connect, log in, count messages and QUIT, for the settings page's test button."""
    refuse_line_breaks(username, password)
    started = time.monotonic()
    with open_session(host, port, security, username, password, timeout, ca_bundle) as session:
        messages, octets = session.stat()
        capabilities = sorted(session.capabilities())
        session.quit()
    return {
        "messages": messages,
        "octets": octets,
        "capabilities": capabilities,
        "seconds": round(time.monotonic() - started, 3),
    }


# pytest would collect a module-level test_* function imported into a test module.
test_connection.__test__ = False  # type: ignore[attr-defined]
