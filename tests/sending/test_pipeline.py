"""The send pipeline (issue #5): SMTP exchanges on their own threads (two sessions) while
outcomes commit.

The next messages' commands go out while the outcome before them commits, but an end of
DATA waits for that commit, over whichever session: at most one message is ever sent and
not yet recorded.
"""
from __future__ import annotations

import asyncio
import threading
from email import message_from_bytes
from typing import Any

import pytest
from rq.timeouts import JobTimeoutException, UnixSignalDeathPenalty
from sqlalchemy import event, select
from sqlalchemy.exc import SQLAlchemyError

from tests.fixtures.smtpserver import ScriptedHandler
from tests.sending.conftest import statements
from webapp.extensions import db
from webapp.models.sending import OutgoingMessage
from webapp.services import blobs, outbox
from worker.jobs.send import send_message


def _queue_many(user, count: int) -> list[int]:
    ids = [outbox.queue_message(db.session, user, None, f"to{n}@remote.example", "", "",
                                f"Message {n}", "Body\n", None, [], None, None).id
           for n in range(count)]
    db.session.commit()
    return ids


def _rows(ids: list[int]) -> list[OutgoingMessage]:
    db.session.expire_all()
    return [db.session.get(OutgoingMessage, i) for i in ids]


def _hold_writes(engine, outgoing_id: int):
    """Block every write to this outgoing row (on SQLite: every write) from a connection of
    its own; returns the function that lets them through."""
    connection = engine.connect()
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        connection.execute(select(OutgoingMessage.id).where(OutgoingMessage.id == outgoing_id)
                           .with_for_update())

    def release() -> None:
        connection.rollback()
        connection.close()
    return release


class RecordsWhatWasCommitted(ScriptedHandler):
    """At each message's end of DATA, notes the states committed for the messages before it.

    The second message's DATA also holds the database's writes for `hold_seconds`, so the
    worker's commit of its outcome waits while the third goes as far as it may. (The job's
    first group is its own message alone; the other two are claimed together after it.)
    """

    def __init__(self, engine, ids: list[int], hold_seconds: float) -> None:
        super().__init__()
        self.engine = engine  # the handler runs on the server's thread, outside the app
        self.ids = ids
        self.hold_seconds = hold_seconds
        self.seen: list[tuple[str, list[str]]] = []
        self.released = threading.Event()

    def _committed_states(self) -> list[str]:
        with self.engine.connect() as connection:
            states = dict(connection.execute(
                select(OutgoingMessage.id, OutgoingMessage.state)
                .where(OutgoingMessage.id.in_(self.ids))).all())
        return [states[i] for i in self.ids]

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        subject = message_from_bytes(envelope.original_content)["Subject"]
        self.seen.append((subject, self._committed_states()))
        if len(self.seen) == 2:
            release = _hold_writes(self.engine, self.ids[1])
            timer = threading.Timer(self.hold_seconds, lambda: (release(),
                                                                self.released.set()))
            timer.start()
        return await super().handle_DATA(server, session, envelope)


def test_the_next_end_of_data_waits_for_the_outcome_before_it(app, user, smtp_server,
                                                             use_relay):
    server = smtp_server()
    ids = _queue_many(user, 3)
    handler = RecordsWhatWasCommitted(db.engine, ids, hold_seconds=1.0)
    server.controller.handler = server.handler = handler
    use_relay(server)

    assert send_message(ids[0]) == "sent"

    assert handler.released.is_set()
    # Each message arrived only once the one before it was committed as sent, although the
    # second one's commit was held back for a second (the third one's commands went out
    # meanwhile, over the other session; a pipeline that did not wait would have delivered
    # it in that second).
    assert handler.seen == [
        ("Message 0", ["sending", "queued", "queued"]),
        ("Message 1", ["sent", "sending", "sending"]),
        ("Message 2", ["sent", "sent", "sending"]),
    ]
    assert [r.state for r in _rows(ids)] == ["sent"] * 3
    # The group's two messages went over two sessions: the wait holds across sessions.
    assert server.messages[1].peer != server.messages[2].peer


