"""First import of a POP mailbox: ours end to end vs raw poplib, getmail6 and fetchmail.

One private Dovecot (the test fixture's configuration, plain POP3 on loopback), one mailbox
of N messages of about 20 KB, and in the same run, one after the other:

- raw poplib: UIDL, then RETR of every message in order, writing nothing (the ceiling);
- ours: the real fetch job (`worker.jobs.fetch.run_batch`, batch after batch as the worker
  chains them) into a fresh SQLite database and blob folder: stored and listed in the Inbox
  after filters; then the index job (`index_pending`) makes them searchable;
- getmail6 into a Maildir, and fetchmail writing one BSMTP file (Debian packages, each run
  with fresh UID state and checked to deliver exactly N; a peer that is not installed is
  skipped with a note).

    .venv/bin/python bench/pop_import.py                 # 2,000 messages
    .venv/bin/python bench/pop_import.py --count 10000   # the full run of the issue

Goal (issue 4): ours (stored) at least 2x getmail6 and 0.8x raw poplib.
"""
from __future__ import annotations

import argparse
import logging
import os
import poplib
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures.certs import generate_test_certs  # noqa: E402
from tests.fixtures.dovecot import (DovecotServer, _config, _mail_owner, _stop,  # noqa: E402
                                    free_port)

USER, PASSWORD = "bench", "bench-password"
WORDS = ("mailbox server message import fetch batch ledger quota folder filter search index "
         "customer invoice meeting project schedule report budget contract delivery").split()


def make_messages(count: int, size: int, seed: int = 7) -> list[bytes]:
    """Distinct plain-text messages of about `size` bytes, lines well under 2,048 bytes."""
    rng = random.Random(seed)
    messages = []
    for n in range(count):
        lines = []
        total = 0
        while total < size - 600:
            line = " ".join(rng.choice(WORDS) for _ in range(12))
            lines.append(line)
            total += len(line) + 1
        head = (f"From: Sender {n % 50} <sender{n % 50}@elsewhere.example>\n"
                f"To: bench@bench.example\nSubject: Bench message {n} {rng.choice(WORDS)}\n"
                f"Date: Sun, 29 Nov 2026 10:{n % 60:02d}:00 +0000\n"
                f"Message-ID: <bench-{n}-{seed}@bench.example>\nMIME-Version: 1.0\n"
                "Content-Type: text/plain; charset=utf-8\n\n")
        messages.append((head + "\n".join(lines) + "\n").encode())
    return messages


