"""Admin » Quotas: the default, per-user overrides and a chart of use per user."""
from __future__ import annotations

from dataclasses import dataclass

from flask import abort, current_app, flash, redirect, render_template, url_for
from flask_login import current_user
from sqlalchemy import select

from admin.blueprint import bp, register_menu
from admin.forms import QuotaForm
from admin.views.audit import audit_admin
from admin.views.users import gb_to_bytes
from webapp.extensions import db
from webapp.models import User
from webapp.services import accounts_admin
from webapp.services.quota import human_bytes

register_menu("Quotas", "admin.quotas_index", order=40)

CHART_LABEL_WIDTH = 240
CHART_BAR_WIDTH = 420
CHART_ROW_HEIGHT = 26
CHART_MAX_ROWS = 200


@dataclass(frozen=True)
class UsageBar:
    """One bar of the chart: who, how much of their quota, and where to draw it."""

    user_id: int
    label: str
    used: int
    quota: int
    y: int
    width: int
    percent: int
    fill: str
    title: str


def usage_bars(users: list[User]) -> list[UsageBar]:
    """Bars of storage use as a share of each user's quota, fullest first."""
    bars = []
    ordered = sorted(users, key=lambda u: (-(u.used_bytes / max(u.quota_bytes, 1)), u.email))
    for row, user in enumerate(ordered[:CHART_MAX_ROWS]):
        share = min(user.used_bytes / max(user.quota_bytes, 1), 1.0)
        percent = round(100 * user.used_bytes / max(user.quota_bytes, 1))
        fill = "#c0392b" if share >= 0.9 else "#d68910" if share >= 0.75 else "#2e5bda"
        bars.append(UsageBar(
            user_id=user.id, label=user.email, used=user.used_bytes, quota=user.quota_bytes,
            y=row * CHART_ROW_HEIGHT, width=max(int(share * CHART_BAR_WIDTH), 1 if user.used_bytes
                                               else 0),
            percent=percent, fill=fill,
            title=f"{user.email}: {human_bytes(user.used_bytes)} of "
                  f"{human_bytes(user.quota_bytes)} ({percent}%)"))
    return bars


@bp.route("/quotas")
def quotas_index():
    """Every user's use and quota, as a server-drawn SVG chart and a table of overrides."""
    users = db.session.scalars(select(User).where(User.org_id == current_user.org_id)
                               .order_by(User.email)).all()
    bars = usage_bars(users)
    return render_template(
        "admin/quotas.html", users=users, bars=bars, human_bytes=human_bytes,
        default_quota=current_app.config["MAIL_DEFAULT_QUOTA_BYTES"],
        label_width=CHART_LABEL_WIDTH, bar_width=CHART_BAR_WIDTH, row_height=CHART_ROW_HEIGHT,
        chart_height=max(len(bars), 1) * CHART_ROW_HEIGHT, form=QuotaForm(),
        truncated=len(users) > CHART_MAX_ROWS)


@bp.route("/quotas/<int:user_id>", methods=["POST"])
def quotas_set(user_id: int):
    """Override one user's quota (empty: back to the default); not below use unless confirmed."""
    user = accounts_admin.get_org_user(db.session, current_user.org_id, user_id)
    if user is None:
        abort(404)
    form = QuotaForm()
    if not form.validate_on_submit():
        flash("Enter the quota in GB as a number above 0 (e.g. 5 or 2.5).", "error")
        return redirect(url_for("admin.quotas_index"))
    before = user.quota_bytes
    quota = gb_to_bytes(form.quota_gb.data, current_app.config["MAIL_DEFAULT_QUOTA_BYTES"])
    try:
        accounts_admin.set_quota(db.session, user, quota, form.allow_below_use.data)
    except accounts_admin.AdminRuleError as exc:
        db.session.rollback()
        flash(f"{user.email}: {exc}", "error")
    else:
        audit_admin("quota.set", user.email, {"before": before, "after": quota})
        db.session.commit()
        flash(f"{user.email} may now store {human_bytes(quota)}.", "success")
    return redirect(url_for("admin.quotas_index"))
