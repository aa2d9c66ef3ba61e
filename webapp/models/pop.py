"""POP accounts, their fetch state, UIDL ledger and journal."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Float, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from webapp.extensions import db
from webapp.models._types import UTCDateTime, utcnow
from webapp.models.mail import MailAccount

POP_STATES = ("active", "disabled", "paused")
POP_SECURITY = ("ssl", "starttls", "none")
LEDGER_STATES = ("stored", "skipped", "quarantined")


class PopAccount(db.Model):
    """An external mailbox fetched by POP3 into one MailAccount(kind="pop") of a user."""

    __tablename__ = "pop_account"
    __table_args__ = (
        # The scheduler's sweep: accounts in a fetchable state whose next fetch is due.
        Index("ix_pop_account_due", "state", "next_fetch_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organization.id", ondelete="CASCADE"),
                                        nullable=False, index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"),
                                         nullable=False, index=True)
    mail_account_id: Mapped[int] = mapped_column(
        ForeignKey("mail_account.id", ondelete="CASCADE"), nullable=False, unique=True)

    host: Mapped[str] = mapped_column(String(255), nullable=False)
    port: Mapped[int] = mapped_column(nullable=False)
    security: Mapped[str] = mapped_column(String(16), nullable=False)
    username: Mapped[str] = mapped_column(String(320), nullable=False)
    # Fernet token under MAIL_SECRET_KEYS; never shown back, never logged.
    password_encrypted: Mapped[str] = mapped_column(Text, nullable=False)
    delete_from_server: Mapped[bool] = mapped_column(default=False, nullable=False)
    new_only: Mapped[bool] = mapped_column(default=False, nullable=False)
    # "From now on" whose baseline (UIDLs present at creation) could not be read yet: the
    # first successful session records it instead of fetching.
    baseline_pending: Mapped[bool] = mapped_column(default=False, nullable=False)
    batch_size: Mapped[int] = mapped_column(default=1000, nullable=False)  # DEFAULT_BATCH_SIZE
    interval_seconds: Mapped[int] = mapped_column(default=300, nullable=False)

    state: Mapped[str] = mapped_column(String(16), default="active", nullable=False)
    # Why the state is not active: auth_failures, connection_failures, storage_full, admin.
    state_reason: Mapped[str] = mapped_column(String(32), default="", nullable=False)
    auth_failures: Mapped[int] = mapped_column(default=0, nullable=False)
    connection_failures: Mapped[int] = mapped_column(default=0, nullable=False)
    last_error_kind: Mapped[str] = mapped_column(String(32), default="", nullable=False)
    last_error: Mapped[str] = mapped_column(Text, default="", nullable=False)
    last_error_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_fetch_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    next_fetch_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    # Progress as of the last batch (live numbers during a batch are in Redis).
    server_messages: Mapped[int] = mapped_column(default=0, nullable=False)
    messages_fetched: Mapped[int] = mapped_column(default=0, nullable=False)
    messages_left: Mapped[int] = mapped_column(default=0, nullable=False)
    messages_skipped: Mapped[int] = mapped_column(default=0, nullable=False)
    messages_quarantined: Mapped[int] = mapped_column(default=0, nullable=False)
    rate_per_second: Mapped[float] = mapped_column(Float, default=0.0, nullable=False)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow,
                                                 nullable=False)

    mail_account: Mapped[MailAccount] = relationship()

    @property
    def email(self) -> str:
        """The address this account fetches for."""
        return self.mail_account.email

    @property
    def is_gmail_recent(self) -> bool:
        """Gmail's "recent:" username: the last 30 days in every session, sent mail too."""
        return self.username.lower().startswith("recent:")


class PopUidl(db.Model):
    """The ledger: every UIDL the account has dealt with, committed with its message."""

    __tablename__ = "pop_uidl"
    __table_args__ = (UniqueConstraint("account_id", "uidl", name="uq_pop_uidl_account_uidl"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("pop_account.id", ondelete="CASCADE"),
                                            nullable=False)
    uidl: Mapped[str] = mapped_column(String(255), nullable=False)
    message_pk: Mapped[int | None] = mapped_column(
        ForeignKey("message.id", ondelete="SET NULL"), nullable=True, index=True)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    reason: Mapped[str] = mapped_column(String(500), default="", nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class PopFetchRun(db.Model):
    """The journal: one row per fetch run of an account."""

    __tablename__ = "pop_fetch_run"
    __table_args__ = (Index("ix_pop_fetch_run_account_started", "account_id", "started_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("pop_account.id", ondelete="CASCADE"),
                                            nullable=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    fetched: Mapped[int] = mapped_column(default=0, nullable=False)
    skipped: Mapped[int] = mapped_column(default=0, nullable=False)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    error_kind: Mapped[str] = mapped_column(String(32), default="", nullable=False)
