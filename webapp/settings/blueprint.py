"""The settings blueprint and the registry of sections its start page lists."""
from __future__ import annotations

from dataclasses import dataclass

from flask import Blueprint

bp = Blueprint("settings", __name__, url_prefix="/settings")


@dataclass(frozen=True)
class Section:
    """A card on the settings start page linking to one area."""

    title: str
    endpoint: str
    description: str
    order: int = 100


SECTIONS: list[Section] = []


def register_section(title: str, endpoint: str, description: str, order: int = 100) -> None:
    """Add an area's card to the settings start page (called once per module at import)."""
    SECTIONS.append(Section(title, endpoint, description, order))
    SECTIONS.sort(key=lambda s: s.order)
