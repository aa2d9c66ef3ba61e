"""Users of an organization."""
from __future__ import annotations

from datetime import datetime

from flask_login import UserMixin
from sqlalchemy import BigInteger, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from webapp.extensions import db
from webapp.models._types import UTCDateTime, utcnow
from webapp.models.org import Organization

DEFAULT_QUOTA_BYTES = 5 * 1024**3


class User(UserMixin, db.Model):
    """A person who logs in; owns mail accounts, folders and messages."""

    __tablename__ = "user"

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organization.id", ondelete="CASCADE"),
                                        nullable=False, index=True)
    email: Mapped[str] = mapped_column(String(320), nullable=False, unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="", nullable=False)
    password_hash: Mapped[str] = mapped_column(String(255), nullable=False)
    is_admin: Mapped[bool] = mapped_column(default=False, nullable=False)
    is_disabled: Mapped[bool] = mapped_column(default=False, nullable=False)
    must_change_password: Mapped[bool] = mapped_column(default=False, nullable=False)
    # Part of the session cookie's identity: bumping it ends every session at once.
    session_version: Mapped[int] = mapped_column(default=1, nullable=False)
    quota_bytes: Mapped[int] = mapped_column(BigInteger, default=DEFAULT_QUOTA_BYTES, nullable=False)
    used_bytes: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    organization: Mapped[Organization] = relationship()

    def get_id(self) -> str:
        """Flask-Login identity: id and session version, so old cookies stop working."""
        return f"{self.id}:{self.session_version}"

    @property
    def is_active(self) -> bool:
        """Disabled users cannot log in or keep a session."""
        return not self.is_disabled
