"""CRM records in bulk: CSV import and export, iCalendar export, transfer when a user leaves."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Iterable

import icalendar
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from webapp.models import User
from webapp.models.crm import LEAD_STATUSES, POTENTIAL_STAGES, Activity, Contact, Lead, \
    Potential
from webapp.services import crm


class RecordsTransferError(ValueError):
    """The records cannot go to that user (other organization, same user); shown as is."""


def reassign_or_delete(session: Session, org_id: int, user_id: int,
                       to_user_id: int | None) -> dict[str, int]:
    """Give the user's records to another user of the same organization, or delete them.

    Returns how many rows of each kind moved or went; not committed (the caller commits the
    user deletion in the same transaction so nothing is left half-transferred).
    """
    owned = (Contact, Lead, Potential, Activity)
    counts: dict[str, int] = {}
    if to_user_id is not None:
        if to_user_id == user_id:
            raise RecordsTransferError("Choose another user to receive the records.")
        target = session.scalar(select(User).where(User.id == to_user_id, User.org_id == org_id))
        if target is None:
            raise RecordsTransferError("The user receiving the records must belong to the "
                                       "same organization.")
        for model in owned:
            result = session.execute(update(model)
                                     .where(model.org_id == org_id, model.owner_id == user_id)
                                     .values(owner_id=to_user_id)
                                     .execution_options(synchronize_session=False))
            counts[model.__tablename__] = result.rowcount
    else:
        # Activities first: those on other users' records go too (they were this user's notes);
        # those on this user's records would cascade anyway.
        for model in owned[::-1]:
            result = session.execute(delete(model)
                                     .where(model.org_id == org_id, model.owner_id == user_id)
                                     .execution_options(synchronize_session=False))
            counts[model.__tablename__] = result.rowcount
    session.expire_all()
    return counts


# --- CSV ----------------------------------------------------------------------------------

CSV_COLUMNS = {
    "contact": ["name", "emails", "phone", "company"],
    "lead": ["name", "email", "phone", "company", "status", "source"],
    "potential": ["name", "amount", "stage", "closing_date", "contact_email"],
}
CSV_MAX_ROWS = 10_000
# A cell starting with one of these is run as a formula by spreadsheet programs
# (CSV/formula injection, OWASP): exported cells get a leading quote so they stay text.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralize_cell(value: object) -> str:
    """A cell value that spreadsheets show as text, never run as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _split_emails(value: str) -> list[str]:
    return [part for part in value.replace(";", " ").replace(",", " ").split() if part]


def export_csv(session: Session, viewer: crm.Viewer, kind: str) -> str:
    """Every record of a kind the viewer sees, as CSV text with formulas neutralized."""
    model = crm.RECORD_MODELS[kind]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS[kind])
    rows = session.scalars(crm.scoped(select(model), model, viewer).order_by(model.name,
                                                                               model.id))
    for record in rows:
        if kind == "contact":
            values = [record.name, " ".join(record.addresses), record.phone, record.company]
        elif kind == "lead":
            values = [record.name, record.email, record.phone, record.company, record.status,
                      record.source]
        else:
            values = [record.name, "" if record.amount is None else f"{record.amount:.2f}",
                      record.stage, record.closing_date.isoformat() if record.closing_date
                      else "", record.contact.addresses[0] if record.contact
                      and record.contact.addresses else ""]
        writer.writerow([neutralize_cell(v) for v in values])
    return buffer.getvalue()


@dataclass
class ImportRow:
    """One data row of an import: what it will create, or why it cannot."""

    line: int
    values: dict[str, str]
    errors: list[str] = field(default_factory=list)
    parsed: dict = field(default_factory=dict)


@dataclass
class ImportPreview:
    """The checked rows of an import; it may run only when no row has an error."""

    kind: str
    rows: list[ImportRow]
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every row is valid (imports are all-or-nothing)."""
        return not self.errors and bool(self.rows) and all(not r.errors for r in self.rows)


def _unquote_cell(value: str) -> str:
    """Undo our own export's formula guard so an export imports back unchanged."""
    if len(value) > 1 and value[0] == "'" and value[1] in "=+-@\t\r":
        return value[1:]
    return value


def preview_csv(session: Session, viewer: crm.Viewer, kind: str, text: str) -> ImportPreview:
    """Parse and check a CSV upload row by row; nothing is written."""
    preview = ImportPreview(kind=kind, rows=[])
    text = text.lstrip("\ufeff")  # spreadsheet programs often write a UTF-8 BOM
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
    except csv.Error as exc:
        preview.errors.append(f"The file is not readable as CSV: {exc}")
        return preview
    if "name" not in header:
        preview.errors.append("The first row must name the columns and include 'name' "
                              f"(expected: {', '.join(CSV_COLUMNS[kind])}).")
        return preview
    reader.fieldnames = header
    contacts_by_email: dict[str, int] = {}
    try:
        for index, raw in enumerate(reader, start=2):
            if len(preview.rows) >= CSV_MAX_ROWS:
                preview.errors.append(f"At most {CSV_MAX_ROWS} rows can be imported at once.")
                break
            values = {k: _unquote_cell((raw.get(k) or "").strip()) for k in CSV_COLUMNS[kind]}
            if not any(values.values()):
                continue
            row = ImportRow(line=index, values=values)
            _check_row(session, viewer, kind, row, contacts_by_email)
            preview.rows.append(row)
    except csv.Error as exc:
        preview.errors.append(f"Line {reader.line_num}: {exc}")
    if not preview.rows and not preview.errors:
        preview.errors.append("The file has no data rows.")
    return preview


