"""Admin views, one module per area."""
from admin.views import dashboard  # noqa: F401
