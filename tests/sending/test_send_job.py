"""The send job against a real aiosmtpd on loopback with scripted replies."""
from __future__ import annotations

import socket
from email import message_from_bytes, policy
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from tests.factories import make_user
from tests.fixtures.smtpserver import DROP_CONNECTION
from tests.sending.conftest import make_due
from webapp.extensions import db
from webapp.models import Folder, Message
from webapp.models.sending import OutgoingMessage
from webapp.services import blobs, outbox, sendas
from worker.jobs.send import send_message


def _queue(user, to="bob@remote.example", cc="", bcc="", subject="Hello", identity_id=None):
    outgoing = outbox.queue_message(db.session, user, identity_id, to, cc, bcc, subject,
                                    "Body text\n", None, [], None, None)
    db.session.commit()
    return outgoing.id


def _row(outgoing_id) -> OutgoingMessage:
    db.session.expire_all()
    return db.session.get(OutgoingMessage, outgoing_id)


def _sent_folder_messages(user):
    return db.session.scalars(select(Message).join(Folder, Folder.id == Message.folder_id)
                              .where(Message.user_id == user.id, Folder.role == "sent")).all()


def test_success_sends_and_files_the_exact_bytes_in_sent(app, user, smtp_server, use_relay):
    server = smtp_server()
    use_relay(server)
    outgoing_id = _queue(user, to="Bob <bob@remote.example>", cc="carol@remote.example",
                         bcc="dave@remote.example")

    assert send_message(outgoing_id) == "sent"

    row = _row(outgoing_id)
    assert row.state == "sent" and row.attempts == 1 and row.sent_at is not None
    assert [r.state for r in row.recipients] == ["accepted"] * 3
    (received,) = server.messages
    assert received.rcpt_tos == ["bob@remote.example", "carol@remote.example",
                                 "dave@remote.example"]
    assert received.mail_from == user.email  # envelope policy "hosted"
    (sent,) = _sent_folder_messages(user)
    stored = blobs.get_store(app.config["BLOB_DIR"]).get(sent.blob_sha256)
    assert stored == received.data  # byte for byte
    assert sent.is_read and sent.message_id == row.message_id
    parsed = message_from_bytes(received.data, policy=policy.default)
    assert "Bcc" not in parsed and parsed["Message-ID"] == row.message_id
    assert "Sender" not in parsed  # the From domain is hosted


def test_outbox_releases_its_copy_once_sent_or_cancelled(app, user, smtp_server, use_relay):
    """Review finding: outgoing bytes kept a blob reference for ever, so disk only grew."""
    from webapp.models import Blob

    use_relay(smtp_server())
    sent_id = _queue(user, subject="goes out")
    assert send_message(sent_id) == "sent"
    db.session.expire_all()
    digest = _row(sent_id).blob_sha256
    assert db.session.get(Blob, digest).refcount == 1  # only the copy in Sent holds it now
    cancelled_id = _queue(user, subject="never mind")
    assert outbox.cancel(db.session, user.id, cancelled_id)
    db.session.commit()
    db.session.expire_all()
    assert db.session.get(Blob, _row(cancelled_id).blob_sha256).refcount == 0


def test_sender_header_when_the_from_domain_is_not_hosted(app, user, smtp_server, use_relay):
    server = smtp_server()
    use_relay(server)
    identity = sendas.add_identity(db.session, user, "me@gmail.example", "Me")
    identity.is_verified = True
    db.session.commit()

    assert send_message(_queue(user, identity_id=identity.id)) == "sent"

    parsed = message_from_bytes(server.messages[0].data, policy=policy.default)
    assert parsed["From"].addresses[0].addr_spec == "me@gmail.example"
    assert parsed["Sender"].addresses[0].addr_spec == user.email


