"""Operator commands for the message store: `flask --app wsgi blobs gc [--unpack]`."""
from __future__ import annotations

import click
from flask import current_app
from sqlalchemy import select

from webapp.extensions import db
from webapp.models import Blob
from webapp.services import blobs


@click.command("gc")
@click.option("--orphan-age", default=3600.0, show_default=True,
              help="Seconds before a file or pack no message uses is taken (younger ones may "
                   "belong to a delivery that has not committed yet).")
@click.option("--unpack", is_flag=True,
              help="Also move every packed message into a file of its own (before a downgrade).")
def gc_command(orphan_age: float, unpack: bool) -> None:
    """Remove stored messages nothing uses, and compact packs that are mostly deleted mail."""
    store = blobs.get_store(current_app.config["BLOB_DIR"])
    removed = blobs.collect_garbage(db.session, store, orphan_age=orphan_age)
    click.echo(f"Removed or compacted {removed} files and packs.")
    if unpack:
        packs = db.session.scalars(select(Blob.pack).where(Blob.pack.is_not(None))
                                   .distinct()).all()
        moved = sum(blobs.compact(db.session, store, name) for name in packs)
        click.echo(f"Unpacked {moved} messages from {len(packs)} packs.")


@click.group("blobs")
def blobs_group() -> None:
    """The message store (BLOB_DIR)."""


blobs_group.add_command(gc_command)
COMMANDS = [blobs_group]
