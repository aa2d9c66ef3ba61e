"""The admin blueprint and the one guard that covers all of it."""
from __future__ import annotations

from flask import Blueprint, abort
from flask_login import current_user

bp = Blueprint("admin", __name__, template_folder="templates")


@bp.before_request
def _admins_only():
    """Not an organization admin → 404, so the panel is not even revealed."""
    if not current_user.is_authenticated or not current_user.is_admin:
        abort(404)
