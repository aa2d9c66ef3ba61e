"""Does the CRM cost delivery nothing, and does a record page ignore the mailbox's size?

1. Delivery with --records-small vs --records-large CRM records (contacts with addresses,
   leads, potentials) in the organization: real `deliver()` of real messages from addresses
   that ARE contacts, batches interleaved between the two organizations, median per message.
   Every SQL statement delivery runs is recorded: linking is a query, so none may touch a CRM
   table (goal ratio <= 1.2, and 0 CRM statements).
2. A contact's page with --mailbox-small vs --mailbox-large messages in the owner's mailbox
   (rows inserted in bulk with SQLAlchemy Core; the contact has the same 80 messages in
   both), through the Flask test client and the correspondence query alone (goal <= 1.3).

    .venv/bin/python bench/crm.py           # SQLite: 100 vs 100,000 records, 10k vs 200k messages
    .venv/bin/python bench/crm.py --full          # 10k vs 1,000,000 messages
    .venv/bin/python bench/crm.py --database-url postgresql://user@host/db
"""
from __future__ import annotations

import argparse
import datetime as dt
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from email.message import EmailMessage
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.fernet import Fernet  # noqa: E402
from sqlalchemy import event, insert, select, text  # noqa: E402
from tests.scratch_db import scratch_database  # noqa: E402

CRM_TABLES = ("crm_contact", "crm_contact_email", "crm_lead", "crm_potential", "crm_activity",
              "addon_account", "tracking_exclusion")
CONTACT_MESSAGES = 80
CHUNK = 5000


def _insert(db, model, rows: list[dict]) -> None:
    for start in range(0, len(rows), CHUNK):
        db.session.execute(insert(model), rows[start:start + CHUNK])


def _advance_sequence(db, table: str) -> None:
    """After inserting explicit ids, move PostgreSQL's id sequence past them."""
    if db.engine.dialect.name == "postgresql":
        db.session.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                f"(SELECT max(id) FROM {table}))"))


def fill_crm(db, org_id: int, owner_id: int, count: int) -> list[str]:
    """Insert `count` CRM records in bulk (60% contacts, 30% leads, 10% potentials)."""
    from webapp.models.crm import Contact, ContactEmail, Lead, Potential

    now = dt.datetime.now(dt.timezone.utc)
    contacts = count * 6 // 10
    leads = count * 3 // 10
    potentials = count - contacts - leads
    first = (db.session.scalar(select(Contact.id).order_by(Contact.id.desc()).limit(1)) or 0) + 1
    ids = list(range(first, first + contacts))
    _insert(db, Contact, [{"id": i, "org_id": org_id, "owner_id": owner_id,
                           "name": f"Contact {i}", "phone": "", "company": "Bench Co",
                           "created_at": now, "updated_at": now} for i in ids])
    addresses = [f"c{i}@o{org_id}.example" for i in ids]
    _insert(db, ContactEmail, [{"org_id": org_id, "contact_id": i, "email": a, "position": 0}
                               for i, a in zip(ids, addresses)])
    _insert(db, Lead, [{"org_id": org_id, "owner_id": owner_id, "name": f"Lead {n}",
                        "email": f"l{n}@o{org_id}.example", "phone": "", "company": "",
                        "status": "new", "source": "", "created_at": now, "updated_at": now}
                       for n in range(leads)])
    _insert(db, Potential, [{"org_id": org_id, "owner_id": owner_id, "name": f"Deal {n}",
                             "stage": "proposal", "contact_id": ids[n % len(ids)],
                             "created_at": now, "updated_at": now} for n in range(potentials)])
    _advance_sequence(db, "crm_contact")
    db.session.commit()
    return addresses


def raw_message(sender: str, to: str, n: int) -> bytes:
    """A small real message, as a customer would send it."""
    msg = EmailMessage()
    msg["From"] = f'"Customer {n}" <{sender.upper()}>'
    msg["To"] = to
    msg["Subject"] = f"Order question #{n}"
    msg["Date"] = "Mon, 23 Nov 2026 10:00:00 +0000"
    msg["Message-ID"] = f"<bench-{n}-{uuid.uuid4().hex}@customer.example>"
    msg.set_content("Hello, a question about the order we placed last week.\n" * 20)
    return bytes(msg)


