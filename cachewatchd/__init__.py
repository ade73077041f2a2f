"""cachewatchd: keep the Python code that runs equal to the code on disk.

The public Python API (docs/api.md): :func:`audit` judges every bytecode cache entry under some
directories, :func:`clean` removes the ones that should go. The names are loaded on first use
(PEP 562), so ``import cachewatchd`` stays cheap: it loads none of the daemon's dependencies
(watchdog, psutil, structlog), and the API itself needs none of them either.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing's own: 2 ms of every start-up (mypy honours this name too)

__version__ = "0.1.0"

__all__ = [
    "DANGEROUS",
    "AuditOptions",
    "AuditReport",
    "CleanResult",
    "Entry",
    "State",
    "__version__",
    "audit",
    "clean",
]

_LAZY = {
    "DANGEROUS": "cachewatchd.cache.audit",
    "AuditOptions": "cachewatchd.cache.audit",
    "AuditReport": "cachewatchd.cache.audit",
    "Entry": "cachewatchd.cache.audit",
    "State": "cachewatchd.cache.audit",
    "audit": "cachewatchd.cache.audit",
    "CleanResult": "cachewatchd.cache.clean",
    "clean": "cachewatchd.cache.clean",
}
"""Public name -> the module defining it. ``cachewatchd.audit`` is the function
:func:`cachewatchd.cache.audit.audit`, not the module ``cachewatchd.cache.audit``."""

if TYPE_CHECKING:
    # What type checkers and IDEs see. They do not see __getattr__ either: a misspelt name is an
    # error for them too, not an attribute of type object.
    from cachewatchd.cache.audit import DANGEROUS, AuditOptions, AuditReport, Entry, State, audit
    from cachewatchd.cache.clean import CleanResult, clean
else:

    def __getattr__(name: str) -> object:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # later lookups find it without calling __getattr__
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
