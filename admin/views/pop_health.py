"""Admin » POP accounts: the health of every POP account of the organization."""
from __future__ import annotations

from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import case, select

from admin.blueprint import bp, register_menu
from webapp.extensions import db
from webapp.models import User
from webapp.models.pop import PopAccount
from webapp.services import pop_accounts as service
from webapp.services.audit import record
from webapp.settings.account_forms import ConfirmForm

register_menu("POP accounts", "admin.pop_health_list", order=40)


@bp.route("/pop-accounts")
def pop_health_list():
    """Every POP account of the admin's organization, disabled ones first."""
    rows = db.session.execute(
        select(PopAccount, User.email).join(User, User.id == PopAccount.user_id)
        .where(PopAccount.org_id == current_user.org_id)
        .order_by(case((PopAccount.state == "disabled", 0), (PopAccount.state == "paused", 1),
                       else_=2),
                  (PopAccount.connection_failures + PopAccount.auth_failures).desc(),
                  User.email, PopAccount.id)).all()
    return render_template("admin/pop_health.html", rows=rows, form=ConfirmForm(),
                           state_words=service.state_words)


@bp.route("/pop-accounts/<int:pop_id>/reenable", methods=["POST"])
def pop_health_reenable(pop_id: int):
    """Re-enable a disabled account (counters reset) and fetch it at once; audited."""
    account = db.session.scalar(select(PopAccount).where(PopAccount.id == pop_id,
                                                         PopAccount.org_id == current_user.org_id))
    if account is None:
        abort(404)
    if ConfirmForm().validate_on_submit():
        previous = {"state": account.state, "reason": account.state_reason,
                    "auth_failures": account.auth_failures,
                    "connection_failures": account.connection_failures}
        service.reenable_account(db.session, account, job_timeout=int(
            service.pop_setting(current_app.config, "POP_JOB_TIMEOUT")))
        record(db.session, action="pop.reenabled", org_id=current_user.org_id,
               actor_id=current_user.id, target=account.email, detail=previous,
               ip=request.remote_addr or "")
        db.session.commit()
        flash(f"{account.email} is active again; a fetch was started.", "success")
    return redirect(url_for("admin.pop_health_list"))
