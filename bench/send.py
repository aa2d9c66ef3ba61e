"""Sending throughput (issue #5): our outbox and a real worker vs raw smtplib, side by side.

Every message is ~5 KB, built by the same code, sent to one local aiosmtpd (a thread of
this process that counts what arrives, and when). A round measures 1 to 3, in this order;
rounds (--rounds, 3) run one after the other, so raw smtplib and ours take turns on the
same machine, and the median ratio is the result (every round is printed too):

1. raw smtplib: the messages over one connection; the baseline.
2. ours, queueing (web side): compose, outbox.queue_message and a commit per message, as
   a web request does; no worker runs yet.
3. ours, queue to delivered: one real `flask worker --burst` process then drains that
   outbox (claims, daily counters, SMTP over one session, Sent copies). Timed from its
   first delivery until the last message is delivered AND recorded (sent, its copy in
   Sent), scaled to all N messages, so Python's start-up is left out (printed apart) and
   no work is left out at the end. The goal (ours/raw >= 0.8) is for this ratio. The
   worker's CPU per message is printed beside it (a burst worker with nothing to do
   gives the start-up CPU, left out): it varies less than the times do on a shared
   machine.
4. ours, end to end (once, after the rounds): a worker is started first and left idle; N
   more messages are then queued as in 2 while it sends them; timed from the first
   queue_message to the last delivery.

    .venv/bin/python bench/send.py                 # 1,000 messages, SQLite
    .venv/bin/python bench/send.py -n 300          # quicker
    .venv/bin/python bench/send.py --database-url postgresql://user@host/db

With --database-url a fresh database is created on that server for the run and dropped
after. Redis: REDIS_URL if set (that database is flushed), else an embedded one.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import shutil
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.fernet import Fernet  # noqa: E402
from tests.scratch_db import scratch_database  # noqa: E402

GOAL = 0.8
WORKER = [sys.executable, "-m", "flask", "--app", "wsgi", "worker", "--queues", "send",
          "--no-scheduler"]


class CountingHandler:
    """aiosmtpd handler that only counts what arrives, and when."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope) -> str:
        with self.lock:
            self.arrivals.append(time.perf_counter())
        return "250 2.0.0 OK"

    def take(self) -> list[float]:
        """The arrival times so far, and start counting afresh."""
        with self.lock:
            taken, self.arrivals = self.arrivals, []
        return taken


def _body(n: int) -> str:
    line = "The quick brown fox jumps over the lazy dog, message %d. " % n
    return (line * 90)[:5000]


def raw_smtplib(host: str, port: int, raw_messages: list[bytes]) -> float:
    """Seconds to send every message over one smtplib connection."""
    start = time.perf_counter()
    with smtplib.SMTP(host, port) as client:
        for raw in raw_messages:
            client.sendmail("bench@acme.example", ["to@remote.example"], raw)
    return time.perf_counter() - start


def queue_messages(db, outbox, user, count: int, first: int) -> float:
    """Queue `count` messages the way the web does (a commit each); the seconds it took."""
    start = time.perf_counter()
    for n in range(first, first + count):
        outbox.queue_message(db.session, user, None, "to@remote.example", "", "",
                             f"Bench {n}", _body(n), None, [], None, None)
        db.session.commit()
    return time.perf_counter() - start


