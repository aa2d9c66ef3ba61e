"""Sending throughput: our outbox + a real worker vs raw smtplib on one connection.

Both send the same ~5 KB messages to one local aiosmtpd. Ours goes the whole way: each
message is composed and queued (`outbox.queue_message`, one commit each, as the web does),
then one real `flask worker --burst` process sends them (one RQ job per message: claim,
daily counter, SMTP over a reused session, Sent copy through `deliver()`).

    .venv/bin/python bench/send.py            # 200 messages
    .venv/bin/python bench/send.py --full     # 1,000 messages

Prints messages per second for both and the ratio ours/raw (goal ≥ 0.8).
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class CountingHandler:
    """aiosmtpd handler that only counts what arrives."""

    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server, session, envelope) -> str:
        self.count += 1
        return "250 2.0.0 OK"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="1,000 messages (default 200)")
    parser.add_argument("-n", type=int, default=None, help="number of messages")
    args = parser.parse_args()
    count = args.n or (1000 if args.full else 200)

    from aiosmtpd.controller import Controller
    from cryptography.fernet import Fernet

    work = Path(tempfile.mkdtemp(prefix="skydesk-bench-send-"))
    handler = CountingHandler()
    with socket.socket() as probe:  # aiosmtpd's Controller needs a concrete port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    host = "127.0.0.1"
    controller = Controller(handler, hostname=host, port=port)
    controller.start()
    environ = {
        "SKYDESK_ENV": "test", "DATABASE_URL": f"sqlite:///{work / 'bench.db'}",
        "BLOB_DIR": str(work / "blobs"), "SECRET_KEY": "bench",
        "MAIL_SECRET_KEYS": Fernet.generate_key().decode(),
        "SKYDESK_INSTANCE_PATH": str(work / "instance"),
    }
    if os.environ.get("REDIS_URL"):
        environ["REDIS_URL"] = os.environ["REDIS_URL"]
    try:
        from flask_migrate import upgrade

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
            get_redis().flushdb()
            org, user = create_organization(db.session, name="Bench", domain="acme.example",
                                            admin_email="bench@acme.example",
                                            admin_password="correct horse battery")
            db.session.add(OrgRelay(org_id=org.id, host=host, port=port, security="none",
                                    daily_limit_user=0, daily_limit_org=0))
            db.session.commit()

            # The same kind of bytes for the baseline: built by the same code, not queued.
            baseline = [compose.as_bytes(compose.build_message(
                from_addr=("", "bench@acme.example"), to=[("", "to@remote.example")],
                subject=f"Bench {n}", text=_body(n),
                message_id=compose.make_message_id("acme.example"))) for n in range(count)]
            raw_seconds = raw_smtplib(host, port, baseline)
            handler.count = 0

            start = time.perf_counter()
            for n in range(count):
                outbox.queue_message(db.session, user, None, "to@remote.example", "", "",
                                     f"Bench {n}", _body(n), None, [], None, None)
                db.session.commit()
            queued = time.perf_counter()

            env = dict(os.environ, **environ)
            worker = subprocess.run(
                [sys.executable, "-m", "flask", "--app", "wsgi", "worker", "--queues", "send",
                 "--burst", "--no-scheduler"], cwd=ROOT, env=env, capture_output=True, timeout=3600)
            done = time.perf_counter()
            db.session.expire_all()
            sent = db.session.query(OutgoingMessage).filter_by(state="sent").count()
            first, last = db.session.query(db.func.min(OutgoingMessage.sent_at),
                                           db.func.max(OutgoingMessage.sent_at)).one()
            if sent != count or handler.count != count:
                print(worker.stdout.decode()[-3000:], worker.stderr.decode()[-3000:])
                raise SystemExit(f"only {sent} of {count} sent ({handler.count} at the server)")
            db.engine.dispose()
    finally:
        controller.stop()
        shutil.rmtree(work, ignore_errors=True)

    raw_rate = count / raw_seconds
    ours_total = done - start
    steady = max((last - first).total_seconds(), 1e-6) * count / max(count - 1, 1)
    print(f"messages: {count} of ~5 KB to a local aiosmtpd")
    print(f"raw smtplib, one connection:   {raw_seconds:7.2f} s  {raw_rate:8.1f} msg/s")
    print(f"ours, queueing (web side):     {queued - start:7.2f} s  {count / (queued - start):8.1f} msg/s")
    print(f"ours, worker process (burst):  {done - queued:7.2f} s  {count / (done - queued):8.1f} msg/s"
          " (includes worker start-up)")
    print(f"ours, worker steady sending:   {steady:7.2f} s  {count / steady:8.1f} msg/s")
    print(f"ours, queue to delivered:      {ours_total:7.2f} s  {count / ours_total:8.1f} msg/s")
    print(f"ratio ours/raw, queue to delivered: {raw_seconds / ours_total:.2f} (goal >= 0.8)")
    print(f"ratio ours/raw, worker sending only: {raw_seconds / steady:.2f}")


if __name__ == "__main__":
    main()
