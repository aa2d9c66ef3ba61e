"""The POP3 client against a real Dovecot, and against the scripted server for faults only."""

from __future__ import annotations

import contextlib
import pickle
import time

import pytest

from tests.fixtures.dovecot import DovecotServer, free_port
from tests.fixtures.fakepop import DROP, STALL, FakeMessage, FakePopScript
from worker import pop3
from worker.pop3 import PopError, open_session


def make_message(index: int, body_lines: int = 5, extra: bytes = b"") -> bytes:
    """A message with LF line ends (as stored in a Maildir), dot lines and 8-bit bytes included."""
    body = b"".join(b"line %d of message %d, some text to fill it\n" % (i, index) for i in range(body_lines))
    return (
        b"From: Alice <alice@example.test>\n"
        b"To: bob@example.test\n"
        b"Subject: message %d\n"
        b"Message-ID: <%d@example.test>\n"
        b"Content-Type: text/plain; charset=utf-8\n"
        b"Content-Transfer-Encoding: 8bit\n"
        b"\n"
        b".a line that starts with a dot\n"
        b"..two dots\n"
        b".\n"
        b"caf\xc3\xa9 \xe2\x82\xac\n" % (index, index)
        + body
        + extra
    )


def as_sent(stored: bytes) -> bytes:
    """What a POP3 server sends for a Maildir file: the same bytes with CRLF line ends."""
    return stored.replace(b"\n", b"\r\n")


def port_for(dovecot: DovecotServer, security: str) -> int:
    """Dovecot's port for a security mode."""
    return dovecot.pop3s_port if security == "ssl" else dovecot.pop3_port


@pytest.mark.parametrize("security", ["none", "starttls", "ssl"])
def test_login_and_retrieve_is_byte_exact(dovecot, pop_user, security):
    """Every security mode logs in and returns the stored bytes exactly (dots unstuffed)."""
    user, password = pop_user
    stored = [make_message(1), make_message(2, body_lines=50)]
    dovecot.seed(user, stored)
    with open_session(
        dovecot.host, port_for(dovecot, security), security, user, password, timeout=10,
        ca_bundle=dovecot.ca_bundle,
    ) as session:
        uidls = session.uidls()
        assert [number for number, _ in uidls] == [1, 2]
        assert len({uidl for _, uidl in uidls}) == 2
        assert session.sizes() == {1: len(as_sent(stored[0])), 2: len(as_sent(stored[1]))}
        assert session.retrieve(1) == as_sent(stored[0])
        assert session.retrieve(2) == as_sent(stored[1])
        assert "PIPELINING" in session.capabilities()


@pytest.mark.parametrize(
    "long_line",
    [
        b"<p>" + b"x" * 9_993 + b"</p>\n",  # 10,000 bytes + LF: HTML mail has such lines
        # Longer than one read chunk, with a dot right where the second chunk starts: a dot
        # in mid-line is data, not byte-stuffing.
        b"y" * 65_536 + b".not-stuffing" + b"z" * 100_000 + b"\n",
    ],
    ids=["10k", "165k-dot-at-chunk-edge"],
)
def test_line_longer_than_poplib_limit(dovecot, pop_user, long_line):
    """A line far over poplib's 2,048-byte limit comes back whole; poplib alone refuses it."""
    user, password = pop_user
    stored = [make_message(1, extra=long_line), make_message(2)]
    dovecot.seed(user, stored)
    with open_session(dovecot.host, dovecot.pop3_port, "none", user, password, timeout=10) as session:
        assert session.retrieve(1) == as_sent(stored[0])
        # The connection is still in step after the long line.
        assert session.retrieve(2) == as_sent(stored[1])
        assert [body for _, body in session.retrieve_many([1, 2])] == [as_sent(m) for m in stored]


def test_pipelined_retrieval_equals_sequential(dovecot, pop_user):
    """retrieve_many (pipelined) yields exactly what one-by-one RETR gives, in order."""
    user, password = pop_user
    stored = [make_message(i, body_lines=i % 40) for i in range(300)]
    dovecot.seed(user, stored)
    with open_session(dovecot.host, dovecot.pop3_port, "none", user, password, timeout=10) as session:
        numbers = [number for number, _ in session.uidls()]
        pipelined = list(session.retrieve_many(numbers))
        sequential = [(number, session.retrieve(number)) for number in numbers]
    assert pipelined == sequential
    assert [body for _, body in pipelined] == [as_sent(m) for m in stored]


