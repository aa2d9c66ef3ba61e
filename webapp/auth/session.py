"""Flask-Login wiring: sessions that end the moment a user is disabled, deleted or re-keyed."""
from __future__ import annotations

from flask import Flask, redirect, request, url_for
from flask_login import current_user

from webapp.extensions import db, login_manager
from webapp.models import User

# Endpoints a user who must change their password may still reach.
_OPEN_WHEN_MUST_CHANGE = {"settings.password_change", "auth.logout", "static"}


def init_login(app: Flask) -> None:
    """Configure Flask-Login and the forced-password-change gate."""
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Please log in to continue."
    login_manager.login_message_category = "info"
    login_manager.session_protection = "basic"

    @app.before_request
    def _force_password_change():
        if (current_user.is_authenticated and current_user.must_change_password
                and request.endpoint not in _OPEN_WHEN_MUST_CHANGE):
            return redirect(url_for("settings.password_change"))
        return None


@login_manager.user_loader
def load_user(identity: str) -> User | None:
    """Load the user of a session only if its version still matches and it is enabled."""
    user_id, _, version = identity.partition(":")
    if not user_id.isdigit() or not version.isdigit():
        return None
    user = db.session.get(User, int(user_id))
    if user is None or user.is_disabled or user.session_version != int(version):
        return None
    return user
