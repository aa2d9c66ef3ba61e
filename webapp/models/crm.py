"""CRM records and their activities; correspondence is a query, not a copy."""
from __future__ import annotations