def test_stopping_retrieve_many_early_closes_the_session(dovecot, pop_user):
    """Answers still in flight would desynchronize the session, so it is closed, not reused."""
    user, password = pop_user
    dovecot.seed(user, [make_message(i) for i in range(5)])
    with open_session(dovecot.host, dovecot.pop3_port, "none", user, password, timeout=10) as session:
        for number, _ in session.retrieve_many([1, 2, 3, 4, 5]):
            if number == 2:
                break
        with pytest.raises(PopError) as caught:
            session.retrieve(3)
        assert caught.value.kind == "protocol"


def test_delete_then_quit_removes(dovecot, pop_user):
    """DELE followed by QUIT removes exactly the deleted messages."""
    user, password = pop_user
    dovecot.seed(user, [make_message(i) for i in range(3)])
    with open_session(dovecot.host, dovecot.pop3_port, "none", user, password, timeout=10) as session:
        session.delete(1)
        session.delete(3)
        session.quit()
    assert dovecot.count(user) == 1


def test_delete_many_then_quit_removes(dovecot, pop_user):
    """Pipelined DELEs (more than one window of them) take effect at QUIT."""
    user, password = pop_user
    dovecot.seed(user, [make_message(i, body_lines=0) for i in range(150)])
    with open_session(dovecot.host, dovecot.pop3_port, "none", user, password, timeout=10) as session:
        session.delete_many(range(1, 141))
        assert session.stat()[0] == 10
        session.quit()
    assert dovecot.count(user) == 10


def test_commands_during_pipelined_retrieval_are_refused(dovecot, pop_user):
    """A DELE between pipelined RETRs would read a RETR answer as its own: refused loudly."""
    user, password = pop_user
    stored = [make_message(i) for i in range(3)]
    dovecot.seed(user, stored)
    with open_session(dovecot.host, dovecot.pop3_port, "none", user, password, timeout=10) as session:
        retrieved = []
        for number, body in session.retrieve_many([1, 2, 3]):
            with pytest.raises(RuntimeError):
                session.delete(number)
            retrieved.append(body)
        assert retrieved == [as_sent(m) for m in stored]
        session.delete_many([1, 2, 3])
        session.quit()
    assert dovecot.count(user) == 0


def test_delete_without_quit_removes_nothing(dovecot, pop_user):
    """Closing without QUIT (a crash) deletes nothing: the server forgets the DELEs."""
    user, password = pop_user
    dovecot.seed(user, [make_message(i) for i in range(3)])
    with open_session(dovecot.host, dovecot.pop3_port, "none", user, password, timeout=10) as session:
        first_uidls = session.uidls()
        session.delete(1)
        session.delete(2)
    assert dovecot.count(user) == 3
    with open_session(dovecot.host, dovecot.pop3_port, "none", user, password, timeout=10) as session:
        assert session.uidls() == first_uidls


def test_test_connection_counts_messages(dovecot, pop_user):
    """The settings page's test logs in, counts and quits."""
    user, password = pop_user
    dovecot.seed(user, [make_message(i) for i in range(4)])
    result = pop3.test_connection(
        dovecot.host, dovecot.pop3s_port, "ssl", user, password, timeout=10, ca_bundle=dovecot.ca_bundle
    )
    assert result["messages"] == 4
    assert "UIDL" in result["capabilities"]


@pytest.mark.parametrize("wrong", ["password", "username"])
def test_wrong_credentials_are_an_auth_failure(dovecot, pop_user, wrong):
    """A rejected login counts as an authentication failure and says what to check."""
    user, password = pop_user
    if wrong == "password":
        password = "not-the-password"
    else:
        user = "nobody-by-this-name"
    with pytest.raises(PopError) as caught:
        open_session(dovecot.host, dovecot.pop3_port, "none", user, password, timeout=10)
    error = caught.value
    assert (error.kind, error.counts_as) == ("auth", "auth")
    assert "[AUTH]" in error.server_text
    assert error.user_message.startswith("The server rejected the username or password.")