def _fail_recording(outgoing_id: int, state: str = "sent", unless_text: str = ""):
    """Make the database refuse to record this message in this state (a real trigger);
    with `unless_text`, not when its last_error_text holds that."""
    when = f"NEW.id = {outgoing_id} AND NEW.state = '{state}'"
    with db.engine.begin() as connection:
        if unless_text:
            like = "%" if connection.dialect.name == "sqlite" else "%%"  # psycopg's escape
            when += f" AND NEW.last_error_text NOT LIKE '{like}{unless_text}{like}'"
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse_sent BEFORE UPDATE OF state ON outgoing_message "
                f"WHEN {when} "
                "BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
        else:
            connection.exec_driver_sql(
                "CREATE FUNCTION refuse_sent() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "RAISE EXCEPTION 'disk says no'; END $$")
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse_sent BEFORE UPDATE OF state ON outgoing_message "
                f"FOR EACH ROW WHEN ({when}) "
                "EXECUTE FUNCTION refuse_sent()")

    def undo() -> None:
        with db.engine.begin() as connection:
            connection.exec_driver_sql("DROP TRIGGER refuse_sent" + (
                "" if connection.dialect.name == "sqlite" else " ON outgoing_message"))
            if connection.dialect.name != "sqlite":
                connection.exec_driver_sql("DROP FUNCTION refuse_sent()")
    return undo


class NotesRecipients(ScriptedHandler):
    """Also notes every RCPT the server accepted, whether or not DATA followed."""

    def __init__(self, **script: Any) -> None:
        super().__init__(**script)
        self.rcpts: list[str] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        self.rcpts.append(address)
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


class AnswersOnceAnotherIsAtData(NotesRecipients):
    """Answers the end of DATA for one recipient only once another recipient's RCPT was
    taken (its message, on the other session, then goes on to DATA at once)."""

    def __init__(self, held: str, until: str) -> None:
        super().__init__()
        self.held, self.until = held, until

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.held in envelope.rcpt_tos:
            for _ in range(500):
                if self.until in self.rcpts:
                    break
                await asyncio.sleep(0.01)
        return await super().handle_DATA(server, session, envelope)


def test_an_outcome_that_cannot_be_recorded_stops_the_next_message_before_its_end(
        app, user, smtp_server, use_relay):
    server = smtp_server()
    handler = AnswersOnceAnotherIsAtData("to1@remote.example", "to2@remote.example")
    server.controller.handler = server.handler = handler
    use_relay(server)
    ids = _queue_many(user, 3)
    # The job sends its own message first, then claims the other two as one group.
    undo = _fail_recording(ids[1])
    try:
        assert send_message(ids[0]) == "sent"
    finally:
        undo()

    first, second, third = _rows(ids)
    assert first.state == "sent"
    # The second went out, but its outcome could not be written: it says so, and is never
    # sent again on its own.
    assert second.state == "uncertain" and "probably delivered" in second.last_error_message
    # The third had reached DATA when that happened (the server took its recipient): its
    # end of DATA was withheld, the session closed with nothing of it delivered, and it went
    # back to the queue unspent.
    assert "to2@remote.example" in handler.rcpts
    assert [m.rcpt_tos for m in server.messages] == [["to0@remote.example"],
                                                     ["to1@remote.example"]]
    assert (third.state, third.attempts, third.lease_until) == ("queued", 0, None)

    # Its own job sends it later, once.
    assert send_message(ids[2]) == "sent"
    assert [r.state for r in _rows(ids)] == ["sent", "uncertain", "sent"]
    assert [m.rcpt_tos[0] for m in server.messages] == \
        ["to0@remote.example", "to1@remote.example", "to2@remote.example"]