def bench_delivery(db, users: dict, addresses: dict, batches: int, per_batch: int) -> dict:
    """Median milliseconds per delivered message for each organization size, interleaved."""
    from webapp.models import MailAccount
    from webapp.services.delivery import deliver

    crm_statements: list[str] = []
    capturing = [False]

    @event.listens_for(db.engine, "before_cursor_execute")
    def _record(conn, cursor, statement, parameters, context, executemany):
        if capturing[0] and any(t in statement for t in CRM_TABLES):
            crm_statements.append(statement)

    timings: dict[int, list[float]] = {size: [] for size in users}
    counter = 0
    for batch in range(batches + 1):  # the first batch of each warms up
        # Alternate who goes first, so a checkpoint or a neighbour's burst hits both alike.
        order = list(users.items()) if batch % 2 == 0 else list(users.items())[::-1]
        for size, user in order:
            account = db.session.scalar(select(MailAccount).where(MailAccount.user_id == user.id))
            raws = []
            for _ in range(per_batch):
                counter += 1
                raws.append(raw_message(addresses[size][counter % len(addresses[size])],
                                        user.email, counter))
            capturing[0] = True
            started = time.perf_counter()
            for n, raw in enumerate(raws):
                deliver(db.session, account, raw, f"bench-{batch}-{n}", run_filters=True)
                db.session.commit()
            elapsed = time.perf_counter() - started
            capturing[0] = False
            if batch:
                timings[size].append(elapsed * 1000 / per_batch)
    event.remove(db.engine, "before_cursor_execute", _record)
    return {"ms": {size: statistics.median(t) for size, t in timings.items()},
            "crm_statements": crm_statements}


