"""The health job: proves web → Redis → worker → database works."""
from __future__ import annotations

from rq import get_current_job
from sqlalchemy import select

from webapp.extensions import db
from webapp.models import HealthCheck
from webapp.models._types import utcnow


def record_health(token: str) -> str:
    """Mark the health check row with this token as completed by this worker."""
    check = db.session.scalar(select(HealthCheck).where(HealthCheck.token == token))
    if check is None:
        return "unknown token"
    if check.completed_at is None:
        job = get_current_job()
        check.completed_at = utcnow()
        check.worker_name = (job.worker_name or "") if job else ""
        db.session.commit()
    return "ok"
