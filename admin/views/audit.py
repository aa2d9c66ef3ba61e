"""Admin » Audit log: every admin action, filterable and paged; and the helper that writes it."""
from __future__ import annotations

from flask import render_template, request
from flask_login import current_user
from sqlalchemy import func, select
from sqlalchemy.orm import aliased

from admin.blueprint import bp, register_menu
from admin.forms import AuditFilterForm
from webapp.extensions import db
from webapp.models import AuditEvent, User
from webapp.services.audit import record

register_menu("Audit log", "admin.audit_index", order=90)

PAGE_SIZE = 50


def audit_admin(action: str, target: str = "", detail: dict | None = None) -> AuditEvent:
    """Record an action of the current admin in their organization (commits with the change)."""
    return record(db.session, action=action, org_id=current_user.org_id, actor_id=current_user.id,
                  target=target, detail=detail, ip=request.remote_addr or "")


def _like(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped.lower()}%"


@bp.route("/audit")
def audit_index():
    """The organization's audit log, newest first, filtered by action, actor and target."""
    form = AuditFilterForm(request.args)
    form.validate()
    actor = aliased(User)
    query = (select(AuditEvent, actor.email)
             .outerjoin(actor, actor.id == AuditEvent.actor_id)
             .where(AuditEvent.org_id == current_user.org_id))
    if form.action.data and not form.action.errors:
        query = query.where(func.lower(AuditEvent.action).like(_like(form.action.data),
                                                               escape="\\"))
    if form.actor.data and not form.actor.errors:
        query = query.where(func.lower(actor.email).like(_like(form.actor.data), escape="\\"))
    if form.target.data and not form.target.errors:
        query = query.where(func.lower(AuditEvent.target).like(_like(form.target.data),
                                                               escape="\\"))
    total = db.session.scalar(select(func.count()).select_from(query.subquery()))
    pages = max(1, (total + PAGE_SIZE - 1) // PAGE_SIZE)
    page = min(form.page.data or 1, pages) if not form.page.errors else 1
    rows = db.session.execute(query.order_by(AuditEvent.created_at.desc(), AuditEvent.id.desc())
                              .limit(PAGE_SIZE).offset((page - 1) * PAGE_SIZE)).all()
    filters = {k: v for k, v in request.args.items() if k in ("action", "actor", "target") and v}
    return render_template("admin/audit.html", form=form, rows=rows, page=page, pages=pages,
                           total=total, filters=filters)
