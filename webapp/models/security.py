"""Password reset tokens and other admin-issued credentials."""
from __future__ import annotations
