"""One restart per git operation: restarts wait while git is at work where they were touched.

A ``git checkout`` of many files takes a while and pauses between its phases; batches close during
those pauses, and each would restart the managed processes into a half-written tree, and the
``git-moved`` audit at the end once more. :class:`RestartHold` sits between the batches and the
controller: it asks the git watchers whether git is at work in a repository covering the touched
paths (:meth:`cachewatchd.watch.git.GitWatcher.busy`: a lock, an operation moving HEAD, a move
not settled or not reported yet) and, if so, keeps the paths. The git watcher then reports the
repository's move, or that it settled without one, and the batch carrying that offers the held
paths again: one restart with everything touched during the operation.

A 10k-file checkout's events may still be on their way when git is done (the observer thread lags
behind git), and git's move may already wait in the batcher while a batch of its files is being
handled: whenever more events wait in the batcher (*draining*) when a batch is over, its restart
waits for the batch that takes them (they would restart again), for at most :data:`DRAIN_MAX`
seconds. A single edit's batch has nothing behind it and restarts at once.

A restart held by git goes only with the batch that *reports* each repository it waited for
(its ``git-moved`` or ``git_settled``: the offer's *reported*), not with an offer made while that
batch is still being handled (the second look offers from the loop's thread; under load the move's
batch waits for the invalidations behind the checkout, and a restart let go then was followed by
the move's own: two restarts for one checkout). Should the report never come, the restart goes
:data:`REPORT_MAX` seconds after git was first found idle.

Logged events: ``restart-held`` (once per hold by git, with the repositories).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from cachewatchd.log import get_logger

__all__ = ["DRAIN_MAX", "REPORT_MAX", "RestartHold"]

DRAIN_MAX = 2.0
"""Seconds after git settled during which held paths wait for the events still arriving."""

REPORT_MAX = 5.0
"""Seconds a restart held by git waits, once git is idle, for the batch that reports it."""

Busy = Callable[[Collection[Path]], Sequence[Path]]
"""Touched paths -> the work trees where git is at work (empty: go ahead)."""


class RestartHold:
    """Touched paths waiting for git to settle. Thread-safe (the batcher and the loop offer)."""

    def __init__(
        self,
        busy: Busy,
        restart: Callable[[list[Path]], None],
        *,
        draining: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """*draining*: more events wait for a batch (which will offer again)."""
        self._busy = busy
        self._restart = restart
        self._draining = draining
        self._clock = clock
        self._settled_at: float | None = None
        """When the first offer found nothing in the way but more events waiting."""
        self._git_held = False
        """The held paths wait for git (``restart-held`` logged)."""
        self._held: set[Path] = set()
        self._awaiting: set[Path] = set()
        """Work trees git was at work in while paths were held: their report is awaited."""
        self._idle_at: float | None = None
        """When an offer first found git idle while a report was still awaited."""
        self._lock = threading.Lock()
        self._log = get_logger(__name__)

    @property
    def held(self) -> frozenset[Path]:
        with self._lock:
            return frozenset(self._held)

    def holding(self) -> bool:
        """Paths are held (git at work, its report awaited, or more events on their way)."""
        with self._lock:
            return bool(self._held)

    def offer(self, touched: Collection[Path], reported: Collection[Path] = ()) -> bool:
        """Restart for *touched* and whatever is held, unless git is at work where they lie, its
        report (*reported*: the work trees whose move or settling this batch carries) is still
        awaited, or more events wait for a batch; True when the restart was asked for."""
        with self._lock:
            self._awaiting.difference_update(reported)
            if not touched and not self._held:
                return False
            self._held.update(touched)
            busy = self._busy(self._held)
            if busy:
                self._awaiting.update(busy)
                self._idle_at = None
                if not self._git_held:
                    self._git_held = True
                    self._log.info(
                        "restart-held",
                        repositories=[str(tree) for tree in busy],
                        reason="git is at work; one restart once it is done",
                    )
                self._settled_at = None
                return False
            if self._awaiting:
                now = self._clock()
                if self._idle_at is None:
                    self._idle_at = now
                if now - self._idle_at < REPORT_MAX:
                    return False
            if self._draining():
                now = self._clock()
                if self._settled_at is None:
                    self._settled_at = now
                if now - self._settled_at < DRAIN_MAX:
                    return False
            paths, self._held, self._settled_at = sorted(self._held, key=str), set(), None
            self._git_held, self._awaiting, self._idle_at = False, set(), None
        self._restart(paths)
        return True

    def drop(self) -> None:
        """Forget what is held (the targets are being stopped or rebuilt)."""
        with self._lock:
            self._held.clear()
            self._awaiting.clear()
            self._settled_at = self._idle_at = None
            self._git_held = False
