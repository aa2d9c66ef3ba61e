"""Import every module of a package, so each feature registers itself from its own file."""
from __future__ import annotations

import importlib
import pkgutil


def import_submodules(package_name: str) -> list:
    """Import all modules directly inside a package (sorted by name); return them."""
    package = importlib.import_module(package_name)
    modules = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            modules.append(importlib.import_module(f"{package_name}.{info.name}"))
    return modules
