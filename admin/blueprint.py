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


ADMIN_MENU: list[tuple[int, str, str]] = []


def register_menu(title: str, endpoint: str, order: int = 100) -> None:
    """Add an entry to the admin side menu (called once per view module at import)."""
    ADMIN_MENU.append((order, title, endpoint))
    ADMIN_MENU.sort()


@bp.app_context_processor
def _admin_menu():
    return {"admin_menu": ADMIN_MENU}
