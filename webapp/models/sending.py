"""Send Mail As identities, the organization relay and the outbox."""
from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (JSON, BigInteger, Date, ForeignKey, Index, String, Text,
                        UniqueConstraint)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from webapp.extensions import db
from webapp.models._types import UTCDateTime, utcnow

TRANSPORTS = ("relay", "smtp")
SECURITIES = ("ssl", "starttls", "none")
# queued → sending → sent; sending → retry-wait → sending …; failed, uncertain and
# cancelled are final until the user presses Retry.
OUTGOING_STATES = ("queued", "sending", "sent", "retry-wait", "failed", "uncertain", "cancelled")
# Who the relay names in MAIL FROM: the user's hosted address (bounces reach the user and
# SPF passes for the hosted domain), the From address itself, or one fixed address.
ENVELOPE_POLICIES = ("hosted", "from", "fixed")
RECIPIENT_STATES = ("pending", "accepted", "refused", "deferred")


class SendIdentity(db.Model):
    """An address a user may send as (Send Mail As): the hosted one, or a proven external one."""

    __tablename__ = "send_identity"
    __table_args__ = (UniqueConstraint("user_id", "email", name="uq_send_identity_user_email"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organization.id", ondelete="CASCADE"),
                                        nullable=False, index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"),
                                         nullable=False, index=True)
    email: Mapped[str] = mapped_column(String(320), nullable=False)
    display_name: Mapped[str] = mapped_column(String(200), default="", nullable=False)
    reply_to: Mapped[str] = mapped_column(String(320), default="", nullable=False)
    is_hosted: Mapped[bool] = mapped_column(default=False, nullable=False)
    is_verified: Mapped[bool] = mapped_column(default=False, nullable=False)
    # Only a hash of the emailed token is kept: a database reader cannot confirm addresses.
    verify_token_hash: Mapped[str] = mapped_column(String(64), default="", nullable=False)
    verify_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    verify_attempts: Mapped[int] = mapped_column(default=0, nullable=False)
    transport: Mapped[str] = mapped_column(String(8), default="relay", nullable=False)
    smtp_host: Mapped[str] = mapped_column(String(253), default="", nullable=False)
    smtp_port: Mapped[int] = mapped_column(default=587, nullable=False)
    smtp_security: Mapped[str] = mapped_column(String(8), default="starttls", nullable=False)
    smtp_username: Mapped[str] = mapped_column(String(320), default="", nullable=False)
    smtp_password_encrypted: Mapped[str] = mapped_column(Text, default="", nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class OrgRelay(db.Model):
    """The organization's outgoing relay (smarthost) and its daily sending limits."""

    __tablename__ = "org_relay"

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organization.id", ondelete="CASCADE"),
                                        nullable=False, unique=True)
    host: Mapped[str] = mapped_column(String(253), default="", nullable=False)
    port: Mapped[int] = mapped_column(default=587, nullable=False)
    security: Mapped[str] = mapped_column(String(8), default="starttls", nullable=False)
    username: Mapped[str] = mapped_column(String(320), default="", nullable=False)
    password_encrypted: Mapped[str] = mapped_column(Text, default="", nullable=False)
    envelope_policy: Mapped[str] = mapped_column(String(8), default="hosted", nullable=False)
    envelope_sender: Mapped[str] = mapped_column(String(320), default="", nullable=False)
    # 0 means no limit.
    daily_limit_user: Mapped[int] = mapped_column(default=500, nullable=False)
    daily_limit_org: Mapped[int] = mapped_column(default=5000, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class OutgoingMessage(db.Model):
    """One message to send: its exact bytes, where it stands, and what the server said."""

    __tablename__ = "outgoing_message"
    __table_args__ = (
        # The outbox page, newest first.
        Index("ix_outgoing_message_user_created", "user_id", "created_at"),
        # The sweep: due retries and stale claims.
        Index("ix_outgoing_message_state_next", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organization.id", ondelete="CASCADE"),
                                        nullable=False, index=True)
    # None for system mail (password resets) that no user sends.
    user_id: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"),
                                                nullable=True)
    identity_id: Mapped[int | None] = mapped_column(
        ForeignKey("send_identity.id", ondelete="SET NULL"), nullable=True, index=True)
    kind: Mapped[str] = mapped_column(String(12), default="compose", nullable=False)
    transport: Mapped[str] = mapped_column(String(8), default="relay", nullable=False)
    state: Mapped[str] = mapped_column(String(12), default="queued", nullable=False)
    message_id: Mapped[str] = mapped_column(String(998), nullable=False)
    # Not a foreign key: the row gives its reference to the bytes up once the message is
    # sent for good or cancelled (blobs.drop_references), and the bytes may then be
    # collected while the row stays, as the record of what was sent.
    blob_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    subject: Mapped[str] = mapped_column(Text, default="", nullable=False)
    from_email: Mapped[str] = mapped_column(String(320), default="", nullable=False)
    envelope_from: Mapped[str] = mapped_column(String(320), default="", nullable=False)
    file_in_sent: Mapped[bool] = mapped_column(default=True, nullable=False)
    counted: Mapped[bool] = mapped_column(default=False, nullable=False)
    attempts: Mapped[int] = mapped_column(default=0, nullable=False)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # A claim ("sending") older than this was abandoned by a dead worker. On a message no
    # longer "sending", a lease means its Sent copy is still owed (filed after its group).
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error_kind: Mapped[str] = mapped_column(String(16), default="", nullable=False)
    last_error_code: Mapped[int | None] = mapped_column(nullable=True)
    last_error_text: Mapped[str] = mapped_column(Text, default="", nullable=False)
    last_error_message: Mapped[str] = mapped_column(Text, default="", nullable=False)
    sent_message_pk: Mapped[int | None] = mapped_column(
        ForeignKey("message.id", ondelete="SET NULL"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # What filing the Sent copy needs from the header block (mime.envelope_as_json), read
    # once when queued: the worker files a group's copies without parsing each again. None
    # (SQL NULL) when no copy is filed, once it is, and on rows queued before the column
    # (their bytes are parsed). Deferred: the Outbox page has no use for it.
    sent_envelope: Mapped[dict | None] = mapped_column(JSON(none_as_null=True), nullable=True,
                                                       deferred=True)

    recipients: Mapped[list["OutgoingRecipient"]] = relationship(
        back_populates="outgoing", cascade="all, delete-orphan", passive_deletes=True,
        order_by="OutgoingRecipient.id")


class OutgoingRecipient(db.Model):
    """One envelope recipient of an outgoing message and the server's answer for it."""

    __tablename__ = "outgoing_recipient"
    __table_args__ = (
        UniqueConstraint("outgoing_id", "address", name="uq_outgoing_recipient_outgoing_address"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    outgoing_id: Mapped[int] = mapped_column(
        ForeignKey("outgoing_message.id", ondelete="CASCADE"), nullable=False)
    address: Mapped[str] = mapped_column(String(320), nullable=False)
    state: Mapped[str] = mapped_column(String(10), default="pending", nullable=False)
    code: Mapped[int | None] = mapped_column(nullable=True)
    text: Mapped[str] = mapped_column(Text, default="", nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)

    outgoing: Mapped[OutgoingMessage] = relationship(back_populates="recipients")


class SendCounter(db.Model):
    """Messages sent through the relay by one user (scope "user") or org ("org") on one UTC day."""

    __tablename__ = "send_counter"

    scope: Mapped[str] = mapped_column(String(4), primary_key=True)
    scope_id: Mapped[int] = mapped_column(primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    count: Mapped[int] = mapped_column(default=0, nullable=False)
