"""Does a folder's list page cost the same for 1,000 and for 100,000 messages?

Two users: one with a folder of --small messages, one with a folder of --large. Rows are
inserted directly in bulk (this measures listing, not delivery). The first page and a deep
page (reached by its keyset cursor, as the "Older" link does) are rendered through the Flask
test client, each the median of --runs runs after a warm-up (small and large
alternated run by run); the script prints the ratios
large/small (goal: at most 1.3) and, to show where time goes, the same for the service calls
alone (the keyset page, the sidebar's unread counts).

    .venv/bin/python bench/list_page.py                      # SQLite in a temporary folder
    .venv/bin/python bench/list_page.py --database-url postgresql://user@host/db
    .venv/bin/python bench/list_page.py --small 1000 --large 20000 --runs 5   # quicker

With --database-url a fresh database is created on that server for the run and dropped after.
"""
from __future__ import annotations

import argparse
import datetime as dt
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.fernet import Fernet  # noqa: E402
from sqlalchemy import insert, select, text  # noqa: E402
from tests.scratch_db import scratch_database  # noqa: E402

UNREAD_PER_FOLDER = 25  # recent mail is unread, older mail read: the usual shape of an inbox


def fill_folder(db, user, count: int) -> int:
    """Insert `count` listing rows into the user's Inbox in bulk; return the folder id."""
    from webapp.models import Blob, Folder, MailAccount, Message

    account = db.session.scalar(select(MailAccount).where(MailAccount.user_id == user.id))
    inbox = db.session.scalar(select(Folder).where(Folder.user_id == user.id,
                                                   Folder.role == "inbox"))
    digest = f"{user.id:064x}"
    db.session.execute(insert(Blob).values(sha256=digest, size=2000, refcount=count))
    start = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    chunk = []
    for n in range(count):
        # Several messages share each date, so the id tie-break is exercised as in real mail.
        when = start + dt.timedelta(seconds=(n // 3) * 97)
        chunk.append({
            "user_id": user.id, "account_id": account.id, "folder_id": inbox.id,
            "blob_sha256": digest, "source_key": f"bench-{n}", "size": 2000,
            "message_id": f"<{n}.{user.id}@bench.example>", "in_reply_to": "", "references": "",
            "subject": f"Quarterly pipeline review #{n}", "from_name": "Jane Doe",
            "from_email": "jane@customer.example",
            "snippet": "Hello, here are the numbers we discussed on the call yesterday.",
            "date": when, "received_at": when, "sort_date": when,
            "is_read": n < count - UNREAD_PER_FOLDER, "is_flagged": n % 50 == 0,
            "has_attachments": n % 7 == 0, "parse_defects": "", "indexed": True,
        })
        if len(chunk) == 5000:
            db.session.execute(insert(Message), chunk)
            chunk = []
    if chunk:
        db.session.execute(insert(Message), chunk)
    db.session.execute(text("UPDATE \"user\" SET used_bytes = :b WHERE id = :u"),
                       {"b": count * 2000, "u": user.id})
    db.session.commit()
    return inbox.id


def paired_medians(small, large, runs: int) -> tuple[float, float]:
    """Median wall times (ms) of two calls, alternated run by run after a warm-up each, so
    that a busy machine slows both sides alike instead of skewing the ratio."""
    small(), large()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        for func, bucket in ((small, times[0]), (large, times[1])):
            started = time.perf_counter()
            func()
            bucket.append((time.perf_counter() - started) * 1000)
    return statistics.median(times[0]), statistics.median(times[1])


def _calls(app, db, mailbox, client, user_id: int, folder_id: int, cursor: str) -> dict:
    """The timed calls for one user's folder: pages through the app, service calls alone."""
    def page(url):
        with app.app_context():
            response = client.get(url)
            assert response.status_code == 200, response.status_code
            assert response.data.count(b'class="message-row') == 50
        return response

    return {
        "first page": lambda: page(f"/mail/folder/{folder_id}"),
        "deep page": lambda: page(f"/mail/folder/{folder_id}?before={cursor}"),
        "list_page() alone": lambda: mailbox.list_page(db.session, user_id, folder_id,
                                                       before=cursor),
        "folder_counts() alone": lambda: mailbox.folder_counts(db.session, user_id),
    }


def main() -> int:
    """Build the two mailboxes, time the pages, print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--unread-index", action="store_true",
                        help="add the index on message (folder_id, is_read) that the sidebar's "
                             "unread counts need, if the schema does not have it yet")
    parser.add_argument("--database-url", default=None,
                        help="a PostgreSQL server URL (a fresh database is created there)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="skydesk-bench-"))
    drop = None
    if args.database_url:
        database_url, drop = scratch_database(args.database_url, "skydesk_bench")
    else:
        database_url = f"sqlite:///{workdir / 'bench.db'}"
    environ = {"SKYDESK_ENV": "test", "DATABASE_URL": database_url,
               "BLOB_DIR": str(workdir / "blobs"), "SECRET_KEY": "bench-only",
               "MAIL_SECRET_KEYS": Fernet.generate_key().decode(),
               "REDIS_URL": "redis://127.0.0.1:1/0"}  # never used: listing needs no Redis
    try:
        from flask_migrate import upgrade

        from webapp import create_app
        from webapp.extensions import db
        from webapp.models import Message
        from webapp.services import mailbox
        from webapp.services.directory import create_organization, create_user

        app = create_app({"INSTANCE_PATH": str(workdir / "instance")}, environ=environ)
        with app.app_context():
            upgrade()
            org, _admin = create_organization(db.session, name="Bench", domain="bench.example",
                                              admin_email="admin@bench.example",
                                              admin_password="bench password 1")
            users = {size: create_user(db.session, org, email=f"u{size}@bench.example",
                                       password="bench password 1")
                     for size in (args.small, args.large)}
            db.session.commit()
            started = time.perf_counter()
            folders = {size: fill_folder(db, users[size], size) for size in users}
            print(f"inserted {args.small + args.large:,} rows in "
                  f"{time.perf_counter() - started:.1f} s on {db.engine.dialect.name}")
            if args.unread_index:
                db.session.execute(text("CREATE INDEX IF NOT EXISTS ix_message_folder_unread "
                                        "ON message (folder_id, is_read)"))
                db.session.commit()
            if db.engine.dialect.name == "postgresql":
                with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    conn.execute(text("ANALYZE"))
            else:
                db.session.execute(text("ANALYZE"))
                db.session.commit()

            calls = {}
            for size, user in users.items():
                folder_id = folders[size]
                middle = db.session.execute(
                    select(Message.sort_date, Message.id)
                    .where(Message.folder_id == folder_id)
                    .order_by(Message.sort_date.desc(), Message.id.desc())
                    .offset(size // 2).limit(1)).one()
                cursor = mailbox.encode_cursor(middle.sort_date, middle.id)
                client = app.test_client()
                with client.session_transaction() as sess:
                    sess["_user_id"] = user.get_id()
                    sess["_fresh"] = True
                calls[size] = _calls(app, db, mailbox, client, user.id, folder_id, cursor)
            results = {args.small: {}, args.large: {}}
            for name in calls[args.small]:
                results[args.small][name], results[args.large][name] = paired_medians(
                    calls[args.small][name], calls[args.large][name], args.runs)
                db.session.rollback()

            small, large = results[args.small], results[args.large]
            print(f"{'median ms':<24}{args.small:>12,}{args.large:>12,}{'ratio':>9}")
            for name in small:
                ratio = large[name] / small[name]
                print(f"{name:<24}{small[name]:>12.2f}{large[name]:>12.2f}{ratio:>9.2f}")
            worst = max(large[n] / small[n] for n in ("first page", "deep page"))
            print(f"page ratio {args.large:,}/{args.small:,}: {worst:.2f} (goal <= 1.3)")
            db.session.remove()
            db.engine.dispose()
    finally:
        if drop:
            drop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
