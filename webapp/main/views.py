"""The landing route and small shared pages."""
from __future__ import annotations

from flask import Blueprint, redirect, url_for
from flask_login import login_required

bp = Blueprint("main", __name__)


@bp.route("/")
@login_required
def home():
    """Send a logged-in user to their mail."""
    return redirect(url_for("mail.mail_index"))


@bp.route("/healthz")
def healthz():
    """Liveness for load balancers: the process answers."""
    return {"status": "ok"}
