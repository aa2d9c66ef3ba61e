"""Send Mail As identities, the organization relay and the outbox."""
from __future__ import annotations
