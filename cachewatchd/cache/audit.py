"""Walk trees and judge every bytecode cache entry: the engine behind scan, clean and the daemon."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cachewatchd.cache.named import NamedTuple
from cachewatchd.cache.parallel import audit_results
from cachewatchd.cache.plan import AuditOptions, resolve_root
from cachewatchd.cache.pyc import (
    Mode,  # at run time too: typing.get_type_hints(Entry) finds it
    mirror_dir,
)
from cachewatchd.cache.rows import Result, Row, count_states, merged
from cachewatchd.cache.states import DANGEROUS, Kind, State

__all__ = [
    "DANGEROUS",
    "AuditError",
    "AuditOptions",
    "AuditReport",
    "Entry",
    "State",
    "audit",
    "build_report",
    "check_root",
    "mirror_dir",
    "row_of",
]

_STATES = {state.value: state for state in State}


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


class AuditError(NamedTuple):
    path: Path
    error: str


class AuditReport:
    """The judged entries: every entry that is not fresh, and fresh ones too with ``keep_fresh``.

    :meth:`summary` counts every judged entry, the fresh ones not kept included
    (``omitted_fresh``: fresh entries judged but not kept in ``entries``).
    """

    def __init__(
        self,
        roots: list[Path],
        entries: list[Entry] | None = None,
        errors: list[AuditError] | None = None,
        omitted_fresh: int = 0,
        notes: list[str] | None = None,
    ) -> None:
        self.roots = roots
        self.entries: list[Entry] = [] if entries is None else entries
        self.errors: list[AuditError] = [] if errors is None else errors
        self.omitted_fresh = omitted_fresh
        self.notes: list[str] = [] if notes is None else notes
        """What could not be judged exactly, each said once (no CPython X.Y found to check its
        pycs): those entries keep the verdict their header and times give."""

    def __repr__(self) -> str:
        return (
            f"AuditReport(roots={self.roots!r}, entries={self.entries!r}, "
            f"errors={self.errors!r}, omitted_fresh={self.omitted_fresh!r}, notes={self.notes!r})"
        )

    def summary(self) -> dict[str, int]:
        return count_states((entry.state.value for entry in self.entries), self.omitted_fresh)

    def non_fresh(self) -> list[Entry]:
        return [e for e in self.entries if e.state is not State.FRESH]

    def dangerous(self) -> bool:
        return any(e.state in DANGEROUS for e in self.entries)

    def merge(self, other: AuditReport) -> None:
        """Add *other*'s entries, errors and counts (its roots are not added)."""
        self.entries += other.entries
        self.errors += other.errors
        self.omitted_fresh += other.omitted_fresh
        self.notes += [note for note in other.notes if note not in self.notes]


def check_root(path: Path) -> Path:
    """:func:`~cachewatchd.cache.plan.resolve_root` as a :class:`~pathlib.Path`."""
    return Path(resolve_root(path))


class _Paths:
    """``Path`` objects for many strings of few directories: joining to a parent is cheaper."""

    def __init__(self) -> None:
        self._parents: dict[str, Path] = {}

    def __call__(self, path: str) -> Path:
        head, tail = os.path.split(path)
        parent = self._parents.get(head)
        if parent is None:
            parent = self._parents[head] = Path(head)
        return parent / tail


def build_report(roots: Sequence[Path], results: Sequence[Result]) -> AuditReport:
    """The report of *results*, in their order."""
    rows, errors, fresh, notes = merged(results)
    paths = _Paths()
    entries = [
        Entry(
            paths(path),
            None if source is None else paths(source),
            _STATES[state],
            reason,
            tag,
            opt,
            mode,
            kind,
        )
        for path, source, state, reason, tag, opt, mode, kind in rows
    ]
    return AuditReport(
        list(roots), entries, [AuditError(Path(p), error) for p, error in errors], fresh, notes
    )


def row_of(entry: Entry) -> Row:
    """*entry* as plain data (what :func:`build_report` made it from)."""
    source = None if entry.source is None else str(entry.source)
    return (str(entry.path), source, entry.state.value, *entry[3:])


def audit(roots: Sequence[Path], options: AuditOptions | None = None) -> AuditReport:
    """Judge every cache entry under *roots* (already resolved directories)."""
    opts = options if options is not None else AuditOptions()
    return build_report(roots, audit_results(roots, opts, jobs=1))
