"""The mail blueprint (/mail); each module of this package adds its routes to it."""
from __future__ import annotations

from flask import Blueprint

bp = Blueprint("mail", __name__, url_prefix="/mail")
