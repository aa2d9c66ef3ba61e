"""worker.smtp against a real aiosmtpd: delivery, TLS verification, and every error class."""
from __future__ import annotations

import contextlib
import pickle
import select
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from tests.fixtures.smtpserver import DROP_CONNECTION, RunningSmtpServer
from webapp.services.compose import as_bytes, build_message, make_message_id
from worker.smtp import (EndOfDataWithheld, RecipientRefusal, SmtpConnection, SmtpError,
                         tls_context)
from worker.smtp import test_connection as check_smtp_settings

USER, PASSWORD = "sender@example.com", "right-password"
StartServer = Callable[..., RunningSmtpServer]


def make_raw(subject: str = "Quarterly figures", text: str = "Hello,\n.a line that starts with a dot\n.\nBye\n") -> bytes:
    """The bytes of a small message, built the way the send job builds them."""
    msg = build_message(
        from_addr=("Sender", USER), to=[("Ann", "ann@example.org")], cc=[], bcc=[],
        subject=subject, text=text, message_id=make_message_id("example.com"),
        in_reply_to=None, references=[], reply_to=None, sender=None,
    )
    return as_bytes(msg)


def connect(server: RunningSmtpServer, **overrides: object) -> SmtpConnection:
    """An unopened connection to the test server, signed in as USER unless overridden."""
    options: dict = {"security": "none", "username": USER, "password": PASSWORD,
                     "timeout": 5.0, "ca_bundle": server.ca_bundle, "local_hostname": "client.test"}
    options.update(overrides)
    return SmtpConnection(server.host, server.port, **options)


@pytest.fixture
def unused_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def silent_listener() -> Iterator[tuple[str, int]]:
    """Not a server: a listening socket that never accepts, so no greeting ever comes.

    A real server cannot be made to hang before its greeting; the kernel completes the TCP
    handshake from the backlog, which is exactly what a stuck server looks like to a client.
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        yield listener.getsockname()


def test_send_delivers_exact_bytes(smtp_server: StartServer) -> None:
    """The server receives (after dot-unstuffing) exactly the bytes as_bytes() produced."""
    server = smtp_server(auth=(USER, PASSWORD))
    raw = make_raw()
    with connect(server) as smtp:
        outcome = smtp.send(USER, ["ann@example.org"], raw)
    assert outcome.accepted == ["ann@example.org"]
    assert outcome.refused == {}
    assert outcome.reply_code == 250
    [received] = server.messages
    assert received.data == raw
    assert received.mail_from == USER
    assert received.rcpt_tos == ["ann@example.org"]
    assert received.auth_login == USER
    assert received.tls is False


def test_several_messages_share_one_connection(smtp_server: StartServer) -> None:
    """A batch goes through one session, including after a refused message."""
    server = smtp_server(auth=(USER, PASSWORD), data_replies=["250 OK", "550 5.6.0 no thanks"])
    raws = [make_raw(subject=f"Message {n}") for n in range(5)]
    with connect(server) as smtp:
        smtp.send(USER, ["a@example.org"], raws[0])
        with pytest.raises(SmtpError):
            smtp.send(USER, ["a@example.org"], raws[1])
        for raw in raws[2:]:
            smtp.send(USER, ["a@example.org", "b@example.org"], raw)
    assert [m.data for m in server.messages] == raws
    assert len({m.peer for m in server.messages}) == 1
    assert server.messages[-1].rcpt_tos == ["a@example.org", "b@example.org"]


def test_wrong_password_is_auth_error_with_advice(smtp_server: StartServer) -> None:
    """535 means the stored login is wrong: say where to fix it, do not retry."""
    server = smtp_server(auth=(USER, PASSWORD))
    with pytest.raises(SmtpError) as caught:
        connect(server, password="wrong").open()
    error = caught.value
    assert (error.kind, error.code, error.temporary) == ("auth", 535, False)
    assert error.server_text == "5.7.8 Authentication credentials invalid"
    assert error.user_message == ("The SMTP server rejected the username or password for this address. "
                                  "Update them in Settings » Send Mail As.")


def test_mail_without_login_when_server_requires_it(smtp_server: StartServer) -> None:
    """530 at MAIL FROM: the account needs credentials."""
    server = smtp_server(auth=(USER, PASSWORD))
    with connect(server, username=None, password=None) as smtp, pytest.raises(SmtpError) as caught:
        smtp.send(USER, ["ann@example.org"], make_raw())
    assert (caught.value.kind, caught.value.code) == ("auth", 530)
    assert server.messages == []


@pytest.mark.parametrize(
    ("reply", "kind", "temporary"),
    [
        ("451 4.3.0 try later", "temporary", True),
        ("421 4.3.2 service shutting down", "temporary", True),
        ("454 4.7.0 temporary authentication failure", "temporary", True),
        ("452 4.3.1 insufficient system storage", "temporary", True),
        ("550 5.7.1 message looks like spam", "rejected", False),
        ("552 5.3.4 message too big", "rejected", False),
        ("554 5.7.1 relay access denied", "relay_denied", False),
    ],
)
def test_data_reply_is_classified_then_retry_succeeds(
    smtp_server: StartServer, reply: str, kind: str, temporary: bool
) -> None:
    """A refusal of the message keeps the server's words; a retry on a new session can succeed."""
    server = smtp_server(auth=(USER, PASSWORD), data_replies=[reply, "250 OK"])
    raw = make_raw()
    with connect(server) as smtp, pytest.raises(SmtpError) as caught:
        smtp.send(USER, ["ann@example.org"], raw)
    code, _, text = reply.partition(" ")
    assert (caught.value.kind, caught.value.code, caught.value.temporary) == (kind, int(code), temporary)
    assert caught.value.server_text == text
    assert text in caught.value.user_message
    with connect(server) as smtp:
        assert smtp.send(USER, ["ann@example.org"], raw).accepted == ["ann@example.org"]
    assert [m.reply for m in server.messages] == [reply, "250 OK"]


