"""Rows the system writes about itself: worker health checks."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from webapp.extensions import db
from webapp.models._types import UTCDateTime, utcnow


class HealthCheck(db.Model):
    """Proof that a job went web → Redis → worker → database and back."""

    __tablename__ = "health_check"

    id: Mapped[int] = mapped_column(primary_key=True)
    token: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    worker_name: Mapped[str] = mapped_column(String(200), default="", nullable=False)
