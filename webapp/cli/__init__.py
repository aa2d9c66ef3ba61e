"""Operator commands: `flask --app wsgi org|user|pop|worker|health|up …`.

Each command prints a clear error and exits non-zero on bad input, writes nothing when
it fails, and prints the id of what it created as the last line of its output.
"""
from __future__ import annotations

from flask import Flask

from webapp.cli.directory import org_cli, user_cli
from webapp.cli.ops import health_command, up_command, worker_command
from webapp.cli.pop import pop_cli


def register_cli(app: Flask) -> None:
    """Attach every operator command to the app."""
    for command in (org_cli, user_cli, pop_cli, worker_command, health_command, up_command):
        app.cli.add_command(command)
