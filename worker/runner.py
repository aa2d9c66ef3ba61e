"""The RQ worker the `flask worker` command runs, with the Flask app around every job."""
from __future__ import annotations

import logging

from rq import SimpleWorker
from rq.job import Job

log = logging.getLogger("skydesk.worker")


class AppWorker(SimpleWorker):
    """Runs each job inside the app context and leaves no database session behind.

    A SimpleWorker (no fork per job) keeps the app, its engine pool and TLS contexts warm,
    which matters for POP batches; job timeouts still apply (SIGALRM in the main thread).
    """

    flask_app = None

    def perform_job(self, job: Job, queue) -> bool:
        from webapp.extensions import db

        with self.flask_app.app_context():
            try:
                return super().perform_job(job, queue)
            finally:
                db.session.remove()


def run_worker(app, queues: list[str], burst: bool = False, with_scheduler: bool = True,
               name: str | None = None) -> bool:
    """Run an RQ worker on the app's Redis until stopped (or until empty with burst).

    With the scheduler (and not in burst mode) the worker also runs the POP sweeper,
    which enqueues every POP account that is due (worker/scheduler.py).
    """
    from webapp.queue import get_queue, get_redis
    from worker.scheduler import start_sweeper

    connection = get_redis(app)
    AppWorker.flask_app = app
    worker = AppWorker([get_queue(q, app) for q in queues], connection=connection, name=name)
    log.info("worker %s listening on %s", worker.name, ", ".join(queues))
    sweeper = start_sweeper(app) if with_scheduler and not burst else None
    try:
        return worker.work(burst=burst, with_scheduler=with_scheduler,
                           logging_level=app.config.get("RQ_LOG_LEVEL", "INFO"))
    finally:
        if sweeper is not None:
            sweeper.stop()
