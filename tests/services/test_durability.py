"""Commits that need not wait for the disk (webapp.durability), on the real databases."""
from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from webapp import durability
from webapp.extensions import db
from webapp.models import Organization

FULL, NORMAL = 2, 1


def _synchronous(dbapi_connection) -> int:
    return dbapi_connection.execute("PRAGMA synchronous").fetchone()[0]


def _only(dialect: str) -> None:
    if db.engine.dialect.name != dialect:
        pytest.skip(f"{dialect} only")


def test_sqlite_relaxes_until_told_or_until_the_connection_goes_back(app, org):
    _only("sqlite")
    with db.engine.connect() as connection:
        dbapi_connection = connection.connection.dbapi_connection
        session = Session(bind=connection)
        assert _synchronous(dbapi_connection) == FULL  # every connection starts synced

        assert durability.relax(session) is True
        assert _synchronous(dbapi_connection) == NORMAL
        session.get(Organization, org.id).name = "Relaxed"
        session.commit()
        assert _synchronous(dbapi_connection) == NORMAL  # held: stays relaxed, no statement

        durability.strict(session)
        assert _synchronous(dbapi_connection) == FULL
        session.rollback()

        assert durability.relax(session) is True
        session.rollback()
        session.close()
    # Back in the pool: synced again for whoever takes it next.
    assert _synchronous(dbapi_connection) == FULL
    db.session.expire_all()
    assert db.session.scalar(select(Organization.name).where(Organization.id == org.id)) == \
        "Relaxed"


def test_sqlite_cannot_relax_a_transaction_that_already_wrote(app, org):
    _only("sqlite")
    with db.engine.connect() as connection:
        dbapi_connection = connection.connection.dbapi_connection
        session = Session(bind=connection)
        session.get(Organization, org.id).name = "Written first"
        session.flush()
        assert durability.relax(session) is False  # the commit then simply stays synced
        assert _synchronous(dbapi_connection) == FULL
        session.commit()
        session.close()


def test_postgresql_relaxes_the_holder_until_the_connection_goes_back(app, org):
    _only("postgresql")

    def setting(connection) -> str:
        return connection.exec_driver_sql("SHOW synchronous_commit").scalar_one()

    with db.engine.connect() as connection:
        session = Session(bind=connection)  # the session's transactions are the connection's
        default = setting(session.connection())
        session.rollback()
        assert default != "off"

        assert durability.relax(session) is True
        assert setting(session.connection()) == "off"
        session.get(Organization, org.id).name = "Relaxed"
        session.commit()
        assert setting(session.connection()) == "off"  # held: stays relaxed, no statement
        session.rollback()

        durability.strict(session)  # this transaction only
        assert setting(session.connection()) == default
        session.commit()
        assert setting(session.connection()) == "off"
        session.rollback()
        pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        connection.rollback()
        session.close()
    # Back in the pool: synced again for whoever takes it next (the same server process).
    with db.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one() == pid
        assert setting(connection) == default
    db.session.expire_all()
    assert db.session.scalar(select(Organization.name).where(Organization.id == org.id)) == \
        "Relaxed"


def test_postgresql_a_relaxing_rolled_back_leaves_commits_synced(app, org):
    _only("postgresql")
    with db.engine.connect() as connection:
        assert durability.relax(connection) is True
        connection.rollback()  # takes the SET with it
        assert connection.exec_driver_sql("SHOW synchronous_commit").scalar_one() != "off"
        assert durability.relax(connection) is True  # says relaxed: only slower, never less safe
        connection.rollback()


def test_a_bare_connection_relaxes_its_own_transaction(app, org):
    """The send job writes outcomes on its connection directly, without a Session."""
    table = Organization.__table__
    with db.engine.connect() as connection:
        dialect = connection.dialect.name
        assert durability.relax(connection) is True
        if dialect == "sqlite":
            assert _synchronous(connection.connection.dbapi_connection) == NORMAL
        else:
            assert connection.exec_driver_sql("SHOW synchronous_commit").scalar_one() == "off"
        connection.execute(table.update().where(table.c.id == org.id).values(name="Bare"))
        connection.commit()
        durability.strict(connection)
        if dialect == "sqlite":
            assert _synchronous(connection.connection.dbapi_connection) == FULL
        else:
            assert connection.exec_driver_sql("SHOW synchronous_commit").scalar_one() != "off"
        connection.rollback()
    db.session.expire_all()
    assert db.session.scalar(select(Organization.name).where(Organization.id == org.id)) == "Bare"


def test_the_apps_scoped_session_is_accepted_too(app, org):
    """Flask-SQLAlchemy's db.session is a scoped_session, not a Session."""
    assert durability.relax(db.session) is True
    durability.strict(db.session)
    db.session.rollback()
