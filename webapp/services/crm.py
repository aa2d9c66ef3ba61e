"""CRM rules: who sees which record, creating and changing records, activities, conversion.

Every lookup takes a `Viewer` and is scoped by its organization first, then by owner unless
the viewer is an organization admin; a record outside that scope is simply not found.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Iterable, Union

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import Select, delete, func, or_, select
from sqlalchemy.orm import Session, selectinload

from webapp.models import MailAccount, Message, User
from webapp.models._types import utcnow
from webapp.models.sending import SendIdentity
from webapp.models.crm import ACTIVITY_KINDS, CLOSED_STAGES, LEAD_STATUSES, POTENTIAL_STAGES, \
    TASK_STATUSES, Activity, Contact, ContactEmail, Lead, Potential, TrackingExclusion
from webapp.services.mime import normalize_address

Record = Union[Contact, Lead, Potential]
RECORD_MODELS: dict[str, type] = {"contact": Contact, "lead": Lead, "potential": Potential}
MAX_EMAILS_PER_CONTACT = 20


class CrmError(ValueError):
    """Bad CRM input; the message is shown to the user as is."""


@dataclass(frozen=True)
class Viewer:
    """Who is looking: their organization, their id and whether they administer it."""

    org_id: int
    user_id: int
    is_admin: bool = False

    @classmethod
    def of(cls, user: User) -> "Viewer":
        """The viewer for a logged-in user."""
        return cls(org_id=user.org_id, user_id=user.id, is_admin=bool(user.is_admin))


def record_kind(record: Record) -> str:
    """'contact', 'lead' or 'potential' for a record."""
    for kind, model in RECORD_MODELS.items():
        if isinstance(record, model):
            return kind
    raise TypeError(f"not a CRM record: {record!r}")


def scoped(stmt: Select, model: type, viewer: Viewer) -> Select:
    """Restrict a query to the viewer's organization, and to their own rows unless admin."""
    stmt = stmt.where(model.org_id == viewer.org_id)
    if not viewer.is_admin:
        stmt = stmt.where(model.owner_id == viewer.user_id)
    return stmt


def get_record(session: Session, viewer: Viewer, kind: str, record_id: int) -> Record | None:
    """A record the viewer may see, or None (the view answers 404)."""
    model = RECORD_MODELS.get(kind)
    if model is None:
        return None
    return session.scalar(scoped(select(model).where(model.id == record_id), model, viewer))


# --- addresses --------------------------------------------------------------------------

