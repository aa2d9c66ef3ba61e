"""Commits that need not wait for the disk.

Every commit waits until it is on disk before it returns: SQLite runs with
synchronous=FULL, PostgreSQL with its default synchronous_commit. POP relies on it (it
deletes mail from the server only after the commit that stored it).

A transaction whose loss on a power cut is harmless, while a crash of this process must
still lose nothing, may call `relax(session)` before its first write. Its commit then
returns once the database has it, without waiting for the disk: SQLite writes its WAL
without syncing it (synchronous=NORMAL), PostgreSQL does not wait for its WAL flush
(synchronous_commit=off). A killed worker loses nothing; a power cut (or a crash of the
operating system, or of the PostgreSQL server) may roll back the most recent such commits
(on SQLite, those since its WAL was last synced), leaving the rows as they were before.

The setting belongs to the connection (SQLite's PRAGMA; PostgreSQL's SET without LOCAL):
it stays relaxed, saving a statement (on PostgreSQL, a round trip) per transaction, for
every later transaction of whoever holds the connection, until the connection goes back
to the pool, which restores it. So a holder that relaxes once must call `strict` before
any transaction that has to be synced: on SQLite it undoes the relaxing, on PostgreSQL it
syncs that one transaction (SET LOCAL), the later ones staying relaxed. No one else ever
gets a relaxed connection. (A PostgreSQL transaction that relaxed and then rolled back
takes its SET with it: its holder's commits are then synced, which is only slower.)
"""
from __future__ import annotations

import sqlite3

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

# Set in a pooled connection's info while its commits do not wait for the disk.
_RELAXED = "skydesk_commits_relaxed"


def _connection(session: Session | Connection) -> Connection:
    # Not isinstance(Session): Flask-SQLAlchemy's db.session is a scoped_session.
    return session if isinstance(session, Connection) else session.connection()


def relax(session: Session | Connection) -> bool:
    """Let this transaction's commit return without waiting for the disk; whether it does.

    Call it before the transaction writes anything: SQLite cannot change its safety level
    inside a transaction, and the commit then simply stays synced. `session` may be a
    Session or the Connection whose transaction it is.
    """
    connection = _connection(session)
    dialect = connection.dialect.name
    if dialect not in ("postgresql", "sqlite"):
        return False
    pooled = connection.connection
    if pooled.info.get(_RELAXED):
        return True
    if dialect == "postgresql":
        connection.exec_driver_sql("SET synchronous_commit TO OFF")
    else:
        try:
            pooled.dbapi_connection.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.OperationalError:  # "may not be changed inside a transaction"
            return False
    pooled.info[_RELAXED] = True
    return True


def strict(session: Session | Connection) -> None:
    """Make this transaction's commit wait for the disk (call it before the first write).

    Raises if SQLite cannot change its safety level here, rather than commit unsynced.
    """
    connection = _connection(session)
    pooled = connection.connection
    if not pooled.info.get(_RELAXED):
        return
    if connection.dialect.name == "postgresql":
        # For this transaction only: the connection's own setting stays relaxed.
        connection.exec_driver_sql("SET LOCAL synchronous_commit TO DEFAULT")
    else:
        pooled.dbapi_connection.execute("PRAGMA synchronous=FULL")
        del pooled.info[_RELAXED]


def restore_on_checkin(engine: Engine) -> None:
    """Put a relaxed connection back to synced commits when it returns to the pool."""

    @event.listens_for(engine, "checkin")
    def _restore(dbapi_connection, record) -> None:
        if dbapi_connection is not None and record.info.pop(_RELAXED, False):
            try:
                if isinstance(dbapi_connection, sqlite3.Connection):
                    dbapi_connection.execute("PRAGMA synchronous=FULL")
                else:
                    dbapi_connection.rollback()
                    dbapi_connection.execute("RESET synchronous_commit")
                    dbapi_connection.commit()
            except Exception:  # noqa: BLE001 - whatever the driver raises
                record.invalidate()  # never pooled again with its commits unsynced
