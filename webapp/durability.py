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

On PostgreSQL this holds for the one transaction (SET LOCAL). SQLite's setting belongs to
the connection: it stays relaxed, saving a statement per transaction, for every later
transaction of whoever holds the connection, until `strict(session)` or until the
connection goes back to the pool, which restores it. So a holder that relaxes once must
call `strict` before any transaction that has to be synced; no one else ever gets a
relaxed connection.
"""
from __future__ import annotations

import sqlite3

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

# Set in a pooled connection's info while its commits do not wait for the disk.
_RELAXED = "skydesk_commits_relaxed"


def _connection(session: Session | Connection) -> Connection:
    return session.connection() if isinstance(session, Session) else session


def relax(session: Session | Connection) -> bool:
    """Let this transaction's commit return without waiting for the disk; whether it does.

    Call it before the transaction writes anything: SQLite cannot change its safety level
    inside a transaction, and the commit then simply stays synced. `session` may be a
    Session or the Connection whose transaction it is.
    """
    connection = _connection(session)
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
        return True
    if dialect != "sqlite":
        return False
    pooled = connection.connection
    if pooled.info.get(_RELAXED):
        return True
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
    if pooled.info.get(_RELAXED):
        pooled.dbapi_connection.execute("PRAGMA synchronous=FULL")
        del pooled.info[_RELAXED]


def restore_on_checkin(engine: Engine) -> None:
    """Put a relaxed SQLite connection back to synchronous=FULL when it returns to the pool."""

    @event.listens_for(engine, "checkin")
    def _restore(dbapi_connection, record) -> None:
        if dbapi_connection is not None and record.info.pop(_RELAXED, False):
            try:
                dbapi_connection.execute("PRAGMA synchronous=FULL")
            except sqlite3.Error:
                record.invalidate()  # never pooled again with its commits unsynced
