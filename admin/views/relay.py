"""Admin » Relay & limits: the organization's outgoing relay (smarthost) and daily limits."""
from __future__ import annotations

from flask import current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from wtforms import IntegerField, PasswordField, SelectChoice, SelectField, StringField, SubmitField
from wtforms.validators import InputRequired, Length, NumberRange, Optional

from admin.blueprint import bp, register_menu
from webapp.extensions import db
from webapp.services import outbox, sendas
from webapp.services.audit import record

register_menu("Relay & limits", "admin.relay_settings", order=60)


class RelayForm(FlaskForm):
    """The relay every hosted address sends through, and the daily limits."""

    host = StringField("Relay host (smarthost)", validators=[Optional(), Length(max=253)],
                       render_kw={"placeholder": "smtp.example.com"},
                       description="Empty: sending through the relay is off.")
    port = IntegerField("Port", default=587,
                        validators=[InputRequired(), NumberRange(1, 65535, "1 to 65535.")])
    security = SelectField("Security", choices=[
        SelectChoice("starttls", "STARTTLS (usually port 587)"),
        SelectChoice("ssl", "SSL (usually port 465)"),
        SelectChoice("none", "None (only for a relay on this machine or a private network)")])
    username = StringField("Username", validators=[Optional(), Length(max=320)],
                           render_kw={"autocomplete": "off"})
    password = PasswordField("Password", validators=[Optional(), Length(max=1024)],
                             render_kw={"autocomplete": "new-password"},
                             description="Stored encrypted, never shown; empty keeps the stored one.")
    envelope_policy = SelectField("Envelope sender (MAIL FROM)", choices=[
        SelectChoice("hosted", "The user's hosted address (bounces reach the user; SPF of "
                               "your domain)"),
        SelectChoice("from", "The From address of the message"),
        SelectChoice("fixed", "One fixed address (below)")])
    envelope_sender = StringField("Fixed envelope sender", validators=[Optional(), Length(max=320)],
                                  render_kw={"placeholder": "bounces@example.com"})
    daily_limit_user = IntegerField("Messages per user per day", default=500,
                                    validators=[InputRequired(), NumberRange(0, 10_000_000)],
                                    description="0: no limit. Counted once per message.")
    daily_limit_org = IntegerField("Messages per organization per day", default=5000,
                                   validators=[InputRequired(), NumberRange(0, 100_000_000)],
                                   description="0: no limit.")
    submit = SubmitField("Save")


@bp.route("/relay", methods=["GET", "POST"])
def relay_settings():
    """Show and change the relay settings; every change is audited."""
    org_id = current_user.org_id
    row = outbox.get_or_create_relay(db.session, org_id)
    form = RelayForm(obj=row if request.method == "GET" else None)
    if request.method == "GET":
        form.password.data = ""
    if form.validate_on_submit():
        try:
            changes = outbox.save_relay(
                db.session, org_id, host=form.host.data or "", port=form.port.data,
                security=form.security.data, username=form.username.data or "",
                password=form.password.data or None, envelope_policy=form.envelope_policy.data,
                envelope_sender=form.envelope_sender.data or "",
                daily_limit_user=form.daily_limit_user.data,
                daily_limit_org=form.daily_limit_org.data)
        except outbox.OutboxError as error:
            db.session.rollback()
            form.form_errors.append(str(error))
        else:
            if changes:
                record(db.session, action="relay.changed", org_id=org_id,
                       actor_id=current_user.id, target="relay", detail=changes,
                       ip=request.remote_addr or "")
            db.session.commit()
            flash("Relay settings saved." if changes else "Nothing changed.", "success")
            return redirect(url_for("admin.relay_settings"))
    db.session.rollback()  # a row created only to show defaults is not stored by a GET
    status = 400 if request.method == "POST" else 200
    return render_template("admin/relay.html", form=form,
                           has_password=bool(row.password_encrypted),
                           sent_today=outbox.sent_today(db.session, "org", org_id)), status


@bp.route("/relay/test", methods=["POST"])
def relay_test():
    """Connect, secure and sign in to the saved relay; say what happened in words."""
    relay = outbox.relay_settings(db.session, current_user.org_id)
    if not relay.configured:
        flash("No relay host is saved yet.", "error")
    else:
        ok, message = sendas.test_smtp(relay.host, relay.port, relay.security, relay.username,
                                       relay.password, current_app.config.get("MAIL_CA_BUNDLE"))
        flash(message, "success" if ok else "error")
    return redirect(url_for("admin.relay_settings"))
