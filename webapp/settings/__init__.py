"""Settings (/settings): one module per area, each registering its routes and its card."""
from webapp.settings.blueprint import bp
from webapp.settings import index, password  # noqa: F401  (register routes)

__all__ = ["bp"]