def test_partial_refusal_sends_to_the_rest_and_reports_each(smtp_server: StartServer) -> None:
    """5xx recipients are reported as permanent, 4xx as retryable; the others get the message."""
    server = smtp_server(auth=(USER, PASSWORD), rcpt_replies={
        "bad@": "550 5.1.1 <bad@example.org>: Recipient address rejected: User unknown",
        "busy@": ["450 4.2.1 mailbox busy, try later"],  # then accepted
    })
    raw = make_raw()
    with connect(server) as smtp:
        outcome = smtp.send(USER, ["good@example.org", "bad@example.org", "busy@example.org"], raw)
        assert outcome.accepted == ["good@example.org"]
        assert outcome.permanently_refused == ["bad@example.org"]
        assert outcome.temporarily_refused == ["busy@example.org"]
        assert outcome.refused["bad@example.org"].code == 550
        assert outcome.refused["bad@example.org"].text == (
            "5.1.1 <bad@example.org>: Recipient address rejected: User unknown")
        retry = smtp.send(USER, outcome.temporarily_refused, raw)
    assert retry.accepted == ["busy@example.org"] and retry.refused == {}
    assert [m.rcpt_tos for m in server.messages] == [["good@example.org"], ["busy@example.org"]]


@pytest.mark.parametrize(
    ("replies", "kind", "temporary"),
    [
        (["550 5.1.1 no such user", "550 5.1.1 no such user"], "rejected", False),
        (["554 5.7.1 <x@elsewhere.example>: Relay access denied", "450 4.2.0 later"], "relay_denied", False),
        (["450 4.2.0 later", "451 4.3.0 later"], "temporary", True),
    ],
)
def test_all_recipients_refused_raises(
    smtp_server: StartServer, replies: list[str], kind: str, temporary: bool
) -> None:
    """Nobody accepted: an error (classified by the first permanent refusal), the session stays usable."""
    server = smtp_server(auth=(USER, PASSWORD), rcpt_replies={"one@": replies[0], "two@": replies[1]})
    with connect(server) as smtp:
        with pytest.raises(SmtpError) as caught:
            smtp.send(USER, ["one@example.org", "two@example.org"], make_raw())
        assert (caught.value.kind, caught.value.temporary) == (kind, temporary)
        assert sorted(caught.value.refused) == ["one@example.org", "two@example.org"]
        assert smtp.send(USER, ["three@example.org"], make_raw()).accepted == ["three@example.org"]
    assert [m.rcpt_tos for m in server.messages] == [["three@example.org"]]


@pytest.mark.parametrize("script", [{"drop_after_data": True}, {"data_replies": [DROP_CONNECTION]}])
def test_connection_lost_after_data_is_uncertain(smtp_server: StartServer, script: dict) -> None:
    """RFC 1047: the server had the whole message and closed before replying; it may be delivered."""
    server = smtp_server(auth=(USER, PASSWORD), **script)
    smtp = connect(server)
    with smtp, pytest.raises(SmtpError) as caught:
        smtp.send(USER, ["ann@example.org"], make_raw())
    assert caught.value.kind == "uncertain"
    assert caught.value.temporary is False
    assert not smtp.is_open
    assert len(server.messages) == 1


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_tls_verified_against_the_ca_bundle(smtp_server: StartServer, security: str) -> None:
    """With the test CA as bundle the server's certificate verifies and the message goes over TLS."""
    server = smtp_server(auth=(USER, PASSWORD), tls=security, require_starttls=security == "starttls")
    raw = make_raw()
    with connect(server, security=security) as smtp:
        smtp.send(USER, ["ann@example.org"], raw)
    assert server.messages[0].tls is True
    assert server.messages[0].data == raw
    assert server.messages[0].auth_login == USER


