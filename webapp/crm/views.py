"""The CRM area (/crm): its start page; every other module of the package adds its routes."""
from __future__ import annotations

from flask import render_template
from flask_login import login_required
from sqlalchemy import func, select

from webapp.crm.blueprint import bp, viewer
from webapp.discovery import import_submodules
from webapp.extensions import db
from webapp.models.crm import Activity, Lead
from webapp.services import crm

__all__ = ["bp"]


@bp.route("/")
@login_required
def crm_index():
    """The CRM start page: counts, open tasks and the way to each list."""
    who = viewer()
    counts = {}
    for kind, model in crm.RECORD_MODELS.items():
        counts[kind] = db.session.scalar(crm.scoped(select(func.count()).select_from(model),
                                                    model, who)) or 0
    open_leads = db.session.scalar(crm.scoped(
        select(func.count()).select_from(Lead).where(Lead.converted_contact_id.is_(None)),
        Lead, who)) or 0
    tasks = db.session.scalars(
        select(Activity).where(Activity.org_id == who.org_id, Activity.owner_id == who.user_id,
                               Activity.kind == "task", Activity.status == "open")
        .order_by(Activity.due_date.is_(None), Activity.due_date, Activity.id).limit(20)).all()
    return render_template("crm/index.html", counts=counts, open_leads=open_leads, tasks=tasks,
                           record_of=lambda a: crm.record_of(db.session, who, a))


# Each module (records, activities, gadgets, transfer) registers its routes on bp.
import_submodules("webapp.crm")
