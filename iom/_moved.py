"""Old module paths of the template service, kept for one release (0.1.x) after the split of
``iom/service/`` into :mod:`iom.store`, :mod:`iom.search` and :mod:`iom.cli`.

Each old module (``iom/service/store.py`` and the rest) is a shim whose attributes come from
the module that now holds them, with a :class:`DeprecationWarning` naming the new path. They go
in the next minor release.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable

#: old module → the module that now holds its names
MOVED = {
    "iom.service.errors": "iom.errors",
    "iom.service.store": "iom.store.base",
    "iom.service.sqlite_store": "iom.store.sqlite",
    "iom.service.postgres_store": "iom.store.postgres",
    "iom.service.stores": "iom.store.factory",
    "iom.service.packing": "iom.search.packing",
    "iom.service.search": "iom.search.gallery",
    "iom.service.galleries": "iom.search.galleries",
    "iom.service.sharded_search": "iom.search.sharded",
    "iom.service.cli": "iom.cli.main",
    "iom.service.cli_commands": "iom.cli.commands",
    "iom.service.cli_request": "iom.cli.request",
    "iom.service.cli_inputs": "iom.cli.inputs",
    "iom.service.cli_output": "iom.cli.output",
}


def forward(old: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` for the shim ``old``: each name is looked up in its new module
    (warning once per name), an unknown name is an ``AttributeError`` as usual."""
    new = MOVED[old]

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = getattr(importlib.import_module(new), name)     # AttributeError names the new module
        warnings.warn(f"{old} is deprecated: use {new}.{name} (the old path goes in the next minor release)",
                      DeprecationWarning, stacklevel=2)
        return value

    return __getattr__