@pytest.mark.parametrize("security", ["starttls", "ssl"])
@pytest.mark.parametrize(
    ("cert", "words"),
    [
        ("self_signed", "self-signed"),
        ("expired", "has expired"),
        ("wrong_host", "not valid for the name 127.0.0.1"),
    ],
)
def test_bad_certificate_is_cert_invalid(smtp_server: StartServer, security: str, cert: str, words: str) -> None:
    """A certificate that does not verify stops the connection, with a reason a user can read."""
    server = smtp_server(auth=(USER, PASSWORD), tls=security, cert=cert)
    with pytest.raises(SmtpError) as caught:
        connect(server, security=security).open()
    assert caught.value.kind == "cert_invalid"
    assert words in caught.value.user_message
    assert caught.value.temporary is False


def test_private_ca_not_trusted_without_bundle(smtp_server: StartServer) -> None:
    """Only system CAs: our test CA is unknown, so the login is never sent."""
    server = smtp_server(auth=(USER, PASSWORD), tls="starttls")
    with pytest.raises(SmtpError) as caught:
        connect(server, security="starttls", ca_bundle=None).open()
    assert caught.value.kind == "cert_invalid"
    assert "not trusted" in caught.value.user_message


def test_ssl_on_a_plain_port_is_tls_error(smtp_server: StartServer) -> None:
    """Implicit TLS against a plain SMTP port fails in the handshake: a settings problem."""
    server = smtp_server(auth=(USER, PASSWORD))
    with pytest.raises(SmtpError) as caught:
        connect(server, security="ssl").open()
    assert (caught.value.kind, caught.value.temporary) == ("tls", False)
    assert "465" in caught.value.user_message


def test_starttls_not_offered_is_tls_error(smtp_server: StartServer) -> None:
    """We never fall back to plain text when STARTTLS was asked for."""
    server = smtp_server(auth=(USER, PASSWORD))
    with pytest.raises(SmtpError) as caught:
        connect(server, security="starttls").open()
    assert caught.value.kind == "tls"


def test_connection_refused_is_connect_error(unused_port: int) -> None:
    """Nobody listening: a temporary connect error."""
    with pytest.raises(SmtpError) as caught:
        SmtpConnection("127.0.0.1", unused_port, security="none", timeout=2.0).open()
    assert (caught.value.kind, caught.value.temporary) == ("connect", True)
    assert f"127.0.0.1:{unused_port}" in caught.value.user_message


def test_silent_server_is_timeout(silent_listener: tuple[str, int]) -> None:
    """No greeting within the timeout: a temporary timeout error, not a hang."""
    host, port = silent_listener
    with pytest.raises(SmtpError) as caught:
        SmtpConnection(host, port, security="none", timeout=0.3).open()
    assert (caught.value.kind, caught.value.temporary) == ("timeout", True)


def test_test_connection_checks_login(smtp_server: StartServer) -> None:
    """The settings page's Test button: silent on success, classified error otherwise."""
    server = smtp_server(auth=(USER, PASSWORD), tls="starttls")
    settings = {"security": "starttls", "username": USER, "ca_bundle": server.ca_bundle, "timeout": 5.0}
    check_smtp_settings(server.host, server.port, password=PASSWORD, **settings)
    with pytest.raises(SmtpError) as caught:
        check_smtp_settings(server.host, server.port, password="nope", **settings)
    assert caught.value.kind == "auth"
    assert server.messages == []


def test_tls_context_is_built_once_per_bundle(smtp_server: StartServer) -> None:
    """Building a context costs ~21 ms: one per bundle per process."""
    server = smtp_server()
    assert tls_context(server.ca_bundle) is tls_context(server.ca_bundle)
    assert tls_context(None) is not tls_context(server.ca_bundle)


def test_no_reply_to_data_within_timeout_is_uncertain(smtp_server: StartServer) -> None:
    """A reply slower than our timeout after the whole message was sent: it may be delivered."""
    server = smtp_server(data_delay=1.0)
    with connect(server, username=None, timeout=0.3) as smtp, pytest.raises(SmtpError) as caught:
        smtp.send(USER, ["ann@example.org"], make_raw())
    assert caught.value.kind == "uncertain"


