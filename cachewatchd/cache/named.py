"""``class X(NamedTuple)`` without importing :mod:`typing` at run time.

``cachewatchd scan`` runs in pre-commit hooks on every commit; :mod:`typing` alone is about 2 ms of
its 25 ms budget, and the engine's records are its only run-time use. Type checkers see
:class:`typing.NamedTuple` itself; at run time the same class syntax makes the same thing typing
makes, a :func:`collections.namedtuple` with the class's defaults, docstring, methods and
``__annotations__`` (kept as written: with ``from __future__ import annotations``, strings, which
:func:`typing.get_type_hints` resolves as it does typing's ``ForwardRef``\\ s).

Use: ``from cachewatchd.cache.named import TYPE_CHECKING, NamedTuple``; annotation-only names go
under ``if TYPE_CHECKING:`` (mypy and ruff treat any constant of that name as typing's).
"""

from __future__ import annotations

import collections

__all__ = ["TYPE_CHECKING", "NamedTuple"]

TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import NamedTuple
else:
    # What typing refuses to take from a NamedTuple's body (they would break the tuple), and what
    # it does not copy onto the class.
    _PROHIBITED = frozenset(
        {"__new__", "__init__", "__slots__", "__getnewargs__", "_fields", "_field_defaults"}
        | {"_make", "_replace", "_asdict", "_source"}
    )
    _SPECIAL = frozenset({"__module__", "__name__", "__annotations__"})

    class _NamedTupleMeta(type):
        def __new__(mcs, typename, bases, ns):
            if bases != (NamedTuple,):
                raise TypeError("a NamedTuple derives from NamedTuple alone")
            annotations = dict(ns.get("__annotations__", {}))
            defaults = []
            for field in annotations:
                if field in ns:
                    defaults.append(ns[field])
                elif defaults:
                    raise TypeError(
                        f"Non-default namedtuple field {field} cannot follow default field"
                    )
            cls = collections.namedtuple(
                typename, list(annotations), defaults=defaults, module=ns["__module__"]
            )
            cls.__annotations__ = cls.__new__.__annotations__ = annotations
            for key, value in ns.items():
                if key in _PROHIBITED:
                    raise AttributeError(f"Cannot overwrite NamedTuple attribute {key}")
                if key not in _SPECIAL and key not in cls._fields:
                    setattr(cls, key, value)
            return cls

    NamedTuple = type.__new__(_NamedTupleMeta, "NamedTuple", (), {"__module__": __name__})
