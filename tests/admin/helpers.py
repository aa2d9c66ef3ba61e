"""Helpers of the control-panel tests: the real login form from a chosen address, secrets read off pages."""
from __future__ import annotations

import re

from tests.conftest import csrf_from
from webapp.models import AuditEvent
from webapp.extensions import db
from sqlalchemy import select

LINK = re.compile(rb'value="(https?://[^"]+/reset/([^"]+))"')
ONE_TIME = re.compile(rb'id="secret-password" class="secret-value" readonly value="([^"]+)"')


def login(client, email: str, password: str, ip: str = "10.0.0.1", headers=None):
    """Post the real login form from a given client address."""
    page = client.get("/login", environ_base={"REMOTE_ADDR": ip}, headers=headers)
    return client.post("/login", data={"email": email, "password": password,
                                       "csrf_token": csrf_from(page)},
                       environ_base={"REMOTE_ADDR": ip}, headers=headers)


def link_token(response) -> str:
    """The raw token of the link a credential page shows."""
    match = LINK.search(response.data)
    assert match, response.data.decode(errors="replace")[:2000]
    return match.group(2).decode()


def one_time_password(response) -> str:
    """The one-time password a credential page shows."""
    match = ONE_TIME.search(response.data)
    assert match, response.data.decode(errors="replace")[:2000]
    return match.group(1).decode()


def audit_actions(org_id: int) -> list[str]:
    """The audit actions of an organization, oldest first."""
    db.session.expire_all()
    return list(db.session.scalars(select(AuditEvent.action).where(AuditEvent.org_id == org_id)
                                   .order_by(AuditEvent.id)))
