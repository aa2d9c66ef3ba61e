"""Batches (issue #5): one send job takes every due message of its transport over the same
SMTP sessions, with every guarantee of a job per message."""
from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, text, update

from tests.factories import make_user
from tests.fixtures.smtpserver import ScriptedHandler
from tests.sending.conftest import statements
from webapp.extensions import db
from webapp.models import Blob, Folder, Message
from webapp.models._types import utcnow
from webapp.models.sending import OutgoingMessage
from webapp.queue import get_queue
from webapp.services import blobs, outbox, sendas
from worker.jobs.send import recover_sent_copies, send_message


def _queue(user, to: str, subject: str = "Hello", identity_id: int | None = None) -> int:
    outgoing = outbox.queue_message(db.session, user, identity_id, to, "", "", subject,
                                    "Body text\n", None, [], None, None)
    db.session.commit()
    return outgoing.id


def _rows(ids: list[int]) -> list[OutgoingMessage]:
    db.session.expire_all()
    return [db.session.get(OutgoingMessage, i) for i in ids]


def _sent_copies(user) -> list[Message]:
    return db.session.scalars(select(Message).join(Folder, Folder.id == Message.folder_id)
                              .where(Message.user_id == user.id, Folder.role == "sent")
                              .order_by(Message.id)).all()


def test_one_job_sends_the_whole_queue_over_the_same_two_sessions(app, user, smtp_server,
                                                                 use_relay):
    relay_server, own_server = smtp_server(), smtp_server()
    use_relay(relay_server)
    identity = sendas.add_identity(db.session, user, "me@gmail.example")
    identity.is_verified = True
    sendas.update_identity(db.session, identity, display_name="", reply_to="", transport="smtp",
                           smtp_host=own_server.host, smtp_port=own_server.port,
                           smtp_security="none", smtp_username="", smtp_password="")
    db.session.commit()
    ids = [_queue(user, f"to{n}@remote.example", f"Message {n}") for n in range(3)]
    elsewhere = _queue(user, "x@remote.example", "Through my own server", identity.id)
    ids += [_queue(user, f"to{n}@remote.example", f"Message {n}") for n in range(3, 6)]

    assert send_message(ids[0]) == "sent"

    rows = _rows(ids)
    assert [r.state for r in rows] == ["sent"] * 6
    assert [r.attempts for r in rows] == [1] * 6
    assert len(relay_server.messages) == 6
    # Its own message opened one session; the group went over that one and a second.
    assert len({m.peer for m in relay_server.messages}) == 2
    assert [m.rcpt_tos for m in relay_server.messages] == \
        [[f"to{n}@remote.example"] for n in range(6)]
    # The other transport's message is not this batch's: it waits for its own job.
    assert _rows([elsewhere])[0].state == "queued" and own_server.messages == []
    # Their own jobs would find nothing to do: the batch took them out of the queue (and
    # were one to run anyway, it would return at once).
    queued = get_queue(outbox.SEND_QUEUE).job_ids
    assert outbox.send_job_id(elsewhere) in queued
    assert [outbox.send_job_id(i) for i in ids if outbox.send_job_id(i) in queued] == []
    assert [send_message(i) for i in ids[1:]] == ["not due"] * 5
    assert len(relay_server.messages) == 6

    copies = _sent_copies(user)
    assert [c.source_key for c in copies] == [f"sent:{i}" for i in ids]
    store = blobs.get_store(app.config["BLOB_DIR"])
    assert [store.get(c.blob_sha256) for c in copies] == [m.data for m in relay_server.messages]
    assert all(r.sent_message_pk == c.id and r.lease_until is None
               for r, c in zip(rows, copies))
    # Only the copy in Sent holds the bytes now.
    assert all(db.session.get(Blob, r.blob_sha256).refcount == 1 for r in rows)

    assert send_message(elsewhere) == "sent"
    assert len(own_server.messages) == 1 and len(relay_server.messages) == 6


def test_a_message_over_the_daily_limit_fails_alone(app, org, user, smtp_server, use_relay):
    server = smtp_server()
    use_relay(server, daily_limit_user=2)
    other = make_user(org)
    ids = [_queue(user, "a@remote.example", "mine 1"), _queue(other, "b@remote.example"),
           _queue(user, "a@remote.example", "mine 2"), _queue(user, "a@remote.example", "mine 3"),
           _queue(other, "b@remote.example")]

    assert send_message(ids[0]) == "sent"

    rows = _rows(ids)
    assert [r.state for r in rows] == ["sent", "sent", "sent", "failed", "sent"]
    assert rows[3].last_error_kind == "limit" and "daily sending limit" in \
        rows[3].last_error_message
    assert len(server.messages) == 4
    assert outbox.sent_today(db.session, "user", user.id) == 2
    assert outbox.sent_today(db.session, "user", other.id) == 2
    assert outbox.sent_today(db.session, "org", org.id) == 4


