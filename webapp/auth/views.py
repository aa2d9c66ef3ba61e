"""Login and logout."""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user
from sqlalchemy import select

from webapp.auth.blueprint import bp
from webapp.auth.forms import EmptyForm, LoginForm
from webapp.extensions import db
from webapp.models import User
from webapp.models._types import utcnow
from webapp.queue import get_redis
from webapp.services import throttle
from webapp.services.audit import record
from webapp.services.passwords import hash_password, needs_rehash, verify_password

# One message for every failure, so the form does not tell who has an account.
LOGIN_FAILED = "That email and password do not match an active account."


def _limits() -> throttle.ThrottleLimits:
    cfg = current_app.config
    return throttle.ThrottleLimits(window=cfg["LOGIN_THROTTLE_WINDOW"],
                                   per_account_ip=cfg["LOGIN_THROTTLE_PER_ACCOUNT_IP"],
                                   per_ip=cfg["LOGIN_THROTTLE_PER_IP"],
                                   per_account=cfg["LOGIN_THROTTLE_PER_ACCOUNT"])


def _safe_next(target: str | None) -> str:
    """Only follow a `next` that stays on this site."""
    if target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and target.startswith("/") \
                and not target.startswith("//"):
            return target
    return url_for("main.home")


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Show the login form; check the password under throttling."""
    if current_user.is_authenticated:
        return redirect(url_for("main.home"))
    form = LoginForm()
    if form.validate_on_submit():
        email = form.email.data.strip().lower()
        ip = request.remote_addr or "unknown"
        conn = get_redis()
        wait = throttle.seconds_blocked(conn, _limits(), email, ip)
        if wait:
            minutes = max(1, (wait + 59) // 60)
            flash(f"Too many failed attempts. Try again in about {minutes} minute"
                  f"{'s' if minutes != 1 else ''}.", "error")
            return render_template("auth/login.html", form=form), 429
        user = db.session.scalar(select(User).where(User.email == email))
        if user is None or not verify_password(user.password_hash, form.password.data) \
                or user.is_disabled:
            throttle.record_failure(conn, _limits(), email, ip)
            if user is not None:
                record(db.session, action="login.failed", org_id=user.org_id, actor_id=None,
                       target=user.email, ip=ip)
                db.session.commit()
            flash(LOGIN_FAILED, "error")
            return render_template("auth/login.html", form=form), 200
        throttle.record_success(conn, email, ip)
        if needs_rehash(user.password_hash):
            user.password_hash = hash_password(form.password.data)
        user.last_login_at = utcnow()
        record(db.session, action="login", org_id=user.org_id, actor_id=user.id,
               target=user.email, ip=ip)
        db.session.commit()
        login_user(user, remember=form.remember.data)
        return redirect(_safe_next(request.args.get("next")))
    return render_template("auth/login.html", form=form)


@bp.route("/logout", methods=["POST"])
@login_required
def logout():
    """End the session (POST with a CSRF token, so no page can log you out)."""
    form = EmptyForm()
    if form.validate_on_submit():
        logout_user()
        flash("You are logged out.", "info")
    return redirect(url_for("auth.login"))
