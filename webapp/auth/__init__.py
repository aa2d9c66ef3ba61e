"""Authentication: login, logout, sessions, password reset, IP restriction."""
from webapp.auth.blueprint import bp
from webapp.discovery import import_submodules

import_submodules("webapp.auth")  # each module registers its routes and hooks

__all__ = ["bp"]