def test_a_refused_recipient_affects_only_its_own_message(app, user, smtp_server, use_relay):
    server = smtp_server(rcpt_replies={"gone@": "550 5.1.1 No such user",
                                       "busy@": ["450 4.2.1 Mailbox busy"]})
    use_relay(server)
    ids = [_queue(user, "a@remote.example"), _queue(user, "gone@remote.example"),
           _queue(user, "b@remote.example, busy@remote.example"),
           _queue(user, "c@remote.example")]

    assert send_message(ids[0]) == "sent"

    rows = _rows(ids)
    assert [r.state for r in rows] == ["sent", "failed", "retry-wait", "sent"]
    assert "No such user" in rows[1].last_error_message
    assert {r.address: r.state for r in rows[2].recipients} == {
        "b@remote.example": "accepted", "busy@remote.example": "deferred"}
    assert rows[0].last_error_message == rows[3].last_error_message == ""
    assert [m.rcpt_tos for m in server.messages] == [
        ["a@remote.example"], ["b@remote.example"], ["c@remote.example"]]
    # Neither of the job's two sessions was dropped for a refusal: "a" and "c" went over one.
    assert len({m.peer for m in server.messages}) == 2
    assert server.messages[0].peer == server.messages[2].peer
    # Filed once each, at the first delivery; never for the refused one.
    assert [c.source_key for c in _sent_copies(user)] == [
        f"sent:{ids[0]}", f"sent:{ids[2]}", f"sent:{ids[3]}"]


def test_a_sent_copy_takes_over_the_outbox_reference_to_its_bytes(app, user, smtp_server,
                                                                   use_relay):
    """Filing a message sent for good counts no blob reference and drops none: the copy
    takes the outbox's. A message still to be retried keeps the outbox's, and its copy
    counts its own."""
    server = smtp_server(rcpt_replies={"busy@": ["450 4.2.1 Mailbox busy"]})
    use_relay(server)
    ids = [_queue(user, "a@remote.example"), _queue(user, "b@remote.example, busy@remote.example"),
           _queue(user, "c@remote.example")]
    with statements(lambda s: s.lstrip().upper().startswith(("INSERT INTO BLOB ",
                                                            "UPDATE BLOB "))) as blob_writes:
        assert send_message(ids[0]) == "sent"

    rows = _rows(ids)
    assert [r.state for r in rows] == ["sent", "retry-wait", "sent"]
    assert [c.source_key for c in _sent_copies(user)] == [f"sent:{i}" for i in ids]
    # One statement counted the retried message's copy; nothing else touched a count.
    assert len(blob_writes) == 1 and blob_writes[0].upper().startswith("INSERT INTO BLOB ")
    assert [db.session.get(Blob, r.blob_sha256).refcount for r in rows] == [1, 2, 1]

    # Its retry reaches the deferred recipient; the copy filed before is kept, and the
    # outbox's reference goes.
    db.session.get(OutgoingMessage, ids[1]).next_attempt_at = None
    db.session.commit()
    assert send_message(ids[1]) == "sent"
    assert [db.session.get(Blob, r.blob_sha256).refcount for r in _rows(ids)] == [1, 1, 1]
    assert len(_sent_copies(user)) == 3


def _owed_again(outgoing_id: int) -> None:
    """The row as a second filer sees it when it read the row before the first committed:
    the copy still owed, the lease run out (the counts stay as the first filer left them)."""
    db.session.execute(update(OutgoingMessage).where(OutgoingMessage.id == outgoing_id)
                       .values(sent_message_pk=None,
                               lease_until=utcnow() - timedelta(seconds=1)))
    db.session.commit()


def test_a_copy_found_filed_already_counts_nothing_and_drops_nothing(app, user, smtp_server,
                                                                    use_relay):
    """Review finding: a second filer that found the copy stored dropped the outbox's
    reference again, which the first had handed over to the copy: the copy's bytes were
    left at count 0, for `blobs gc` to delete."""
    use_relay(smtp_server())
    outgoing_id = _queue(user, "a@remote.example")
    assert send_message(outgoing_id) == "sent"
    _owed_again(outgoing_id)

    assert recover_sent_copies(db.session) == [outgoing_id]

    row = _rows([outgoing_id])[0]
    assert row.sent_message_pk == _sent_copies(user)[0].id and row.lease_until is None
    assert len(_sent_copies(user)) == 1
    assert db.session.get(Blob, row.blob_sha256).refcount == 1


