"""The filter job: apply one filter to the user's stored mail, with progress on a run row."""
from __future__ import annotations

import logging

from flask import current_app
from sqlalchemy import select

from webapp.extensions import db
from webapp.models import User
from webapp.models._types import utcnow
from webapp.models.filters import Filter, FilterRun
from webapp.services import blobs
from webapp.services.filters import latest_run, run_apply, start_run

log = logging.getLogger("skydesk.filters")


def apply_filter(filter_id: int, run_id: int | None = None) -> int:
    """Apply the filter to the user's existing messages; return how many it matched.

    Safe to run twice: a finished run is not redone, and the actions themselves are
    idempotent (moving or flagging a message twice leaves it as once).
    """
    filter_ = db.session.get(Filter, filter_id)
    if filter_ is None:
        log.info("filter %s is gone; nothing to apply", filter_id)
        return 0
    run = db.session.get(FilterRun, run_id) if run_id is not None else latest_run(db.session,
                                                                                  filter_id)
    if run is None or run.filter_id != filter_id or run.state in ("done", "failed"):
        if run is not None and run_id is not None and run.filter_id == filter_id:
            return run.matched  # this run already finished: a retried job does nothing
        run = start_run(db.session, filter_)
        db.session.commit()
    user = db.session.scalar(select(User).where(User.id == filter_.user_id))
    if user is None or user.is_disabled:
        run.state, run.error, run.finished_at = "failed", "The user is disabled.", utcnow()
        db.session.commit()
        return 0
    store = blobs.get_store(current_app.config["BLOB_DIR"])
    try:
        run = run_apply(db.session, run, store.get)
    except Exception as exc:
        db.session.rollback()
        run = db.session.get(FilterRun, run.id)
        run.state, run.finished_at = "failed", utcnow()
        run.error = f"The filter could not be applied: {exc.__class__.__name__}."
        db.session.commit()
        raise
    log.info("filter %s applied: %s of %s messages matched", filter_id, run.matched, run.total)
    return run.matched
