"""Migrations: one head, and the migrated schema is exactly what the models declare."""
from __future__ import annotations

import logging

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from webapp.extensions import db


@pytest.fixture(autouse=True)
def _logging_left_as_found():
    """Alembic's env.py runs logging.fileConfig, which points the root logger at the
    sys.stderr of the moment: a test's capture stream, closed once the test ends. Later
    log records (a server thread's, say) would then fail with "Logging error"."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def include_object(obj, name, type_, reflected, compare_to):
    """The hand-made full-text objects (see migrations/env.py) are not in the models."""
    return not (name and name.startswith(("message_fts", "ix_message_text_fts")))


def _scripts(app):
    config = app.extensions["migrate"].migrate.get_config()
    return ScriptDirectory.from_config(config)


def test_migrations_have_one_head(app):
    assert len(_scripts(app).get_heads()) == 1


def test_every_revision_has_a_message(app):
    for revision in _scripts(app).walk_revisions():
        assert revision.doc and revision.doc.strip(), revision.revision


def test_upgraded_schema_matches_models(app):
    """`db upgrade` from empty ran for this run's database (SQLite or PostgreSQL)."""
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True,
                                                         "include_object": include_object})
        diff = compare_metadata(context, db.metadata)
    assert diff == []


def test_downgrade_to_base_and_up_again(app, tmp_path):
    """The revisions reverse cleanly on a scratch SQLite database."""
    from flask_migrate import downgrade, upgrade

    from webapp import create_app

    scratch = create_app({"INSTANCE_PATH": str(tmp_path)},
                         environ={"SKYDESK_ENV": "test",
                                  "DATABASE_URL": f"sqlite:///{tmp_path / 'scratch.db'}"})
    with scratch.app_context():
        upgrade()
        downgrade(revision="base")
        upgrade()
        db.engine.dispose()


def test_downgrade_refuses_while_messages_are_packed(app, tmp_path, capsys):
    """0009's downgrade would strand packed bytes: it stops and names the command to run."""
    from flask_migrate import downgrade, upgrade
    from sqlalchemy import text

    from webapp import create_app

    scratch = create_app({"INSTANCE_PATH": str(tmp_path)},
                         environ={"SKYDESK_ENV": "test",
                                  "DATABASE_URL": f"sqlite:///{tmp_path / 'scratch.db'}"})
    with scratch.app_context():
        upgrade()
        db.session.execute(text("INSERT INTO blob (sha256, size, refcount, created_at, pack, "
                                "pack_offset) VALUES (:s, 3, 1, CURRENT_TIMESTAMP, :p, 0)"),
                           {"s": "a" * 64, "p": "ab/" + "c" * 32})
        db.session.commit()
        with pytest.raises(SystemExit):  # Flask-Migrate logs the error and exits
            downgrade(revision="0008")
        assert "run `flask --app wsgi blobs gc --unpack` before downgrading" in capsys.readouterr().err
        db.session.execute(text("DELETE FROM blob"))
        db.session.commit()
        downgrade(revision="0008")
        db.session.remove()
        db.engine.dispose()


def test_downgrades_keep_the_rows_that_point_at_the_altered_tables(app, tmp_path):
    """0010 and 0009 drop columns of outgoing_message and blob, which other rows point at
    (outgoing_recipient with ON DELETE CASCADE, message without): on SQLite with foreign
    keys on, rebuilding those tables would delete or refuse them. Nothing is lost."""
    from flask_migrate import downgrade, upgrade
    from sqlalchemy import text

    from webapp import create_app
    from webapp.services import outbox
    from webapp.services.directory import create_organization

    scratch = create_app({"INSTANCE_PATH": str(tmp_path)},
                         environ={"SKYDESK_ENV": "test",
                                  "DATABASE_URL": f"sqlite:///{tmp_path / 'scratch.db'}",
                                  "BLOB_DIR": str(tmp_path / "blobs")})
    tables = ("outgoing_message", "outgoing_recipient", "blob", "message")

    def counts() -> dict[str, int]:
        db.session.remove()
        return {table: db.session.execute(text(f"SELECT count(*) FROM {table}")).scalar()
                for table in tables}

    with scratch.app_context():
        upgrade()
        _org, user = create_organization(db.session, name="Acme", domain="acme.example",
                                         admin_email="ann@acme.example",
                                         admin_password="correct horse battery")
        outbox.queue_message(db.session, user, None, "a@remote.example, b@remote.example",
                             "", "", "Hello", "Body\n", None, [], None, None)
        db.session.commit()
        before = counts()
        assert before["outgoing_recipient"] == 2 and before["blob"] >= 1

        downgrade(revision="0008")
        assert counts() == before
        upgrade()
        assert counts() == before
        db.session.remove()
        db.engine.dispose()


def test_outbox_rows_outlive_their_collected_bytes_across_0011(app, tmp_path):
    """0011 lets `blobs gc` collect the bytes of a cancelled message although its outbox row
    stays; its downgrade gives such rows their blob row back (bytes gone, count 0), so the
    foreign key holds again and no row is lost. On this run's kind of database."""
    import os

    from flask_migrate import downgrade, upgrade
    from sqlalchemy import text

    from tests.scratch_db import scratch_database
    from webapp import create_app
    from webapp.services import blobs, outbox
    from webapp.services.directory import create_organization

    drop = None
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        url, drop = scratch_database(url)
    else:
        url = f"sqlite:///{tmp_path / 'scratch.db'}"
    scratch = create_app({"INSTANCE_PATH": str(tmp_path)},
                         environ={"SKYDESK_ENV": "test", "DATABASE_URL": url,
                                  "BLOB_DIR": str(tmp_path / "blobs")})

    def count(table: str) -> int:
        # Read and let go: an open read would hold off a migration's ALTER on PostgreSQL.
        try:
            return db.session.execute(text(f"SELECT count(*) FROM {table}")).scalar()
        finally:
            db.session.remove()

    try:
        with scratch.app_context():
            upgrade()
            _org, user = create_organization(db.session, name="Acme", domain="acme.example",
                                             admin_email="ann@acme.example",
                                             admin_password="correct horse battery")
            kept, cancelled = (outbox.queue_message(
                db.session, user, None, "a@remote.example, b@remote.example", "", "", subject,
                "Body\n", None, [], None, None).id for subject in ("Kept", "Cancelled"))
            db.session.commit()
            assert outbox.cancel(db.session, user.id, cancelled)
            db.session.commit()
            store = blobs.get_store(scratch.config["BLOB_DIR"])
            assert blobs.collect_garbage(db.session, store) == 1  # the cancelled one's bytes
            rows, recipients, blob_rows = (count("outgoing_message"),
                                           count("outgoing_recipient"), count("blob"))

            downgrade(revision="0010")
            assert (count("outgoing_message"), count("outgoing_recipient"), count("blob")) == \
                (rows, recipients, blob_rows + 1)
            if db.engine.dialect.name == "sqlite":
                assert db.session.execute(text("PRAGMA foreign_key_check")).all() == []
            upgrade()
            assert (count("outgoing_message"), count("outgoing_recipient")) == (rows, recipients)
            if db.engine.dialect.name == "sqlite":  # turned back on for the pooled connection
                assert db.session.execute(text("PRAGMA foreign_keys")).scalar() == 1
            db.session.remove()
            db.engine.dispose()
    finally:
        if drop:
            drop()
