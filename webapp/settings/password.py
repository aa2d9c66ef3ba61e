"""Settings » Password: change one's own password."""
from __future__ import annotations

from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user

from webapp.extensions import db
from webapp.services.accounts_admin import close_open_tokens
from webapp.services.audit import record
from webapp.services.passwords import WeakPasswordError, check_strength, hash_password, \
    verify_password
from webapp.settings.blueprint import bp, register_section
from webapp.settings.forms import PasswordChangeForm

register_section("Password", "settings.password_change",
                 "Change the password you log in with. Other sessions end when you do.", order=90)


@bp.route("/password", methods=["GET", "POST"])
@login_required
def password_change():
    """Change the password; every other session of the user ends."""
    form = PasswordChangeForm()
    if form.validate_on_submit():
        user = current_user._get_current_object()
        if not verify_password(user.password_hash, form.current_password.data):
            form.current_password.errors.append("That is not your current password.")
        elif form.new_password.data == form.current_password.data:
            form.new_password.errors.append("Choose a password different from the current one.")
        else:
            try:
                check_strength(form.new_password.data, user.email)
            except WeakPasswordError as exc:
                form.new_password.errors.append(str(exc))
            else:
                user.password_hash = hash_password(form.new_password.data)
                user.must_change_password = False
                user.session_version += 1
                # Reset and invitation links still open would undo this change.
                close_open_tokens(db.session, user.id)
                record(db.session, action="password.changed", org_id=user.org_id,
                       actor_id=user.id, target=user.email, ip=request.remote_addr or "")
                db.session.commit()
                login_user(user)  # this session continues under the new version
                flash("Your password was changed. Other sessions were logged out.", "success")
                return redirect(url_for("settings.settings_index"))
    return render_template("settings/password.html", form=form)
