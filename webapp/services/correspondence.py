"""A record's correspondence: a query over indexed message addresses, never a copy.

The mail shown on a contact, lead or potential is the record owner's add-on account's
messages whose normalized addresses match the record's addresses. Direction comes from the
folder at read time: *sent* in the Sent folder, *received* anywhere else except Trash, Spam
and Drafts (deleted mail, junk and unsent drafts are not conversations). So moving a message
into Sent flips it at once, a contact created today shows last year's mail, and editing an
address re-links immediately. Addresses the owner excluded (or whose domain they excluded)
are left out of the match.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from webapp.models import Folder, Message, MessageAddress
from webapp.models.crm import Contact, Lead, Potential
from webapp.services import crm
from webapp.services.addon import get_addon_account

# Not a conversation: deleted, junk, or never sent.
UNTRACKED_FOLDER_ROLES = ("trash", "spam", "drafts")
PAGE_SIZE = 50
_CURSOR_FORMAT = "%Y%m%dT%H%M%S.%f"


@dataclass
class Correspondence:
    """One message of a record's timeline."""

    message_pk: int
    subject: str
    sort_date: datetime
    from_name: str
    from_email: str
    folder_name: str
    direction: str  # "sent" or "received"
    matched: list[str] = field(default_factory=list)
    also_on: list[crm.Record] = field(default_factory=list)


@dataclass
class CorrespondencePage:
    """A page of correspondence, newest first, and the cursor of the next page (or None)."""

    items: list[Correspondence]
    next_cursor: str | None
    addresses: list[str]
    account_email: str | None


def tracked_addresses(session: Session, record: crm.Record) -> list[str]:
    """The record's addresses minus those its owner excluded from tracking."""
    excluded = [row.value for row in crm.exclusions_of(session, record.owner_id)]
    return [a for a in record.addresses if a and not crm.is_excluded(a, excluded)]


def encode_cursor(sort_date: datetime, message_pk: int) -> str:
    """The keyset position after which the next page starts."""
    return f"{sort_date.astimezone(timezone.utc).strftime(_CURSOR_FORMAT)}_{message_pk}"


def decode_cursor(cursor: str | None) -> tuple[datetime, int] | None:
    """Read a cursor from a URL; a malformed one means the first page."""
    try:
        stamp, pk = (cursor or "").split("_", 1)
        return datetime.strptime(stamp, _CURSOR_FORMAT).replace(tzinfo=timezone.utc), int(pk)
    except ValueError:
        return None


def correspondence_for(session: Session, viewer: crm.Viewer, record: crm.Record, *,
                       cursor: str | None = None, limit: int = PAGE_SIZE) -> CorrespondencePage:
    """One page of the record's correspondence from its owner's add-on account."""
    addresses = tracked_addresses(session, record)
    account = get_addon_account(session, record.owner_id, "crm")
    if not addresses or account is None:
        return CorrespondencePage([], None, addresses, account.email if account else None)

    # Driven by the (user_id, email) index: the few matching address rows first, then the
    # messages by primary key; the mailbox's size does not enter the cost.
    matched = (select(MessageAddress.message_pk)
               .where(MessageAddress.user_id == record.owner_id,
                      MessageAddress.email.in_(addresses))
               .distinct().subquery())
    stmt = (select(Message.id, Message.subject, Message.sort_date, Message.from_name,
                   Message.from_email, Folder.name, Folder.role)
            .select_from(matched)
            .join(Message, Message.id == matched.c.message_pk)
            .join(Folder, Folder.id == Message.folder_id)
            .where(Message.account_id == account.id,
                   or_(Folder.role.is_(None), Folder.role.notin_(UNTRACKED_FOLDER_ROLES))))
    position = decode_cursor(cursor)
    if position is not None:
        after_date, after_pk = position
        stmt = stmt.where(or_(Message.sort_date < after_date,
                              and_(Message.sort_date == after_date, Message.id < after_pk)))
    rows = session.execute(stmt.order_by(Message.sort_date.desc(), Message.id.desc())
                           .limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    items = [Correspondence(message_pk=r[0], subject=r[1], sort_date=r[2], from_name=r[3],
                            from_email=r[4], folder_name=r[5],
                            direction="sent" if r[6] == "sent" else "received")
             for r in rows]
    _annotate(session, viewer, record, items, addresses)
    next_cursor = encode_cursor(items[-1].sort_date, items[-1].message_pk) if more else None
    return CorrespondencePage(items, next_cursor, addresses, account.email)


def _annotate(session: Session, viewer: crm.Viewer, record: crm.Record,
              items: list[Correspondence], addresses: list[str]) -> None:
    """Which of the record's addresses each message matched, and other records carrying them."""
    if not items:
        return
    by_pk = {item.message_pk: item for item in items}
    for message_pk, email in session.execute(
            select(MessageAddress.message_pk, MessageAddress.email)
            .where(MessageAddress.message_pk.in_(by_pk), MessageAddress.email.in_(addresses))
            .distinct()):
        if email not in by_pk[message_pk].matched:
            by_pk[message_pk].matched.append(email)
    others = also_on(session, viewer, record, addresses)
    for item in items:
        seen: list[crm.Record] = []
        for email in item.matched:
            for other in others.get(email, []):
                if other not in seen:
                    seen.append(other)
        item.also_on = seen


def also_on(session: Session, viewer: crm.Viewer, record: crm.Record,
            addresses: list[str]) -> dict[str, list[crm.Record]]:
    """For each address, the other contacts and open leads (visible to the viewer) carrying it."""
    found = crm.records_by_address(session, viewer, addresses)
    exclude_contact = record.contact_id if isinstance(record, Potential) else None
    result: dict[str, list[crm.Record]] = {}
    for email, records in found.items():
        result[email] = [r for r in records
                         if not (type(r) is type(record) and r.id == record.id)
                         and not (isinstance(r, Contact) and r.id == exclude_contact)
                         and not (isinstance(record, Lead) and isinstance(r, Contact)
                                  and r.id == record.converted_contact_id)]
    return result