def test_too_many_sessions_is_in_use_not_an_auth_failure(dovecot, pop_user):
    """Dovecot's 11th session of one user and IP answers [IN-USE]: no auth failure counted."""
    user, password = pop_user
    refused: PopError | None = None
    with contextlib.ExitStack() as sessions:
        for _ in range(10):  # Dovecot's default mail_max_userip_connections
            sessions.enter_context(
                open_session(dovecot.host, dovecot.pop3_port, "none", user, password, timeout=10)
            )
        # Sessions register with Dovecot's anvil asynchronously: one more may slip in first.
        for _ in range(20):
            try:
                with open_session(dovecot.host, dovecot.pop3_port, "none", user, password, timeout=10):
                    pass
            except PopError as error:
                refused = error
                break
            time.sleep(0.05)
    assert refused is not None
    assert (refused.kind, refused.counts_as) == ("in_use", None)
    assert "[IN-USE]" in refused.server_text


@pytest.mark.parametrize(
    ("certificate", "sentence"),
    [
        ("self_signed", "self-signed certificate"),
        ("expired", "has expired"),
        ("wrong_host", "not valid for the name"),
    ],
)
def test_bad_certificate_is_refused_with_a_plain_sentence(dovecot, pop_user, certificate, sentence):
    """A bad certificate is an error, never a silent downgrade, each with its own sentence."""
    user, password = pop_user
    host, port = dovecot.bad_cert_listener(certificate)
    with pytest.raises(PopError) as caught:
        open_session(host, port, "ssl", user, password, timeout=10, ca_bundle=dovecot.ca_bundle)
    assert (caught.value.kind, caught.value.counts_as) == ("cert_invalid", "connection")
    assert sentence in caught.value.user_message


def test_certificate_from_an_unknown_authority_is_refused(dovecot, pop_user):
    """Without the test CA in the bundle, the system store alone does not trust Dovecot."""
    user, password = pop_user
    with pytest.raises(PopError) as caught:
        open_session(dovecot.host, dovecot.pop3s_port, "ssl", user, password, timeout=10)
    assert caught.value.kind == "cert_invalid"
    assert "authority we do not trust" in caught.value.user_message


def test_ssl_on_the_plain_port(dovecot, pop_user):
    """SSL against a port that speaks plain POP3 says so and suggests STARTTLS or 995."""
    user, password = pop_user
    with pytest.raises(PopError) as caught:
        open_session(dovecot.host, dovecot.pop3_port, "ssl", user, password, timeout=10,
                     ca_bundle=dovecot.ca_bundle)
    assert caught.value.kind == "tls"
    assert "does not speak SSL" in caught.value.user_message
    assert "STARTTLS" in caught.value.user_message and "995" in caught.value.user_message


def test_plain_on_the_ssl_port_times_out(dovecot, pop_user):
    """Plain POP3 against the TLS port waits for a greeting that never comes: a timeout."""
    user, password = pop_user
    with pytest.raises(PopError) as caught:
        open_session(dovecot.host, dovecot.pop3s_port, "none", user, password, timeout=0.5)
    assert (caught.value.kind, caught.value.counts_as) == ("timeout", "connection")


def test_connection_refused():
    """Nothing listening: a connection failure in words."""
    port = free_port()
    with pytest.raises(PopError) as caught:
        open_session("127.0.0.1", port, "none", "user", "password", timeout=5)
    assert (caught.value.kind, caught.value.counts_as) == ("connect", "connection")
    assert "refused the connection" in caught.value.user_message


def test_unknown_host_name():
    """A name that does not resolve (.invalid never does, RFC 2606) says to check the spelling."""
    with pytest.raises(PopError) as caught:
        open_session("no-such-host.invalid", 110, "none", "user", "password", timeout=5)
    assert caught.value.kind == "connect"
    assert "could not be found" in caught.value.user_message


def test_starttls_refused_by_a_server_without_stls(fakepop):
    """A server that does not offer STLS is never used in clear text when STARTTLS was chosen."""
    server = fakepop(FakePopScript())
    with pytest.raises(PopError) as caught:
        open_session(server.host, server.port, "starttls", "user", "pw", timeout=5)
    assert caught.value.kind == "tls"
    assert not any(command.startswith(("USER", "PASS")) for command in server.commands)