def fill_mailbox(db, user, count: int, contact_address: str) -> None:
    """`count` messages with their address rows; CONTACT_MESSAGES of them with the contact."""
    from webapp.models import Blob, Folder, MailAccount, Message, MessageAddress

    account = db.session.scalar(select(MailAccount).where(MailAccount.user_id == user.id))
    folders = {f.role: f.id for f in db.session.scalars(select(Folder)
                                                        .where(Folder.user_id == user.id))}
    digest = f"{user.id:064x}"
    db.session.execute(insert(Blob).values(sha256=digest, size=2000, refcount=count))
    start = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    first = (db.session.scalar(select(Message.id).order_by(Message.id.desc()).limit(1)) or 0) + 1
    every = max(count // CONTACT_MESSAGES, 1)
    messages, address_rows = [], []
    for n in range(count):
        pk = first + n
        with_contact = n % every == 0 and n // every < CONTACT_MESSAGES
        sent = with_contact and n % 2 == 0
        other = contact_address if with_contact else f"person{n % 5000}@elsewhere.example"
        when = start + dt.timedelta(seconds=n * 61)
        messages.append({
            "id": pk, "user_id": user.id, "account_id": account.id,
            "folder_id": folders["sent" if sent else "inbox"], "blob_sha256": digest,
            "source_key": f"fill-{n}", "size": 2000, "message_id": f"<{n}.{user.id}@b.example>",
            "in_reply_to": "", "references": "", "subject": f"Message {n}",
            "from_name": "", "from_email": user.email if sent else other, "snippet": "",
            "date": when, "received_at": when, "sort_date": when, "is_read": True,
            "is_flagged": False, "has_attachments": False, "parse_defects": "", "indexed": True})
        sender, recipient = (user.email, other) if sent else (other, user.email)
        address_rows.append({"message_pk": pk, "user_id": user.id, "role": "from",
                             "email": sender, "name": "", "ambiguous": False})
        address_rows.append({"message_pk": pk, "user_id": user.id, "role": "to",
                             "email": recipient, "name": "", "ambiguous": False})
        if len(messages) >= CHUNK:
            db.session.execute(insert(Message), messages)
            db.session.execute(insert(MessageAddress), address_rows)
            messages, address_rows = [], []
    if messages:
        db.session.execute(insert(Message), messages)
        db.session.execute(insert(MessageAddress), address_rows)
    _advance_sequence(db, "message")
    db.session.commit()


def interleaved_medians(funcs: dict, runs: int) -> dict:
    """The median wall time in ms of each function, run in alternation after a warm-up each."""
    times: dict = {key: [] for key in funcs}
    for func in funcs.values():
        func()
    for run in range(runs):
        keys = list(funcs) if run % 2 == 0 else list(funcs)[::-1]
        for key in keys:
            started = time.perf_counter()
            funcs[key]()
            times[key].append((time.perf_counter() - started) * 1000)
    return {key: statistics.median(values) for key, values in times.items()}


def main() -> int:
    """Run both measurements and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records-small", type=int, default=100)
    parser.add_argument("--records-large", type=int, default=100_000)
    parser.add_argument("--mailbox-small", type=int, default=10_000)
    parser.add_argument("--mailbox-large", type=int, default=200_000)
    parser.add_argument("--full", action="store_true",
                        help="1,000,000 messages in the large mailbox")
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--per-batch", type=int, default=40)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--database-url", default=None,
                        help="a PostgreSQL server URL (a fresh database is created there)")
    args = parser.parse_args()
    if args.full:
        args.mailbox_large = 1_000_000

    workdir = Path(tempfile.mkdtemp(prefix="skydesk-bench-crm-"))
    drop = None
    if args.database_url:
        database_url, drop = scratch_database(args.database_url, "skydesk_bench")
    else:
        database_url = f"sqlite:///{workdir / 'bench.db'}"
    # No REDIS_URL: delivery enqueues its index job on the embedded server, as `./skydesk up`.
    environ = {"SKYDESK_ENV": "test", "DATABASE_URL": database_url,
               "BLOB_DIR": str(workdir / "blobs"), "SECRET_KEY": "bench-only",
               "MAIL_SECRET_KEYS": Fernet.generate_key().decode()}
    try:
        from flask_migrate import upgrade

        from webapp import create_app
        from webapp.extensions import db
        from webapp.models.crm import Contact
        from webapp.queue import embedded_redis, stop_embedded
        from webapp.services import crm
        from webapp.services.correspondence import correspondence_for
        from webapp.services.directory import create_organization, create_user

        app = create_app({"INSTANCE_PATH": str(workdir / "instance")}, environ=environ)
        with app.app_context():
            upgrade()
            dialect = db.engine.dialect.name

            # --- 1. delivery vs CRM size --------------------------------------------------
            users, addresses = {}, {}
            for size in (args.records_small, args.records_large):
                org, _admin = create_organization(
                    db.session, name=f"Org {size}", domain=f"o{size}.example",
                    admin_email=f"admin@o{size}.example", admin_password="bench password 1")
                users[size] = create_user(db.session, org, email=f"sales@o{size}.example",
                                          password="bench password 1")
                db.session.commit()
                started = time.perf_counter()
                addresses[size] = fill_crm(db, org.id, users[size].id, size)
                print(f"{size:,} CRM records inserted in {time.perf_counter() - started:.1f} s")
            _analyze(db)
            result = bench_delivery(db, users, addresses, args.batches, args.per_batch)
            small, large = (result["ms"][args.records_small], result["ms"][args.records_large])
            print(f"\ndelivery on {dialect}, median ms per message "
                  f"({args.batches} interleaved batches of {args.per_batch}):")
            print(f"  {args.records_small:>9,} records {small:8.2f}")
            print(f"  {args.records_large:>9,} records {large:8.2f}")
            print(f"  ratio {large / small:.2f} (goal <= 1.2); SQL statements touching CRM "
                  f"tables during delivery: {len(result['crm_statements'])} (goal 0)")

            # --- 2. record page vs mailbox size -------------------------------------------
            org, _admin = create_organization(db.session, name="Pages", domain="pages.example",
                                              admin_email="admin@pages.example",
                                              admin_password="bench password 1")
            db.session.commit()
            pages = {}
            for size in (args.mailbox_small, args.mailbox_large):
                owner = create_user(db.session, org, email=f"m{size}@pages.example",
                                    password="bench password 1")
                contact = crm.create_contact(db.session, org.id, owner.id, name="Dana Customer",
                                             emails=[f"dana{size}@customer.example"])
                db.session.commit()
                started = time.perf_counter()
                fill_mailbox(db, owner, size, f"dana{size}@customer.example")
                print(f"\n{size:,} messages inserted in {time.perf_counter() - started:.1f} s")
                pages[size] = (owner, contact.id)
            _analyze(db)

            page_funcs, query_funcs = {}, {}
            for size, (owner, contact_id) in pages.items():
                client = app.test_client()
                with client.session_transaction() as sess:
                    sess["_user_id"] = owner.get_id()
                    sess["_fresh"] = True
                viewer = crm.Viewer.of(owner)

                def page(client=client, contact_id=contact_id):
                    with app.app_context():
                        response = client.get(f"/crm/contacts/{contact_id}")
                        assert response.status_code == 200, response.status_code
                        assert response.data.count(b"crm-entry crm-mail") == 50
                    return response

                def query(viewer=viewer, contact_id=contact_id):
                    record = db.session.get(Contact, contact_id)
                    assert len(correspondence_for(db.session, viewer, record).items) == 50
                    db.session.rollback()

                page_funcs[size], query_funcs[size] = page, query
            page_ms = interleaved_medians(page_funcs, args.runs)
            query_ms = interleaved_medians(query_funcs, args.runs)
            small_t = {"record page": page_ms[args.mailbox_small],
                       "correspondence query alone": query_ms[args.mailbox_small]}
            large_t = {"record page": page_ms[args.mailbox_large],
                       "correspondence query alone": query_ms[args.mailbox_large]}
            print(f"\nrecord page on {dialect}, median ms:")
            print(f"  {'':<28}{args.mailbox_small:>12,}{args.mailbox_large:>12,}{'ratio':>8}")
            for name in small_t:
                print(f"  {name:<28}{small_t[name]:>12.2f}{large_t[name]:>12.2f}"
                      f"{large_t[name] / small_t[name]:>8.2f}")
            print(f"  page ratio {large_t['record page'] / small_t['record page']:.2f} "
                  "(goal <= 1.3)")
            db.session.remove()
            db.engine.dispose()
            stop_embedded(embedded_redis(app.config["REDIS_EMBEDDED_PATH"]), save=False)
    finally:
        if drop:
            drop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _analyze(db) -> None:
    """Fresh planner statistics, as after any real import."""
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))
    else:
        db.session.execute(text("ANALYZE"))
        db.session.commit()


if __name__ == "__main__":
    sys.exit(main())
