"""Coalesce filesystem and git events into batches handled one at a time.

Observers call the :class:`Batcher`'s feeding methods from their own threads. A batch closes after a
quiet period without events or, during a storm, after a maximum window since its first event; it is then
handed to ``on_batch`` on the batcher's own thread. While a batch is being handled, new events gather in
the next one, so a 10k-file checkout gives a handful of batches, not 10k calls. What a watchdog event
means for a batch: :mod:`cachewatchd.watch.events`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cachewatchd.log import get_logger
from cachewatchd.threads import daemon_thread

__all__ = [
    "Batch",
    "Batcher",
    "Debounce",
    "GitMove",
    "Rescan",
]

DEFAULT_QUIET = 0.03
DEFAULT_MAX_WINDOW = 1.0


@dataclass(frozen=True)
class GitMove:
    """HEAD (or the stash) of the repository whose work tree is *repo* moved from *old* to *new*."""

    repo: Path
    old: str | None
    new: str | None


@dataclass(frozen=True)
class Rescan:
    """A request to audit *root* again, e.g. after an event-queue overflow."""

    root: Path
    reason: str


@dataclass(frozen=True)
class Batch:
    """Everything that happened during one window.

    A path may be in both ``changed`` and ``removed`` (deleted then re-created within the window): the
    handler decides by looking at the file system.
    """

    changed: frozenset[Path] = frozenset()
    """Sources created, modified, or moved to this path."""
    removed: frozenset[Path] = frozenset()
    """Sources deleted or moved away from this path."""
    dirs_removed: frozenset[Path] = frozenset()
    """Directories deleted or moved away: every source below them went away."""
    git_moves: frozenset[GitMove] = frozenset()
    git_settled: frozenset[Path] = frozenset()
    """Work trees where git finished without moving HEAD (the daemon held a restart for them)."""
    rescans: frozenset[Rescan] = frozenset()
    pycs: frozenset[Path] = frozenset()
    """Pycs written under a root (the daemon compares each with its source)."""
    events: int = 0
    """How many raw events were folded into this batch."""

    def __bool__(self) -> bool:
        return self.events > 0


@dataclass
class Debounce:
    """When does the current window close? Pure arithmetic on a clock reading, no threads."""

    quiet: float = DEFAULT_QUIET
    max_window: float = DEFAULT_MAX_WINDOW
    first: float | None = None
    last: float | None = None

    def note(self, now: float) -> None:
        """Record an event at *now*."""
        if self.first is None:
            self.first = now
        self.last = now

    def deadline(self) -> float | None:
        """Clock reading at which the window closes; ``None`` while no event is pending."""
        if self.first is None or self.last is None:
            return None
        return min(self.last + self.quiet, self.first + self.max_window)

    def due(self, now: float) -> bool:
        deadline = self.deadline()
        return deadline is not None and now >= deadline

    def reset(self) -> None:
        self.first = self.last = None


@dataclass
class _Pending:
    changed: set[Path] = field(default_factory=set)
    removed: set[Path] = field(default_factory=set)
    dirs_removed: set[Path] = field(default_factory=set)
    git_moves: dict[Path, GitMove] = field(default_factory=dict)
    git_settled: set[Path] = field(default_factory=set)
    rescans: dict[Path, Rescan] = field(default_factory=dict)
    pycs: set[Path] = field(default_factory=set)
    events: int = 0

    def freeze(self) -> Batch:
        return Batch(
            changed=frozenset(self.changed),
            removed=frozenset(self.removed),
            dirs_removed=frozenset(self.dirs_removed),
            git_moves=frozenset(self.git_moves.values()),
            git_settled=frozenset(self.git_settled),
            rescans=frozenset(self.rescans.values()),
            pycs=frozenset(self.pycs),
            events=self.events,
        )


class Batcher:
    """Thread-safe event sink that hands closed batches to ``on_batch`` on its own thread.

    ``on_batch`` is called for one batch at a time; an exception it raises is logged (event ``error``)
    and the batcher carries on. :meth:`stop` hands over what is pending as a last batch, then joins.
    """

    def __init__(
        self,
        on_batch: Callable[[Batch], None],
        *,
        quiet: float = DEFAULT_QUIET,
        max_window: float = DEFAULT_MAX_WINDOW,
        clock: Callable[[], float] = time.monotonic,
        name: str = "cachewatchd-batcher",
    ) -> None:
        if quiet <= 0 or max_window <= 0:
            raise ValueError("quiet and max_window must be positive")
        self._on_batch = on_batch
        self._clock = clock
        self._cond = threading.Condition()
        self._window = Debounce(quiet, max_window)
        self._pending = _Pending()
        self._stopping = False
        self._flush_now = False
        self._busy = False
        self._batches = 0
        self._thread = daemon_thread(self._run, name)
        self._log = get_logger(__name__)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Hand over the pending events as a last batch and wait for the thread to end."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> Batcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def batches(self) -> int:
        """How many batches were handed over so far."""
        with self._cond:
            return self._batches

    def flush(self) -> None:
        """Close the current window now instead of waiting for the quiet period."""
        with self._cond:
            self._flush_now = True
            self._cond.notify_all()

    def alive(self) -> bool:
        """The batcher thread is running."""
        return self._thread.is_alive()

    def pending(self) -> int:
        """Events waiting for the next batch."""
        with self._cond:
            return self._pending.events

    def idle(self) -> bool:
        """True when nothing is pending and no batch is being handled."""
        with self._cond:
            return self._pending.events == 0 and not self._busy

    # -- feeding (any thread) --------------------------------------------------------------------
    def source_changed(self, path: Path) -> None:
        self._add(lambda p: p.changed.add(path))

    def source_removed(self, path: Path) -> None:
        self._add(lambda p: p.removed.add(path))

    def dir_removed(self, path: Path) -> None:
        self._add(lambda p: p.dirs_removed.add(path))

    def pyc_written(self, path: Path) -> None:
        self._add(lambda p: p.pycs.add(path))

    def git_moved(self, move: GitMove) -> None:
        def merge(p: _Pending) -> None:
            earlier = p.git_moves.get(move.repo)
            old = earlier.old if earlier is not None else move.old
            p.git_moves[move.repo] = GitMove(move.repo, old, move.new)

        self._add(merge)

    def git_settled(self, repo: Path) -> None:
        self._add(lambda p: p.git_settled.add(repo))

    def rescan(self, root: Path, reason: str) -> None:
        def merge(p: _Pending) -> None:
            earlier = p.rescans.get(root)
            if earlier is not None and reason not in earlier.reason.split("; "):
                p.rescans[root] = Rescan(root, f"{earlier.reason}; {reason}")
            elif earlier is None:
                p.rescans[root] = Rescan(root, reason)

        self._add(merge)

    def _add(self, apply: Callable[[_Pending], None]) -> None:
        with self._cond:
            if self._stopping and not self._thread.is_alive():
                return
            apply(self._pending)
            was_empty = self._pending.events == 0
            self._pending.events += 1
            self._window.note(self._clock())
            if was_empty:
                # Later events only push the deadline back: the waiting thread notices when it wakes.
                self._cond.notify_all()

    # -- the batcher thread ----------------------------------------------------------------------
    def _next_batch(self) -> Batch | None:
        """Block until a batch closes; ``None`` when stopping with nothing pending."""
        with self._cond:
            while True:
                if self._pending.events:
                    now = self._clock()
                    deadline = self._window.deadline()
                    if self._stopping or self._flush_now or deadline is None or now >= deadline:
                        batch = self._pending.freeze()
                        self._pending = _Pending()
                        self._window.reset()
                        self._flush_now = False
                        self._busy = True
                        return batch
                    self._cond.wait(deadline - now)
                elif self._stopping:
                    return None
                else:
                    self._flush_now = False
                    self._cond.wait()

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._on_batch(batch)
            except Exception as exc:  # noqa: BLE001 - the daemon must outlive a bad batch
                self._log.exception("error", where="batch", error=f"{type(exc).__name__}: {exc}")
            finally:
                with self._cond:
                    self._busy = False
                    self._batches += 1
                    self._cond.notify_all()