def test_two_sweeps_at_once_file_a_copy_once(app, user, smtp_server, use_relay):
    """PostgreSQL: a sweep skips the owed rows another sweep holds until it commits, and
    then finds them filed."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time")
    use_relay(smtp_server())
    outgoing_id = _queue(user, "a@remote.example")
    assert send_message(outgoing_id) == "sent"
    _owed_again(outgoing_id)
    with db.engine.connect() as first:  # the other sweep, holding the row
        first.execute(select(OutgoingMessage.id).where(OutgoingMessage.id == outgoing_id)
                      .with_for_update())
        # Were the row not skipped, this sweep would wait for it: fail instead of hanging.
        db.session.execute(text("SET lock_timeout = '5s'"))
        try:
            assert recover_sent_copies(db.session) == []
        finally:
            db.session.rollback()
            db.session.execute(text("RESET lock_timeout"))
            db.session.commit()
        first.execute(update(OutgoingMessage).where(OutgoingMessage.id == outgoing_id)
                      .values(sent_message_pk=_sent_copies(user)[0].id, lease_until=None))
        db.session.rollback()
        first.commit()

    assert recover_sent_copies(db.session) == []
    assert db.session.get(Blob, _rows([outgoing_id])[0].blob_sha256).refcount == 1


class GoDownAtRcpt(ScriptedHandler):
    """At the first RCPT of one address, stops listening and closes its sessions unanswered:
    a relay that goes down in the middle of a batch (which aiosmtpd cannot be told to do).

    It goes down once the batch's second session is connected too, so that no connection
    is half accepted when the listening socket closes."""

    def __init__(self, controller: Any, address: str) -> None:
        super().__init__()
        self.controller = controller
        self.address = address
        self.sessions: list[Any] = []  # the aiosmtpd protocol of each session that greeted

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        self.sessions.append(server)
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if address == self.address:
            for _ in range(500):
                if len(self.sessions) >= 2:
                    break
                await asyncio.sleep(0.01)
            self.controller.server.close()  # new connections are refused from now on
            for each in self.sessions:
                if each.transport is not None:
                    each.transport.close()
            return "421 4.3.2 Closing"  # written into the closed transport: the client sees EOF
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


def test_a_relay_going_down_gives_the_rest_of_the_batch_back(app, user, smtp_server,
                                                             use_relay):
    server = smtp_server()
    server.controller.handler = server.handler = GoDownAtRcpt(server.controller,
                                                              "to1@remote.example")
    use_relay(server)
    ids = [_queue(user, f"to{n}@remote.example") for n in range(4)]

    assert send_message(ids[0]) == "sent"

    rows = _rows(ids)
    assert [r.state for r in rows] == ["sent", "retry-wait", "queued", "queued"]
    assert rows[1].last_error_kind == "connect"
    # Never tried: their attempt is not used up, they are due at once, with a job each.
    assert [r.attempts for r in rows[2:]] == [0, 0]
    jobs = get_queue(outbox.SEND_QUEUE).jobs
    assert sorted(j.args for j in jobs if j.args[0] in ids) == [(ids[2],), (ids[3],)]
    assert [m.rcpt_tos for m in server.messages] == [["to0@remote.example"]]

    replacement = smtp_server()
    use_relay(replacement)
    assert send_message(ids[2]) == "sent"
    assert [r.state for r in _rows(ids)] == ["sent", "retry-wait", "sent", "sent"]
    assert [m.rcpt_tos for m in replacement.messages] == [
        ["to2@remote.example"], ["to3@remote.example"]]


def test_a_full_mailbox_keeps_sent_messages_sent(app, user, smtp_server, use_relay):
    server = smtp_server()
    use_relay(server)
    user.quota_bytes = user.used_bytes + 10
    db.session.commit()
    ids = [_queue(user, f"to{n}@remote.example") for n in range(3)]

    assert send_message(ids[0]) == "sent"

    rows = _rows(ids)
    assert [r.state for r in rows] == ["sent"] * 3 and len(server.messages) == 3
    assert all(r.last_error_message.startswith("Sent, but no copy could be kept in Sent")
               and r.lease_until is None and r.sent_message_pk is None for r in rows)
    assert _sent_copies(user) == []
    assert all(db.session.get(Blob, r.blob_sha256).refcount == 0 for r in rows)
