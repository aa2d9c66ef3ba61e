"""Admin views, one module per area; each registers its routes and its menu entry."""
from webapp.discovery import import_submodules

import_submodules("admin.views")