@pytest.mark.parametrize("script", [
    {"data_replies": ["451 4.3.0 Try again later"]},
    {"data_replies": ["454 4.7.0 Temporary authentication failure"]},
    {"rcpt_replies": {"bob@": ["421 4.3.2 Service shutting down"]}},
], ids=["451-data", "454-data", "421-rcpt"])
def test_temporary_failure_waits_then_succeeds_with_the_same_message_id(
        app, user, smtp_server, use_relay, script):
    server = smtp_server(**script)
    use_relay(server)
    outgoing_id = _queue(user)

    assert send_message(outgoing_id) == "retry-wait"
    row = _row(outgoing_id)
    assert row.next_attempt_at is not None and row.last_error_kind == "temporary"
    assert "retried" in row.last_error_message
    assert send_message(outgoing_id) == "not due"  # the backoff is respected

    make_due(outgoing_id)
    assert send_message(outgoing_id) == "sent"
    row = _row(outgoing_id)
    assert row.attempts == 2 and row.last_error_message == ""
    delivered = [m for m in server.messages if m.reply.startswith("250")]
    assert len(delivered) == 1
    assert message_from_bytes(delivered[0].data)["Message-ID"] == row.message_id
    assert len(_sent_folder_messages(user)) == 1


def test_permanent_rejection_fails_at_once_with_the_servers_words(app, user, smtp_server,
                                                                  use_relay):
    server = smtp_server(data_replies=["550 5.7.1 Message content rejected as spam"])
    use_relay(server)
    outgoing_id = _queue(user)

    assert send_message(outgoing_id) == "failed"

    row = _row(outgoing_id)
    assert row.last_error_code == 550 and "content rejected as spam" in row.last_error_message
    assert row.next_attempt_at is None and _sent_folder_messages(user) == []


def test_wrong_password_fails_with_a_pointer_to_the_settings(app, user, smtp_server):
    server = smtp_server(auth=("me@gmail.example", "right password"))
    identity = sendas.add_identity(db.session, user, "me@gmail.example")
    identity.is_verified = True
    sendas.update_identity(db.session, identity, display_name="", reply_to="", transport="smtp",
                           smtp_host=server.host, smtp_port=server.port, smtp_security="none",
                           smtp_username="me@gmail.example", smtp_password="wrong password")
    db.session.commit()
    outgoing_id = _queue(user, identity_id=identity.id)

    assert send_message(outgoing_id) == "failed"

    row = _row(outgoing_id)
    assert row.last_error_kind == "auth" and row.last_error_code == 535
    assert "Send Mail As" in row.last_error_message
    assert server.messages == []


def test_partial_refusal_retries_only_the_temporarily_refused(app, user, smtp_server,
                                                              use_relay):
    server = smtp_server(rcpt_replies={"gone@": "550 5.1.1 No such user",
                                       "busy@": ["450 4.2.1 Mailbox busy"]})
    use_relay(server)
    outgoing_id = _queue(user, to="ok@remote.example, gone@remote.example, busy@remote.example")

    assert send_message(outgoing_id) == "retry-wait"
    row = _row(outgoing_id)
    assert {r.address: r.state for r in row.recipients} == {
        "ok@remote.example": "accepted", "gone@remote.example": "refused",
        "busy@remote.example": "deferred"}
    assert server.messages[0].rcpt_tos == ["ok@remote.example"]
    assert len(_sent_folder_messages(user)) == 1  # filed once, at the first delivery

    make_due(outgoing_id)
    assert send_message(outgoing_id) == "sent"

    assert server.messages[1].rcpt_tos == ["busy@remote.example"]  # never ok@ again
    assert server.messages[1].data == server.messages[0].data
    row = _row(outgoing_id)
    assert "gone@remote.example" in row.last_error_message
    assert len(_sent_folder_messages(user)) == 1


def test_every_recipient_refused_for_good_fails(app, user, smtp_server, use_relay):
    server = smtp_server(rcpt_replies={"gone@": "550 5.1.1 No such user"})
    use_relay(server)
    outgoing_id = _queue(user, to="gone@remote.example")

    assert send_message(outgoing_id) == "failed"
    assert _row(outgoing_id).recipients[0].state == "refused"


