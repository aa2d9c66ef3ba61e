"""Settings » Recovery address: where "Forgot password?" links are mailed."""
from __future__ import annotations

from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField, SubmitField
from wtforms.validators import DataRequired, Length, Optional

from webapp.extensions import db
from webapp.services.accounts_admin import recovery_address_of, set_recovery_address
from webapp.services.audit import record
from webapp.services.passwords import verify_password
from webapp.services.directory import DirectoryError
from webapp.settings.blueprint import bp, register_section

register_section("Recovery address", "settings.recovery_edit",
                 "An address outside this mailbox where a forgotten-password link can reach you.",
                 order=95)


class RecoveryForm(FlaskForm):
    """Set or clear the recovery address."""

    email = StringField("Recovery address", validators=[Optional(), Length(max=320)],
                        description="Leave empty to remove it. Use a personal address, not this "
                                    "mailbox: if you cannot log in you cannot read mail here.")
    current_password = PasswordField(
        "Your password", validators=[DataRequired()],
        render_kw={"autocomplete": "current-password"},
        description="Needed because this address can reset your password.")
    submit = SubmitField("Save")


@bp.route("/recovery", methods=["GET", "POST"])
@login_required
def recovery_edit():
    """Show and change the user's own recovery address."""
    user = current_user._get_current_object()
    form = RecoveryForm()
    if not form.is_submitted():
        form.email.data = recovery_address_of(db.session, user.id)
    if form.validate_on_submit():
        old = recovery_address_of(db.session, user.id)
        if not verify_password(user.password_hash, form.current_password.data):
            # Whoever holds a session must not be able to point resets at their own mailbox.
            form.current_password.errors.append("That is not your current password.")
            return render_template("settings/recovery.html", form=form)
        try:
            set_recovery_address(db.session, user, form.email.data)
        except DirectoryError as exc:
            db.session.rollback()
            form.email.errors.append(str(exc))
        else:
            record(db.session, action="recovery.changed", org_id=user.org_id, actor_id=user.id,
                   target=user.email, detail={"from": old, "to": recovery_address_of(
                       db.session, user.id)}, ip=request.remote_addr or "")
            db.session.commit()
            flash("Recovery address saved." if form.email.data else "Recovery address removed.",
                  "success")
            return redirect(url_for("settings.settings_index"))
    return render_template("settings/recovery.html", form=form)