def test_a_database_error_beside_a_message_in_flight_still_records_it(app, user, smtp_server,
                                                                      use_relay):
    """Writing a message that cannot go (here: its bytes are gone, and the failure cannot
    be written either) waits until the message in flight beside it is recorded; it used to
    be written at once, and its error left that delivered message unrecorded, to be sent
    again."""
    server = smtp_server()
    use_relay(server)
    ids = _queue_many(user, 4)
    blobs.get_store(app.config["BLOB_DIR"]).delete(_rows([ids[2]])[0].blob_sha256)
    undo = _fail_recording(ids[2], state="failed")
    try:
        with pytest.raises(SQLAlchemyError, match="disk says no"):
            send_message(ids[0])  # its own message, then the group of the three others
    finally:
        db.session.rollback()  # this test's reads: DROP TRIGGER waits for them on PostgreSQL
        undo()

    # Every message that went out is recorded as sent, once; the broken one keeps its
    # claim for the sweep.
    assert [r.state for r in _rows(ids)] == ["sent", "sent", "sending", "sent"]
    assert [m.rcpt_tos for m in server.messages] == \
        [["to0@remote.example"], ["to1@remote.example"], ["to3@remote.example"]]


class SlowFor(ScriptedHandler):
    """Answers the end of DATA for one recipient only after `seconds`."""

    def __init__(self, address: str, seconds: float) -> None:
        super().__init__()
        self.address, self.seconds = address, seconds

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.address in envelope.rcpt_tos:
            await asyncio.sleep(self.seconds)
        return await super().handle_DATA(server, session, envelope)


def test_a_job_timeout_gives_back_what_was_never_handed_over(app, user, smtp_server,
                                                             use_relay):
    server = smtp_server()
    server.controller.handler = server.handler = SlowFor("to1@remote.example", 4.0)
    use_relay(server)
    ids = _queue_many(user, 5)

    # RQ's own timeout (SIGALRM) lands while the job waits for the slow server's answer.
    with pytest.raises(JobTimeoutException):
        with UnixSignalDeathPenalty(2, JobTimeoutException):
            send_message(ids[0])

    states = [(r.state, r.attempts) for r in _rows(ids)]
    assert states[0] == ("sent", 1)
    # The one out when the timeout struck, and the two handed over behind it (one for each
    # session), keep their claims (the first may have been delivered: the sweep decides
    # after the lease).
    assert states[1:4] == [("sending", 1)] * 3
    # The last was never handed over: back in the queue at once, the attempt not spent.
    assert states[4:] == [("queued", 0)]
    assert _rows(ids[4:])[0].lease_until is None


def test_claims_commit_synced_and_outcomes_do_not(app, user, smtp_server, use_relay):
    """Each claim commits synced (SQLite synchronous=FULL, PostgreSQL synchronous_commit
    on), each outcome not (NORMAL, off)."""
    sqlite = db.engine.dialect.name == "sqlite"
    server = smtp_server()
    use_relay(server)
    ids = _queue_many(user, 4)
    seen: list[tuple[str, int]] = []

    def note(connection, cursor, statement, parameters, context, executemany) -> None:
        if "UPDATE outgoing_message SET state=" in statement:
            kind = "claim" if "attempts=(outgoing_message.attempts +" in statement \
                else "outcome"
            level = connection.connection.dbapi_connection.execute(
                "PRAGMA synchronous" if sqlite else "SHOW synchronous_commit").fetchone()[0]
            seen.append((kind, level))

    event.listen(db.engine, "before_cursor_execute", note)
    try:
        assert send_message(ids[0]) == "sent"  # its own message, then a group of three
    finally:
        event.remove(db.engine, "before_cursor_execute", note)

    claims = [level for kind, level in seen if kind == "claim"]
    outcomes = [level for kind, level in seen if kind == "outcome"]
    # Synced every time: the first, the group's after relaxed outcomes, the last finding none.
    assert claims == ([2, 2, 2] if sqlite else ["on", "on", "on"])  # FULL
    assert outcomes == ([1, 1, 1, 1] if sqlite else ["off"] * 4)  # NORMAL