def parse_typed_address(text: str) -> str:
    """Check an address a person typed and return its normalized (linking) form."""
    text = (text or "").strip()
    try:
        validate_email(text, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        raise CrmError(f"{text!r} is not a valid email address: {exc}") from None
    normalized = normalize_address(text)
    if normalized is None:
        raise CrmError(f"{text!r} is not a valid email address.")
    return normalized


def parse_address_lines(text: str) -> list[str]:
    """Addresses typed one per line or separated by commas; normalized and deduplicated."""
    result: list[str] = []
    for part in (text or "").replace(",", "\n").replace(";", "\n").splitlines():
        if part.strip():
            address = parse_typed_address(part)
            if address not in result:
                result.append(address)
    if len(result) > MAX_EMAILS_PER_CONTACT:
        raise CrmError(f"A contact may have at most {MAX_EMAILS_PER_CONTACT} addresses.")
    return result


def _clean(value: str | None, limit: int) -> str:
    return (value or "").strip()[:limit]


def _require_name(name: str | None) -> str:
    name = _clean(name, 200)
    if not name:
        raise CrmError("A name is required.")
    return name


# --- contacts, leads, potentials --------------------------------------------------------

def set_contact_emails(session: Session, contact: Contact, emails: Iterable[str]) -> None:
    """Replace the contact's addresses (already normalized); linking follows at once."""
    wanted = list(dict.fromkeys(emails))
    existing = {row.email: row for row in contact.emails}
    contact.emails = [existing.get(email) or ContactEmail(org_id=contact.org_id, email=email)
                      for email in wanted]
    for position, row in enumerate(contact.emails):
        row.position = position
    session.flush()


def create_contact(session: Session, org_id: int, owner_id: int, *, name: str,
                   emails: Iterable[str] = (), phone: str = "", company: str = "") -> Contact:
    """Create a contact with its addresses (not committed)."""
    contact = Contact(org_id=org_id, owner_id=owner_id, name=_require_name(name),
                      phone=_clean(phone, 64), company=_clean(company, 200))
    session.add(contact)
    session.flush()
    set_contact_emails(session, contact, emails)
    return contact


def update_contact(session: Session, contact: Contact, *, name: str, emails: Iterable[str],
                   phone: str = "", company: str = "") -> None:
    """Change a contact; a changed address re-links its correspondence at once (not committed)."""
    contact.name = _require_name(name)
    contact.phone = _clean(phone, 64)
    contact.company = _clean(company, 200)
    set_contact_emails(session, contact, emails)


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise CrmError(f"Unknown {what} {value!r}.")
    return value


def create_lead(session: Session, org_id: int, owner_id: int, *, name: str, email: str = "",
                phone: str = "", company: str = "", status: str = "new",
                source: str = "") -> Lead:
    """Create a lead; `email` is already normalized or empty (not committed)."""
    lead = Lead(org_id=org_id, owner_id=owner_id, name=_require_name(name), email=email or "",
                phone=_clean(phone, 64), company=_clean(company, 200),
                status=_check_choice(status, LEAD_STATUSES, "lead status"),
                source=_clean(source, 100))
    session.add(lead)
    session.flush()
    return lead


def update_lead(session: Session, lead: Lead, *, name: str, email: str = "", phone: str = "",
                company: str = "", status: str = "new", source: str = "") -> None:
    """Change a lead (not committed)."""
    lead.name = _require_name(name)
    lead.email = email or ""
    lead.phone = _clean(phone, 64)
    lead.company = _clean(company, 200)
    lead.status = _check_choice(status, LEAD_STATUSES, "lead status")
    lead.source = _clean(source, 100)
    session.flush()


def _visible_contact(session: Session, viewer: Viewer, contact_id: int | None) -> int | None:
    if not contact_id:
        return None
    if get_record(session, viewer, "contact", contact_id) is None:
        raise CrmError("That contact does not exist or is not yours.")
    return contact_id


def create_potential(session: Session, viewer: Viewer, owner_id: int, *, name: str,
                     amount: Decimal | None = None, stage: str = "prospecting",
                     closing_date: date | None = None, contact_id: int | None = None) -> Potential:
    """Create a potential, optionally with one of the viewer's contacts (not committed)."""
    potential = Potential(org_id=viewer.org_id, owner_id=owner_id, name=_require_name(name),
                          amount=amount, stage=_check_choice(stage, POTENTIAL_STAGES, "stage"),
                          closing_date=closing_date,
                          contact_id=_visible_contact(session, viewer, contact_id))
    session.add(potential)
    session.flush()
    return potential


def update_potential(session: Session, viewer: Viewer, potential: Potential, *, name: str,
                     amount: Decimal | None = None, stage: str = "prospecting",
                     closing_date: date | None = None, contact_id: int | None = None) -> None:
    """Change a potential (not committed)."""
    potential.name = _require_name(name)
    potential.amount = amount
    potential.stage = _check_choice(stage, POTENTIAL_STAGES, "stage")
    potential.closing_date = closing_date
    potential.contact_id = _visible_contact(session, viewer, contact_id)
    session.flush()
    session.refresh(potential, ["contact"])


def delete_record(session: Session, record: Record) -> None:
    """Delete a record; its activities go with it, mail stays in the mailbox (not committed)."""
    session.delete(record)
    session.flush()


def list_records(session: Session, viewer: Viewer, kind: str, *, query: str = "",
                 sort: str = "name", page: int = 1, per_page: int = 50) -> tuple[list, int]:
    """One page of the viewer's records of a kind, searched and sorted, with the total count."""
    model = RECORD_MODELS[kind]
    stmt = scoped(select(model), model, viewer)
    text = (query or "").strip().lower()
    if text:
        like = f"%{text.replace('%', '').replace('_', '')}%"
        conditions = [func.lower(model.name).like(like)]
        if kind == "contact":
            conditions.append(func.lower(Contact.company).like(like))
            conditions.append(Contact.id.in_(select(ContactEmail.contact_id)
                                             .where(ContactEmail.org_id == viewer.org_id,
                                                    ContactEmail.email.like(like))))
        elif kind == "lead":
            conditions += [func.lower(Lead.company).like(like), Lead.email.like(like)]
        stmt = stmt.where(or_(*conditions))
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    orders = {"name": [func.lower(model.name), model.id],
              "newest": [model.created_at.desc(), model.id.desc()]}
    if kind in ("contact", "lead"):
        orders["company"] = [func.lower(model.company), func.lower(model.name), model.id]
    if kind == "lead":
        orders["status"] = [Lead.status, func.lower(Lead.name), Lead.id]
    if kind == "potential":
        orders["amount"] = [Potential.amount.desc(), Potential.id]
        orders["closing"] = [Potential.closing_date, Potential.id]
        orders["stage"] = [Potential.stage, Potential.id]
    page = max(page, 1)
    if kind == "contact":
        stmt = stmt.options(selectinload(Contact.emails))  # the list shows every address
    elif kind == "potential":
        stmt = stmt.options(selectinload(Potential.contact))
    rows = session.scalars(stmt.order_by(*orders.get(sort, orders["name"]))
                           .limit(per_page).offset((page - 1) * per_page)).all()
    return list(rows), total


def records_by_address(session: Session, viewer: Viewer,
                       emails: Iterable[str]) -> dict[str, list[Record]]:
    """The viewer's contacts and open leads that carry each address (converted leads defer
    to their contact)."""
    wanted = sorted({e for e in emails if e})
    found: dict[str, list[Record]] = {email: [] for email in wanted}
    if not wanted:
        return found
    contact_rows = session.execute(
        scoped(select(ContactEmail.email, Contact).join(Contact,
                                                        Contact.id == ContactEmail.contact_id)
               .where(ContactEmail.org_id == viewer.org_id, ContactEmail.email.in_(wanted)),
               Contact, viewer).order_by(Contact.id)).all()
    for email, contact in contact_rows:
        found[email].append(contact)
    leads = session.scalars(scoped(select(Lead).where(Lead.email.in_(wanted),
                                                      Lead.converted_contact_id.is_(None)),
                                   Lead, viewer).order_by(Lead.id)).all()
    for lead in leads:
        found[lead.email].append(lead)
    return found


def open_potentials(session: Session, viewer: Viewer, contact_id: int) -> list[Potential]:
    """The contact's potentials not yet closed, soonest closing first."""
    return list(session.scalars(scoped(
        select(Potential).where(Potential.contact_id == contact_id,
                                Potential.stage.notin_(CLOSED_STAGES)),
        Potential, viewer).order_by(Potential.closing_date, Potential.id)))


# --- activities -------------------------------------------------------------------------

def activities_of(session: Session, record: Record, limit: int | None = None) -> list[Activity]:
    """The record's activities, newest first (every activity on a visible record is visible)."""
    column = {"contact": Activity.contact_id, "lead": Activity.lead_id,
              "potential": Activity.potential_id}[record_kind(record)]
    stmt = select(Activity).where(Activity.org_id == record.org_id, column == record.id) \
        .order_by(Activity.created_at.desc(), Activity.id.desc())
    if limit:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))


