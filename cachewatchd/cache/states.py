"""What a judged cache entry is: the seven states (README, "The states of a cache entry"), a
verdict, a judged entry, and the error of a file that vanished while being judged."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from cachewatchd.cache.named import TYPE_CHECKING, NamedTuple
from cachewatchd.cache.pyc import Mode  # at run time too: typing.get_type_hints(Entry) finds it

if TYPE_CHECKING:
    from typing import Literal, TypeAlias

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


class Entry(NamedTuple):
    """One judged cache file."""

    path: Path
    source: Path | None
    state: State
    reason: str
    tag: str
    opt: str
    mode: Mode | None
    kind: Kind = "pycache"


class Verdict(NamedTuple):
    state: State
    reason: str
    mode: Mode | None = None


class VanishedError(Exception):
    """The pyc or its source disappeared while being judged."""
