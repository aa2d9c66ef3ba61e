"""Settings (/settings): one module per area, each registering its routes and its card."""
from webapp.discovery import import_submodules
from webapp.settings.blueprint import bp

import_submodules("webapp.settings")  # each module registers its routes and card

__all__ = ["bp"]
