"""POP accounts, their fetch state, UIDL ledger and journal."""
from __future__ import annotations
