"""The organization control panel, mounted at /admin."""
from admin.blueprint import bp
from admin import views  # noqa: F401  (registers the routes on bp)

__all__ = ["bp"]
