"""The auth blueprint (login, logout, password reset); each module adds its routes."""
from __future__ import annotations

from flask import Blueprint

bp = Blueprint("auth", __name__)
