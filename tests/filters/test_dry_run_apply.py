"""Dry run and "apply to existing messages": the same matching function, the same count."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from tests.conftest import post_form
from tests.filters.helpers import folder, hosted, make_filter, make_raw
from webapp.extensions import db
from webapp.models import Message
from webapp.models.filters import Filter, FilterRun, MessageFilterHit
from webapp.queue import get_queue
from webapp.services import blobs
from webapp.services.delivery import deliver
from webapp.services.filters import ActionSpec, dry_run, labels_for, start_run
from worker.jobs.filters import apply_filter

MAILBOX_SIZE = 2100
DISTINCT = 105  # distinct raw messages; the rest are redeliveries of the same bytes


def variant(n: int) -> bytes:
    """Message variant n: every 7th an invoice, every 5th from the vendor, every 3rd a list."""
    subject = f"Invoice {n} for November" if n % 7 == 0 else f"Weekly notes {n}"
    sender = "Vendor <billing@vendor.example>" if n % 5 == 0 else f"Person {n} <p{n}@x.example>"
    extra = [("List-Id", "<deals.vendor.example>")] if n % 3 == 0 else []
    return make_raw(subject=subject, sender=sender, n=n, extra_headers=extra,
                    body=f"Body number {n}.")


def bulk_deliver(user, count: int) -> None:
    """`count` messages through deliver(), as distinct rows with distinct source keys.

    Row i carries the bytes of variant i % DISTINCT: blobs are content-addressed, so the
    test pays the fsync of DISTINCT blobs instead of one per row (a shared machine's disk
    would otherwise dominate the run), while every row is a message of its own.
    """
    account = hosted(user)
    variants = [variant(n) for n in range(min(count, DISTINCT))]
    for i in range(count):
        deliver(db.session, account, variants[i % len(variants)], f"bulk-{i}")
        if i % 500 == 499:
            db.session.commit()
    db.session.commit()


def in_folder(folder_id: int) -> int:
    return db.session.scalar(select(func.count()).select_from(Message)
                             .where(Message.folder_id == folder_id))


def raw_loader(app):
    return blobs.get_store(app.config["BLOB_DIR"]).get


@pytest.fixture
def big_mailbox(app, user):
    """A mailbox of a few thousand real messages."""
    bulk_deliver(user, MAILBOX_SIZE)
    return user


def expected_matches(predicate) -> int:
    """How many rows of the bulk mailbox hold a variant the predicate accepts."""
    return sum(1 for i in range(MAILBOX_SIZE) if predicate(i % DISTINCT))


def test_dry_run_count_equals_apply_count(app, big_mailbox):
    """On a mailbox of a few thousand messages, for an all- and an any-filter (issue 6)."""
    user = big_mailbox
    cases = [
        ([("subject", "contains", "invoice"), ("from", "not_contains", "vendor.example")], True,
         lambda n: n % 7 == 0 and n % 5 != 0),
        ([("header", "contains", "deals.vendor", "List-Id"), ("subject", "regex", r"^Invoice 1\d")],
         False, lambda n: n % 3 == 0 or (n % 7 == 0 and str(n).startswith("1") and n >= 10)),
    ]
    for number, (conditions, match_all, predicate) in enumerate(cases):
        target = folder(user, name=f"Sorted {number}")
        filter_ = make_filter(user, conditions, [ActionSpec("move", target.id),
                                                 ActionSpec("mark_read")], match_all=match_all)
        result = dry_run(db.session, filter_, raw_loader(app))
        assert result.count == expected_matches(predicate) and result.scanned == MAILBOX_SIZE
        assert len(result.preview) == 20
        assert in_folder(target.id) == 0  # a dry run changes nothing
        run = start_run(db.session, filter_)
        db.session.commit()
        assert apply_filter(filter_.id, run.id) == result.count
        db.session.expire_all()
        run = db.session.get(FilterRun, run.id)
        assert (run.state, run.matched, run.done, run.total) == ("done", result.count,
                                                                 MAILBOX_SIZE, MAILBOX_SIZE)
        assert in_folder(target.id) == result.count
        assert db.session.scalar(select(func.count()).select_from(Message).where(
            Message.folder_id == target.id, Message.is_read.is_(False))) == 0
        assert db.session.scalar(select(func.count()).select_from(MessageFilterHit).where(
            MessageFilterHit.filter_id == filter_.id)) == result.count
    # Applying again is harmless: the same messages, nothing else moves.
    assert apply_filter(filter_.id) == result.count
    assert in_folder(target.id) == result.count


@pytest.mark.parametrize("action", ["move", "mark_read", "flag", "label", "trash"])
def test_every_action_applies_to_existing_messages(app, user, action):
    bulk_deliver(user, 14)
    target = folder(user, name="Target")
    spec = {"move": ActionSpec("move", target.id), "label": ActionSpec("label", argument="Bills")}
    filter_ = make_filter(user, [("subject", "starts_with", "invoice")],
                          [spec.get(action, ActionSpec(action)),
                           ActionSpec("forward", argument="a@b.example")])
    assert apply_filter(filter_.id) == 2  # messages 0 and 7
    db.session.expire_all()
    hits = db.session.scalars(select(Message).where(Message.subject.like("Invoice%"))).all()
    misses = db.session.scalars(select(Message).where(Message.subject.like("Weekly%"))).all()
    for group, hit in ((hits, True), (misses, False)):
        for message in group:
            if action == "move":
                assert (message.folder_id == target.id) is hit
            if action == "trash":
                assert (message.folder_id == folder(user, role="trash").id) is hit
            if action == "mark_read":
                assert message.is_read is hit
            if action == "flag":
                assert message.is_flagged is hit
            if action == "label":
                assert labels_for(db.session, message.id) == (["Bills"] if hit else [])
    # Old mail is never forwarded again.
    from webapp.models.sending import OutgoingMessage

    assert db.session.scalar(select(func.count()).select_from(OutgoingMessage)) == 0


def test_apply_with_a_deleted_folder_fails_with_notice_and_moves_nothing(app, user):
    bulk_deliver(user, 7)
    target = folder(user, name="Gone")
    filter_ = make_filter(user, [("subject", "contains", "notes")],
                          [ActionSpec("move", target.id)])
    db.session.delete(target)
    db.session.commit()
    assert apply_filter(filter_.id) == 0
    db.session.expire_all()
    run = db.session.scalar(select(FilterRun))
    assert run.state == "failed" and "deleted" in run.error
    assert not db.session.get(Filter, filter_.id).enabled
    assert in_folder(folder(user, role="inbox").id) == 7


def test_test_page_apply_button_worker_and_progress(app, client, login_as, user):
    """The web flow: dry-run page → apply (enqueued after commit) → the job → progress page."""
    bulk_deliver(user, 30)
    target = folder(user, name="Invoices")
    filter_ = make_filter(user, [("subject", "contains", "invoice")],
                          [ActionSpec("move", target.id)], name="Bills")
    login_as(user)
    page = client.get(f"/settings/filters/{filter_.id}/test")
    assert b'id="match-count">5<' in page.data and b"Invoice 28 for November" in page.data
    assert in_folder(target.id) == 0
    get_queue("default").empty()
    response = post_form(client, f"/settings/filters/{filter_.id}/apply", {},
                         page=f"/settings/filters/{filter_.id}/test")
    assert response.status_code == 302
    run_url = response.headers["Location"]
    queued = get_queue("default").jobs
    assert [j.func_name for j in queued] == ["worker.jobs.filters.apply_filter"]
    waiting = client.get(run_url)
    assert b"<progress" in waiting.data and b'http-equiv="refresh"' in waiting.data
    assert json.loads(client.get(run_url + ".json").data)["state"] == "queued"
    # The queued job itself, as the worker runs it (by dotted path, from Redis); a worker
    # loop would add nothing here but its pubsub thread.
    queued[0].perform()
    status = json.loads(client.get(run_url + ".json").data)
    assert status == {"state": "done", "done": 30, "total": 30, "matched": 5, "error": ""}
    finished = client.get(run_url)
    assert b"Done: the filter acted on 5 messages." in finished.data
    assert b'http-equiv="refresh"' not in finished.data
    db.session.expire_all()
    assert in_folder(target.id) == 5


def test_another_users_run_is_404(app, client, login_as, user, org):
    from tests.factories import make_user

    other = make_user(org)
    theirs = make_filter(other, [("subject", "contains", "x")], [ActionSpec("flag")])
    run = start_run(db.session, theirs)
    db.session.commit()
    login_as(user)
    assert client.get(f"/settings/filters/{theirs.id}/runs/{run.id}").status_code == 404
    assert client.get(f"/settings/filters/{theirs.id}/runs/{run.id}.json").status_code == 404


def test_a_slow_pattern_is_given_up_on_across_a_mailbox(app, user):
    """A catastrophic pattern costs the time limit a few times, not once per message."""
    raw = make_raw(subject="a" * 30 + "b")
    for n in range(8):
        deliver(db.session, hosted(user), raw, f"redos-{n}")
    db.session.commit()
    filter_ = make_filter(user, [("subject", "regex", r"(a|aa)+$")], [ActionSpec("flag")])
    result = dry_run(db.session, filter_, raw_loader(app))
    assert (result.count, result.scanned, result.regex_timeouts) == (0, 8, 3)