def test_connection_lost_after_data_is_uncertain_and_not_resent(app, user, smtp_server,
                                                                 use_relay):
    server = smtp_server(data_replies=[DROP_CONNECTION])
    use_relay(server)
    outgoing_id = _queue(user)

    assert send_message(outgoing_id) == "uncertain"
    row = _row(outgoing_id)
    assert "may have been delivered" in row.last_error_message
    make_due(outgoing_id)
    assert send_message(outgoing_id) == "not due"  # never resent on its own
    assert len(server.messages) == 1

    assert outbox.retry(db.session, user.id, outgoing_id)  # the user's "send again"
    db.session.commit()
    assert send_message(outgoing_id) == "sent"
    assert len(server.messages) == 2
    assert server.messages[0].data == server.messages[1].data


def test_connection_refused_waits_and_gives_up_after_the_bounded_attempts(app, user, use_relay):
    from worker.jobs import send as send_job

    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    use_relay(SimpleNamespace(host="127.0.0.1", port=port))
    outgoing_id = _queue(user)
    states = []
    for _ in range(send_job.MAX_ATTEMPTS):
        make_due(outgoing_id)
        states.append(send_message(outgoing_id))
    assert states == ["retry-wait"] * (send_job.MAX_ATTEMPTS - 1) + ["failed"]
    row = _row(outgoing_id)
    assert row.last_error_kind == "connect" and row.last_error_message.startswith("Gave up")


def test_cancel_waits_for_the_sent_copy_of_a_message_that_reached_some_recipients(
        app, user, smtp_server, use_relay):
    """Review finding: cancelling a message still owed its Sent copy (it went to some
    recipients, the others to be retried) dropped the outbox's reference the copy needed,
    and `blobs gc` could take the bytes before the copy was filed."""
    from datetime import timedelta

    from webapp.models import Blob
    from webapp.models._types import utcnow
    from worker.jobs.send import recover_sent_copies

    use_relay(smtp_server(rcpt_replies={"busy@": ["450 4.2.1 Mailbox busy"]}))
    outgoing_id = _queue(user, to="a@remote.example, busy@remote.example")
    assert send_message(outgoing_id) == "retry-wait"
    row = _row(outgoing_id)
    # As a worker that died before filing the copy leaves it: owed, under a lease.
    row.sent_message_pk, row.lease_until = None, utcnow() + timedelta(minutes=5)
    copy = _sent_folder_messages(user)[0]
    db.session.delete(copy)
    db.session.get(Blob, row.blob_sha256).refcount -= 1  # the copy's own reference
    db.session.commit()
    digest = row.blob_sha256

    assert not outbox.cancel(db.session, user.id, outgoing_id)
    db.session.rollback()
    assert db.session.get(Blob, digest).refcount == 1  # the outbox's, for the copy
    assert blobs.collect_garbage(db.session, blobs.get_store(app.config["BLOB_DIR"])) == 0

    _row(outgoing_id).lease_until = utcnow() - timedelta(seconds=1)
    db.session.commit()
    assert recover_sent_copies(db.session) == [outgoing_id]  # filed: now it can go
    assert outbox.cancel(db.session, user.id, outgoing_id)
    db.session.commit()
    db.session.expire_all()
    assert _row(outgoing_id).state == "cancelled"
    assert db.session.get(Blob, digest).refcount == 1  # the copy's
    assert blobs.get_store(app.config["BLOB_DIR"]).get(digest)


def test_cancelled_or_disabled_user_sends_nothing(app, user, smtp_server, use_relay):
    server = smtp_server()
    use_relay(server)
    cancelled = _queue(user)
    assert outbox.cancel(db.session, user.id, cancelled)
    db.session.commit()
    assert send_message(cancelled) == "not due"

    other = make_user(user.organization)
    disabled = _queue(other)
    other.is_disabled = True
    db.session.commit()
    assert send_message(disabled) == "user disabled"
    assert server.messages == []


