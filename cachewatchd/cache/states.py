"""What a judged cache entry is: the seven states (README, "The states of a cache entry"), a
verdict, and the error of a file that vanished while being judged. The judged entry of the API,
:class:`~cachewatchd.cache.audit.Entry`, is there (its paths are pathlib's, which the engine and
``cachewatchd scan`` do without); ``states.Entry`` still finds it."""

from __future__ import annotations

from enum import Enum

from cachewatchd.cache.named import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from typing import Literal, TypeAlias

    from cachewatchd.cache.audit import Entry
    from cachewatchd.cache.pyc import Mode

__all__ = ["DANGEROUS", "Entry", "Kind", "State", "VanishedError", "Verdict"]


class State(str, Enum):
    """The state of one cache entry; the user-facing vocabulary."""

    FRESH = "fresh"
    OUTDATED = "outdated"
    STALE = "stale"
    SUSPECT = "suspect"
    ORPHAN = "orphan"
    SOURCELESS = "sourceless"
    CORRUPT = "corrupt"

    def __str__(self) -> str:
        return self.value


DANGEROUS = frozenset({State.STALE, State.SOURCELESS, State.CORRUPT})

if TYPE_CHECKING:
    Kind: TypeAlias = Literal["pycache", "legacy", "prefix"]
else:
    Kind = str  # what type checkers see as the Literal: the importers' name, without typing


class Verdict(NamedTuple):
    state: State
    reason: str
    mode: Mode | None = None


if not TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        if name == "Entry":  # where it was defined before; loaded on first use (PEP 562)
            from cachewatchd.cache.audit import Entry

            return Entry
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class VanishedError(Exception):
    """The pyc or its source disappeared while being judged."""
