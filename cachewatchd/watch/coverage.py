"""Coverage of a native root: which directories hold no inotify watch, and the repair after storms.

After start, coverage is verified independently (:func:`verify`): every directory the walk finds
must hold a watch. It is verified again after every storm (:func:`repair`): once no new directory
has appeared for :data:`SETTLE` seconds (at most :data:`SETTLE_MAX` after the first) the subtrees
that appeared are walked; a directory found without a watch is watched again with its subtree and
its sources are reported changed (their edits may have been missed); what still cannot be watched
is the reason the root falls back to polling.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cachewatchd.cache.walk import VENV_MARKER, Excluder, WalkOptions, walk, walk_stack
from cachewatchd.paths import is_under
from cachewatchd.watch.events import EventSink
from cachewatchd.watch.native import Guard

__all__ = ["SETTLE", "SETTLE_MAX", "coverage_gaps", "repair", "verify", "walked_rel"]

SETTLE = 0.2
"""Seconds without a new directory before the subtrees that appeared are checked."""
SETTLE_MAX = 2.0
"""During a long storm, seconds after the first new directory when they are checked anyway."""


def _ignore(path: str, exc: OSError) -> None:
    pass


def coverage_gaps(
    root: Path, watched: set[str], options: WalkOptions, *, below: str | None = None
) -> list[str]:
    """Directories below *root* (pruned as every walk prunes) that exist but hold no watch.

    With *below*, only that sub-directory's subtree is walked; nothing when *below* is outside the
    root or pruned itself (excluded, ``__pycache__``, inside a virtual environment).
    """
    if below is None:
        found = [path for path, _ in walk(str(root), options, _ignore)]
    else:
        excluder = Excluder(options)
        rel = walked_rel(str(root), below, excluder)
        if rel is None:
            return []
        stack = [(below, rel)]
        found = [path for path, _ in walk_stack(stack, excluder, _ignore, top_is_root=not rel)]
    return sorted(p for p in found if p not in watched and os.path.isdir(p))


def walked_rel(root: str, below: str, excluder: Excluder) -> str | None:
    """*below* relative to *root* (``/``-separated), or None when a walk of the root never
    enters it: outside the root, or an excluded, ``__pycache__`` or venv directory on the way."""
    if below == root:
        return ""
    if not is_under(below, root):
        return None
    parts = os.path.relpath(below, root).split(os.sep)
    for i, name in enumerate(parts, 1):
        if name == "__pycache__" or excluder.excluded(name, "/".join(parts[:i])):
            return None
        inside = os.path.join(root, *parts[:i])
        if i < len(parts) and _has_venv(inside) and excluder.is_venv([VENV_MARKER]):
            return None  # (*below* itself is judged by the walk)
    return "/".join(parts)


def _has_venv(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, VENV_MARKER))


def _outermost(paths: Iterable[str]) -> list[str]:
    """*paths* without those below another one of them (linear after sorting: a path sorted by
    its components comes right after its ancestors)."""
    kept: list[str] = []
    for path in sorted(set(paths), key=lambda p: p.split(os.sep)):
        if not (kept and is_under(path, kept[-1])):
            kept.append(path)
    return kept


def verify(guard: Guard, options: WalkOptions, stopping: threading.Event) -> str | None:
    """Why the native observer of *guard*'s root, just started, does not cover it, or None."""
    if guard.limit is not None:
        return guard.limit
    gaps = coverage_gaps(Path(guard.root), guard.watched(), options)
    if gaps:  # a directory created meanwhile may still be on its way to a watch: look again
        stopping.wait(0.1)
        watched = guard.watched()
        gaps = [g for g in gaps if g not in watched and os.path.isdir(g)]
    gap = _unwatched(gaps) if gaps else None
    return guard.limit or gap  # the limit may have been hit meanwhile: say so first


def repair(
    root: Path,
    guard: Guard,
    subtrees: Iterable[str],
    *,
    options: WalkOptions,
    sink: EventSink,
    stopping: threading.Event,
    log: Any,
) -> str | None:
    """Watch again what *subtrees* (directories that appeared below *root*) hold without a
    watch; report their sources changed. Returns why the root must fall back to polling (a
    limit was hit, or a directory is still without a watch), or None."""
    tops = _outermost(subtrees)
    watched = guard.watched()
    gaps = [g for top in tops for g in coverage_gaps(root, watched, options, below=top)]
    if gaps:  # the inotify thread may still be on its way there (a loaded machine): look again
        stopping.wait(SETTLE)
        watched = guard.watched()
        gaps = [g for g in gaps if g not in watched and os.path.isdir(g)]
    if not gaps:
        return None
    repaired = _outermost(gaps)
    for top in repaired:
        guard.rewatch(top)
    log.info(
        "rewatched",
        root=str(root),
        path=repaired[0],
        directories=len(gaps),
        reason="left without a watch",
    )
    for top in repaired:  # their events may have been missed
        for source in guard.sources(top):
            sink.source_changed(Path(source))
    watched = guard.watched()
    left = [g for g in gaps if g not in watched and os.path.isdir(g)]
    if guard.limit is not None or left:
        return guard.limit or _unwatched(left)
    return None


def _unwatched(gaps: Sequence[str]) -> str:
    noun = "directory" if len(gaps) == 1 else "directories"
    return f"{len(gaps)} {noun} left unwatched (first: {gaps[0]})"
