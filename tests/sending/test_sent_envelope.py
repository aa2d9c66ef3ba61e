"""The Sent copy's envelope (issue #5): read once when a message is queued, so the send
worker files a group's copies without parsing each message's header block again."""
from __future__ import annotations

import json

from sqlalchemy import select, update

from webapp.extensions import db
from webapp.models import Folder, Message, MessageAddress
from webapp.models.sending import OutgoingMessage
from webapp.services import blobs, mime, outbox
from worker.jobs.send import send_message


def _queue(user, subject: str = "Quarterly numbers") -> OutgoingMessage:
    outgoing = outbox.queue_message(
        db.session, user, None, "Ann Lee <ann@remote.example>, bob@remote.example",
        "cc@remote.example", "", subject, "Body text\n", None,
        [("q3.csv", "text/csv", b"a,b\n1,2\n")], "<older@remote.example>",
        "<first@remote.example> <older@remote.example>")
    db.session.commit()
    return outgoing


def _sent_copy(user) -> Message:
    return db.session.scalars(select(Message).join(Folder, Folder.id == Message.folder_id)
                              .where(Message.user_id == user.id, Folder.role == "sent")).one()


def test_the_kept_envelope_is_the_parse_of_the_bytes_and_survives_json(app, user):
    outgoing = _queue(user)
    raw = blobs.get_store(app.config["BLOB_DIR"]).get(outgoing.blob_sha256)

    parsed = mime.parse_envelope(raw)
    assert outgoing.sent_envelope == mime.envelope_as_json(parsed)
    # What the database gives back (JSON text) reads back as the very same envelope.
    again = mime.envelope_from_json(json.loads(json.dumps(outgoing.sent_envelope)))
    assert again == parsed
    assert again.date is not None and again.date.tzinfo is not None
    assert [a.email for a in again.addresses_for("to")] == ["ann@remote.example",
                                                             "bob@remote.example"]
    assert again.has_attachments and again.in_reply_to == "<older@remote.example>"


def test_mail_not_filed_in_sent_keeps_no_envelope(app, org, user, smtp_server, use_relay):
    use_relay(smtp_server())
    system = outbox.queue_system_message(db.session, org.id, "someone@remote.example",
                                         "Your reset link", "Body\n")
    db.session.commit()
    assert system.file_in_sent is False and system.sent_envelope is None
    assert db.session.scalar(select(OutgoingMessage.id).where(
        OutgoingMessage.sent_envelope.is_(None))) == system.id  # SQL NULL, not JSON null


def test_the_worker_files_the_copy_with_the_kept_envelope(app, user, smtp_server, use_relay):
    server = smtp_server()
    use_relay(server)
    outgoing = _queue(user)
    kept = dict(outgoing.sent_envelope, subject="As kept when queued")
    # Different from the bytes on purpose: the copy's subject shows which one was used.
    db.session.execute(update(OutgoingMessage).where(OutgoingMessage.id == outgoing.id)
                       .values(sent_envelope=kept))
    db.session.commit()

    assert send_message(outgoing.id) == "sent"

    copy = _sent_copy(user)
    assert copy.subject == "As kept when queued"
    # It served its one use: cleared (SQL NULL) once the copy is filed.
    db.session.expire_all()
    assert db.session.scalar(select(OutgoingMessage.id).where(
        OutgoingMessage.id == outgoing.id, OutgoingMessage.sent_envelope.is_(None))) \
        == outgoing.id
    store = blobs.get_store(app.config["BLOB_DIR"])
    assert store.get(copy.blob_sha256) == server.messages[0].data  # the bytes as sent
    linked = db.session.scalars(select(MessageAddress.email).where(
        MessageAddress.message_pk == copy.id, MessageAddress.role == "to")).all()
    assert sorted(linked) == ["ann@remote.example", "bob@remote.example"]


def test_without_a_kept_envelope_the_worker_parses_the_bytes(app, user, smtp_server,
                                                              use_relay):
    """Rows queued before the column existed, and a kept envelope that cannot be read."""
    use_relay(smtp_server())
    old = _queue(user, "Queued before the column")
    broken = _queue(user, "Kept envelope broken")
    db.session.execute(update(OutgoingMessage).where(OutgoingMessage.id == old.id)
                       .values(sent_envelope=None))
    db.session.execute(update(OutgoingMessage).where(OutgoingMessage.id == broken.id)
                       .values(sent_envelope={"subject": "x", "no such field": 1}))
    db.session.commit()

    assert send_message(old.id) == "sent"  # and the other in its group

    copies = db.session.scalars(select(Message.subject).join(
        Folder, Folder.id == Message.folder_id).where(
        Message.user_id == user.id, Folder.role == "sent").order_by(Message.id)).all()
    assert copies == ["Queued before the column", "Kept envelope broken"]
