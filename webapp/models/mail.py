"""The mail core: accounts, folders, messages, their addresses and raw blobs."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from webapp.extensions import db
from webapp.models._types import UTCDateTime, utcnow

ACCOUNT_KINDS = ("hosted", "pop")
SYSTEM_FOLDERS = (  # role, name, position
    ("inbox", "Inbox", 0),
    ("drafts", "Drafts", 1),
    ("sent", "Sent", 2),
    ("spam", "Spam", 3),
    ("trash", "Trash", 4),
)
ADDRESS_ROLES = ("from", "sender", "reply_to", "to", "cc", "bcc")


class MailAccount(db.Model):
    """A mailbox source of a user: the hosted address, or an external POP account."""

    __tablename__ = "mail_account"
    __table_args__ = (UniqueConstraint("user_id", "email", name="uq_mail_account_user_email"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organization.id", ondelete="CASCADE"),
                                        nullable=False, index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"),
                                         nullable=False, index=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    email: Mapped[str] = mapped_column(String(320), nullable=False)
    display_name: Mapped[str] = mapped_column(String(200), default="", nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class Folder(db.Model):
    """A folder of a user's mailbox; system folders carry a role."""

    __tablename__ = "folder"
    __table_args__ = (
        UniqueConstraint("user_id", "name", name="uq_folder_user_name"),
        Index("ix_folder_user_role", "user_id", "role"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), nullable=False)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    role: Mapped[str | None] = mapped_column(String(16), nullable=True)
    position: Mapped[int] = mapped_column(default=100, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class Blob(db.Model):
    """A raw message stored once by content hash, with the number of messages using it."""

    __tablename__ = "blob"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    refcount: Mapped[int] = mapped_column(default=0, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    # Where the bytes are: a file of its own (both None), or ``size`` bytes at ``pack_offset``
    # of a pack file that holds a delivered batch (blobs.LocalBlobStore.write_pack).
    pack: Mapped[str | None] = mapped_column(String(80), index=True)
    pack_offset: Mapped[int | None] = mapped_column(BigInteger)


class Message(db.Model):
    """One stored message: where it is, what the list shows, and how it arrived."""

    __tablename__ = "message"
    __table_args__ = (
        # The source key (POP UIDL, inbound queue id) makes a retried delivery a no-op.
        UniqueConstraint("account_id", "source_key", name="uq_message_account_source"),
        # Keyset pagination of a folder, newest first.
        Index("ix_message_folder_listing", "folder_id", "sort_date", "id"),
        Index("ix_message_user_message_id", "user_id", "message_id"),
        # Unread counts per folder read only the unread index entries, whatever the size.
        Index("ix_message_folder_unread", "folder_id", "is_read"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"),
                                         nullable=False, index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("mail_account.id", ondelete="CASCADE"),
                                            nullable=False, index=True)
    folder_id: Mapped[int] = mapped_column(ForeignKey("folder.id"), nullable=False)
    blob_sha256: Mapped[str] = mapped_column(ForeignKey("blob.sha256"), nullable=False, index=True)
    source_key: Mapped[str] = mapped_column(String(255), nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    message_id: Mapped[str] = mapped_column(String(998), nullable=False)
    in_reply_to: Mapped[str] = mapped_column(String(998), default="", nullable=False)
    references: Mapped[str] = mapped_column(Text, default="", nullable=False)
    subject: Mapped[str] = mapped_column(Text, default="", nullable=False)
    from_name: Mapped[str] = mapped_column(String(320), default="", nullable=False)
    from_email: Mapped[str] = mapped_column(String(320), default="", nullable=False)
    snippet: Mapped[str] = mapped_column(String(300), default="", nullable=False)
    date: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    # The date the list sorts on: the header date when sane, else the arrival time.
    sort_date: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    is_read: Mapped[bool] = mapped_column(default=False, nullable=False)
    is_flagged: Mapped[bool] = mapped_column(default=False, nullable=False)
    has_attachments: Mapped[bool] = mapped_column(default=False, nullable=False)
    parse_defects: Mapped[str] = mapped_column(Text, default="", nullable=False)
    indexed: Mapped[bool] = mapped_column(default=False, nullable=False)

    folder: Mapped[Folder] = relationship()
    account: Mapped[MailAccount] = relationship()
    addresses: Mapped[list["MessageAddress"]] = relationship(
        back_populates="message", cascade="all, delete-orphan", passive_deletes=True)


class MessageAddress(db.Model):
    """An address of a message with its role, normalized (lowercase) for linking."""

    __tablename__ = "message_address"
    __table_args__ = (Index("ix_message_address_user_email", "user_id", "email"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    message_pk: Mapped[int] = mapped_column(ForeignKey("message.id", ondelete="CASCADE"),
                                            nullable=False, index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), nullable=False)
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    email: Mapped[str] = mapped_column(String(320), nullable=False)
    name: Mapped[str] = mapped_column(String(320), default="", nullable=False)
    ambiguous: Mapped[bool] = mapped_column(default=False, nullable=False)

    message: Mapped[Message] = relationship(back_populates="addresses")


class MessageText(db.Model):
    """The searchable text of a message (subject, addresses, body), built by the index job.

    Full-text indexes over it are dialect-specific and live in the migrations only:
    SQLite FTS5 `message_fts` (kept in step by triggers), PostgreSQL GIN `ix_message_text_fts`.
    """

    __tablename__ = "message_text"

    message_pk: Mapped[int] = mapped_column(ForeignKey("message.id", ondelete="CASCADE"),
                                            primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"),
                                         nullable=False, index=True)
    body: Mapped[str] = mapped_column(Text, default="", nullable=False)
