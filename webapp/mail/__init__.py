"""Webmail (/mail): folders, lists, messages, compose; one module per part."""
from webapp.discovery import import_submodules
from webapp.mail.blueprint import bp

import_submodules("webapp.mail")  # each module registers its routes on bp

__all__ = ["bp"]
