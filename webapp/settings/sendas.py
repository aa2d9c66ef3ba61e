"""Settings » Send Mail As: the addresses a user sends as, their proof and their transport."""
from __future__ import annotations

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from webapp.extensions import db
from webapp.services import outbox, sendas
from webapp.settings.blueprint import bp, register_section
from webapp.settings.sendas_forms import AddIdentityForm, ConfirmIdentityForm, EditIdentityForm

register_section("Send Mail As", "settings.sendas_index",
                 "Send from your other addresses (e.g. Gmail), through our relay or their own "
                 "SMTP server.", order=20)


def _owned(identity_id: int):
    identity = sendas.get_identity(db.session, current_user.id, identity_id)
    if identity is None:
        abort(404)
    return identity


def _confirm_link(identity_id: int):
    return lambda code: url_for("settings.sendas_confirm_link", identity_id=identity_id,
                                code=code, _external=True)


@bp.route("/sendas")
@login_required
def sendas_index():
    """Every address of the user with its state, and the form to add one."""
    identities = sendas.list_identities(db.session, current_user._get_current_object())
    db.session.commit()  # the hosted identity, created on first visit
    return render_template("settings/sendas.html", identities=identities, form=AddIdentityForm())


@bp.route("/sendas/add", methods=["POST"])
@login_required
def sendas_add():
    """Add an external address and mail it a confirmation code."""
    form = AddIdentityForm()
    user = current_user._get_current_object()
    if form.validate_on_submit():
        try:
            identity = sendas.add_identity(db.session, user, form.email.data,
                                           form.display_name.data or "")
            sendas.send_confirmation(db.session, identity, _confirm_link(identity.id))
        except (sendas.SendAsError, outbox.OutboxError) as error:
            db.session.rollback()
            form.email.errors.append(str(error))
        else:
            db.session.commit()
            flash(f"A confirmation code was sent to {identity.email}. Enter it below or open "
                  "the link in that message.", "success")
            return redirect(url_for("settings.sendas_edit", identity_id=identity.id))
    identities = sendas.list_identities(db.session, user)
    return render_template("settings/sendas.html", identities=identities, form=form), 400


def _edit_form(identity) -> EditIdentityForm:
    form = EditIdentityForm(obj=identity if request.method == "GET" else None)
    if request.method == "GET":
        form.smtp_password.data = ""
    return form


@bp.route("/sendas/<int:identity_id>", methods=["GET", "POST"])
@login_required
def sendas_edit(identity_id: int):
    """Edit name, reply-to and transport; confirm, test or delete the address."""
    identity = _owned(identity_id)
    form = _edit_form(identity)
    if form.validate_on_submit():
        try:
            sendas.update_identity(
                db.session, identity, display_name=form.display_name.data or "",
                reply_to=form.reply_to.data or "", transport=form.transport.data,
                smtp_host=form.smtp_host.data or "", smtp_port=form.smtp_port.data or 587,
                smtp_security=form.smtp_security.data, smtp_username=form.smtp_username.data or "",
                smtp_password=form.smtp_password.data or None)
        except sendas.SmtpPasswordError as error:
            # Said on the password field: a changed server or login needs it typed again.
            db.session.rollback()
            form.smtp_password.errors.append(str(error))
        except sendas.SendAsError as error:
            db.session.rollback()
            form.form_errors.append(str(error))
        else:
            db.session.commit()
            flash(f"Saved the settings of {identity.email}.", "success")
            return redirect(url_for("settings.sendas_edit", identity_id=identity.id))
    return render_template("settings/sendas_edit.html", identity=identity, form=form,
                           confirm_form=ConfirmIdentityForm(),
                           has_password=bool(identity.smtp_password_encrypted)), \
        400 if request.method == "POST" else 200


@bp.route("/sendas/<int:identity_id>/confirm", methods=["POST"])
@login_required
def sendas_confirm(identity_id: int):
    """Confirm the address with the code from the message sent to it."""
    identity = _owned(identity_id)
    form = ConfirmIdentityForm()
    if form.validate_on_submit():
        try:
            sendas.confirm_identity(db.session, identity, form.code.data)
        except sendas.SendAsError as error:
            db.session.commit()  # the failed attempt counts
            flash(str(error), "error")
        else:
            db.session.commit()
            flash(f"{identity.email} is confirmed: you can send as it now.", "success")
    return redirect(url_for("settings.sendas_edit", identity_id=identity.id))


@bp.route("/sendas/<int:identity_id>/confirm/<code>")
@login_required
def sendas_confirm_link(identity_id: int, code: str):
    """The link in the confirmation message: show a button (a GET must not change anything)."""
    identity = _owned(identity_id)
    form = ConfirmIdentityForm(data={"code": code[:20]})
    return render_template("settings/sendas_confirm.html", identity=identity, form=form)


@bp.route("/sendas/<int:identity_id>/resend", methods=["POST"])
@login_required
def sendas_resend(identity_id: int):
    """Mail a new confirmation code (the old one stops working)."""
    identity = _owned(identity_id)
    if identity.is_verified:
        return redirect(url_for("settings.sendas_edit", identity_id=identity.id))
    try:
        sendas.send_confirmation(db.session, identity, _confirm_link(identity.id))
    except outbox.OutboxError as error:
        db.session.rollback()
        flash(str(error), "error")
    else:
        db.session.commit()
        flash(f"A new code was sent to {identity.email}.", "success")
    return redirect(url_for("settings.sendas_edit", identity_id=identity.id))


@bp.route("/sendas/<int:identity_id>/test", methods=["POST"])
@login_required
def sendas_test(identity_id: int):
    """Connect, secure and sign in with the saved settings; say what happened in words."""
    identity = _owned(identity_id)
    ok, message = sendas.test_identity(db.session, identity)
    db.session.rollback()
    flash(message, "success" if ok else "error")
    return redirect(url_for("settings.sendas_edit", identity_id=identity.id))


@bp.route("/sendas/<int:identity_id>/delete", methods=["POST"])
@login_required
def sendas_delete(identity_id: int):
    """Remove an external address (messages already queued keep their From)."""
    identity = _owned(identity_id)
    try:
        sendas.delete_identity(db.session, identity)
    except sendas.SendAsError as error:
        db.session.rollback()
        flash(str(error), "error")
        return redirect(url_for("settings.sendas_edit", identity_id=identity_id))
    db.session.commit()
    flash("The address was removed.", "success")
    return redirect(url_for("settings.sendas_index"))
