"""The settings start page."""
from __future__ import annotations

from flask import render_template
from flask_login import login_required

from webapp.settings.blueprint import SECTIONS, bp


@bp.route("/")
@login_required
def settings_index():
    """List every settings area."""
    return render_template("settings/index.html", sections=SECTIONS)
