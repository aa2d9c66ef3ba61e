"""Helpers shared by the operator commands."""
from __future__ import annotations

import sys

import click


def fail(message: str) -> None:
    """Print an error to stderr and exit with status 1."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)