def add_activity(session: Session, record: Record, owner_id: int, *, kind: str, title: str,
                 notes: str = "", due_date: date | None = None, status: str = "open",
                 starts_at: datetime | None = None, ends_at: datetime | None = None,
                 message_id: int | None = None) -> Activity:
    """Attach a task, event or note to a record, optionally linked to the owner's message."""
    _check_choice(kind, ACTIVITY_KINDS, "activity kind")
    title = _clean(title, 300)
    if not title:
        raise CrmError("A title is required.")
    if kind == "event":
        if starts_at is None:
            raise CrmError("An event needs a start.")
        if ends_at is not None and ends_at < starts_at:
            raise CrmError("An event cannot end before it starts.")
    if message_id is not None:
        # Only a message of the person adding the note: an id guessed from another
        # mailbox must not become a link into it.
        owned = session.scalar(select(Message.id).where(Message.id == message_id,
                                                        Message.user_id == owner_id))
        if owned is None:
            raise CrmError("That message is not in your mailbox.")
    activity = Activity(org_id=record.org_id, owner_id=owner_id, kind=kind, title=title,
                        notes=(notes or "").strip()[:20000],
                        due_date=due_date if kind == "task" else None,
                        status=_check_choice(status, TASK_STATUSES, "task status")
                        if kind == "task" else "open",
                        starts_at=starts_at if kind == "event" else None,
                        ends_at=(ends_at or starts_at) if kind == "event" else None,
                        message_id=message_id)
    setattr(activity, f"{record_kind(record)}_id", record.id)
    session.add(activity)
    session.flush()
    return activity


