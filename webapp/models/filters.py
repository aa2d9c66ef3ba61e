"""Mail filters: conditions and actions run on every incoming message."""
from __future__ import annotations
