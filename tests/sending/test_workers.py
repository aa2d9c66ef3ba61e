"""Real `flask worker` processes: daily limits under concurrency, and recovery after kill -9
(of a single message, and in the middle of a batch)."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from email import message_from_bytes
from typing import Any

from sqlalchemy import select, update

from tests.conftest import PROJECT_ROOT
from tests.fixtures.smtpserver import ScriptedHandler
from webapp.extensions import db
from webapp.models import Folder, Message
from webapp.models._types import utcnow
from webapp.models.sending import OutgoingMessage, SendCounter
from webapp.services import outbox
from worker.jobs.send import recover, recover_sent_copies, sweep

FLASK = [sys.executable, "-m", "flask", "--app", "wsgi"]


def _kill_at_the_gate(cli_env, gated, never_reached: str, recorded=lambda: True) -> None:
    """Start a worker, kill -9 it once the gated server holds a session before DATA (and
    `recorded()` holds), then let that dead session end without DATA."""
    victim = _worker(cli_env)
    try:
        assert gated.reached_rcpt.wait(120), never_reached
        deadline = time.monotonic() + 60
        while not recorded():
            assert time.monotonic() < deadline, "the message before was never recorded"
            time.sleep(0.02)
    finally:
        os.kill(victim.pid, signal.SIGKILL)
        victim.communicate(timeout=30)
    gated.gate.set()


def _worker(cli_env, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([*FLASK, "worker", "--queues", "send", "--no-scheduler", *extra],
                            cwd=PROJECT_ROOT, env=cli_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def _queue_many(user, count: int) -> list[int]:
    ids = []
    for n in range(count):
        ids.append(outbox.queue_message(db.session, user, None, f"to{n}@remote.example", "", "",
                                        f"Message {n}", "Body\n", None, [], None, None).id)
    db.session.commit()
    return ids


def _states(ids: list[int]) -> list[str]:
    db.session.expire_all()
    return [db.session.get(OutgoingMessage, i).state for i in ids]


def test_daily_limit_holds_under_three_concurrent_workers(app, user, smtp_server, use_relay,
                                                          cli_env):
    limit = 7
    server = smtp_server()
    use_relay(server, daily_limit_user=limit)
    ids = _queue_many(user, limit + 5)

    workers = [_worker(cli_env, "--burst") for _ in range(3)]
    outputs = [w.communicate(timeout=240)[0].decode(errors="replace") for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs

    db.session.expire_all()
    states = db.session.scalars(select(OutgoingMessage.state)
                                .where(OutgoingMessage.id.in_(ids))).all()
    assert sorted(states) == ["failed"] * 5 + ["sent"] * limit, outputs
    assert len(server.messages) == limit
    assert db.session.scalar(select(SendCounter.count).where(SendCounter.scope == "user")) == limit
    failed = db.session.scalars(select(OutgoingMessage).where(OutgoingMessage.state == "failed"))
    assert all(m.last_error_kind == "limit" and "daily sending limit" in m.last_error_message
               for m in failed)


def test_org_limit_does_not_use_up_the_users_count(app, org, user, smtp_server, use_relay):
    from worker.jobs.send import send_message

    server = smtp_server()
    use_relay(server, daily_limit_user=10, daily_limit_org=2)
    ids = _queue_many(user, 3)
    assert send_message(ids[0]) == "sent"  # and, in the same batch, the two others
    assert _states(ids) == ["sent", "sent", "failed"]
    assert [send_message(i) for i in ids[1:]] == ["not due", "not due"]
    assert outbox.sent_today(db.session, "user", user.id) == 2
    assert outbox.sent_today(db.session, "org", org.id) == 2
    # A retry of a counted message is not counted again.
    db.session.execute(update(OutgoingMessage).where(OutgoingMessage.id == ids[0])
                       .values(state="retry-wait", next_attempt_at=utcnow()))
    db.session.commit()
    send_message(ids[0])
    assert outbox.sent_today(db.session, "org", org.id) == 2


class GateBeforeData(ScriptedHandler):
    """Holds every RCPT until the test opens the gate, so a worker can be killed before DATA."""

    def __init__(self) -> None:
        super().__init__()
        self.reached_rcpt = threading.Event()
        self.gate = threading.Event()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        self.reached_rcpt.set()
        while not self.gate.is_set():
            await asyncio.sleep(0.02)
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


def test_kill_9_before_data_leaves_exactly_one_copy_after_recovery(app, user, smtp_server,
                                                                   use_relay, cli_env):
    server = smtp_server()
    gated = GateBeforeData()
    server.controller.handler = server.handler = gated  # new sessions get the gated handler
    use_relay(server)
    (outgoing_id,) = _queue_many(user, 1)

    _kill_at_the_gate(cli_env, gated, "the worker never reached RCPT")

    db.session.expire_all()
    row = db.session.get(OutgoingMessage, outgoing_id)
    assert row.state == "sending" and server.messages == []
    assert recover(db.session) == []  # the claim's lease has not expired yet
    # Time passes: the lease of the dead worker's claim runs out.
    db.session.execute(update(OutgoingMessage).where(OutgoingMessage.id == outgoing_id)
                       .values(lease_until=utcnow() - timedelta(seconds=1)))
    db.session.commit()
    assert recover(db.session) == [outgoing_id]

    survivor = _worker(cli_env, "--burst")
    output = survivor.communicate(timeout=120)[0].decode(errors="replace")
    db.session.expire_all()
    row = db.session.get(OutgoingMessage, outgoing_id)
    assert row.state == "sent", output
    copies = [m for m in server.messages
              if message_from_bytes(m.data)["Message-ID"] == row.message_id]
    assert len(copies) == 1 and len(server.messages) == 1


class GateAtRcpt(ScriptedHandler):
    """Holds the RCPT of one address until the test opens the gate, so a worker can be killed
    in the middle of a batch, before that message's DATA."""

    def __init__(self, address: str, **script: Any) -> None:
        super().__init__(**script)
        self.address = address
        self.reached_rcpt = threading.Event()
        self.gate = threading.Event()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if address == self.address:
            self.reached_rcpt.set()
            while not self.gate.is_set():
                await asyncio.sleep(0.02)
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


