"""IP restriction: an organization's allowlist enforced at login and on every request.

The client address is ``request.remote_addr`` only. When the app runs behind proxies,
``create_app`` applies Werkzeug's ProxyFix for exactly ``TRUSTED_PROXIES`` hops, so an
X-Forwarded-For header a client makes up never decides its address; this module never
reads that header itself.
"""
from __future__ import annotations

from flask import Response, flash, render_template, request
from flask_login import current_user, logout_user
from sqlalchemy import select

from webapp.auth.blueprint import bp
from webapp.auth.forms import LoginForm
from webapp.auth.views import LOGIN_FAILED
from webapp.extensions import db
from webapp.models import User
from webapp.queue import get_redis
from webapp.services import ipfilter
from webapp.services.audit import record

# Endpoints that serve no user data and must load for the refusal page itself.
_UNCHECKED_ENDPOINTS = {"static"}


def _audit_refusal(user: User, action: str, address: str) -> None:
    """Write the refusal to the audit log, at most once per user and address per window."""
    if ipfilter.should_audit_refusal(get_redis(), user.id, address):
        record(db.session, action=action, org_id=user.org_id, actor_id=user.id,
               target=user.email, detail={"path": request.path[:200]}, ip=address)
        db.session.commit()


def _refused_login() -> tuple[str, int]:
    """The login page with the generic failure: a refusal looks like any failed login."""
    flash(LOGIN_FAILED, "error")
    return render_template("auth/login.html", form=LoginForm()), 200


def _refused_request() -> Response:
    response = Response(render_template(
        "errors/error.html", code=403, title="Not allowed from this network",
        text="Your organization allows access only from certain networks, and this "
             "connection comes from outside them. You were logged out."), status=403)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.before_app_request
def _enforce_ip_restriction():
    """Refuse a login (before its password is checked) or any request from outside the list."""
    if request.endpoint in _UNCHECKED_ENDPOINTS:
        return None
    address = request.remote_addr or ""
    if current_user.is_authenticated:
        networks = ipfilter.org_networks(db.session, current_user.org_id)
        if ipfilter.address_allowed(address, networks):
            return None
        user = current_user._get_current_object()
        logout_user()
        _audit_refusal(user, "ip.refused_request", address)
        return _refused_request()
    if request.endpoint == "auth.login" and request.method == "POST":
        email = (request.form.get("email") or "").strip().lower()
        user = db.session.scalar(select(User).where(User.email == email)) if email else None
        if user is None:
            return None
        if not ipfilter.address_allowed(address, ipfilter.org_networks(db.session, user.org_id)):
            _audit_refusal(user, "ip.refused_login", address)
            return _refused_login()
    return None