def wait_for(condition, timeout: float, what: str) -> None:
    """Poll until condition() holds; give up with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what}")
        time.sleep(0.02)


def steady_seconds(arrivals: list[float], done: float, count: int) -> float:
    """First delivery until all is delivered and recorded (`done`), scaled to `count`
    messages (one interval per message)."""
    return max(max(arrivals[-1], done) - arrivals[0], 1e-6) * count / max(count - 1, 1)


class RecordedWatch(threading.Thread):
    """Notes when the round's messages (ids above `after`, `count` of them) are recorded as
    sent with their copy filed in Sent, polled every 10 ms on a connection of its own.

    A poll reads one row, the round's last (sent and filed last, as the worker goes in id
    order), and counts the round only once that one is done: polling must cost the server
    it shares this process with next to nothing, however many rounds came before.
    """

    def __init__(self, engine, after: int, count: int) -> None:
        super().__init__(daemon=True)
        self.engine, self.after, self.count = engine, after, count
        self.done_at: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        from sqlalchemy import func, select

        from webapp.models.sending import OutgoingMessage as Row

        done = (Row.state == "sent") & Row.sent_message_pk.is_not(None)
        with self.engine.connect() as connection:
            last = connection.scalar(select(func.max(Row.id)))
            connection.rollback()
            last_done = select(Row.id).where(Row.id == last, done)
            recorded = select(func.count()).select_from(Row).where(Row.id > self.after, done)
            while not self.stop.wait(0.01):
                finished = (connection.scalar(last_done) is not None
                            and connection.scalar(recorded) >= self.count)
                connection.rollback()  # a fresh snapshot for the next poll
                if finished:
                    self.done_at = time.perf_counter()
                    return


@dataclasses.dataclass
class Round:
    """One round's measurements: seconds, and the worker's CPU seconds per message."""

    raw: float
    queue: float
    drain: float
    process: float
    cpu_per_message: float


def run_with_cpu(command: list[str], env: dict, timeout: float
                 ) -> tuple[subprocess.CompletedProcess, float]:
    """Run a child process to its end; its result and the CPU seconds it used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=timeout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return result, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def line(label: str, seconds: float, count: int, note: str = "") -> None:
    """One result: seconds and messages per second."""
    print(f"{label:<37}{seconds:8.2f} s {count / seconds:9.1f} msg/s{note}")