def test_server_closing_during_rcpt_is_temporary(smtp_server: StartServer) -> None:
    """421 means the server is going away: retry the whole message later."""
    server = smtp_server(rcpt_replies={"two@": "421 4.7.0 too many errors, closing"})
    with connect(server, username=None) as smtp, pytest.raises(SmtpError) as caught:
        smtp.send(USER, ["one@example.org", "two@example.org"], make_raw())
    assert (caught.value.kind, caught.value.code, caught.value.temporary) == ("temporary", 421, True)
    assert not smtp.is_open
    assert server.messages == []


def test_plain_session_on_a_server_that_requires_starttls(smtp_server: StartServer) -> None:
    """530 "Must issue a STARTTLS command first": the security setting is wrong, not the login."""
    server = smtp_server(tls="starttls", require_starttls=True)
    with connect(server, username=None) as smtp, pytest.raises(SmtpError) as caught:
        smtp.send(USER, ["ann@example.org"], make_raw())
    assert (caught.value.kind, caught.value.code) == ("tls", 530)


def test_smtp_error_survives_pickling() -> None:
    """Job queues pickle exceptions; every field must come back."""
    error = SmtpError("auth", "Update the password.", code=535, server_text="5.7.8 nope",
                      refused={"a@example.org": RecipientRefusal(550, "no")})
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.kind, copy.user_message, copy.code, copy.server_text, copy.temporary, copy.refused) == (
        "auth", "Update the password.", 535, "5.7.8 nope", False, {"a@example.org": RecipientRefusal(550, "no")})


@pytest.mark.parametrize(("username", "password"), [
    (USER, "pw\r\nRSET"), (USER, "pw\n"), (USER, "pw\0"), (f"{USER}\r\nRSET", PASSWORD),
])
def test_line_breaks_in_the_login_are_refused_before_connecting(
        unused_port: int, username: str, password: str) -> None:
    """Defect: CR/LF in SMTP credentials was not refused (POP3 sent it as extra commands).

    Nobody listens on the port: had the client connected first, this would be a connect error.
    """
    for attempt in (
        lambda: SmtpConnection("127.0.0.1", unused_port, security="none", username=username,
                               password=password, timeout=2.0).open(),
        lambda: check_smtp_settings("127.0.0.1", unused_port, security="none", username=username,
                                    password=password, timeout=2.0),
    ):
        with pytest.raises(SmtpError) as caught:
            attempt()
        assert (caught.value.kind, caught.value.temporary) == ("auth", False)
        assert "contains a line break" in caught.value.user_message


class WireTap:
    """A TCP relay in front of a real server that keeps every byte the client sent.

    Not a server: it only shows what had reached the wire at a given moment, which the
    server's own handler (called once the data has ended) cannot; and it can hang up on
    the client, as a server or a network in trouble does.
    """

    def __init__(self, server: RunningSmtpServer) -> None:
        self.sent = bytearray()
        self.changed = threading.Condition()
        self.server_closed = threading.Event()  # the server ended the session on its side
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = self._listener.getsockname()[:2]
        self._target = (server.host, server.port)
        self._client: socket.socket | None = None
        self._sockets: list[socket.socket] = [self._listener]
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:  # closed before anyone connected
            return
        upstream = socket.create_connection(self._target)
        self._client = client
        self._sockets += [client, upstream]
        back = threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True)
        self._threads.append(back)
        back.start()
        self._pump(client, upstream, self.sent)

    def _pump(self, source: socket.socket, sink: socket.socket, record: bytearray | None) -> None:
        try:
            while chunk := source.recv(65536):
                if record is not None:
                    with self.changed:
                        record += chunk
                        self.changed.notify_all()
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            if record is None:
                self.server_closed.set()
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)  # pass the end on, as the server would see it

    def wait_for(self, ending: bytes, seconds: float = 5.0) -> bool:
        """Whether what the client sent ends with `ending` within `seconds`."""
        with self.changed:
            return self.changed.wait_for(lambda: self.sent.endswith(ending), timeout=seconds)

    def say(self, words: bytes) -> None:
        """Say something to the client in the server's place (the server hears nothing)."""
        assert self._client is not None
        self._client.sendall(words)

    def hang_up(self) -> None:
        """End the client's connection as a server that gives up does: it reads no more."""
        assert self._client is not None
        self._client.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        for each in self._sockets:
            with contextlib.suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)  # wakes a thread still in accept() or recv()
            each.close()
        for thread in self._threads:
            thread.join(timeout=5)


