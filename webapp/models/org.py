"""Organizations, their hosted domains, IP rules and the audit log."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from webapp.extensions import db
from webapp.models._types import UTCDateTime, utcnow


class Organization(db.Model):
    """A customer organization: users, domains, relay settings and rules."""

    __tablename__ = "organization"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)

    domains: Mapped[list["Domain"]] = relationship(back_populates="organization",
                                                   cascade="all, delete-orphan",
                                                   order_by="Domain.id")

    @property
    def primary_domain(self) -> "Domain | None":
        """The domain new users get their hosted address on."""
        for domain in self.domains:
            if domain.is_primary:
                return domain
        return self.domains[0] if self.domains else None


class Domain(db.Model):
    """A mail domain hosted for one organization (lowercase, IDNA as typed)."""

    __tablename__ = "domain"

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organization.id", ondelete="CASCADE"),
                                        nullable=False, index=True)
    name: Mapped[str] = mapped_column(String(253), nullable=False, unique=True)
    is_primary: Mapped[bool] = mapped_column(default=False, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)

    organization: Mapped[Organization] = relationship(back_populates="domains")


class IpRule(db.Model):
    """One allowed network (IPv4 or IPv6, CIDR) of an organization's IP restriction."""

    __tablename__ = "ip_rule"

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organization.id", ondelete="CASCADE"),
                                        nullable=False, index=True)
    network: Mapped[str] = mapped_column(String(64), nullable=False)
    note: Mapped[str] = mapped_column(String(200), default="", nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class AuditEvent(db.Model):
    """Something an admin or the system did that someone may need to trace later."""

    __tablename__ = "audit_event"
    __table_args__ = (Index("ix_audit_event_org_created", "org_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int | None] = mapped_column(ForeignKey("organization.id", ondelete="CASCADE"),
                                               nullable=True)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("user.id", ondelete="SET NULL"),
                                                 nullable=True)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    target: Mapped[str] = mapped_column(String(255), default="", nullable=False)
    detail: Mapped[str] = mapped_column(Text, default="", nullable=False)
    ip: Mapped[str] = mapped_column(String(64), default="", nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
