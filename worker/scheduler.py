"""The POP sweeper: every few seconds, enqueue a fetch for each account that is due.

Not RQ's `Repeat` (it stops after a failure): the schedule is the `next_fetch_at` column,
so a failed fetch, a crashed worker or a restarted machine changes nothing; whichever
worker sweeps next sees the account is due. A Redis lock lets one worker of many sweep at
a time; the account lock and a "queued" marker keep a fetch from being doubled.
"""
from __future__ import annotations

import contextlib
import logging
import threading

from redis.exceptions import LockError, RedisError
from sqlalchemy import or_, select
from sqlalchemy.exc import SQLAlchemyError

from webapp.extensions import db
from webapp.models import User
from webapp.models._types import utcnow
from webapp.models.pop import PopAccount
from webapp.queue import get_redis
from webapp.services.pop_accounts import lock_key, pop_setting, queued_key

log = logging.getLogger("skydesk.scheduler")
SWEEPER_LOCK = "skydesk:pop:sweeper"


def sweep_due_accounts() -> list[int]:
    """Enqueue a fetch for every due account not already queued or running; return their ids."""
    from worker.jobs.fetch import enqueue_fetch

    redis = get_redis()
    due = db.session.scalars(
        select(PopAccount.id).join(User, User.id == PopAccount.user_id)
        .where(PopAccount.state.in_(("active", "paused")), User.is_disabled.is_(False),
               or_(PopAccount.next_fetch_at.is_(None), PopAccount.next_fetch_at <= utcnow()))
        .order_by(PopAccount.next_fetch_at)).all()
    db.session.rollback()  # end the read transaction: SQLite writers must not wait on it
    enqueued = []
    for account_id in due:
        if redis.exists(lock_key(account_id)) or redis.exists(queued_key(account_id)):
            continue
        enqueue_fetch(account_id)
        enqueued.append(account_id)
    return enqueued


def sweep_once(app) -> list[int]:
    """One sweep under the sweeper lock (another worker sweeping now → nothing to do)."""
    interval = float(pop_setting(app.config, "POP_SWEEP_SECONDS"))
    with app.app_context():
        lock = get_redis().lock(SWEEPER_LOCK, timeout=max(interval * 3, 10), blocking=False)
        if not lock.acquire():
            return []
        try:
            return sweep_due_accounts()
        finally:
            db.session.remove()
            with contextlib.suppress(LockError):
                lock.release()


class Sweeper(threading.Thread):
    """The sweeper thread a worker runs beside its jobs."""

    def __init__(self, app):
        super().__init__(daemon=True, name="pop-sweeper")
        self.app = app
        self.stopped = threading.Event()

    def run(self) -> None:
        interval = float(pop_setting(self.app.config, "POP_SWEEP_SECONDS"))
        while not self.stopped.is_set():
            try:
                enqueued = sweep_once(self.app)
                if enqueued:
                    log.info("enqueued POP fetches for accounts %s", enqueued)
            except (RedisError, SQLAlchemyError, OSError):
                # The database or Redis is away for a moment: the next sweep tries again.
                log.exception("POP sweep failed")
            self.stopped.wait(interval)

    def stop(self) -> None:
        """Ask the thread to end and wait for it."""
        self.stopped.set()
        self.join(timeout=30)


def start_sweeper(app) -> Sweeper:
    """Start the sweeper thread for this worker process."""
    sweeper = Sweeper(app)
    sweeper.start()
    return sweeper
