"""The CRM area (/crm)."""
from __future__ import annotations

from flask import Blueprint
from flask_login import login_required

from webapp.placeholder import coming_soon

bp = Blueprint("crm", __name__, url_prefix="/crm")


@bp.route("/")
@login_required
def crm_index():
    """The CRM start page."""
    return coming_soon("CRM", "Contacts, leads and potentials with their correspondence are coming next.")
