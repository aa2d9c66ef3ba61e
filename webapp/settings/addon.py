"""Settings » Add-on accounts: the account feeding CRM and Recruit; never-tracked addresses."""
from __future__ import annotations

from flask import abort, flash, redirect, render_template, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from sqlalchemy import select
from wtforms import SelectField, StringField, SubmitField
from wtforms.validators import DataRequired, Length

from webapp.crm.forms import choices
from webapp.extensions import db
from webapp.models import MailAccount
from webapp.services import crm
from webapp.services.addon import AddonError, get_addon_account, set_addon_account
from webapp.settings.blueprint import bp, register_section

register_section("Add-on accounts", "settings.addon_settings",
                 "Choose which mail account feeds the CRM and Recruit, and which addresses "
                 "are never tracked.", order=40)


class AddonAccountsForm(FlaskForm):
    """Pick the account feeding each add-on."""

    crm_account = SelectField("CRM reads mail from", coerce=int,
                              description="Mail in this account to and from your contacts, "
                                          "leads and potentials shows on their pages.")
    recruit_account = SelectField("Recruit reads mail from", coerce=int)
    submit = SubmitField("Save")


class ExclusionForm(FlaskForm):
    """Add an address or a domain that is never tracked."""

    value = StringField("Address or domain", validators=[DataRequired(), Length(max=320)],
                        description="For example a private address, or your bank's domain "
                                    "(bank.example, which also covers its subdomains).")
    submit = SubmitField("Never track")


class RemoveExclusionForm(FlaskForm):
    """The remove button of one exclusion (CSRF only)."""

    submit = SubmitField("Remove")


def _account_choices() -> list[tuple[int, str]]:
    accounts = db.session.scalars(select(MailAccount).where(MailAccount.user_id == current_user.id)
                                  .order_by(MailAccount.kind != "hosted", MailAccount.email))
    return choices((a.id, f"{a.email} ({'hosted' if a.kind == 'hosted' else a.kind.upper()})")
                   for a in accounts)


@bp.route("/addon", methods=["GET", "POST"])
@login_required
def addon_settings():
    """Choose the add-on accounts."""
    form = AddonAccountsForm()
    choices = _account_choices()
    form.crm_account.choices = choices
    form.recruit_account.choices = choices
    if form.validate_on_submit():
        try:
            set_addon_account(db.session, current_user.id, "crm", form.crm_account.data)
            set_addon_account(db.session, current_user.id, "recruit", form.recruit_account.data)
        except AddonError as exc:
            db.session.rollback()
            flash(str(exc), "error")
        else:
            db.session.commit()
            flash("Add-on accounts saved. Record pages show mail from the new account at once.",
                  "success")
            return redirect(url_for("settings.addon_settings"))
    elif not form.is_submitted():
        for service, field in (("crm", form.crm_account), ("recruit", form.recruit_account)):
            account = get_addon_account(db.session, current_user.id, service)
            field.data = account.id if account else None
    return render_template("settings/addon.html", form=form,
                           exclusion_form=ExclusionForm(formdata=None),
                           remove_form=RemoveExclusionForm(formdata=None),
                           exclusions=crm.exclusions_of(db.session, current_user.id))


@bp.route("/addon/exclusions", methods=["POST"])
@login_required
def addon_exclusion_add():
    """Never track an address or a domain."""
    form = ExclusionForm()
    if form.validate_on_submit():
        try:
            row = crm.add_exclusion(db.session, current_user, form.value.data)
        except crm.CrmError as exc:
            db.session.rollback()
            flash(str(exc), "error")
        else:
            db.session.commit()
            flash(f"{row.value} is no longer tracked.", "success")
    else:
        flash("Type an address or a domain.", "error")
    return redirect(url_for("settings.addon_settings"))


@bp.route("/addon/exclusions/<int:exclusion_id>/delete", methods=["POST"])
@login_required
def addon_exclusion_delete(exclusion_id: int):
    """Track an address or a domain again."""
    form = RemoveExclusionForm()
    if not form.validate_on_submit():
        abort(400)
    if not crm.remove_exclusion(db.session, current_user.id, exclusion_id):
        abort(404)
    db.session.commit()
    flash("Tracked again.", "success")
    return redirect(url_for("settings.addon_settings"))
