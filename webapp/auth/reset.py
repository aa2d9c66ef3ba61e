"""Password links: "Forgot password?" (mailed to the recovery address) and the link page itself.

The same page serves reset links and invitations. Tokens are stored as sha256 only, work
once, expire, and using one ends every session of the user.
"""
from __future__ import annotations

import logging

from flask import current_app, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user, logout_user
from flask_wtf import FlaskForm
from sqlalchemy import select
from wtforms import PasswordField, StringField, SubmitField
from wtforms.validators import DataRequired, EqualTo, Length

from webapp.auth.blueprint import bp
from webapp.extensions import db
from webapp.models import User
from webapp.queue import get_redis
from webapp.services import accounts_admin, ipfilter
from webapp.services.audit import record
from webapp.services.passwords import WeakPasswordError

log = logging.getLogger("skydesk.auth")

# One self-service mail per account per window, so the form cannot be used to flood a mailbox.
FORGOT_MAIL_INTERVAL = 300


class ForgotPasswordForm(FlaskForm):
    """The address of the account whose password was forgotten."""

    email = StringField("Email address", validators=[DataRequired(), Length(max=320)],
                        render_kw={"autocomplete": "username", "autofocus": True})
    submit = SubmitField("Send me a reset link")


class SetPasswordForm(FlaskForm):
    """A new password, typed twice."""

    new_password = PasswordField("New password", validators=[DataRequired(), Length(max=1024)],
                                 render_kw={"autocomplete": "new-password", "autofocus": True},
                                 description="At least 10 characters; not a common password.")
    confirm = PasswordField("Repeat the new password",
                            validators=[DataRequired(), EqualTo("new_password",
                                                                "The two passwords differ.")],
                            render_kw={"autocomplete": "new-password"})
    submit = SubmitField("Set password")


def public_link(endpoint: str, **values) -> str:
    """An absolute link for mail or hand-over, on SKYDESK_PUBLIC_URL when it is configured.

    A configured base keeps a forged Host header out of links mailed to other people.
    """
    base = (current_app.config.get("SKYDESK_PUBLIC_URL") or "").rstrip("/")
    if base:
        return base + url_for(endpoint, **values)
    return url_for(endpoint, _external=True, **values)


def reset_mail_text(link: str, lifetime_text: str) -> str:
    """The body of a password-reset mail."""
    return (f"Someone (hopefully you) asked to reset the password of your SkyDesk Mail "
            f"account.\n\nSet a new password here (the link works once, for {lifetime_text}):"
            f"\n\n{link}\n\nIf you did not ask for this, ignore this mail: your password "
            "stays as it is.\n")


def _no_store(response):
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.route("/forgot", methods=["GET", "POST"])
def forgot_password():
    """Mail a reset link to the account's recovery address; the answer is the same either way."""
    form = ForgotPasswordForm()
    if form.validate_on_submit():
        email = form.email.data.strip().lower()
        user = db.session.scalar(select(User).where(User.email == email))
        recovery = accounts_admin.recovery_address_of(db.session, user.id) if user else ""
        if user is not None and not user.is_disabled and recovery and get_redis().set(
                f"skydesk:forgot:{user.id}", 1, nx=True, ex=FORGOT_MAIL_INTERVAL):
            raw = accounts_admin.issue_token(db.session, user, "reset")
            sent = accounts_admin.send_system_mail(
                db.session, user.org_id, recovery, "Reset your SkyDesk Mail password",
                reset_mail_text(public_link("auth.reset_password", token=raw), "one hour"))
            if sent:
                record(db.session, action="password.reset_requested", org_id=user.org_id,
                       actor_id=None, target=user.email, detail={"by": "self"},
                       ip=request.remote_addr or "")
                db.session.commit()
            else:
                db.session.rollback()
                log.warning("forgot-password: the outbox refused the mail; no link was issued")
        return render_template("auth/forgot_sent.html", email=email)
    return render_template("auth/forgot.html", form=form)


@bp.route("/reset/<token>", methods=["GET", "POST"])
def reset_password(token: str):
    """Set a password through a reset or invitation link (single use, expiring)."""
    found = accounts_admin.find_valid_token(db.session, token)
    if found is None:
        return _no_store(make_response(render_template("auth/reset_invalid.html"), 404))
    user = db.session.get(User, found.user_id)
    purpose = found.purpose
    form = SetPasswordForm()
    if form.validate_on_submit():
        address = request.remote_addr or ""
        if not ipfilter.address_allowed(address, ipfilter.org_networks(db.session, user.org_id)):
            if ipfilter.should_audit_refusal(get_redis(), user.id, address):
                record(db.session, action="ip.refused_reset", org_id=user.org_id,
                       actor_id=user.id, target=user.email, ip=address)
                db.session.commit()
            flash("Your organization does not allow access from this network.", "error")
            return _no_store(make_response(render_template(
                "auth/reset.html", form=form, purpose=purpose, user=user), 403))
        try:
            accounts_admin.redeem_token(db.session, token, form.new_password.data)
        except WeakPasswordError as exc:
            db.session.rollback()
            form.new_password.errors.append(str(exc))
        except accounts_admin.TokenInvalidError:
            db.session.rollback()
            return _no_store(make_response(render_template("auth/reset_invalid.html"), 404))
        else:
            record(db.session, action="invite.accepted" if purpose == "invite"
                   else "password.reset_used", org_id=user.org_id, actor_id=user.id,
                   target=user.email, ip=address)
            db.session.commit()
            if current_user.is_authenticated:
                logout_user()
            flash("Your password is set. Log in with it now.", "success")
            return redirect(url_for("auth.login"))
    return _no_store(make_response(render_template("auth/reset.html", form=form,
                                                   purpose=purpose, user=user)))