@pytest.mark.parametrize(
    ("reply", "kind", "counts_as", "sentence"),
    [
        ("-ERR [IN-USE] Mailbox is locked by another POP3 session", "in_use", None, "Another program"),
        ("-ERR [LOGIN-DELAY] Minimum time between logins not elapsed", "login_delay", None, "every few minutes"),
        ("-ERR [SYS/TEMP] Server busy, try later", "sys_temp", "connection", "temporary problem"),
        (
            "-ERR [SYS/PERM] Your account is not enabled for POP access. Please visit your Gmail "
            "settings page and enable your account for POP access.",
            "sys_perm", "connection", "enable POP",
        ),
        (
            "-ERR [AUTH] Web login required: https://support.google.com/mail/answer/78754",
            "web_login_required", "auth", "https://accounts.google.com/DisplayUnlockCaptcha",
        ),
        ("-ERR [AUTH] Username and password not accepted.", "auth", "auth", "app password"),
        ("-ERR Login failed.", "auth", "auth", "username or password"),
    ],
)
def test_login_response_codes(fakepop, reply, kind, counts_as, sentence):
    """RFC 3206 codes after PASS: only [AUTH] (or a bare -ERR) counts as an auth failure."""
    server = fakepop(FakePopScript(responses={"PASS": reply}))
    with pytest.raises(PopError) as caught:
        open_session(server.host, server.port, "none", "me@example.test", "pw", timeout=5)
    error = caught.value
    assert (error.kind, error.counts_as) == (kind, counts_as)
    assert error.server_text == reply
    assert sentence in error.user_message


def test_stall_times_out_within_the_timeout(fakepop):
    """A server that stops answering mid-session raises a timeout, not a hang."""
    server = fakepop(FakePopScript(messages=[FakeMessage("a", b"Subject: x\r\n\r\nhi\r\n")],
                                   hooks={"RETR": lambda session, argument: STALL}))
    with open_session(server.host, server.port, "none", "me", "pw", timeout=0.5) as session:
        with pytest.raises(PopError) as caught:
            session.retrieve(1)
    # The socket timeout, not the server, ended the wait: the kind says which.
    assert (caught.value.kind, caught.value.counts_as) == ("timeout", "connection")


def test_connection_dropped_after_dele(fakepop):
    """A connection lost right after DELE is a connection failure, and the session is closed."""
    script = FakePopScript(
        messages=[FakeMessage("a", b"Subject: a\r\n\r\na\r\n"), FakeMessage("b", b"Subject: b\r\n\r\nb\r\n")],
        hooks={"DELE": lambda session, argument: DROP},
    )
    server = fakepop(script)
    with open_session(server.host, server.port, "none", "me", "pw", timeout=5) as session:
        with pytest.raises(PopError) as caught:
            session.delete(1)
        assert (caught.value.kind, caught.value.counts_as) == ("connect", "connection")
        with pytest.raises(PopError):
            session.quit()
    assert len(script.messages) == 2


def test_duplicate_uidls_are_returned_as_listed(fakepop):
    """Some servers list one UIDL twice; the client reports them as is (the caller dedupes)."""
    script = FakePopScript(messages=[
        FakeMessage("same", b"Subject: 1\r\n\r\none\r\n"),
        FakeMessage("same", b"Subject: 2\r\n\r\ntwo\r\n"),
        FakeMessage("other", b"Subject: 3\r\n\r\nthree\r\n"),
    ])
    server = fakepop(script)
    with open_session(server.host, server.port, "none", "me", "pw", timeout=5) as session:
        assert session.uidls() == [(1, "same"), (2, "same"), (3, "other")]
        assert session.retrieve(2) == b"Subject: 2\r\n\r\ntwo\r\n"


@pytest.mark.parametrize("pipelining", [True, False])
def test_retrieve_many_with_and_without_pipelining(fakepop, pipelining):
    """Without PIPELINING the client falls back to one RETR at a time, with the same result."""
    capabilities = ["USER", "UIDL"] + (["PIPELINING"] if pipelining else [])
    messages = [FakeMessage(f"u{i}", b"Subject: %d\r\n\r\n.dot\r\nbody\r\n" % i) for i in range(150)]
    server = fakepop(FakePopScript(messages=list(messages), capabilities=capabilities))
    with open_session(server.host, server.port, "none", "me", "pw", timeout=5) as session:
        got = list(session.retrieve_many(range(1, 151)))
    assert got == [(i + 1, m.data) for i, m in enumerate(messages)]
    assert sum(command.startswith("RETR") for command in server.commands) == 150