def test_on_postgresql_an_outcome_is_one_statement_for_the_message_and_its_recipient(
        app, user, smtp_server, use_relay):
    """Per outcome, round trips are most of the time on PostgreSQL: the recipient's UPDATE
    rides in the message's (a data-modifying WITH), and both rows say what happened."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no data-modifying WITH; its statements cost no round trip")
    server = smtp_server()
    use_relay(server)
    ids = _queue_many(user, 3)
    with statements(lambda s: "UPDATE outgoing_recipient" in s or (
            "UPDATE outgoing_message SET state=" in s and "attempts" not in s)) as outcomes:
        assert send_message(ids[0]) == "sent"
    assert len(outcomes) == 3  # one per message
    assert all(s.startswith("WITH") and "UPDATE outgoing_recipient" in s for s in outcomes)
    for row in _rows(ids):
        [recipient] = row.recipients
        assert (row.state, recipient.state, recipient.code) == ("sent", "accepted", 250)
        assert recipient.updated_at == row.sent_at  # written with the outcome, not the default


def test_an_end_of_data_never_released_is_withheld_in_the_end(app, smtp_server, monkeypatch):
    """Should the job's thread be gone without stopping the pipeline, the thread waiting at
    an end of DATA still ends (after GATE_SECONDS), and that message is never delivered."""
    from worker.jobs.send import _SmtpPipeline, _Transport

    server = smtp_server()
    handler = NotesRecipients()
    server.controller.handler = server.handler = handler
    monkeypatch.setattr(_SmtpPipeline, "GATE_SECONDS", 0.5)
    pipeline = _SmtpPipeline(_Transport(server.host, server.port, "none", "", ""), None)
    for n in range(2):
        pipeline.put("me@acme.example", [f"to{n}@remote.example"],
                     f"Subject: {n}\r\n\r\nBody\r\n".encode())

    assert pipeline.result()[0] == "sent"
    # The first is never settled: the second waits at its end of DATA, then gives up.
    assert pipeline.result() == ("unsent", None)
    pipeline.close()
    assert "to1@remote.example" in handler.rcpts
    assert [m.rcpt_tos for m in server.messages] == [["to0@remote.example"]]


def test_a_delivered_message_whose_recording_fails_early_is_uncertain(
        app, user, smtp_server, use_relay):
    """The job's alarm (RQ's JobTimeoutException is an Exception) landing before the
    outcome is written: here, as the connection's first statement of the outcome goes to
    PostgreSQL. SQLite runs no statement through the engine at that point."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("the first step of an outcome is a statement only on PostgreSQL")
    server = smtp_server()
    use_relay(server)
    ids = _queue_many(user, 1)
    alarms = [JobTimeoutException("Task exceeded maximum timeout value")]

    def alarm(connection, cursor, statement, parameters, context, executemany) -> None:
        if statement.startswith("SET synchronous_commit TO OFF") and alarms:
            raise alarms.pop()

    event.listen(db.engine, "before_cursor_execute", alarm)
    try:
        assert send_message(ids[0]) == "uncertain"
    finally:
        event.remove(db.engine, "before_cursor_execute", alarm)
    assert not alarms  # it struck
    assert [m.rcpt_tos for m in server.messages] == [["to0@remote.example"]]
    row = _rows(ids)[0]
    assert (row.state, row.last_error_kind) == ("uncertain", "uncertain")
    assert "probably delivered" in row.last_error_message


def test_a_message_lost_after_its_end_of_data_stays_uncertain_if_recording_fails(
        app, user, smtp_server, use_relay):
    """RFC 1047: the server got the body and the connection dropped before its reply, and
    then the database refused that outcome (a real trigger; the fallback it lets through)."""
    server = smtp_server(drop_after_data=True)
    use_relay(server)
    ids = _queue_many(user, 1)
    undo = _fail_recording(ids[0], state="uncertain", unless_text="recording it failed")
    try:
        assert send_message(ids[0]) == "uncertain"
    finally:
        db.session.rollback()  # this test's reads: DROP TRIGGER waits for them on PostgreSQL
        undo()
    assert [m.rcpt_tos for m in server.messages] == [["to0@remote.example"]]
    row = _rows(ids)[0]
    assert (row.state, row.last_error_kind) == ("uncertain", "uncertain")
    assert "may have been delivered" in row.last_error_message
    assert "recording it failed" in row.last_error_text and "disk says no" in row.last_error_text


