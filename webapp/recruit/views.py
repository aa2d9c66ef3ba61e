"""The Recruit area (/recruit)."""
from __future__ import annotations

from flask import Blueprint
from flask_login import login_required

from webapp.placeholder import coming_soon

bp = Blueprint("recruit", __name__, url_prefix="/recruit")


@bp.route("/")
@login_required
def recruit_index():
    """The Recruit start page."""
    return coming_soon("Recruit", "Candidates and their correspondence are not built yet.")
