"""CRM records and their activities; correspondence is a query, not a copy.

No table here refers to messages except `Activity.message_id` (a note taken from a message):
which messages belong to a record is computed from `message_address` at read time
(webapp/services/correspondence.py), so delivery never touches these tables.
"""
from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import CheckConstraint, Date, ForeignKey, Index, Numeric, String, Text, \
    UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from webapp.extensions import db
from webapp.models._types import UTCDateTime, utcnow

LEAD_STATUSES = ("new", "contacted", "qualified", "unqualified", "converted")
POTENTIAL_STAGES = ("prospecting", "qualification", "proposal", "negotiation",
                    "closed_won", "closed_lost")
CLOSED_STAGES = ("closed_won", "closed_lost")
ACTIVITY_KINDS = ("task", "event", "note")
TASK_STATUSES = ("open", "done")
ADDON_SERVICES = ("crm", "recruit")


class Contact(db.Model):
    """A person the organization deals with; their addresses live in ContactEmail."""

    __tablename__ = "crm_contact"
    __table_args__ = (Index("ix_crm_contact_org_owner_name", "org_id", "owner_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organization.id", ondelete="CASCADE"),
                                        nullable=False)
    owner_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"),
                                          nullable=False, index=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    phone: Mapped[str] = mapped_column(String(64), default="", nullable=False)
    company: Mapped[str] = mapped_column(String(200), default="", nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow,
                                                 nullable=False)

    emails: Mapped[list["ContactEmail"]] = relationship(
        back_populates="contact", cascade="all, delete-orphan", passive_deletes=True,
        order_by="ContactEmail.position")

    @property
    def addresses(self) -> list[str]:
        """The contact's normalized addresses, first (primary) first."""
        return [e.email for e in self.emails]


class ContactEmail(db.Model):
    """One normalized address of a contact; indexed to find a record from a message."""

    __tablename__ = "crm_contact_email"
    __table_args__ = (
        UniqueConstraint("contact_id", "email", name="uq_crm_contact_email_contact_email"),
        # The gadget panel and "also on" notes look records up by address within the org.
        Index("ix_crm_contact_email_org_email", "org_id", "email"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organization.id", ondelete="CASCADE"),
                                        nullable=False)
    contact_id: Mapped[int] = mapped_column(ForeignKey("crm_contact.id", ondelete="CASCADE"),
                                            nullable=False)
    email: Mapped[str] = mapped_column(String(320), nullable=False)
    position: Mapped[int] = mapped_column(default=0, nullable=False)

    contact: Mapped[Contact] = relationship(back_populates="emails")


class Lead(db.Model):
    """A prospective customer not yet qualified; converts into a contact."""

    __tablename__ = "crm_lead"
    __table_args__ = (
        Index("ix_crm_lead_org_email", "org_id", "email"),
        Index("ix_crm_lead_org_owner_name", "org_id", "owner_id", "name"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organization.id", ondelete="CASCADE"),
                                        nullable=False)
    owner_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"),
                                          nullable=False, index=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    email: Mapped[str] = mapped_column(String(320), default="", nullable=False)
    phone: Mapped[str] = mapped_column(String(64), default="", nullable=False)
    company: Mapped[str] = mapped_column(String(200), default="", nullable=False)
    status: Mapped[str] = mapped_column(String(32), default="new", nullable=False)
    source: Mapped[str] = mapped_column(String(100), default="", nullable=False)
    converted_contact_id: Mapped[int | None] = mapped_column(
        ForeignKey("crm_contact.id", ondelete="SET NULL"), nullable=True)
    converted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow,
                                                 nullable=False)

    converted_contact: Mapped[Contact | None] = relationship()

    @property
    def addresses(self) -> list[str]:
        """The lead's normalized address as a list (empty when it has none)."""
        return [self.email] if self.email else []


class Potential(db.Model):
    """A deal: an amount at a stage, expected to close on a date, with a contact."""

    __tablename__ = "crm_potential"
    __table_args__ = (Index("ix_crm_potential_org_owner_name", "org_id", "owner_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organization.id", ondelete="CASCADE"),
                                        nullable=False)
    owner_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"),
                                          nullable=False, index=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    amount: Mapped[Decimal | None] = mapped_column(Numeric(14, 2), nullable=True)
    stage: Mapped[str] = mapped_column(String(32), default="prospecting", nullable=False)
    closing_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    contact_id: Mapped[int | None] = mapped_column(
        ForeignKey("crm_contact.id", ondelete="SET NULL"), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow,
                                                 nullable=False)

    contact: Mapped[Contact | None] = relationship()

    @property
    def addresses(self) -> list[str]:
        """A potential's mail is its contact's mail."""
        return self.contact.addresses if self.contact else []


class Activity(db.Model):
    """A task, event or note on exactly one record, optionally taken from a message."""

    __tablename__ = "crm_activity"
    __table_args__ = (
        CheckConstraint(
            "(CASE WHEN contact_id IS NULL THEN 0 ELSE 1 END)"
            " + (CASE WHEN lead_id IS NULL THEN 0 ELSE 1 END)"
            " + (CASE WHEN potential_id IS NULL THEN 0 ELSE 1 END) = 1",
            name="one_record"),
        CheckConstraint("kind IN ('task', 'event', 'note')", name="kind"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organization.id", ondelete="CASCADE"),
                                        nullable=False, index=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"),
                                          nullable=False, index=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    title: Mapped[str] = mapped_column(String(300), nullable=False)
    notes: Mapped[str] = mapped_column(Text, default="", nullable=False)
    due_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="open", nullable=False)
    starts_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    contact_id: Mapped[int | None] = mapped_column(
        ForeignKey("crm_contact.id", ondelete="CASCADE"), nullable=True, index=True)
    lead_id: Mapped[int | None] = mapped_column(
        ForeignKey("crm_lead.id", ondelete="CASCADE"), nullable=True, index=True)
    potential_id: Mapped[int | None] = mapped_column(
        ForeignKey("crm_potential.id", ondelete="CASCADE"), nullable=True, index=True)
    # The message the activity was taken from; the message may be deleted, the note stays.
    message_id: Mapped[int | None] = mapped_column(
        ForeignKey("message.id", ondelete="SET NULL"), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class AddonAccount(db.Model):
    """Which of a user's mail accounts feeds an add-on ("crm" or "recruit")."""

    __tablename__ = "addon_account"
    __table_args__ = (UniqueConstraint("user_id", "service", name="uq_addon_account_user_service"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organization.id", ondelete="CASCADE"),
                                        nullable=False, index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"),
                                         nullable=False)
    service: Mapped[str] = mapped_column(String(16), nullable=False)
    # Deleting the account removes the choice; the user's hosted account feeds again.
    account_id: Mapped[int] = mapped_column(ForeignKey("mail_account.id", ondelete="CASCADE"),
                                            nullable=False, index=True)


class TrackingExclusion(db.Model):
    """An address or a whole domain whose mail a user never wants tracked on records.

    Per user, because correspondence is read from one user's mailbox: the mailbox owner
    decides what of it shows on their records (a private address, a bank, their own colleagues).
    """

    __tablename__ = "tracking_exclusion"
    __table_args__ = (UniqueConstraint("user_id", "value",
                                       name="uq_tracking_exclusion_user_value"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organization.id", ondelete="CASCADE"),
                                        nullable=False, index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"),
                                         nullable=False)
    # A normalized address ("a@b.example") or a domain ("b.example"): an "@" tells them apart.
    value: Mapped[str] = mapped_column(String(320), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