def test_gmail_recent_mode_lists_the_last_30_days_every_session(fakepop):
    """'recent:' is sent as typed; Gmail then re-lists the last 30 days in each session."""
    script = FakePopScript(gmail=True, messages=[
        FakeMessage("old", b"Subject: old\r\n\r\nx\r\n", age_days=45),
        FakeMessage("week", b"Subject: week\r\n\r\nx\r\n", age_days=7),
        FakeMessage("today", b"Subject: today\r\n\r\nx\r\n", age_days=0),
    ])
    server = fakepop(script)
    for _ in range(2):
        with open_session(server.host, server.port, "none", "recent:me@gmail.com", "pw", timeout=5) as session:
            assert [uidl for _, uidl in session.uidls()] == ["week", "today"]
            list(session.retrieve_many([1, 2]))
            session.quit()
    assert "USER recent:me@gmail.com" in server.commands
    with open_session(server.host, server.port, "none", "me@gmail.com", "pw", timeout=5) as session:
        assert [uidl for _, uidl in session.uidls()] == ["old"]


def test_closed_session_refuses_further_commands(dovecot, pop_user):
    """After close, a method raises PopError rather than an AttributeError from poplib."""
    user, password = pop_user
    session = open_session(dovecot.host, dovecot.pop3_port, "none", user, password, timeout=10)
    session.close()
    with pytest.raises(PopError):
        session.uidls()


def test_pop_error_survives_pickling():
    """Job queues pickle exceptions: every field must come back."""
    error = PopError("in_use", "Another program is reading this mailbox.", "-ERR [IN-USE] locked")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.kind, copy.counts_as, copy.user_message, copy.server_text) == (
        "in_use", None, error.user_message, "-ERR [IN-USE] locked",
    )


def test_tls_context_is_built_once_per_bundle(dovecot):
    """Building a verifying context costs ~21 ms, so it is cached per CA bundle."""
    assert pop3.tls_context(dovecot.ca_bundle) is pop3.tls_context(dovecot.ca_bundle)
    assert pop3.tls_context(None) is not pop3.tls_context(dovecot.ca_bundle)
    assert pop3.tls_context(None).check_hostname


@pytest.mark.parametrize("call", ["open_session", "test_connection"])
@pytest.mark.parametrize(("username", "password"), [
    ("me", "pw\r\nQUIT"), ("me", "pw\nDELE 1"), ("me", "pw\r"), ("me", "pw\0"),
    ("me\r\nDELE 1", "pw"), ("me\0", "pw"),
])
def test_line_breaks_in_the_login_are_refused_before_connecting(fakepop, call, username,
                                                                password):
    """Defect: poplib sent a password "pw\\r\\nQUIT" as PASS pw and a second command QUIT.

    Scripted server: it records every line it receives, which Dovecot does not report.
    """
    server = fakepop(FakePopScript())
    with pytest.raises(PopError) as caught:
        getattr(pop3, call)(server.host, server.port, "none", username, password, timeout=5)
    assert (caught.value.kind, caught.value.counts_as) == ("auth", "auth")
    assert "contains a line break" in caught.value.user_message
    assert server.commands == [] and server.connections == []


def _stuffed(body: bytes) -> bytes:
    """A body as a POP3 server sends it: dot-stuffed, then the "." line."""
    lines = body.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines) + b".\r\n"


@pytest.mark.parametrize("buffer_size", [1, 2, 3, 4, 5, 7, 64, 8192])
def test_read_message_is_exact_whatever_the_read_boundaries(buffer_size):
    """The terminator and stuffed dots may fall across reads; the bytes that follow stay unread."""
    import io

    bodies = [
        as_sent(make_message(1)),
        b"",  # an empty message: the first line is the terminator
        b".\r\n..\r\n.x\r\n",  # dot lines only
        b"no line end at the very end of the last line\r\n",
        as_sent(make_message(2, body_lines=2, extra=b"x" * 5000 + b"\n.\n")),
    ]
    stream = b"".join(_stuffed(body) for body in bodies) + b"+OK next answer\r\n"
    connection = object.__new__(pop3._Pop3Connection)
    connection.file = io.BufferedReader(io.BytesIO(stream), buffer_size=buffer_size)

    assert [connection.read_message() for _ in bodies] == bodies
    assert connection.file.read() == b"+OK next answer\r\n"


def test_read_message_accepts_bare_line_feeds_from_a_lax_server():
    import io

    connection = object.__new__(pop3._Pop3Connection)
    connection.file = io.BufferedReader(io.BytesIO(b"a\n..b\nc\n.\nrest"), buffer_size=3)
    assert connection.read_message() == b"a\n.b\nc\n"
    assert connection.file.read() == b"rest"
