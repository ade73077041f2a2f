"""Invalidate on the event: a source's cache entries go the moment its event arrives.

:class:`Invalidator` stands between the observers and the batcher. Every source event is passed
on to the batcher (which still closes batches for what is expensive: audits, git settling,
restarts) and also queued for the invalidation thread, which removes the source's cache entries
at once, without waiting for the batch's quiet period. The thread takes everything queued at each
wake-up, so a 10k-file checkout lists each ``__pycache__`` a few times, not 10k times, while a
single edit is handled within a millisecond or two of its event.

A legacy ``m.pyc`` beside a source that went away is left to the batch: an editor's atomic save
removes the source for a moment, and only the batch can tell that it came back. Before a batch
restarts anything, the daemon calls :meth:`Invalidator.sync`, so no process is restarted before
the caches of the sources that made it restart are gone.

The thread is a :func:`cachewatchd.threads.daemon_thread`: if it dies, the daemon stops, loudly.
An error while invalidating one group of sources is logged (``error``, counted) and the thread
carries on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from cachewatchd.log import get_logger
from cachewatchd.threads import daemon_thread
from cachewatchd.watch.events import EventSink, PycSink

__all__ = ["Invalidate", "Invalidator"]

Invalidate = Callable[[Sequence[Path], Sequence[Path]], object]
"""``(changed, removed)``: remove every cache entry of these sources now."""


class Invalidator:
    """An :class:`~cachewatchd.watch.events.EventSink` that invalidates at once, then forwards."""

    def __init__(
        self,
        sink: EventSink,
        invalidate: Invalidate,
        *,
        on_error: Callable[[], None] = lambda: None,
        name: str = "cachewatchd-invalidate",
    ) -> None:
        self._sink = sink
        self._invalidate = invalidate
        self._on_error = on_error
        self._cond = threading.Condition()
        self._changed: dict[Path, None] = {}
        self._removed: dict[Path, None] = {}
        self._queued = 0
        """Events queued so far (a sequence number)."""
        self._done = 0
        """Events whose invalidation is over."""
        self._stopping = False
        self._ended = False
        """The thread has ended (however): :meth:`sync` waits no more."""
        self._thread = daemon_thread(self._run, name)
        self._log = get_logger(__name__)

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Invalidate what is queued, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def idle(self) -> bool:
        """Every event queued so far is invalidated."""
        with self._cond:
            return self._done >= self._queued

    def sync(self, timeout: float | None = None) -> bool:
        """Wait until every event queued before this call is invalidated; False on *timeout*
        (or when the thread is not running: nothing would ever happen)."""
        with self._cond:
            target = self._queued
            return self._cond.wait_for(
                lambda: self._done >= target or self._ended or not self._thread.is_alive(),
                timeout,
            ) and (self._done >= target)

    # -- the sink (observer threads) ---------------------------------------------------------------
    def source_changed(self, path: Path) -> None:
        self._queue(path, removed=False)
        self._sink.source_changed(path)

    def source_removed(self, path: Path) -> None:
        self._queue(path, removed=True)
        self._sink.source_removed(path)

    def dir_removed(self, path: Path) -> None:
        self._sink.dir_removed(path)

    def pyc_written(self, path: Path) -> None:
        if isinstance(self._sink, PycSink):
            self._sink.pyc_written(path)

    def rescan(self, root: Path, reason: str) -> None:
        self._sink.rescan(root, reason)

    def _queue(self, path: Path, *, removed: bool) -> None:
        with self._cond:  # the dict is chosen under the lock: the thread swaps both for new ones
            into = self._removed if removed else self._changed
            into[path] = None
            self._queued += 1
            self._cond.notify_all()

    # -- the invalidation thread -------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        finally:  # however it ends, nobody waits in :meth:`sync` for a thread that is gone
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queued > self._done or self._stopping)
                if self._queued == self._done:  # stopping, nothing left
                    return
                changed, removed, upto = list(self._changed), list(self._removed), self._queued
                self._changed, self._removed = {}, {}
            try:
                self._log.debug(
                    "invalidating", changed=_shown(changed), removed=_shown(removed), count=upto
                )
                self._invalidate(changed, removed)
            except Exception as exc:  # noqa: BLE001 - one bad group never stops the daemon
                self._log.exception(
                    "error", where="invalidation", error=f"{type(exc).__name__}: {exc}"
                )
                self._on_error()
            finally:
                with self._cond:
                    self._done = upto
                    self._cond.notify_all()


def _shown(paths: Sequence[Path], most: int = 20) -> list[str]:
    """The first *most* of *paths*, for a debug line (a 10k-file checkout is not logged whole)."""
    return [str(path) for path in paths[:most]]
