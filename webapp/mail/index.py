"""The Mail area (/mail)."""
from __future__ import annotations

from flask_login import login_required

from webapp.mail.blueprint import bp
from webapp.placeholder import coming_soon


@bp.route("/")
@login_required
def mail_index():
    """The Mail start page."""
    return coming_soon("Mail", "Your folders and messages will appear here once the webmail lands.")
