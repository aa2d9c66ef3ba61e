"""Contacts, leads and potentials: lists, detail pages with their timeline, create/edit/delete.

The three kinds share one set of views, registered once per kind with endpoints named
`<kind>_<action>` (crm.contact_list, crm.lead_show, crm.potential_edit, ...).
"""
from __future__ import annotations

from datetime import datetime, timezone

from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import select

from webapp.crm.blueprint import KIND_LABELS, KIND_PLURALS, bp, record_or_404, safe_next, \
    viewer
from webapp.crm.forms import ActivityForm, ConfirmForm, ContactForm, ConvertLeadForm, \
    LeadForm, PotentialForm, choices
from webapp.extensions import db
from webapp.models import User
from webapp.models.crm import Contact, Lead
from webapp.services import crm
from webapp.services.correspondence import correspondence_for, decode_cursor

FORMS = {"contact": ContactForm, "lead": LeadForm, "potential": PotentialForm}
SORTS = {"contact": [("name", "Name"), ("company", "Company"), ("newest", "Newest")],
         "lead": [("name", "Name"), ("company", "Company"), ("status", "Status"),
                  ("newest", "Newest")],
         "potential": [("name", "Name"), ("amount", "Amount"), ("closing", "Closing date"),
                       ("stage", "Stage"), ("newest", "Newest")]}
PER_PAGE = 50


def _contact_choices() -> list:
    who = viewer()
    contacts = db.session.scalars(crm.scoped(select(Contact), Contact, who)
                                  .order_by(Contact.name, Contact.id).limit(2000))
    return choices([(0, "— none —")] + [(c.id, c.name + (f" ({c.company})" if c.company else ""))
                                         for c in contacts])


def _make_form(kind: str, record=None):
    form = FORMS[kind](obj=record)
    if kind == "potential":
        form.contact_id.choices = _contact_choices()
        if record is None and request.method == "GET":
            form.contact_id.data = request.args.get("contact_id", 0, type=int)
    if record is None and request.method == "GET":
        # Prefill from the mail view's "add as …" buttons.
        form.name.data = request.args.get("name", "")[:200]
        email = request.args.get("email", "")[:320]
        if kind == "contact":
            form.emails.data = email
        elif kind == "lead":
            form.email.data = email
    elif kind == "contact" and request.method == "GET":
        form.emails.data = "\n".join(record.addresses)
    return form


def _save(kind: str, form, record=None):
    """Create or update from a validated form; raises CrmError on a rule violation."""
    who = viewer()
    data = {"name": form.name.data}
    if kind == "contact":
        data.update(emails=form.parsed_emails, phone=form.phone.data,
                    company=form.company.data)
        if record is None:
            return crm.create_contact(db.session, who.org_id, who.user_id, **data)
        crm.update_contact(db.session, record, **data)
    elif kind == "lead":
        data.update(email=form.parsed_email, phone=form.phone.data, company=form.company.data,
                    status=form.status.data, source=form.source.data)
        if record is None:
            return crm.create_lead(db.session, who.org_id, who.user_id, **data)
        if record.converted_contact_id is not None:
            data["status"] = "converted"
        crm.update_lead(db.session, record, **data)
    else:
        data.update(amount=form.amount.data, stage=form.stage.data,
                    closing_date=form.closing_date.data, contact_id=form.contact_id.data or None)
        if record is None:
            return crm.create_potential(db.session, who, who.user_id, **data)
        crm.update_potential(db.session, who, record, **data)
    return record