def start_dovecot(work: Path) -> tuple[DovecotServer, subprocess.Popen]:
    """A private Dovecot with one user, configured exactly like the tests' one."""
    binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
    if not os.path.exists(binary):
        sys.exit("dovecot is not installed (apt-get install -y dovecot-pop3d)")
    _user, uid, gid = _mail_owner()
    directory = work / "dovecot"
    directory.mkdir(mode=0o755)
    for sub in ("run", "state", "log", "mail"):
        (directory / sub).mkdir(mode=0o755)
    if os.geteuid() == 0:
        os.chown(directory / "mail", uid, gid)
    (directory / "users").write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::::\n")
    (directory / "users").chmod(0o644)
    log_path = directory / "log" / "dovecot.log"
    log_path.touch(mode=0o666)
    certs = generate_test_certs(work / "certs")
    pop3, pop3s, bad = free_port(), free_port(), free_port()
    config = directory / "dovecot.conf"
    config.write_text(_config(directory, certs, pop3, pop3s, bad, uid, gid))
    with open(log_path, "ab") as err:
        process = subprocess.Popen([binary, "-F", "-c", str(config)], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            probe = poplib.POP3("127.0.0.1", pop3, timeout=1)
            probe.quit()
            break
        except OSError:
            time.sleep(0.1)
    else:
        _stop(process)
        sys.exit("Dovecot did not start:\n" + log_path.read_text()[-2000:])
    server = DovecotServer(directory=directory, host="127.0.0.1", pop3_port=pop3, pop3s_port=pop3s,
                           bad_cert_port=bad, ca_bundle=str(certs.ca_cert), mail_uid=uid,
                           mail_gid=gid)
    server._make_maildir(USER)
    return server, process


def raw_poplib(port: int, count: int) -> float:
    """Seconds for UIDL + sequential RETR of every message, writing nothing."""
    started = time.perf_counter()
    client = poplib.POP3("127.0.0.1", port, timeout=60)
    try:
        client.user(USER)
        client.pass_(PASSWORD)
        client.uidl()
        for number in range(1, count + 1):
            client.retr(number)
        client.quit()
    finally:
        client.close()
    return time.perf_counter() - started


def ours(work: Path, port: int, count: int, batch_size: int) -> tuple[float, float, dict]:
    """Seconds to store everything via the fetch job, then to index it; and checks."""
    from flask_migrate import upgrade
    from sqlalchemy import func, select

    from webapp import create_app
    from webapp.extensions import db
    from webapp.models import Folder, Message, MessageText
    from webapp.queue import embedded_redis, stop_embedded
    from webapp.services.directory import create_organization
    from webapp.services.pop_accounts import create_pop_account
    from worker.jobs.fetch import run_batch
    from worker.jobs.index import index_pending

    instance = work / "instance"
    environ = {"SKYDESK_ENV": "test"}
    if os.environ.get("BENCH_DATABASE_URL"):
        environ["DATABASE_URL"] = os.environ["BENCH_DATABASE_URL"]
    app = create_app({"INSTANCE_PATH": str(instance)}, environ=environ)
    with app.app_context():
        logging.getLogger("alembic").setLevel(logging.WARNING)
        upgrade()
        _org, user = create_organization(db.session, name="Bench", domain="bench.example",
                                         admin_email="bench@bench.example",
                                         admin_password="Correct horse battery staple 42")
        user.quota_bytes = 1024**4
        account = create_pop_account(db.session, user, email="bench@elsewhere.example",
                                     host="127.0.0.1", port=port, security="none",
                                     username=USER, password=PASSWORD,
                                     secret_keys=app.config["MAIL_SECRET_KEYS"],
                                     batch_size=batch_size)
        db.session.commit()
        account_id, user_id = account.id, user.id
        started = time.perf_counter()
        batches = 0
        while True:
            result = run_batch(account_id)
            batches += 1
            if result.status != "more":
                break
        stored_seconds = time.perf_counter() - started
        if result.status != "done":
            sys.exit(f"our fetch ended with {result.status}: {result.error}")
        index_started = time.perf_counter()
        index_pending(user_id)
        index_seconds = time.perf_counter() - index_started
        inbox = db.session.scalar(select(Folder.id).where(Folder.user_id == user_id,
                                                          Folder.role == "inbox"))
        checks = {
            "batches": batches,
            "in_inbox": db.session.scalar(select(func.count()).select_from(Message)
                                          .where(Message.folder_id == inbox)),
            "indexed": db.session.scalar(select(func.count()).select_from(MessageText)),
        }
        db.session.remove()
        db.engine.dispose()
        if not app.config["REDIS_URL"]:
            stop_embedded(embedded_redis(app.config["REDIS_EMBEDDED_PATH"]), save=False)
    if checks["in_inbox"] != count or checks["indexed"] != count:
        sys.exit(f"ours did not store and index exactly {count}: {checks}")
    return stored_seconds, stored_seconds + index_seconds, checks


def _unprivileged(owner_uid: int, owner_gid: int, command: list[str]) -> list[str]:
    """Run a peer as the mail user when we are root (getmail refuses root Maildirs)."""
    if os.geteuid() != 0:
        return command
    return ["setpriv", f"--reuid={owner_uid}", f"--regid={owner_gid}", "--clear-groups", *command]


def run_getmail(work: Path, port: int, count: int, uid: int, gid: int) -> float | None:
    """Seconds for getmail6 to deliver every message into a Maildir (fresh state, 3 tries).

    getmail6 6.18 sometimes misses the exit of its delivery child on a busy machine and gives
    up with "waiting child pid … timed out"; such a run is repeated from scratch.
    """
    for _ in range(3):
        seconds = _getmail_once(work, port, count, uid, gid)
        if seconds is not None:
            return seconds
    return None


def _getmail_once(work: Path, port: int, count: int, uid: int, gid: int) -> float | None:
    binary = shutil.which("getmail")
    if not binary:
        print("  note: getmail6 is not installed (apt-get install -y getmail6); skipped")
        return None
    base = Path(tempfile.mkdtemp(dir=work, prefix="getmail-"))
    maildir = base / "Maildir"
    for sub in ("", "new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    state = base / "state"
    state.mkdir()
    rc = base / "getmailrc"
    rc.write_text(f"""[retriever]
type = SimplePOP3Retriever
server = 127.0.0.1
port = {port}
username = {USER}
password = {PASSWORD}
# getmail waits this long for a delivery child whose exit it missed (it then fails the run).
timeout = 20

[destination]
type = Maildir
path = {maildir}/

[options]
verbose = 0
read_all = true
delete = false
message_log_syslog = false
""")
    for path in [base, *base.rglob("*")]:
        if os.geteuid() == 0:
            os.chown(path, uid, gid)
    base.chmod(0o755)
    started = time.perf_counter()
    done = subprocess.run(_unprivileged(uid, gid, [binary, "--getmaildir", str(state),
                                                   "--rcfile", str(rc)]),
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    delivered = len(os.listdir(maildir / "new"))
    if done.returncode != 0 or delivered != count:
        print(f"  getmail6 failed (exit {done.returncode}, {delivered} delivered): "
              f"{(done.stderr or done.stdout)[-500:]}")
        return None
    return seconds


def run_fetchmail(work: Path, port: int, count: int) -> float | None:
    """Seconds for fetchmail to write every message to one BSMTP file (keep, fetchall, no idfile)."""
    binary = shutil.which("fetchmail")
    if not binary:
        print("  note: fetchmail is not installed (apt-get install -y fetchmail); skipped")
        return None
    base = Path(tempfile.mkdtemp(dir=work, prefix="fetchmail-"))
    out = base / "mail.bsmtp"
    rc = base / "fetchmailrc"
    rc.write_text(f"""set no syslog
poll 127.0.0.1 service {port} protocol POP3 auth password
  user "{USER}" password "{PASSWORD}" is "bench" here
  keep fetchall sslproto '' bsmtp "{out}"
""")
    rc.chmod(0o600)
    env = dict(os.environ, HOME=str(base), FETCHMAILHOME=str(base))
    started = time.perf_counter()
    done = subprocess.run([binary, "-f", str(rc), "--nodetach", "--idfile", str(base / "ids"),
                           "--pidfile", str(base / "pid")], capture_output=True, text=True,
                          env=env)
    seconds = time.perf_counter() - started
    delivered = out.read_bytes().count(b"MAIL FROM:") if out.exists() else 0
    if done.returncode not in (0, 1) or delivered != count:
        print(f"  fetchmail failed (exit {done.returncode}, {delivered} delivered): "
              f"{(done.stderr or done.stdout)[-500:]}")
        return None
    return seconds


def main() -> None:
    """Seed the mailbox, run every retriever on it, print rates and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="messages (default 2,000)")
    parser.add_argument("--size", type=int, default=20_000, help="bytes per message")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of the peers (median taken); ours runs once")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="our batch size (default: the product's default for new accounts)")
    args = parser.parse_args()
    if args.batch_size is None:
        from webapp.services.pop_accounts import DEFAULT_BATCH_SIZE
        args.batch_size = DEFAULT_BATCH_SIZE

    work = Path(tempfile.mkdtemp(prefix="skydesk-bench-pop-"))
    work.chmod(0o755)
    server, process = start_dovecot(work)
    try:
        messages = make_messages(args.count, args.size)
        server.seed(USER, messages)
        port = server.pop3_port
        print(f"{args.count} messages of about {sum(map(len, messages)) // len(messages):,} bytes "
              f"in Dovecot (plain POP3 on loopback), Python {sys.version.split()[0]}")
        rates: dict[str, float | None] = {}

        def median(runner) -> float | None:
            times = [runner() for _ in range(args.repeat)]
            return None if any(t is None for t in times) else statistics.median(times)

        raw = median(lambda: raw_poplib(port, args.count))
        rates["raw poplib (UIDL + sequential RETR, writing nothing)"] = args.count / raw
        stored, indexed, checks = ours(work, port, args.count, args.batch_size)
        rates[f"ours: stored and listed ({checks['batches']} batches of {args.batch_size})"] = \
            args.count / stored
        rates["ours: stored, listed and search-indexed"] = args.count / indexed
        getmail = median(lambda: run_getmail(work, port, args.count, server.mail_uid,
                                             server.mail_gid))
        rates["getmail6 into a Maildir"] = args.count / getmail if getmail else None
        fetchmail = median(lambda: run_fetchmail(work, port, args.count))
        rates["fetchmail into one BSMTP file"] = args.count / fetchmail if fetchmail else None

        raw_rate = rates["raw poplib (UIDL + sequential RETR, writing nothing)"]
        print(f"\n{'retriever':<58} {'msg/s':>8} {'x raw':>7}")
        for name, rate in rates.items():
            if rate is None:
                print(f"{name:<58} {'skipped':>8}")
            else:
                print(f"{name:<58} {rate:>8.0f} {rate / raw_rate:>7.2f}")
        ours_rate = args.count / stored
        print(f"\nours (stored) / raw poplib: {ours_rate / raw_rate:.2f}  (goal >= 0.8)")
        if getmail:
            print(f"ours (stored) / getmail6:   {ours_rate / (args.count / getmail):.2f}  (goal >= 2)")
            print(f"ours (indexed) / getmail6:  {(args.count / indexed) / (args.count / getmail):.2f}")
        if fetchmail:
            print(f"ours (stored) / fetchmail:  {ours_rate / (args.count / fetchmail):.2f}")
    finally:
        _stop(process)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