class OneSessionOnly(ScriptedHandler):
    """Answers 421 to a session that greets it while another one is still connected: a
    server that allows one connection per client."""

    def __init__(self) -> None:
        super().__init__()
        self.connected: Any = None  # the aiosmtpd protocol of the session it serves
        self.refused: set[int] = set()  # sessions refused (EHLO, then smtplib's HELO)

    def _refuses(self, server: Any) -> bool:
        if self.connected is not None and self.connected is not server \
                and self.connected.transport is not None:
            self.refused.add(id(server))
            return True
        self.connected = server
        return False

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        if self._refuses(server):
            return ["421 4.7.0 One connection at a time, please"]
        session.host_name = hostname
        return responses

    async def handle_HELO(self, server: Any, session: Any, envelope: Any, hostname: str) -> str:
        if self._refuses(server):
            return "421 4.7.0 One connection at a time, please"
        session.host_name = hostname
        return f"250 {server.hostname}"


def test_a_server_that_takes_one_session_gets_one_and_nothing_is_lost(app, user, smtp_server,
                                                                      use_relay):
    server = smtp_server()
    handler = OneSessionOnly()
    server.controller.handler = server.handler = handler
    use_relay(server)
    ids = _queue_many(user, 5)

    # Its own message, then a group: the group's second session is refused.
    assert send_message(ids[0]) == "sent"

    assert len(handler.refused) == 1
    rows = _rows(ids)
    assert [r.state for r in rows[:2]] == ["sent", "sent"]
    # What could not go over the second session went back to the queue, as it was: not an
    # error, no attempt spent, no words for the user.
    assert [(r.state, r.attempts, r.last_error_message) for r in rows[2:]] == \
        [("queued", 0, "")] * 3
    # Their own jobs (enqueued again) send them; that server now gets one session at a time.
    assert send_message(ids[2]) == "sent"
    rows = _rows(ids)
    assert [(r.state, r.attempts, r.last_error_message) for r in rows] == [("sent", 1, "")] * 5
    assert [m.rcpt_tos for m in server.messages] == [[f"to{n}@remote.example"]
                                                     for n in range(5)]
    assert len(handler.refused) == 1  # never asked again
    # The second job's messages went over one session.
    assert len({m.peer for m in server.messages[2:]}) == 1


def test_a_second_session_that_fails_oddly_still_answers_for_its_message(app, smtp_server,
                                                                         tmp_path):
    """Whatever goes wrong on a sending thread, each message handed over gets its result: a
    missing CA bundle (an error outside SMTP) while opening the second session comes back
    as that message's crash at once, rather than leaving the job waiting for it."""
    from worker.jobs.send import _connections, _keep, _SmtpPipeline, _Transport

    server = smtp_server(tls="ssl")
    transport = _Transport(server.host, server.port, "ssl", "", "")
    transport.ca_bundle = server.ca_bundle
    _keep((*transport.key, 0), transport.connect())  # the first session, already open
    transport.ca_bundle = str(tmp_path / "gone.pem")  # the operator moved the bundle away
    pipeline = _SmtpPipeline(transport, None)
    for n in range(2):
        pipeline.put("me@acme.example", [f"to{n}@remote.example"],
                     f"Subject: {n}\r\n\r\nBody\r\n".encode())

    assert pipeline.result()[0] == "sent"
    pipeline.settle()
    kind, error = pipeline.result()
    assert kind == "crash" and isinstance(error, FileNotFoundError)
    pipeline.close()
    assert [m.rcpt_tos for m in server.messages] == [["to0@remote.example"]]
    assert (*transport.key, 1) not in _connections
