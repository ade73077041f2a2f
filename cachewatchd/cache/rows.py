"""What an audit found, as plain data (rows travel through a pipe from ``--jobs`` processes), and
the collecting of it: fresh entries only counted unless kept, errors, each entry once."""

from __future__ import annotations

from collections.abc import Iterable

from cachewatchd.cache.pyc import Mode
from cachewatchd.cache.states import Kind, State, Verdict

__all__ = ["Collector", "Result", "Row", "count_states", "merged"]

Row = tuple[str, str | None, str, str, str, str, Mode | None, Kind]
"""One judged entry as plain data: path, source, state value, reason, tag, opt, mode, kind."""

Result = tuple[list[Row], list[tuple[str, str]], int, list[str]]
"""What an audit (or a part of one) found: rows, ``(path, error)`` pairs, fresh entries not kept,
notes (what the audit could not do exactly, each said once: no interpreter of a version found)."""


def count_states(states: Iterable[str], fresh: int) -> dict[str, int]:
    """Entries per state value, every state listed in order: *states* of the entries kept, and
    *fresh* ones judged but not kept."""
    counts = {state.value: 0 for state in State}
    counts[State.FRESH.value] = fresh
    for state in states:
        counts[state] += 1
    return counts


def merged(results: Iterable[Result]) -> Result:
    """*results* as one, in their order (each note once)."""
    rows: list[Row] = []
    errors: list[tuple[str, str]] = []
    fresh = 0
    notes: list[str] = []
    for part_rows, part_errors, part_fresh, part_notes in results:
        rows += part_rows
        errors += part_errors
        fresh += part_fresh
        notes += [note for note in part_notes if note not in notes]
    return rows, errors, fresh, notes


def _error_text(exc: OSError) -> str:
    return exc.strerror or str(exc)


class Collector:
    """Collects plain rows and errors until :meth:`take`.

    Fresh entries are only counted unless *keep_fresh*. With *dedup*, :meth:`first_visit` lets an
    entry reached twice (overlapping roots, a prefix tree inside a root) be judged once.
    """

    def __init__(self, *, keep_fresh: bool, dedup: bool) -> None:
        self._keep_fresh = keep_fresh
        self._seen: set[str] | None = set() if dedup else None
        self.rows: list[Row] = []
        self.errors: list[tuple[str, str]] = []
        self.fresh = 0
        self.notes: list[str] = []

    def take(self) -> Result:
        """What was collected since the last call."""
        result = (self.rows, self.errors, self.fresh, self.notes)
        self.rows, self.errors, self.fresh, self.notes = [], [], 0, []
        return result

    def on_error(self, path: str, exc: OSError) -> None:
        self.errors.append((path, _error_text(exc)))

    def add(
        self, path: str, source: str | None, verdict: Verdict, tag: str, opt: str, kind: Kind
    ) -> None:
        if verdict.state is State.FRESH and not self._keep_fresh:
            self.fresh += 1
            return
        self.rows.append(
            (path, source, verdict.state.value, verdict.reason, tag, opt, verdict.mode, kind)
        )

    def first_visit(self, path: str) -> bool:
        seen = self._seen
        if seen is None:
            return True
        if path in seen:
            return False
        seen.add(path)
        return True
