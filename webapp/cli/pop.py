"""Operator commands for POP accounts: `flask --app wsgi pop add|fetch|status`."""
from __future__ import annotations

from flask.cli import AppGroup

pop_cli = AppGroup("pop", help="POP accounts fetched by the worker.")

COMMANDS = [pop_cli]