def get_activity(session: Session, viewer: Viewer, activity_id: int) -> Activity | None:
    """An activity on a record the viewer may see, or None."""
    activity = session.scalar(select(Activity).where(Activity.id == activity_id,
                                                     Activity.org_id == viewer.org_id))
    if activity is None or record_of(session, viewer, activity) is None:
        return None
    return activity


def record_of(session: Session, viewer: Viewer, activity: Activity) -> Record | None:
    """The record an activity is attached to, if the viewer may see it."""
    for kind in RECORD_MODELS:
        record_id = getattr(activity, f"{kind}_id")
        if record_id:
            return get_record(session, viewer, kind, record_id)
    return None


# --- lead conversion --------------------------------------------------------------------

def convert_lead(session: Session, viewer: Viewer, lead: Lead, *,
                 potential_name: str = "", amount: Decimal | None = None,
                 closing_date: date | None = None) -> tuple[Contact, Potential | None]:
    """Turn a lead into a contact (and optionally a potential), keeping its activities.

    The mail history follows by itself: the contact carries the lead's address, and
    correspondence is a query over addresses.
    """
    if lead.converted_contact_id is not None:
        raise CrmError("This lead was already converted.")
    contact = create_contact(session, lead.org_id, lead.owner_id, name=lead.name,
                             emails=lead.addresses, phone=lead.phone, company=lead.company)
    for activity in session.scalars(select(Activity).where(Activity.lead_id == lead.id)):
        activity.lead_id = None
        activity.contact_id = contact.id
    potential = None
    if (potential_name or "").strip():
        potential = create_potential(session, viewer, lead.owner_id, name=potential_name,
                                     amount=amount, closing_date=closing_date,
                                     contact_id=contact.id)
    lead.converted_contact_id = contact.id
    lead.converted_at = utcnow()
    lead.status = "converted"
    session.flush()
    return contact, potential


# --- tracking exclusions ----------------------------------------------------------------

def parse_exclusion(text: str) -> str:
    """An address or a domain to exclude, normalized like message addresses."""
    text = (text or "").strip().lower().lstrip("@")
    if "@" in text:
        return parse_typed_address(text)
    normalized = normalize_address(f"x@{text}")
    if not text or normalized is None or "." not in text:
        raise CrmError(f"{text!r} is neither an address nor a domain (example: bank.example).")
    return normalized.split("@", 1)[1]


def add_exclusion(session: Session, user: User, text: str) -> TrackingExclusion:
    """Never track this address or domain for the user (not committed)."""
    value = parse_exclusion(text)
    existing = session.scalar(select(TrackingExclusion).where(
        TrackingExclusion.user_id == user.id, TrackingExclusion.value == value))
    if existing is not None:
        return existing
    row = TrackingExclusion(org_id=user.org_id, user_id=user.id, value=value)
    session.add(row)
    session.flush()
    return row


def remove_exclusion(session: Session, user_id: int, exclusion_id: int) -> bool:
    """Track this address or domain again; False when it was not the user's."""
    result = session.execute(delete(TrackingExclusion).where(
        TrackingExclusion.id == exclusion_id, TrackingExclusion.user_id == user_id))
    return bool(result.rowcount)


def exclusions_of(session: Session, user_id: int) -> list[TrackingExclusion]:
    """The user's exclusions, alphabetically."""
    return list(session.scalars(select(TrackingExclusion)
                                .where(TrackingExclusion.user_id == user_id)
                                .order_by(TrackingExclusion.value)))


def is_excluded(email: str, excluded: Iterable[str]) -> bool:
    """Whether an address is excluded, by itself or by its domain (or a parent domain)."""
    values = set(excluded)
    if email in values:
        return True
    domain = email.rsplit("@", 1)[-1]
    labels = domain.split(".")
    return any(".".join(labels[i:]) in values for i in range(len(labels) - 1))


def own_addresses(session: Session, user_id: int) -> set[str]:
    """Every address of the user (accounts, Send Mail As): never a party in their own panel."""
    rows = list(session.scalars(select(MailAccount.email).where(MailAccount.user_id == user_id)))
    rows += session.scalars(select(SendIdentity.email).where(SendIdentity.user_id == user_id))
    user_email = session.scalar(select(User.email).where(User.id == user_id))
    found = {normalize_address(e) for e in [*rows, user_email or ""] if e}
    return {e for e in found if e}
