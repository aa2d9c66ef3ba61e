"""A plain page for areas that are not built yet, so navigation never dead-ends."""
from __future__ import annotations

from flask import render_template


def coming_soon(title: str, text: str):
    """Render the 'not built yet' page in the app's look."""
    return render_template("placeholder.html", title=title, text=text)
