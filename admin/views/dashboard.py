"""The admin start page: the organization at a glance."""
from __future__ import annotations

from flask import render_template
from flask_login import current_user
from sqlalchemy import func, select

from admin.blueprint import bp, register_menu
from webapp.extensions import db
from webapp.models import Domain, User


register_menu("Overview", "admin.dashboard_index", order=0)


@bp.route("/")
def dashboard_index():
    """Counts and quick links for the admin's own organization."""
    org = current_user.organization
    users = db.session.scalar(select(func.count()).select_from(User)
                              .where(User.org_id == org.id))
    domains = db.session.scalars(select(Domain).where(Domain.org_id == org.id)
                                 .order_by(Domain.name)).all()
    return render_template("admin/dashboard.html", org=org, users=users, domains=domains)