def record_list(kind: str):
    """A list of records with search, sort and pages."""
    query = request.args.get("q", "")[:200]
    sort = request.args.get("sort", "name")
    page = max(request.args.get("page", 1, type=int) or 1, 1)
    rows, total = crm.list_records(db.session, viewer(), kind, query=query, sort=sort,
                                   page=page, per_page=PER_PAGE)
    owners = {}
    if current_user.is_admin:
        owners = dict(db.session.execute(select(User.id, User.email)
                                         .where(User.org_id == current_user.org_id)).all())
    return render_template("crm/list.html", kind=kind, label=KIND_LABELS[kind],
                           plural=KIND_PLURALS[kind], rows=rows, total=total, query=query,
                           sort=sort, sorts=SORTS[kind], page=page,
                           pages=max((total + PER_PAGE - 1) // PER_PAGE, 1), owners=owners)


def record_new(kind: str):
    """Create a record (prefilled when coming from a message)."""
    form = _make_form(kind)
    next_url = safe_next(request.values.get("next"), "")
    if form.validate_on_submit():
        try:
            record = _save(kind, form)
        except crm.CrmError as exc:
            db.session.rollback()
            flash(str(exc), "error")
        else:
            db.session.commit()
            flash(f"{KIND_LABELS[kind]} {record.name} was created.", "success")
            if kind == "contact" and request.values.get("then") == "potential":
                return redirect(url_for("crm.potential_new", contact_id=record.id,
                                        name=f"{record.name} — deal", next=next_url or None))
            return redirect(next_url or url_for(f"crm.{kind}_show", record_id=record.id))
    return render_template("crm/form.html", form=form, kind=kind, label=KIND_LABELS[kind],
                           record=None, next_url=next_url, then=request.values.get("then", ""))


def record_edit(kind: str, record_id: int):
    """Change a record; a changed address re-links its mail at once."""
    record = record_or_404(kind, record_id)
    form = _make_form(kind, record)
    if form.validate_on_submit():
        try:
            _save(kind, form, record)
        except crm.CrmError as exc:
            db.session.rollback()
            flash(str(exc), "error")
        else:
            db.session.commit()
            flash(f"{KIND_LABELS[kind]} {record.name} was saved.", "success")
            return redirect(url_for(f"crm.{kind}_show", record_id=record.id))
    return render_template("crm/form.html", form=form, kind=kind, label=KIND_LABELS[kind],
                           record=record, next_url="")


def record_delete(kind: str, record_id: int):
    """Delete a record after a confirmation; its mail stays in the mailbox."""
    record = record_or_404(kind, record_id)
    form = ConfirmForm()
    if form.validate_on_submit():
        name = record.name
        crm.delete_record(db.session, record)
        db.session.commit()
        flash(f"{KIND_LABELS[kind]} {name} was deleted. Its mail is still in the mailbox.",
              "success")
        return redirect(url_for(f"crm.{kind}_list"))
    return render_template("crm/confirm_delete.html", form=form, record=record, kind=kind,
                           label=KIND_LABELS[kind])


def _activity_time(activity) -> datetime:
    return activity.starts_at if activity.kind == "event" and activity.starts_at \
        else activity.created_at


def record_show(kind: str, record_id: int):
    """A record with its details and a timeline of activities and correspondence."""
    record = record_or_404(kind, record_id)
    who = viewer()
    cursor = request.args.get("before")
    page = correspondence_for(db.session, who, record, cursor=cursor)
    # The timeline pages by the mail's keyset; activities fall into the page whose date
    # range holds them, so every activity shows exactly once across pages.
    upper = decode_cursor(cursor)
    lower = page.items[-1].sort_date if page.next_cursor else None
    activities = [a for a in crm.activities_of(db.session, record)
                  if (upper is None or _activity_time(a) <= upper[0])
                  and (lower is None or _activity_time(a) > lower)]
    timeline = sorted([("mail", item.sort_date, item) for item in page.items]
                      + [("activity", _activity_time(a), a) for a in activities],
                      key=lambda entry: entry[1], reverse=True)
    owner = db.session.get(User, record.owner_id)
    extra = {}
    if kind == "contact":
        extra["potentials"] = crm.open_potentials(db.session, who, record.id)
        extra["leads"] = list(db.session.scalars(crm.scoped(
            select(Lead).where(Lead.converted_contact_id == record.id), Lead, who)))
    activity_form = ActivityForm(formdata=None)
    return render_template("crm/show.html", record=record, kind=kind, label=KIND_LABELS[kind],
                           page=page, timeline=timeline, owner=owner,
                           activity_form=activity_form, convert_form=ConvertLeadForm(),
                           first_page=cursor is None, now=datetime.now(timezone.utc), **extra)


def lead_convert(record_id: int):
    """Convert a lead into a contact (and optionally a potential), keeping its history."""
    lead = record_or_404("lead", record_id)
    form = ConvertLeadForm()
    if lead.converted_contact_id is not None:
        flash("This lead was already converted.", "warning")
        return redirect(url_for("crm.contact_show", record_id=lead.converted_contact_id))
    if form.validate_on_submit():
        contact, potential = crm.convert_lead(db.session, viewer(), lead,
                                              potential_name=form.potential_name.data or "",
                                              amount=form.amount.data,
                                              closing_date=form.closing_date.data)
        db.session.commit()
        flash(f"{lead.name} is now a contact" + (f" with the potential {potential.name}"
                                                 if potential else "") + ".", "success")
        return redirect(url_for("crm.contact_show", record_id=contact.id))
    return render_template("crm/convert.html", form=form, record=lead)


def _register(kind: str) -> None:
    base = f"/{KIND_PLURALS[kind]}"

    def bind(view):
        def endpoint(**kwargs):
            return view(kind, **kwargs)
        endpoint.__doc__ = view.__doc__
        return login_required(endpoint)

    bp.add_url_rule(f"{base}", f"{kind}_list", bind(record_list))
    bp.add_url_rule(f"{base}/new", f"{kind}_new", bind(record_new), methods=["GET", "POST"])
    bp.add_url_rule(f"{base}/<int:record_id>", f"{kind}_show", bind(record_show))
    bp.add_url_rule(f"{base}/<int:record_id>/edit", f"{kind}_edit", bind(record_edit),
                    methods=["GET", "POST"])
    bp.add_url_rule(f"{base}/<int:record_id>/delete", f"{kind}_delete", bind(record_delete),
                    methods=["GET", "POST"])


for _kind in ("contact", "lead", "potential"):
    _register(_kind)
bp.add_url_rule("/leads/<int:record_id>/convert", "lead_convert", login_required(lead_convert),
                methods=["GET", "POST"])
