"""Admin » IP restriction: the organization's allowlist of networks."""
from __future__ import annotations

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user
from sqlalchemy import select

from admin.blueprint import bp, register_menu
from admin.forms import IpRulesForm
from admin.views.audit import audit_admin
from webapp.auth.forms import EmptyForm
from webapp.extensions import db
from webapp.models import IpRule
from webapp.services import ipfilter

register_menu("IP restriction", "admin.iprules_index", order=30)


def _rules_text(rules: list[IpRule]) -> str:
    return "\n".join(f"{r.network}  # {r.note}" if r.note else r.network for r in rules)


@bp.route("/ip-rules", methods=["GET", "POST"])
def iprules_index():
    """Show and replace the allowlist; a list that would lock out its saver is refused."""
    org_id = current_user.org_id
    rules = db.session.scalars(select(IpRule).where(IpRule.org_id == org_id)
                               .order_by(IpRule.id)).all()
    form = IpRulesForm()
    if request.method == "GET":
        form.rules.data = _rules_text(rules)
    address = request.remote_addr or ""
    if form.validate_on_submit():
        before = [r.network for r in rules]
        try:
            saved = ipfilter.replace_rules(db.session, org_id, ipfilter.parse_rules(form.rules.data),
                                           address)
        except ipfilter.IpRuleError as exc:
            db.session.rollback()
            form.rules.errors.append(str(exc))
        else:
            after = [r.network for r in saved]
            audit_admin("iprules.saved", "ip-rules", {"before": before, "after": after})
            db.session.commit()
            flash("Allowed networks saved." if after else
                  "The list is empty: logins are allowed from every network.", "success")
            return redirect(url_for("admin.iprules_index"))
    return render_template("admin/iprules.html", form=form, rules=rules, address=address,
                           allowed=ipfilter.address_allowed(address, [r.network for r in rules]),
                           action_form=EmptyForm())


@bp.route("/ip-rules/<int:rule_id>/delete", methods=["POST"])
def iprules_delete(rule_id: int):
    """Remove one network, unless that would lock out the admin removing it."""
    form = EmptyForm()
    if not form.validate_on_submit():
        abort(400)
    try:
        rule = ipfilter.remove_rule(db.session, current_user.org_id, rule_id,
                                    request.remote_addr or "")
    except LookupError:
        abort(404)
    except ipfilter.IpRuleError as exc:
        db.session.rollback()
        flash(str(exc), "error")
    else:
        audit_admin("iprules.deleted", rule.network, {"note": rule.note})
        db.session.commit()
        flash(f"{rule.network} was removed.", "success")
    return redirect(url_for("admin.iprules_index"))
