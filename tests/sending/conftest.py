"""Fixtures of the sending tests: an organization relay pointing at a real aiosmtpd."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import event, update

from webapp.extensions import db
from webapp.models._types import utcnow
from webapp.models.sending import OrgRelay, OutgoingMessage
from webapp.services.secrets import encrypt_secret


@pytest.fixture(autouse=True)
def _no_cached_sessions(smtp_server):
    """Every test starts and ends without SMTP sessions kept for reuse, and without servers
    remembered as taking one session at a time (a later test's server may get its port).

    It asks for the server factory so that its teardown runs first: sessions are closed
    while their servers still run, and the servers close their side too."""
    from worker.jobs.send import _one_session_until, close_cached_connections

    close_cached_connections()
    _one_session_until.clear()
    yield
    close_cached_connections()
    _one_session_until.clear()


@pytest.fixture
def use_relay(app, org):
    """Point an organization's relay at a started test server (optionally with a login)."""
    def configure(server, *, org_id: int | None = None, username: str = "", password: str = "",
                  security: str = "none", daily_limit_user: int = 0, daily_limit_org: int = 0,
                  envelope_policy: str = "hosted") -> OrgRelay:
        org_id = org_id or org.id
        relay = db.session.query(OrgRelay).filter_by(org_id=org_id).one_or_none() or \
            OrgRelay(org_id=org_id)
        relay.host, relay.port, relay.security = server.host, server.port, security
        relay.username = username
        relay.password_encrypted = encrypt_secret(app.config["MAIL_SECRET_KEYS"], password) \
            if password else ""
        relay.daily_limit_user, relay.daily_limit_org = daily_limit_user, daily_limit_org
        relay.envelope_policy = envelope_policy
        db.session.add(relay)
        db.session.commit()
        return relay
    return configure


def make_due(outgoing_id: int) -> None:
    """Skip the backoff wait of a message in retry-wait (the test's clock moves on)."""
    db.session.execute(update(OutgoingMessage).where(OutgoingMessage.id == outgoing_id)
                       .values(next_attempt_at=utcnow() - timedelta(seconds=1)))
    db.session.commit()


@contextmanager
def statements(wanted: Callable[[str], bool]) -> Iterator[list[str]]:
    """The SQL statements the app's engine runs inside the block that `wanted` picks."""
    seen: list[str] = []

    def note(connection, cursor, statement, parameters, context, executemany) -> None:
        if wanted(statement):
            seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", note)
