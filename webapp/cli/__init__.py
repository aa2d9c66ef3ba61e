"""Operator commands: `flask --app wsgi org|user|pop|inbound|worker|health|up …`.

Each command prints a clear error and exits non-zero on bad input, writes nothing when
it fails, and prints the id of what it created as the last line of its output. Every
module of this package lists its commands in COMMANDS.
"""
from __future__ import annotations

from flask import Flask

from webapp.discovery import import_submodules


def register_cli(app: Flask) -> None:
    """Attach every operator command to the app."""
    for module in import_submodules("webapp.cli"):
        for command in getattr(module, "COMMANDS", ()):
            app.cli.add_command(command)
