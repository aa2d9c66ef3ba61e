"""The CRM beside mail: the message view's side panel, its quick forms, compose autocomplete."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timezone

from flask import abort, flash, jsonify, redirect, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import func, or_, select
from wtforms import HiddenField

from webapp.crm.blueprint import bp, message_url, new_record_url, record_url, viewer
from webapp.crm.forms import ActivityForm
from webapp.extensions import db
from webapp.models import Message
from webapp.models.crm import Contact, ContactEmail, Lead
from webapp.services import crm

AUTOCOMPLETE_LIMIT = 10


class GadgetActivityForm(ActivityForm):
    """A quick task, event or note from the mail view, for one record chosen by `target`."""

    target = HiddenField()


@dataclass
class RecordCard:
    """A known record in the panel with what a salesperson wants at a glance."""

    record: crm.Record
    potentials: list = field(default_factory=list)
    activities: list = field(default_factory=list)
    targets: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class AddressPanel:
    """One external address of the message: its records, or ways to add it."""

    email: str
    name: str
    cards: list[RecordCard] = field(default_factory=list)
    add_links: dict[str, str] = field(default_factory=dict)


@bp.app_template_global("crm_message_panel")
def message_panel(message: Message) -> list[AddressPanel]:
    """The panel of a message: one entry per external address (not the user's own, not excluded)."""
    if message is None or not current_user.is_authenticated or message.user_id != current_user.id:
        return []
    who = viewer()
    own = crm.own_addresses(db.session, current_user.id)
    excluded = [row.value for row in crm.exclusions_of(db.session, current_user.id)]
    panels: dict[str, AddressPanel] = {}
    for address in message.addresses:
        email = address.email
        if not email or email in own or email in panels or crm.is_excluded(email, excluded):
            continue
        panels[email] = AddressPanel(email=email, name=address.name)
    found = crm.records_by_address(db.session, who, list(panels))
    back = message_url(message.id)
    for email, panel in panels.items():
        for record in found.get(email, []):
            kind = crm.record_kind(record)
            card = RecordCard(record=record, activities=crm.activities_of(db.session, record, 3),
                              targets=[(f"{kind}:{record.id}", f"{record.name} ({kind})")])
            if isinstance(record, Contact):
                card.potentials = crm.open_potentials(db.session, who, record.id)
                card.targets += [(f"potential:{p.id}", f"{p.name} (potential)")
                                 for p in card.potentials]
            panel.cards.append(card)
        if not panel.cards:
            name = panel.name or email.split("@", 1)[0]
            panel.add_links = {kind: new_record_url(kind, name=name, email=email, next=back)
                               for kind in ("lead", "contact")}
            # A potential needs a contact: create the contact first, then the potential.
            panel.add_links["potential"] = new_record_url("contact", name=name, email=email,
                                                          next=back, then="potential")
    return list(panels.values())


@bp.app_template_global("crm_gadget_form")
def gadget_form(message: Message, target: str) -> GadgetActivityForm:
    """An empty quick form for one record of the panel."""
    return GadgetActivityForm(formdata=None, target=target, message_id=str(message.id),
                              next=message_url(message.id))


@bp.route("/gadget/activity", methods=["POST"])
@login_required
def gadget_activity_add():
    """Store a quick task, event or note on the chosen record, linked to the message."""
    form = GadgetActivityForm()
    kind, _, raw_id = (form.target.data or "").partition(":")
    if kind not in crm.RECORD_MODELS or not raw_id.isdigit():
        abort(404)
    record = crm.get_record(db.session, viewer(), kind, int(raw_id))
    if record is None:
        abort(404)
    message_id = int(form.message_id.data) if (form.message_id.data or "").isdigit() else None
    back = message_url(message_id) if message_id else record_url(record)
    if not form.validate_on_submit():
        problems = "; ".join(f"{form[n].label.text}: {' '.join(e)}" for n, e in form.errors.items()
                             if n in form)
        flash(f"Nothing was added to {record.name}: {problems}", "error")
        return redirect(back)
    aware = (lambda v: v.replace(tzinfo=timezone.utc) if v is not None else None)
    try:
        crm.add_activity(db.session, record, current_user.id, kind=form.kind.data,
                         title=form.title.data, notes=form.notes.data or "",
                         due_date=form.due_date.data, status=form.status.data,
                         starts_at=aware(form.starts_at.data), ends_at=aware(form.ends_at.data),
                         message_id=message_id)
    except crm.CrmError as exc:
        db.session.rollback()
        flash(f"Nothing was added to {record.name}: {exc}", "error")
        return redirect(back)
    db.session.commit()
    flash(f"{form.kind.data.capitalize()} added to {record.name}.", "success")
    return redirect(back)


@bp.route("/autocomplete")
@login_required
def autocomplete():
    """CRM contacts and leads matching what is typed in compose's address fields (JSON)."""
    text = request.args.get("q", "").strip().lower()[:100]
    if not text:
        return jsonify(results=[])
    who = viewer()
    like = text.replace("%", "").replace("_", "") + "%"
    anywhere = "%" + like
    results = []
    rows = db.session.execute(crm.scoped(
        select(Contact.id, Contact.name, ContactEmail.email)
        .join(ContactEmail, ContactEmail.contact_id == Contact.id)
        .where(ContactEmail.org_id == who.org_id,
               or_(ContactEmail.email.like(like), func.lower(Contact.name).like(anywhere))),
        Contact, who).order_by(Contact.name, ContactEmail.position).limit(AUTOCOMPLETE_LIMIT))
    for record_id, name, email in rows:
        results.append({"kind": "contact", "name": name, "email": email,
                        "url": url_for("crm.contact_show", record_id=record_id)})
    rows = db.session.execute(crm.scoped(
        select(Lead.id, Lead.name, Lead.email)
        .where(Lead.email != "", Lead.converted_contact_id.is_(None),
               or_(Lead.email.like(like), func.lower(Lead.name).like(anywhere))),
        Lead, who).order_by(Lead.name).limit(AUTOCOMPLETE_LIMIT))
    for record_id, name, email in rows:
        results.append({"kind": "lead", "name": name, "email": email,
                        "url": url_for("crm.lead_show", record_id=record_id)})
    return jsonify(results=results[:AUTOCOMPLETE_LIMIT * 2])