def test_unconfigured_relay_fails_with_words_for_the_admin(app, user):
    outgoing_id = _queue(user)
    assert send_message(outgoing_id) == "failed"
    assert "Relay & limits" in _row(outgoing_id).last_error_message


def test_submission_relays_the_exact_bytes_and_files_them(app, user, smtp_server, use_relay):
    server = smtp_server()
    use_relay(server)
    raw = (b"From: <" + user.email.encode() + b">\r\nTo: <x@remote.example>\r\n"
           b"Subject: from Thunderbird\r\nMessage-ID: <tb-1@client.example>\r\n\r\n"
           b"Hello\r\n.starts with a dot\r\n")
    outgoing = outbox.queue_raw_submission(db.session, user.id, raw, user.email,
                                           ["x@remote.example", "y@remote.example"])
    db.session.commit()

    assert send_message(outgoing.id) == "sent"

    assert server.messages[0].data == raw
    (sent,) = _sent_folder_messages(user)
    assert blobs.get_store(app.config["BLOB_DIR"]).get(sent.blob_sha256) == raw


def test_submission_from_a_foreign_address_is_refused(app, user):
    with pytest.raises(outbox.OutboxError):
        outbox.queue_raw_submission(db.session, user.id, b"Subject: x\r\n\r\nx\r\n",
                                    "ceo@elsewhere.example", ["x@remote.example"])


def test_system_message_goes_from_no_reply_and_is_not_filed(app, org, smtp_server, use_relay):
    server = smtp_server()
    use_relay(server)
    outgoing = outbox.queue_system_message(db.session, org.id, "someone@remote.example",
                                           "Reset your password", "Open this link")
    db.session.commit()

    assert send_message(outgoing.id) == "sent"

    assert server.messages[0].mail_from == "no-reply@acme.example"
    assert db.session.scalar(select(Message.id)) is None


def test_forward_uses_the_default_identity_and_keeps_attachments(app, user, smtp_server,
                                                                 use_relay):
    from webapp.services.compose import as_bytes, build_message, make_message_id
    from webapp.services.delivery import deliver

    server = smtp_server()
    use_relay(server)
    original = as_bytes(build_message(
        from_addr=("Ann", "ann@remote.example"), to=[("", user.email)], subject="Report",
        text="See attached.", attachments=[("report.pdf", "application/pdf", b"%PDF-1.4 bytes")],
        message_id=make_message_id("remote.example")))
    stored = deliver(db.session, outbox.hosted_account(db.session, user.id), original, "t:1").message
    db.session.commit()

    outgoing = outbox.queue_forward(db.session, user.id, stored.id, "boss@remote.example")
    db.session.commit()
    assert send_message(outgoing.id) == "sent"

    parsed = message_from_bytes(server.messages[0].data, policy=policy.default)
    assert parsed["Subject"] == "Fwd: Report"
    assert parsed["From"].addresses[0].addr_spec == user.email
    (attachment,) = list(parsed.iter_attachments())
    assert attachment.get_filename() == "report.pdf"
    assert attachment.get_content() == b"%PDF-1.4 bytes"
    assert "See attached." in parsed.get_body(("plain",)).get_content()


def test_identity_of_another_user_cannot_be_used(app, user):
    other = make_user(user.organization)
    theirs = sendas.ensure_hosted_identity(db.session, other)
    db.session.commit()
    with pytest.raises(outbox.OutboxError):
        outbox.queue_message(db.session, user, theirs.id, "bob@remote.example", "", "", "s",
                             "t", None, [], None, None)
    db.session.rollback()
    assert db.session.scalar(select(OutgoingMessage.id)) is None


