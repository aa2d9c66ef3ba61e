"""Sending throughput (issue #5): our outbox and a real worker vs raw smtplib, side by side.

Every message is ~5 KB, built by the same code, sent to one local aiosmtpd (a thread of
this process that counts what arrives, and when). One run measures, in this order:

1. raw smtplib: the messages over one connection; the baseline.
2. ours, queueing (web side): compose, outbox.queue_message and a commit per message, as
   a web request does; no worker runs yet.
3. ours, queue to delivered: one real `flask worker --burst` process then drains that
   outbox (claims, daily counters, SMTP over one session, Sent copies). Timed from its
   first delivery until the last message is delivered AND recorded (sent, its copy in
   Sent), scaled to all N messages, so Python's start-up is left out (printed apart) and
   no work is left out at the end. The goal (ours/raw >= 0.8) is for this ratio.
4. ours, end to end: a worker is started first and left idle; N more messages are then
   queued as in 2 while it sends them; timed from the first queue_message to the last
   delivery.

    .venv/bin/python bench/send.py                 # 1,000 messages, SQLite
    .venv/bin/python bench/send.py -n 300          # quicker
    .venv/bin/python bench/send.py --database-url postgresql://user@host/db

With --database-url a fresh database is created on that server for the run and dropped
after. Redis: REDIS_URL if set (that database is flushed), else an embedded one.
"""
from __future__ import annotations

import argparse
import os
import shutil
import smtplib
import socket
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
    """Notes when `count` messages are recorded as sent with their copy filed in Sent
    (polled every 10 ms on a connection of its own)."""

    def __init__(self, engine, count: int) -> None:
        super().__init__(daemon=True)
        self.engine, self.count = engine, count
        self.done_at: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        from sqlalchemy import func, select

        from webapp.models.sending import OutgoingMessage as Row

        query = select(func.count()).select_from(Row).where(
            Row.state == "sent", Row.sent_message_pk.is_not(None))
        with self.engine.connect() as connection:
            while not self.stop.wait(0.01):
                recorded = connection.execute(query).scalar_one()
                connection.rollback()  # a fresh snapshot for the next poll
                if recorded >= self.count:
                    self.done_at = time.perf_counter()
                    return


def line(label: str, seconds: float, count: int, note: str = "") -> None:
    """One result: seconds and messages per second."""
    print(f"{label:<34}{seconds:8.2f} s {count / seconds:9.1f} msg/s{note}")


def main() -> int:
    """Set up, run the four measurements, print them and their ratios to raw smtplib."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="messages per measurement")
    parser.add_argument("--database-url", default=None,
                        help="a PostgreSQL server URL (a fresh database is created there)")
    args = parser.parse_args()
    count = args.n

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
            raw_seconds = raw_smtplib(host, port, baseline)
            handler.take()

            # 2. Queueing alone, then 3. one worker process draining what was queued.
            queue_seconds = queue_messages(db, outbox, user, count, 0)
            watch = RecordedWatch(db.engine, count)
            watch.start()
            started = time.perf_counter()
            burst = subprocess.run([*WORKER, "--burst"], cwd=ROOT, env=env,
                                   capture_output=True, timeout=3600)
            process_seconds = time.perf_counter() - started
            watch.join(timeout=5)
            watch.stop.set()
            drained = handler.take()
            if len(drained) != count or watch.done_at is None:
                print(burst.stdout.decode()[-3000:], burst.stderr.decode()[-3000:])
                raise SystemExit(f"the worker delivered {len(drained)} of {count}, "
                                 f"recorded {'all' if watch.done_at else 'not all'}")
            drain_seconds = steady_seconds(drained, watch.done_at, count)

            # 4. End to end: an idle worker first, then queueing while it sends.
            idle_worker = subprocess.Popen(WORKER, cwd=ROOT, env=env,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for(lambda: Worker.count(connection=redis) > 0, 120, "the worker to start")
            started = time.perf_counter()
            queue_messages(db, outbox, user, count, count)
            wait_for(lambda: len(handler.arrivals) >= count, 600, "the last delivery")
            end_to_end_seconds = handler.take()[-1] - started
            idle_worker.terminate()
            idle_worker.wait(timeout=60)
            idle_worker = None

            db.session.expire_all()
            sent = db.session.query(OutgoingMessage).filter_by(state="sent").count()
            if sent != 2 * count:
                raise SystemExit(f"only {sent} of {2 * count} messages are marked sent")
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

    print(f"messages: {count} of ~5 KB to a local aiosmtpd; database: {dialect}")
    line("raw smtplib, one connection", raw_seconds, count)
    line("ours, queueing (web side)", queue_seconds, count)
    line("ours, queue to delivered (worker)", drain_seconds, count,
         f"  (worker process, start-up included: {process_seconds:.2f} s)")
    line("ours, end to end", end_to_end_seconds, count,
         "  (worker running while queueing)")
    print(f"ratio ours/raw, queue to delivered: {raw_seconds / drain_seconds:5.2f}"
          f"  (goal >= {GOAL})")
    print(f"ratio ours/raw, queueing:           {raw_seconds / queue_seconds:5.2f}")
    print(f"ratio ours/raw, end to end:         {raw_seconds / end_to_end_seconds:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