def _sent_copy_keys(user) -> list[str]:
    return db.session.scalars(select(Message.source_key)
                              .join(Folder, Folder.id == Message.folder_id)
                              .where(Message.user_id == user.id, Folder.role == "sent")
                              .order_by(Message.source_key)).all()


def test_kill_9_in_the_middle_of_a_batch_leaves_one_copy_of_each_after_recovery(
        app, user, smtp_server, use_relay, cli_env):
    """Issue #5: a batch killed between messages resends nothing already recorded, and no
    Sent copy is lost, even one owed by a message whose retry is due first."""
    from worker.jobs.send import send_message

    server = smtp_server()
    # The second message goes to two recipients, one of whom is busy the first time.
    gated = GateAtRcpt("to2@remote.example", rcpt_replies={"busy@": ["450 4.2.1 Busy"]})
    server.controller.handler = server.handler = gated  # new sessions get the gated handler
    use_relay(server)
    ids = [outbox.queue_message(db.session, user, None, to, "", "", f"Message {n}", "Body\n",
                                None, [], None, None).id
           for n, to in enumerate(["to0@remote.example",
                                   "to1@remote.example, busy@remote.example",
                                   "to2@remote.example", "to3@remote.example",
                                   "to4@remote.example"])]
    db.session.commit()

    # The third message's RCPT goes out while the second one's outcome is committed (the
    # end of DATA waits for it): the kill comes once that commit is in.
    _kill_at_the_gate(cli_env, gated, "the worker never reached the third message",
                      recorded=lambda: _states(ids[1:2]) != ["sending"])

    # One job took them all: the first two are out and recorded, the rest still claimed.
    assert _states(ids) == ["sent", "retry-wait", "sending", "sending", "sending"]
    assert [m.rcpt_tos for m in server.messages] == [["to0@remote.example"],
                                                     ["to1@remote.example"]]
    # Sent copies are filed after each group: the second one's is still owed.
    assert _sent_copy_keys(user) == [f"sent:{ids[0]}"]
    assert recover(db.session) == [] and recover_sent_copies(db.session) == []  # leases hold
    # Time passes: the leases of the dead worker run out, and the retry of busy@ is due.
    db.session.execute(update(OutgoingMessage).where(OutgoingMessage.lease_until.is_not(None))
                       .values(lease_until=utcnow() - timedelta(seconds=1)))
    db.session.execute(update(OutgoingMessage).where(OutgoingMessage.id == ids[1])
                       .values(next_attempt_at=utcnow() - timedelta(seconds=61)))
    db.session.commit()
    # The retry waits for the copy: a new claim would forget that it is owed.
    assert send_message(ids[1]) == "not due" and len(server.messages) == 2
    assert sweep() == 4  # filed the owed copy, then requeued the retry and the claimed three
    assert _sent_copy_keys(user) == sorted(f"sent:{i}" for i in ids[:2])

    survivor = _worker(cli_env, "--burst")
    output = survivor.communicate(timeout=120)[0].decode(errors="replace")
    assert _states(ids) == ["sent"] * 5, output
    rows = [db.session.get(OutgoingMessage, i) for i in ids]
    by_id = {r.message_id: r for r in rows}
    received = sorted((by_id[message_from_bytes(m.data)["Message-ID"]].id, rcpt)
                      for m in server.messages for rcpt in m.rcpt_tos)
    # Each recipient got each message exactly once.
    assert received == sorted((r.id, rcpt.address) for r in rows for rcpt in r.recipients)
    assert _sent_copy_keys(user) == sorted(f"sent:{i}" for i in ids)
    assert all(r.lease_until is None and r.sent_message_pk is not None for r in rows)