def test_filter_forward_is_marked_and_never_forwarded_again(app, user, smtp_server, use_relay):
    """Two mailboxes forwarding to each other must not loop (RFC 3834 Auto-Submitted)."""
    from webapp.services.delivery import deliver

    server = smtp_server()
    use_relay(server)
    first = deliver(db.session, outbox.hosted_account(db.session, user.id),
                    b"From: a@remote.example\r\nSubject: hi\r\nMessage-ID: <h@r.example>\r\n"
                    b"\r\nhello\r\n", "t:1").message
    db.session.commit()
    outgoing = outbox.queue_forward(db.session, user.id, first.id, "other@remote.example")
    db.session.commit()
    assert send_message(outgoing.id) == "sent"
    forwarded = server.messages[0].data
    assert message_from_bytes(forwarded)["Auto-Submitted"] == "auto-forwarded"

    again = deliver(db.session, outbox.hosted_account(db.session, user.id), forwarded,
                    "t:2").message
    db.session.commit()
    with pytest.raises(outbox.OutboxError, match="could loop"):
        outbox.queue_forward(db.session, user.id, again.id, "other@remote.example")


def test_an_unexpected_failure_is_written_on_the_row_not_left_sending(app, user, smtp_server,
                                                                      use_relay):
    server = smtp_server()
    use_relay(server)
    outgoing_id = _queue(user)
    blobs.get_store(app.config["BLOB_DIR"]).delete(_row(outgoing_id).blob_sha256)

    assert send_message(outgoing_id) == "failed"

    row = _row(outgoing_id)
    assert row.last_error_kind == "internal" and "Retry" in row.last_error_message
    assert row.lease_until is None and server.messages == []


@pytest.mark.parametrize("headers", [
    b"From: Boss <ceo@elsewhere.example>\r\n",
    b"From: <{me}>\r\nSender: <ceo@elsewhere.example>\r\n",
    b"From: <{me}>\r\nFrom: <ceo@elsewhere.example>\r\n",
    b"From: undisclosed:;\r\n",
    b"",
])
def test_submission_with_a_foreign_or_missing_from_header_is_refused(app, user, headers):
    """Defect: queue_raw_submission checked only MAIL FROM, so the submitted From/Sender
    header could name anyone and went out through the relay as sent."""
    raw = headers.replace(b"{me}", user.email.encode()) + \
        b"To: <x@remote.example>\r\nSubject: x\r\n\r\nx\r\n"
    with pytest.raises(outbox.OutboxError):
        outbox.queue_raw_submission(db.session, user.id, raw, user.email, ["x@remote.example"])
    db.session.rollback()
    assert db.session.scalars(select(OutgoingMessage)).all() == []


def test_blob_collection_after_a_sent_copy_and_a_cancelled_message_are_gone(
        app, user, smtp_server, use_relay):
    """Bytes that no message uses any more are collected, although outbox rows of a sent and
    a cancelled message still name them (the outbox gave its reference up)."""
    from webapp.models import Blob
    from webapp.services import mailbox

    use_relay(smtp_server())
    sent_id = _queue(user, subject="goes out")
    assert send_message(sent_id) == "sent"
    cancelled_id = _queue(user, subject="never mind")
    assert outbox.cancel(db.session, user.id, cancelled_id)
    db.session.commit()
    (copy,) = _sent_folder_messages(user)
    mailbox.trash_or_delete(db.session, user.id, [copy.id])
    mailbox.trash_or_delete(db.session, user.id, [copy.id])  # from Trash: for good
    db.session.commit()
    digests = [_row(sent_id).blob_sha256, _row(cancelled_id).blob_sha256]
    store = blobs.get_store(app.config["BLOB_DIR"])

    assert blobs.collect_garbage(db.session, store) == 2

    assert [db.session.get(Blob, digest) for digest in digests] == [None, None]
    assert not any(store.exists(digest) for digest in digests)
    assert _row(sent_id).state == "sent" and _row(cancelled_id).state == "cancelled"
