"""The audit log: who did what, to what, from where."""
from __future__ import annotations

import json

from sqlalchemy.orm import Session

from webapp.models import AuditEvent


def record(session: Session, *, action: str, org_id: int | None, actor_id: int | None = None,
           target: str = "", detail: dict | None = None, ip: str = "") -> AuditEvent:
    """Add an audit row to the session; it commits with the change it describes."""
    event = AuditEvent(org_id=org_id, actor_id=actor_id, action=action, target=target[:255],
                       detail=json.dumps(detail or {}, sort_keys=True), ip=ip[:64])
    session.add(event)
    return event
