"""Admin » Queue health: RQ queues, workers and failed jobs with their errors."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import redis
from flask import abort, current_app, flash, redirect, render_template, url_for
from flask_login import current_user
from rq import Queue, Worker
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.results import Result
from sqlalchemy import func, select

from admin.blueprint import bp, register_menu
from admin.views.audit import audit_admin
from webapp.auth.forms import EmptyForm
from webapp.extensions import db
from webapp.models import Organization
from webapp.queue import get_redis

register_menu("Queue health", "admin.queues_index", order=60)

FAILED_SHOWN = 100


@dataclass(frozen=True)
class QueueCounts:
    """How many jobs of a queue wait, run, failed, are deferred or scheduled."""

    name: str
    queued: int
    started: int
    failed: int
    deferred: int
    scheduled: int


@dataclass(frozen=True)
class WorkerState:
    """One RQ worker as its heartbeat reports it."""

    name: str
    state: str
    queues: list[str]
    current_job_id: str | None
    last_heartbeat: datetime | None


@dataclass(frozen=True)
class FailedJob:
    """A failed job with the error it ended on."""

    id: str
    queue: str
    func_name: str
    args: str
    ended_at: datetime | None
    error: str


def queue_counts(conn: redis.Redis, names: list[str]) -> list[QueueCounts]:
    """Counts of every configured queue."""
    counts = []
    for name in names:
        queue = Queue(name, connection=conn)
        counts.append(QueueCounts(name, queue.count, queue.started_job_registry.count,
                                  queue.failed_job_registry.count,
                                  queue.deferred_job_registry.count,
                                  queue.scheduled_job_registry.count))
    return counts


def worker_states(conn: redis.Redis) -> list[WorkerState]:
    """Every registered worker with its state, current job and last heartbeat."""
    return [WorkerState(w.name, w.get_state(), w.queue_names(), w.get_current_job_id(),
                        w.last_heartbeat)
            for w in sorted(Worker.all(connection=conn), key=lambda w: w.name)]


def job_visible(job: Job, org_id: int, only_org: bool) -> bool:
    """Whether an organization's admin may see a job: it is tagged for the org, or there is one org.

    Jobs carry ids, not owners; with several organizations on one server, an untagged job's
    error could name another organization's data, so it is shown to nobody.
    """
    return only_org or job.meta.get("org_id") == org_id


def _error_of(job: Job) -> str:
    result = job.latest_result()
    if result is not None and result.type == Result.Type.FAILED:
        return result.exc_string or ""
    return ""


def failed_jobs(conn: redis.Redis, names: list[str], org_id: int, only_org: bool,
                limit: int = FAILED_SHOWN) -> list[FailedJob]:
    """The newest failed jobs of the configured queues that this organization may see."""
    found = []
    for name in names:
        registry = Queue(name, connection=conn).failed_job_registry
        ids = registry.get_job_ids(0, limit - 1, desc=True)
        for job in Job.fetch_many(ids, connection=conn):
            if job is None or not job_visible(job, org_id, only_org):
                continue
            found.append(FailedJob(job.id, name, job.func_name or "?", repr(job.args)[:200],
                                   job.ended_at, _error_of(job)))
    found.sort(key=lambda j: j.ended_at.timestamp() if j.ended_at else 0.0, reverse=True)
    return found[:limit]


def _only_org() -> bool:
    return db.session.scalar(select(func.count()).select_from(Organization)) <= 1


def _failed_job_or_404(job_id: str) -> tuple[Job, Queue]:
    conn = get_redis()
    try:
        job = Job.fetch(job_id, connection=conn)
    except NoSuchJobError:
        abort(404)
    if not job_visible(job, current_user.org_id, _only_org()) \
            or job.origin not in current_app.config["RQ_QUEUES"]:
        abort(404)
    queue = Queue(job.origin, connection=conn)
    if job_id not in queue.failed_job_registry:
        abort(404)
    return job, queue


@bp.route("/queues")
def queues_index():
    """Queues, workers and failed jobs with their errors."""
    conn = get_redis()
    names = current_app.config["RQ_QUEUES"]
    return render_template("admin/queues.html", queues=queue_counts(conn, names),
                           workers=worker_states(conn),
                           failed=failed_jobs(conn, names, current_user.org_id, _only_org()),
                           action_form=EmptyForm())


@bp.route("/queues/failed/<job_id>/requeue", methods=["POST"])
def queues_requeue(job_id: str):
    """Put a failed job back on its queue."""
    job, queue = _failed_job_or_404(job_id)
    if EmptyForm().validate_on_submit():
        try:
            queue.failed_job_registry.requeue(job)
        except InvalidJobOperation:
            flash("That job is no longer in the failed list.", "error")
        else:
            audit_admin("job.requeued", job.id, {"func": job.func_name, "queue": queue.name})
            db.session.commit()
            flash(f"Job {job.id} is queued again.", "success")
    return redirect(url_for("admin.queues_index"))


@bp.route("/queues/failed/<job_id>/delete", methods=["POST"])
def queues_delete(job_id: str):
    """Delete a failed job for good."""
    job, queue = _failed_job_or_404(job_id)
    if EmptyForm().validate_on_submit():
        queue.failed_job_registry.remove(job, delete_job=True)
        audit_admin("job.deleted", job.id, {"func": job.func_name, "queue": queue.name})
        db.session.commit()
        flash(f"Job {job.id} was deleted.", "success")
    return redirect(url_for("admin.queues_index"))
