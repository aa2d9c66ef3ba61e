"""The sweeper: due accounts are enqueued once, whatever failed or crashed before."""
from __future__ import annotations

from datetime import timedelta

from tests.factories import make_user
from webapp.extensions import db
from webapp.models import User
from webapp.models._types import utcnow
from webapp.models.pop import PopAccount
from webapp.queue import get_queue, get_redis
from webapp.services.pop_accounts import lock_key
from worker.scheduler import sweep_due_accounts, sweep_once, SWEEPER_LOCK


def _fetch_jobs() -> list[int]:
    return sorted(job.args[0] for job in get_queue("fetch").jobs)


def test_the_sweeper_enqueues_due_accounts_once(pop_app, make_pop, org, pop_user):
    due = make_pop(pop_user, email="due@pop.example")
    later = make_pop(pop_user, email="later@pop.example")
    disabled = make_pop(pop_user, email="disabled@pop.example")
    paused = make_pop(pop_user, email="paused@pop.example")
    running = make_pop(pop_user, email="running@pop.example")
    gone_user = make_user(org)
    of_disabled_user = make_pop(pop_user, email="x@pop.example", owner=gone_user)
    now = utcnow()
    for account, when in ((due, now - timedelta(seconds=5)), (later, now + timedelta(hours=1)),
                          (disabled, now), (paused, now), (running, now),
                          (of_disabled_user, now)):
        db.session.get(PopAccount, account.id).next_fetch_at = when
    db.session.get(PopAccount, disabled.id).state = "disabled"
    db.session.get(PopAccount, paused.id).state = "paused"
    db.session.get(User, gone_user.id).is_disabled = True
    db.session.commit()
    get_queue("fetch").empty()  # the creations enqueued their first fetch already
    get_redis().set(lock_key(running.id), "someone")

    assert sorted(sweep_due_accounts()) == sorted([due.id, paused.id])
    assert _fetch_jobs() == sorted([due.id, paused.id])
    # Queued already: the next sweep does not double them.
    assert sweep_due_accounts() == []
    assert len(get_queue("fetch").jobs) == 2


def test_only_one_worker_sweeps_at_a_time(pop_app, make_pop, pop_user):
    make_pop(pop_user)
    get_queue("fetch").empty()
    lock = get_redis().lock(SWEEPER_LOCK, timeout=30)
    assert lock.acquire(blocking=False)
    try:
        assert sweep_once(pop_app) == []
    finally:
        lock.release()
    assert len(sweep_once(pop_app)) == 1


def test_a_job_that_ran_clears_its_queued_mark_so_the_next_due_time_counts(
        pop_app, make_pop, pop_user, dovecot):
    from worker.jobs.fetch import run_batch

    account = make_pop(pop_user)
    get_queue("fetch").empty()
    assert sweep_due_accounts() == [account.id]
    run_batch(account.id)  # what the worker does with that job
    db.session.get(PopAccount, account.id).next_fetch_at = utcnow()
    db.session.commit()
    assert sweep_due_accounts() == [account.id]
