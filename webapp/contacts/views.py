"""The Contacts area (/contacts)."""
from __future__ import annotations

from flask import Blueprint
from flask_login import login_required

from webapp.placeholder import coming_soon

bp = Blueprint("contacts", __name__, url_prefix="/contacts")


@bp.route("/")
@login_required
def contacts_index():
    """The Contacts start page."""
    return coming_soon("Contacts", "Your personal address book is not built yet.")
