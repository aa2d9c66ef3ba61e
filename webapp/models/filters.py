"""Mail filters: conditions and actions run on every incoming message.

Conditions and actions are child rows rather than a JSON column: the move action's folder
is a real foreign key (ON DELETE SET NULL), so deleting a folder can never leave a filter
pointing at another user's folder id, and a NULL folder tells delivery at once that the
target is gone (the filter is then disabled and the message stays in the Inbox).
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from webapp.extensions import db
from webapp.models._types import UTCDateTime, utcnow

CONDITION_FIELDS = ("from", "to", "cc", "to_or_cc", "subject", "body", "header")
CONDITION_OPERATORS = ("contains", "not_contains", "is", "starts_with", "ends_with", "regex")
ACTION_KINDS = ("move", "mark_read", "flag", "label", "trash", "forward", "stop")
RUN_STATES = ("queued", "running", "done", "failed")


class Filter(db.Model):
    """One filter of a user: conditions matched all/any, then its actions, in list order."""

    __tablename__ = "mail_filter"
    __table_args__ = (Index("ix_mail_filter_user_position", "user_id", "position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organization.id", ondelete="CASCADE"),
                                        nullable=False, index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"),
                                         nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    enabled: Mapped[bool] = mapped_column(default=True, nullable=False)
    position: Mapped[int] = mapped_column(default=0, nullable=False)
    match_all: Mapped[bool] = mapped_column(default=True, nullable=False)
    # Why the filter was turned off by the system (e.g. its folder was deleted); shown to the user.
    notice: Mapped[str] = mapped_column(String(500), default="", nullable=False)
    regex_timeouts: Mapped[int] = mapped_column(default=0, nullable=False)
    last_regex_timeout_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)

    conditions: Mapped[list["FilterCondition"]] = relationship(
        back_populates="filter", cascade="all, delete-orphan", passive_deletes=True,
        order_by="FilterCondition.position")
    actions: Mapped[list["FilterAction"]] = relationship(
        back_populates="filter", cascade="all, delete-orphan", passive_deletes=True,
        order_by="FilterAction.position")


class FilterCondition(db.Model):
    """One test on a message: field (or named header), operator, value."""

    __tablename__ = "mail_filter_condition"

    id: Mapped[int] = mapped_column(primary_key=True)
    filter_id: Mapped[int] = mapped_column(ForeignKey("mail_filter.id", ondelete="CASCADE"),
                                           nullable=False, index=True)
    position: Mapped[int] = mapped_column(default=0, nullable=False)
    field: Mapped[str] = mapped_column(String(16), nullable=False)
    header_name: Mapped[str] = mapped_column(String(100), default="", nullable=False)
    operator: Mapped[str] = mapped_column(String(16), nullable=False)
    value: Mapped[str] = mapped_column(String(1000), nullable=False)
    case_sensitive: Mapped[bool] = mapped_column(default=False, nullable=False)

    filter: Mapped[Filter] = relationship(back_populates="conditions")


class FilterAction(db.Model):
    """One thing a filter does; `argument` holds the label name or the forward address."""

    __tablename__ = "mail_filter_action"

    id: Mapped[int] = mapped_column(primary_key=True)
    filter_id: Mapped[int] = mapped_column(ForeignKey("mail_filter.id", ondelete="CASCADE"),
                                           nullable=False, index=True)
    position: Mapped[int] = mapped_column(default=0, nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    # SET NULL: a deleted folder leaves a visible hole that delivery turns into a notice.
    folder_id: Mapped[int | None] = mapped_column(
        ForeignKey("folder.id", ondelete="SET NULL"), nullable=True, index=True)
    argument: Mapped[str] = mapped_column(String(320), default="", nullable=False)

    filter: Mapped[Filter] = relationship(back_populates="actions")


class Label(db.Model):
    """A user's label; a message may carry several."""

    __tablename__ = "mail_label"
    __table_args__ = (UniqueConstraint("user_id", "name", name="uq_mail_label_user_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"),
                                         nullable=False)
    name: Mapped[str] = mapped_column(String(100), nullable=False)


class MessageLabel(db.Model):
    """A label on a message."""

    __tablename__ = "mail_message_label"

    message_pk: Mapped[int] = mapped_column(ForeignKey("message.id", ondelete="CASCADE"),
                                            primary_key=True)
    label_id: Mapped[int] = mapped_column(ForeignKey("mail_label.id", ondelete="CASCADE"),
                                          primary_key=True, index=True)


class MessageFilterHit(db.Model):
    """Which filter placed a message; the name is kept so it reads well after a delete."""

    __tablename__ = "mail_message_filter_hit"

    message_pk: Mapped[int] = mapped_column(ForeignKey("message.id", ondelete="CASCADE"),
                                            primary_key=True)
    filter_id: Mapped[int | None] = mapped_column(
        ForeignKey("mail_filter.id", ondelete="SET NULL"), nullable=True, index=True)
    filter_name: Mapped[str] = mapped_column(String(200), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class FilterRun(db.Model):
    """One "apply to existing messages" run of a filter, with its progress."""

    __tablename__ = "mail_filter_run"
    __table_args__ = (Index("ix_mail_filter_run_filter_created", "filter_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"),
                                         nullable=False, index=True)
    filter_id: Mapped[int] = mapped_column(ForeignKey("mail_filter.id", ondelete="CASCADE"),
                                           nullable=False)
    state: Mapped[str] = mapped_column(String(16), default="queued", nullable=False)
    total: Mapped[int] = mapped_column(default=0, nullable=False)
    done: Mapped[int] = mapped_column(default=0, nullable=False)
    matched: Mapped[int] = mapped_column(default=0, nullable=False)
    error: Mapped[str] = mapped_column(Text, default="", nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
