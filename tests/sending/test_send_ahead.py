"""Starting a message ahead (worker.smtp start/finish/withhold) against a real aiosmtpd:
nothing is accepted before the end of DATA, and a withheld message is never delivered."""
from __future__ import annotations

from email import message_from_bytes

from webapp.services.compose import as_bytes, build_message, make_message_id
from worker.smtp import SmtpConnection

TEXT = "Hello,\n.a line that starts with a dot\n.\nBye\n"


def _raw(subject: str) -> bytes:
    return as_bytes(build_message(
        from_addr=("Sender", "sender@example.com"), to=[("Ann", "ann@example.org")], cc=[],
        bcc=[], subject=subject, text=TEXT, message_id=make_message_id("example.com"),
        in_reply_to=None, references=[], reply_to=None, sender=None))


def _connection(server) -> SmtpConnection:
    """An unopened session to the test server (``with`` opens it)."""
    return SmtpConnection(server.host, server.port, security="none", timeout=10.0)


def test_start_then_finish_delivers_the_exact_bytes_once(smtp_server):
    server = smtp_server()
    raw = _raw("Ahead")
    with _connection(server) as connection:
        started = connection.start("sender@example.com", ["ann@example.org", "bob@example.org"],
                                   raw)
        assert started.accepted == ["ann@example.org", "bob@example.org"]
        outcome = connection.finish(started)
        # The session carries the next message as usual.
        connection.send("sender@example.com", ["ann@example.org"], _raw("Next"))
    assert outcome.reply_code == 250 and outcome.accepted == started.accepted
    assert [m.data for m in server.messages][0] == raw  # dot-stuffed lines arrive unchanged
    assert [message_from_bytes(m.data)["Subject"] for m in server.messages] == ["Ahead", "Next"]


def test_a_withheld_message_is_never_delivered(smtp_server):
    """Everything but the end of DATA went out, then the session was dropped: the server
    discards the message. (Its bytes reached the server before the other connection's
    whole exchange began, so a dot sent by start() would have been seen first.)"""
    server = smtp_server()
    withheld = _connection(server)
    withheld.open()
    started = withheld.start("sender@example.com", ["ann@example.org"], _raw("Withheld"))
    assert started.accepted == ["ann@example.org"]
    with _connection(server) as other:
        other.send("sender@example.com", ["ann@example.org"], _raw("Other"))
        withheld.withhold()
        assert not withheld.is_open
        other.send("sender@example.com", ["ann@example.org"], _raw("After"))
    assert [message_from_bytes(m.data)["Subject"] for m in server.messages] == ["Other", "After"]


def test_a_refusal_before_data_leaves_the_session_usable(smtp_server):
    server = smtp_server(rcpt_replies={"bad@": "550 5.1.1 no such user"})
    with _connection(server) as connection:
        try:
            connection.start("sender@example.com", ["bad@example.org"], _raw("Refused"))
        except Exception as error:  # noqa: BLE001 - checked below
            refused = error
        assert getattr(refused, "kind", None) == "rejected"
        connection.finish(connection.start("sender@example.com", ["ann@example.org"],
                                           _raw("Fine")))
    assert [message_from_bytes(m.data)["Subject"] for m in server.messages] == ["Fine"]
