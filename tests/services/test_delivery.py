"""deliver(): byte-exact storage, one row per source key, quota, addresses, search index."""
from __future__ import annotations

import hashlib
from email.message import EmailMessage

import pytest
from sqlalchemy import func, select

from webapp.extensions import db
from webapp.models import Blob, MailAccount, Message, MessageAddress, MessageText
from webapp.services import blobs, search
from webapp.services.delivery import (Incoming, MessageTooLargeError, deliver, deliver_many,
                                      folder_for_role)
from webapp.services.quota import QuotaExceededError
from worker.jobs.index import index_pending


def make_raw(subject="Quarterly pipeline", sender='"Doe, Jane" <Jane.Doe@Customer.EXAMPLE>',
             to="user@acme.example", body="Hello, the contract renewal is attached.",
             message_id="<m1@customer.example>") -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    if message_id:
        msg["Message-ID"] = message_id
    msg["Date"] = "Mon, 23 Nov 2026 10:00:00 +0100"
    msg.set_content(body)
    return bytes(msg)


def hosted(user) -> MailAccount:
    return db.session.scalar(select(MailAccount).where(MailAccount.user_id == user.id,
                                                       MailAccount.kind == "hosted"))


def count(model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def test_deliver_stores_bytes_exactly_and_lists_in_inbox(app, user):
    raw = make_raw() + b"\r\ntrailing bytes \xff kept as they are\r\n"
    result = deliver(db.session, hosted(user), raw, "src-1")
    db.session.commit()
    message = result.message
    assert not result.duplicate
    assert message.folder_id == folder_for_role(db.session, user.id, "inbox").id
    store = blobs.get_store(app.config["BLOB_DIR"])
    assert store.get(message.blob_sha256) == raw
    assert message.blob_sha256 == hashlib.sha256(raw).hexdigest()
    assert message.subject == "Quarterly pipeline"
    assert (message.from_name, message.from_email) == ("Doe, Jane", "jane.doe@customer.example")
    roles = {(a.role, a.email) for a in message.addresses}
    assert roles == {("from", "jane.doe@customer.example"), ("to", "user@acme.example")}
    db.session.refresh(user)
    assert user.used_bytes == len(raw)


def test_same_source_key_stores_once(app, user):
    account = hosted(user)
    first = deliver(db.session, account, make_raw(), "uidl-7")
    db.session.commit()
    again = deliver(db.session, account, make_raw(), "uidl-7")
    db.session.commit()
    assert again.duplicate and again.message.id == first.message.id
    assert count(Message) == 1 and count(MessageAddress) == 2
    db.session.refresh(user)
    assert user.used_bytes == len(make_raw())


def test_rollback_leaves_nothing(app, user):
    deliver(db.session, hosted(user), make_raw(), "crash-before-commit")
    db.session.rollback()
    assert count(Message) == 0 and count(Blob) == 0
    db.session.refresh(user)
    assert user.used_bytes == 0
    deliver(db.session, hosted(user), make_raw(), "crash-before-commit")
    db.session.commit()
    assert count(Message) == 1


def test_identical_bytes_share_one_blob(app, user):
    raw = make_raw()
    deliver(db.session, hosted(user), raw, "a")
    deliver(db.session, hosted(user), raw, "b")
    db.session.commit()
    assert count(Message) == 2
    assert db.session.scalar(select(Blob.refcount)) == 2


def test_taking_over_a_reference_needs_bytes_already_stored(app, user):
    """A message that took over a reference to bytes it wrote itself would count them
    never: refused before anything is written."""
    with pytest.raises(ValueError, match="already stored"):
        deliver_many(db.session, hosted(user),
                     [Incoming(make_raw(), "a", takes_reference=True)])
    assert count(Message) == 0 and count(Blob) == 0


def test_over_quota_refuses_and_stores_nothing(app, user):
    raw = make_raw()
    user.quota_bytes = len(raw) + 10
    db.session.commit()
    deliver(db.session, hosted(user), raw, "fits")
    db.session.commit()
    with pytest.raises(QuotaExceededError, match="Storage full"):
        deliver(db.session, hosted(user), make_raw(subject="second"), "does-not-fit")
    db.session.rollback()
    assert count(Message) == 1
    db.session.refresh(user)
    assert user.used_bytes == len(raw)


def test_too_large_is_refused(app, user):
    app.config["MAIL_MAX_MESSAGE_BYTES"] = 100
    with pytest.raises(MessageTooLargeError, match="over the"):
        deliver(db.session, hosted(user), make_raw(), "big")
    db.session.rollback()
    assert count(Message) == 0


@pytest.mark.parametrize("raw", [
    b"",
    b"\x00\xff\xfe garbage without headers",
    b"Subject: no body, no blank line",
    b"From: broken <<<@@>\r\nSubject: =?utf-8?B?!!!notbase64?=\r\n\r\nbody",
], ids=["empty", "binary", "headers-only", "broken-headers"])
def test_broken_messages_are_still_stored_and_listed(app, user, raw):
    result = deliver(db.session, hosted(user), raw, "broken")
    db.session.commit()
    assert result.message.id and result.message.message_id
    assert blobs.get_store(app.config["BLOB_DIR"]).get(result.message.blob_sha256) == raw


def test_missing_message_id_gets_a_deterministic_substitute(app, user):
    raw = make_raw(message_id=None)
    a = deliver(db.session, hosted(user), raw, "x1").message
    b = deliver(db.session, hosted(user), raw, "x2").message
    assert a.message_id == b.message_id and a.message_id.startswith("<")


def test_delivery_enqueues_one_index_job_per_user_per_commit(app, user):
    from webapp.queue import get_queue

    for n in range(5):
        deliver(db.session, hosted(user), make_raw(subject=f"s{n}"), f"k{n}")
    db.session.commit()
    jobs = get_queue("default").jobs
    assert [j.func_name for j in jobs] == ["worker.jobs.index.index_pending"]
    assert jobs[0].args == (user.id,)


def test_index_then_search_by_subject_address_and_body(app, user, org):
    from tests.factories import make_user

    other = make_user(org)
    deliver(db.session, hosted(user), make_raw(body="Zürich renewal schedule"), "1")
    deliver(db.session, hosted(user), make_raw(subject="Lunch", sender="bob@elsewhere.example",
                                               body="pizza"), "2")
    deliver(db.session, hosted(other), make_raw(body="Zürich renewal schedule"), "3")
    db.session.commit()
    assert index_pending(user.id) == 2 and index_pending(other.id) == 1
    assert index_pending(user.id) == 0
    assert count(MessageText) == 3

    def subjects(query):
        return sorted(m.subject for m in search.search(db.session, user.id, query))

    assert subjects("zürich renewal") == ["Quarterly pipeline"]
    assert subjects("renew") == ["Quarterly pipeline"]  # prefix
    assert subjects("bob@elsewhere.example") == ["Lunch"]
    assert subjects("quarterly") == ["Quarterly pipeline"]
    assert subjects('pizza OR "NEAR(') == []  # operators are plain words, never syntax
    assert subjects("nothing-like-this") == []
    message = db.session.scalar(select(Message).where(Message.subject == "Lunch"))
    assert message.snippet == "pizza"


def test_garbage_collection_keeps_young_orphans(app, user):
    store = blobs.get_store(app.config["BLOB_DIR"])
    orphan = store.put(b"written by a delivery that has not committed yet")
    assert blobs.collect_garbage(db.session, store) == 0 and store.exists(orphan)
    assert blobs.collect_garbage(db.session, store, orphan_age=-1) == 1
    assert not store.exists(orphan)