def tapped(tap: WireTap) -> SmtpConnection:
    """An unopened connection to the server behind the tap (no login)."""
    return SmtpConnection(tap.host, tap.port, security="none", timeout=5.0,
                          local_hostname="client.test")


def send_failing(smtp: SmtpConnection, hook: Callable[[], None],
                 expected: type[Exception]) -> Exception:
    """Open, send a message whose hook makes it fail with `expected`, and return that; the
    session must not survive a failure inside DATA (it would carry the next message)."""
    smtp.open()
    try:
        with pytest.raises(expected) as caught:
            smtp.send(USER, ["ann@example.org"], make_raw(), before_end_of_data=hook)
        assert not smtp.is_open
    finally:
        smtp.close()
    return caught.value


@pytest.fixture
def wire_tap(smtp_server: StartServer) -> Iterator[tuple[RunningSmtpServer, WireTap]]:
    """A real aiosmtpd and a wire tap in front of it."""
    server = smtp_server()
    tap = WireTap(server)
    yield server, tap
    tap.close()


def test_the_body_crosses_the_wire_before_the_hook_and_its_end_only_after(
        wire_tap: tuple[RunningSmtpServer, WireTap]) -> None:
    """The send job's hook waits for the previous message's commit; the body need not.

    The body reaches the server while the hook holds the message; only the line that ends
    the data waits for the hook.
    """
    server, tap = wire_tap
    raw = make_raw(text="Hello,\n" + "a long line of the body\n" * 400 + "Bye\n")
    seen_in_hook: list[bytes] = []

    def hook() -> None:
        if tap.wait_for(b"Bye\r\n"):
            seen_in_hook.append(bytes(tap.sent))

    with tapped(tap) as smtp:
        outcome = smtp.send(USER, ["ann@example.org"], raw, before_end_of_data=hook)
    assert outcome.reply_code == 250
    assert seen_in_hook, "the body had not gone when the hook ran"
    assert not seen_in_hook[0].endswith(b"\r\n.\r\n")
    [received] = server.messages
    assert received.data == raw


def test_a_message_withheld_after_its_body_went_is_not_delivered(
        wire_tap: tuple[RunningSmtpServer, WireTap]) -> None:
    """Withholding closes the session before the end of DATA: the server drops the body."""
    server, tap = wire_tap

    def withhold() -> None:
        tap.wait_for(b"Bye\r\n")
        raise EndOfDataWithheld()

    send_failing(tapped(tap), withhold, EndOfDataWithheld)
    assert tap.sent.endswith(b"Bye\r\n")  # the body went, its end did not
    assert tap.server_closed.wait(5)  # the server has finished with the session...
    assert server.messages == []  # ...and kept nothing of it


def test_a_server_that_hangs_up_during_the_hook_gets_a_retry_not_uncertain(
        wire_tap: tuple[RunningSmtpServer, WireTap]) -> None:
    """Review finding: the end of DATA written after the server's FIN looks sent (the first
    write after it succeeds), so a session that died while the hook waited turned into an
    "uncertain" message. The server never had the end of DATA: it is retried."""
    server, tap = wire_tap

    def hang_up() -> None:
        tap.wait_for(b"Bye\r\n")
        tap.hang_up()
        select.select([smtp._client.sock], [], [], 5)  # its end has reached the client

    smtp = tapped(tap)
    error = send_failing(smtp, hang_up, SmtpError)
    assert (error.kind, error.temporary) == ("connect", True)
    assert tap.server_closed.wait(5)
    assert server.messages == []


def test_a_server_that_speaks_during_the_hook_is_answered_by_what_it_said(
        wire_tap: tuple[RunningSmtpServer, WireTap]) -> None:
    """Review finding: a server that refused the message in the middle of its data (552)
    must fail it for good with its words, and the session, still inside DATA for all the
    client knows, must end rather than carry the next message."""
    server, tap = wire_tap

    def refuse() -> None:
        tap.wait_for(b"Bye\r\n")
        tap.say(b"552 5.3.4 Message too big for this server\r\n")
        select.select([smtp._client.sock], [], [], 5)  # the words have reached the client

    smtp = tapped(tap)
    error = send_failing(smtp, refuse, SmtpError)
    assert (error.kind, error.code, error.temporary) == ("rejected", 552, False)
    assert "too big" in error.server_text
    assert tap.sent.endswith(b"Bye\r\n")  # the end of DATA never went
    assert tap.server_closed.wait(5)
    assert server.messages == []