def _check_row(session: Session, viewer: crm.Viewer, kind: str, row: ImportRow,
               contacts_by_email: dict[str, int]) -> None:
    values = row.values
    if not values["name"]:
        row.errors.append("name is empty")
    elif len(values["name"]) > 200:
        row.errors.append("name is longer than 200 characters")
    row.parsed["name"] = values["name"]
    try:
        if kind == "contact":
            row.parsed["emails"] = crm.parse_address_lines(
                "\n".join(_split_emails(values["emails"])))
            row.parsed.update(phone=values["phone"], company=values["company"])
        elif kind == "lead":
            row.parsed["email"] = crm.parse_typed_address(values["email"]) if values["email"] \
                else ""
            status = (values["status"] or "new").lower()
            if status not in LEAD_STATUSES or status == "converted":
                row.errors.append(f"status {values['status']!r} is not one of "
                                  + ", ".join(s for s in LEAD_STATUSES if s != "converted"))
            row.parsed.update(phone=values["phone"], company=values["company"], status=status,
                              source=values["source"])
    except crm.CrmError as exc:
        row.errors.append(str(exc))
    if kind == "potential":
        _check_potential_row(session, viewer, row, contacts_by_email)


def _check_potential_row(session: Session, viewer: crm.Viewer, row: ImportRow,
                         contacts_by_email: dict[str, int]) -> None:
    values = row.values
    amount = None
    if values["amount"]:
        try:
            amount = Decimal(values["amount"].replace(",", ""))
            if amount < 0 or not amount.is_finite() or amount >= Decimal("1e12"):
                raise InvalidOperation
        except InvalidOperation:
            row.errors.append(f"amount {values['amount']!r} is not a number")
            amount = None
    stage = (values["stage"] or "prospecting").lower()
    if stage not in POTENTIAL_STAGES:
        row.errors.append(f"stage {values['stage']!r} is not one of {', '.join(POTENTIAL_STAGES)}")
    closing = None
    if values["closing_date"]:
        try:
            closing = date.fromisoformat(values["closing_date"])
        except ValueError:
            row.errors.append(f"closing_date {values['closing_date']!r} is not a date "
                              "(YYYY-MM-DD)")
    contact_id = None
    if values["contact_email"]:
        try:
            email = crm.parse_typed_address(values["contact_email"])
        except crm.CrmError as exc:
            row.errors.append(str(exc))
        else:
            if email not in contacts_by_email:
                found = [r for r in crm.records_by_address(session, viewer, [email])[email]
                         if isinstance(r, Contact)]
                contacts_by_email[email] = found[0].id if found else 0
            contact_id = contacts_by_email[email] or None
            if contact_id is None:
                row.errors.append(f"no contact of yours has the address {email}")
    row.parsed.update(amount=amount, stage=stage, closing_date=closing, contact_id=contact_id)


def import_csv(session: Session, viewer: crm.Viewer, kind: str, text: str) -> ImportPreview:
    """Check again and create every row, or nothing when any row has an error (not committed)."""
    preview = preview_csv(session, viewer, kind, text)
    if not preview.ok:
        return preview
    for row in preview.rows:
        data = row.parsed
        if kind == "contact":
            crm.create_contact(session, viewer.org_id, viewer.user_id, **data)
        elif kind == "lead":
            crm.create_lead(session, viewer.org_id, viewer.user_id, **data)
        else:
            crm.create_potential(session, viewer, viewer.user_id, **data)
    return preview


# --- iCalendar ----------------------------------------------------------------------------

def events_to_ical(events: Iterable[Activity], *, domain: str) -> bytes:
    """Events as an RFC 5545 calendar (escaping and line folding by the icalendar library)."""
    calendar = icalendar.Calendar()
    calendar.add("prodid", "-//SkyDesk Mail//CRM//EN")
    calendar.add("version", "2.0")
    for activity in events:
        if activity.kind != "event" or activity.starts_at is None:
            continue
        event = icalendar.Event()
        # Stable per activity, so a re-import updates the entry instead of duplicating it.
        event.add("uid", f"crm-activity-{activity.id}@{domain}")
        event.add("dtstamp", activity.created_at)
        event.add("dtstart", activity.starts_at)
        event.add("dtend", activity.ends_at or activity.starts_at)
        event.add("summary", activity.title)
        if activity.notes:
            event.add("description", activity.notes)
        calendar.add_component(event)
    return calendar.to_ical()
