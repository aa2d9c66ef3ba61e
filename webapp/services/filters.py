"""Mail filters at delivery. Until the filters feature lands this decides nothing."""
from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from webapp.services.mime import Envelope


@dataclass
class FilterDecision:
    """What the user's filters decided for one incoming message."""

    folder_id: int | None = None  # None: the folder the delivery asked for
    is_read: bool = False
    is_flagged: bool = False
    filter_id: int | None = None
    actions: list[str] = field(default_factory=list)


def decide(session: Session, user_id: int, envelope: Envelope, raw: bytes) -> FilterDecision:
    """Run the user's enabled filters, in order, on an incoming message."""
    return FilterDecision()