def main() -> int:
    """Set up, run the four measurements, print them and their ratios to raw smtplib."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="messages per measurement")
    parser.add_argument("--database-url", default=None,
                        help="a PostgreSQL server URL (a fresh database is created there)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of raw smtplib and ours, in turn (the median is the result)")
    args = parser.parse_args()
    if args.n < 2 or args.rounds < 1:
        parser.error("-n needs at least 2 messages and --rounds at least 1")
    count = args.n
    rounds: list[Round] = []

    from aiosmtpd.controller import Controller

    work = Path(tempfile.mkdtemp(prefix="skydesk-bench-send-"))
    drop = None
    if args.database_url:
        database_url, drop = scratch_database(args.database_url, "skydesk_bench")
    else:
        database_url = f"sqlite:///{work / 'bench.db'}"
    handler = CountingHandler()
    with socket.socket() as probe:  # aiosmtpd's Controller needs a concrete port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    host = "127.0.0.1"
    controller = Controller(handler, hostname=host, port=port)
    controller.start()
    environ = {
        "SKYDESK_ENV": "test", "DATABASE_URL": database_url,
        "BLOB_DIR": str(work / "blobs"), "SECRET_KEY": "bench",
        "MAIL_SECRET_KEYS": Fernet.generate_key().decode(),
        "SKYDESK_INSTANCE_PATH": str(work / "instance"),
    }
    if os.environ.get("REDIS_URL"):
        environ["REDIS_URL"] = os.environ["REDIS_URL"]
    idle_worker = None
    try:
        from flask_migrate import upgrade
        from rq import Worker
        from sqlalchemy import func

        from webapp import create_app
        from webapp.extensions import db
        from webapp.models.sending import OrgRelay, OutgoingMessage
        from webapp.queue import get_redis, redis_url_for_embedded
        from webapp.services import compose, outbox
        from webapp.services.directory import create_organization

        app = create_app({"INSTANCE_PATH": environ["SKYDESK_INSTANCE_PATH"]}, environ=environ)
        with app.app_context():
            upgrade()
            if not environ.get("REDIS_URL"):
                environ["REDIS_URL"] = redis_url_for_embedded(app.config["REDIS_EMBEDDED_PATH"])
            redis = get_redis()
            redis.flushdb()
            org, user = create_organization(db.session, name="Bench", domain="acme.example",
                                            admin_email="bench@acme.example",
                                            admin_password="correct horse battery")
            db.session.add(OrgRelay(org_id=org.id, host=host, port=port, security="none",
                                    daily_limit_user=0, daily_limit_org=0))
            db.session.commit()
            env = dict(os.environ, **environ)

            # 1. The same kind of bytes for the baseline: built by the same code, not queued.
            baseline = [compose.as_bytes(compose.build_message(
                from_addr=("", "bench@acme.example"), to=[("", "to@remote.example")],
                subject=f"Bench {n}", text=_body(n),
                message_id=compose.make_message_id("acme.example"))) for n in range(count)]

            # The worker's start-up CPU, apart: a burst worker with nothing to do.
            _, idle_cpu = run_with_cpu([*WORKER, "--burst"], env, 600)

            # Rounds of 1, 2 and 3 in turn, so that both sides meet the same machine.
            for number in range(args.rounds):
                raw_seconds = raw_smtplib(host, port, baseline)
                handler.take()
                # 2. Queueing alone, then 3. one worker process draining what was queued.
                before = db.session.scalar(func.max(OutgoingMessage.id)) or 0
                db.session.rollback()
                queue_seconds = queue_messages(db, outbox, user, count, number * count)
                watch = RecordedWatch(db.engine, before, count)
                watch.start()
                started = time.perf_counter()
                burst, burst_cpu = run_with_cpu([*WORKER, "--burst"], env, 3600)
                process_seconds = time.perf_counter() - started
                watch.join(timeout=5)
                watch.stop.set()
                drained = handler.take()
                if len(drained) != count or watch.done_at is None:
                    print(burst.stdout.decode()[-3000:], burst.stderr.decode()[-3000:])
                    raise SystemExit(f"the worker delivered {len(drained)} of {count}, "
                                     f"recorded {'all' if watch.done_at else 'not all'}")
                rounds.append(Round(raw_seconds, queue_seconds,
                                    steady_seconds(drained, watch.done_at, count),
                                    process_seconds,
                                    (burst_cpu - idle_cpu) / count))
            sent_before = args.rounds * count

            # 4. End to end: an idle worker first, then queueing while it sends.
            idle_worker = subprocess.Popen(WORKER, cwd=ROOT, env=env,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for(lambda: Worker.count(connection=redis) > 0, 120, "the worker to start")
            started = time.perf_counter()
            queue_messages(db, outbox, user, count, sent_before)
            wait_for(lambda: len(handler.arrivals) >= count, 600, "the last delivery")
            end_to_end_seconds = handler.take()[-1] - started
            idle_worker.terminate()
            idle_worker.wait(timeout=60)
            idle_worker = None

            db.session.expire_all()
            sent = db.session.query(OutgoingMessage).filter_by(state="sent").count()
            if sent != sent_before + count:
                raise SystemExit(f"only {sent} of {sent_before + count} messages are marked sent")
            dialect = db.engine.dialect.name
            db.session.remove()
            db.engine.dispose()
    finally:
        if idle_worker is not None:
            idle_worker.kill()
            idle_worker.wait()
        controller.stop()
        if drop:
            drop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"messages: {count} of ~5 KB to a local aiosmtpd; database: {dialect}; "
          f"rounds: {args.rounds}")
    for number, one in enumerate(rounds, 1):
        print(f"round {number}:")
        line("  raw smtplib, one connection", one.raw, count)
        line("  ours, queueing (web side)", one.queue, count)
        line("  ours, queue to delivered (worker)", one.drain, count,
             f"  (worker process, start-up included: {one.process:.2f} s)")
        print(f"  worker CPU per message (user+system, start-up left out): "
              f"{1000 * one.cpu_per_message:.3f} ms")
        print(f"  ratio ours/raw, queue to delivered: {one.raw / one.drain:5.2f}")
    line("ours, end to end", end_to_end_seconds, count,
         "  (worker running while queueing; one round)")
    drain = statistics.median(one.raw / one.drain for one in rounds)
    queueing = statistics.median(one.raw / one.queue for one in rounds)
    raw = statistics.median(one.raw for one in rounds)
    print(f"ratio ours/raw, queue to delivered: {drain:5.2f}  (median of the rounds; "
          f"goal >= {GOAL})")
    print(f"ratio ours/raw, queueing:           {queueing:5.2f}  (median of the rounds)")
    print(f"ratio ours/raw, end to end:         {raw / end_to_end_seconds:5.2f}  "
          f"(against the median raw round)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
