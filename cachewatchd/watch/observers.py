"""Observers per root, native or polling, feeding filesystem events into a batcher.

Native observers are watchdog's inotify emitter with three additions built on watchdog 7's internals:
excluded directories, ``__pycache__`` and virtual environments get no inotify watch; a directory that
cannot be watched because the inotify limit is reached is *noticed* (watchdog 7 silently skips it) and
the root falls back to polling; an event-queue overflow becomes a rescan request. After start,
coverage is verified independently: every directory the walk finds must hold a watch. It is verified
again after every storm: each directory that appeared (created, moved in, moved away and back) is
reported by the native observer, and once no new one has appeared for
:data:`~cachewatchd.watch.coverage.SETTLE` seconds (at most
:data:`~cachewatchd.watch.coverage.SETTLE_MAX` after the first) the subtrees are checked and repaired
(:mod:`cachewatchd.watch.coverage`); what still cannot be watched makes the root fall back to
polling.

A network or FUSE mount *below* a natively watched root (and a mount of an unknown type where a probe
file raises no event) gets a poller of its own for its subtree
(:func:`~cachewatchd.watch.mounts.polled_mounts`); the root's native observer leaves the events of
those subtrees to it, so one change makes one batch. Mounts are looked up when a root is attached,
and again whenever the mount table changes (the root is then audited).

A supervisor thread re-attaches a root that was deleted, moved away or replaced, and requests a rescan
once it is back; it also carries out the fallbacks requested from the inotify thread.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cachewatchd.cache.walk import WalkOptions
from cachewatchd.log import ReportedPaths, get_logger
from cachewatchd.threads import daemon_thread
from cachewatchd.watch.coverage import SETTLE, SETTLE_MAX, repair, verify
from cachewatchd.watch.events import EventMapper, EventSink
from cachewatchd.watch.mount_pollers import MountPollers, MountTable, dispose, start_observer
from cachewatchd.watch.mounts import (
    ObserverChoice,
    PollMode,
    choose_observer,
    ctime_trusted_at,
    known_local_at,
)
from cachewatchd.watch.native import LIMITS, Guard, inotify_classes
from cachewatchd.watch.polling import make_polling_observer

__all__ = ["Watcher"]


@dataclass
class _Root:
    path: Path
    choice: ObserverChoice
    observer: Any = None
    guard: Guard | None = None
    ident: tuple[int, int] | None = None
    forced: str | None = None
    """Why this root must poll although native events were chosen (limit reached)."""
    reported: set[str] = field(default_factory=set)
    mounts: MountPollers | None = None
    """The pollers of the mounts below a natively watched root."""


def _ident(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if os.path.isdir(path) else None


class Watcher:
    """Watch every root with the observer its filesystem needs; feed events into *batcher*.

    Roots are resolved. :meth:`start` attaches every root before it returns (a root that cannot be
    attached is logged and retried every *check_interval* seconds); :meth:`stop` stops every thread.
    *forced_by* says, per root as given, where a forcing *poll_mode* came from: the observer's
    reason (default ``--poll <mode>``, see :func:`~cachewatchd.watch.mounts.choose_observer`).
    """

    def __init__(
        self,
        roots: Sequence[Path],
        *,
        poll_mode: PollMode = "auto",
        poll_interval: float = 1.0,
        excludes: Sequence[str] = (),
        batcher: EventSink,
        default_excludes: bool = True,
        include_venvs: bool = False,
        check_interval: float = 1.0,
        reported: ReportedPaths | None = None,
        forced_by: Mapping[Path, str] | None = None,
    ) -> None:
        self.sink = batcher
        self.walk_options = WalkOptions(include_venvs, tuple(excludes), default_excludes)
        self._poll_mode: PollMode = poll_mode
        self._poll_interval = poll_interval
        self._check_interval = check_interval
        unattached = ObserverChoice("native", "not attached")
        resolved = [Path(os.path.realpath(r)) for r in roots]
        self._roots = {p: _Root(p, unattached) for p in resolved}
        given = dict(forced_by or {})
        self._forced_by = {p: given[r] for p, r in zip(resolved, roots, strict=True) if r in given}
        self._lock = threading.RLock()  # roots and observers; never taken by observer threads
        self._req_lock = threading.Lock()  # requests and reports posted by observer threads
        self._requests: list[tuple[str, Path, str]] = []
        self._denied = ReportedPaths() if reported is None else reported
        """Paths already reported (shared with the batch handler: one report per path)."""
        self._appeared: dict[Path, set[str]] = {}
        """Directories that appeared per root, their coverage not checked yet (under _req_lock)."""
        self._appeared_first = self._appeared_last = 0.0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = daemon_thread(self._supervise, "cachewatchd-watch")
        self._native = inotify_classes()
        self._fd: Any = None
        self._table = MountTable()
        self._log = get_logger(__name__)

    # -- public ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._table.open()
        with self._lock:
            for root in self._roots.values():
                self._attach(root)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._lock:
            for root in self._roots.values():
                self._detach(root)
            self._table.close()
            if self._fd is not None:
                self._fd.stop()
                if self._fd.is_alive():
                    self._fd.join()
                self._fd = None

    def observers(self) -> dict[Path, ObserverChoice]:
        """The observer of every root and why it was chosen."""
        with self._lock:
            return {p: r.choice for p, r in self._roots.items()}

    def attached(self) -> dict[Path, bool]:
        """Whether every root is currently being watched (False while a deleted root is away)."""
        with self._lock:
            return {p: r.observer is not None for p, r in self._roots.items()}

    # -- reports from observer threads: never block, never take self._lock -----------------------
    def request_fallback(self, root: Path, reason: str) -> None:
        self._post("fallback", root, reason)

    def report_gone(self, root: Path) -> None:
        self._post("gone", root, "")

    def report_overflow(self, root: Path) -> None:
        self.sink.rescan(root, "event queue overflow")
        self.report_appeared(root, str(root))  # watchdog rebuilt every watch: check them all

    def report_appeared(self, root: Path, path: str) -> None:
        now = time.monotonic()
        with self._req_lock:
            first = not self._appeared
            self._appeared.setdefault(root, set()).add(path)
            self._appeared_last = now
            if first:
                self._appeared_first = now
        if first:
            self._wake.set()

    def report_rewatched(self, root: Path, path: str, reason: str) -> None:
        self._log.info("rewatched", root=str(root), path=path, reason=reason)

    def report_denied(self, path: str, exc: OSError) -> None:
        if not self._denied.first_time(path):
            return
        self._log.warning("error", path=path, error=exc.strerror or str(exc), action="not watched")

    def _post(self, kind: str, root: Path, reason: str) -> None:
        with self._req_lock:
            self._requests.append((kind, root, reason))
        self._wake.set()

    # -- supervisor thread -----------------------------------------------------------------------
    def _supervise(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._next_wait())
            self._wake.clear()
            if self._stopping.is_set():
                return
            with self._req_lock:
                requests, self._requests = self._requests, []
            with self._lock:
                for kind, path, reason in requests:
                    root = self._roots.get(path)
                    if root is not None and root.observer is not None:
                        self._handle(kind, root, reason)
                self._check_roots()
                self._check_mounts()
                self._check_coverage()

    def _settled_at(self) -> float | None:
        """When the directories that appeared are due for their check (_req_lock held)."""
        if not self._appeared:
            return None
        return min(self._appeared_last + SETTLE, self._appeared_first + SETTLE_MAX)

    def _next_wait(self) -> float:
        with self._req_lock:
            due = self._settled_at()
        if due is None:
            return self._check_interval
        return max(0.0, min(self._check_interval, due - time.monotonic()))

    def _check_coverage(self) -> None:
        """Check the subtrees that appeared, once the storm settled (self._lock held)."""
        with self._req_lock:
            due = self._settled_at()
            if due is None or time.monotonic() < due:
                return
            appeared, self._appeared = self._appeared, {}
        for path, subtrees in appeared.items():
            root = self._roots.get(path)
            if root is not None and root.guard is not None and root.choice.kind == "native":
                self._repair(root, root.guard, subtrees)

    def _repair(self, root: _Root, guard: Guard, subtrees: set[str]) -> None:
        """Repair the coverage of the subtrees that appeared; fall back to polling when that
        fails."""
        reason = repair(
            root.path,
            guard,
            subtrees,
            options=self.walk_options,
            sink=self.sink,
            stopping=self._stopping,
            log=self._log,
        )
        if reason is not None:
            self._detach(root)
            self._fall_back(root, reason)

    def _handle(self, kind: str, root: _Root, reason: str) -> None:
        if kind == "fallback" and root.choice.kind == "native":
            self._detach(root)
            self._fall_back(root, reason)
        elif kind == "gone":
            self._detach(root)
            self._log.warning(
                "error", root=str(root.path), error="root disappeared", action="waiting"
            )

    def _check_roots(self) -> None:
        for root in self._roots.values():
            ident = _ident(root.path)
            if root.observer is not None and ident != root.ident:
                self._detach(root)
                self.sink.dir_removed(root.path)
                self._log.warning("error", root=str(root.path), error="root replaced or gone")
            if root.observer is None and ident is not None and self._attach(root):
                self.sink.rescan(root.path, "root is back")

    # -- attach / detach (self._lock held) ---------------------------------------------------------
    def _attach(self, root: _Root) -> bool:
        ident = _ident(root.path)
        if ident is None:
            self._report_once(root, "root missing or not a directory")
            return False
        forced_by = self._forced_by.get(root.path)
        probe = self._table.probe if self._poll_mode == "auto" else None
        choice = choose_observer(root.path, self._poll_mode, forced_by, probe)
        if root.forced is not None and choice.kind == "native":
            choice = ObserverChoice("polling", f"{root.forced}: polling")
        try:
            if choice.kind == "native":
                choice = self._start_mounts(root, choice)
                gap = self._start_native(root)
                if gap is not None:
                    self._detach(root)
                    return self._fall_back(root, gap)
            else:
                self._start_polling(root)
        except OSError as exc:
            limit = LIMITS.get(exc.errno or 0)
            if choice.kind == "native" and limit is not None:
                return self._fall_back(root, limit)
            self._detach(root)
            self._report_once(root, exc.strerror or str(exc))
            return False
        root.choice, root.ident = choice, ident
        root.reported.clear()
        return True

    def _start_mounts(self, root: _Root, choice: ObserverChoice) -> ObserverChoice:
        """Start a poller for every mount below *root* that needs one; the choice that says so."""
        if self._poll_mode != "auto":
            return choice
        pollers = MountPollers(
            root.path, self.sink, self.walk_options, self._poll_interval, self.report_denied
        )
        try:
            choice = pollers.start(choice, self._table.probe)
        except OSError as exc:  # psutil reads /proc/self/mounts
            self._report_once(root, f"mounts below unreadable ({exc.strerror or exc})")
        root.mounts = pollers
        return choice

    def _check_mounts(self) -> None:
        """A mount made or undone below a native root: its poller started or stopped, and the
        root audited (the mount brings files no event announced)."""
        if not self._table.changed():
            return
        for root in self._roots.values():
            if root.mounts is None or root.observer is None:
                continue
            try:
                choice = root.mounts.refresh(self._table.probe)
            except OSError as exc:
                self._report_once(root, f"mounts below unreadable ({exc.strerror or exc})")
                continue
            if choice is not None:
                root.choice = choice
                self.sink.rescan(root.path, "mounts changed")

    def _fall_back(self, root: _Root, reason: str) -> bool:
        root.forced = reason
        mounts, root.mounts = root.mounts, None
        if mounts is not None:  # the root's poller covers them now
            mounts.stop()
        self._log.warning(
            "observer-fallback", root=str(root.path), observer="polling", reason=reason
        )
        ident = _ident(root.path)
        try:
            self._start_polling(root)
        except OSError as exc:
            self._report_once(root, exc.strerror or str(exc))
            return False
        finally:  # after the poller's first snapshot: what changes meanwhile is in one or the other
            self.sink.rescan(root.path, "observer fallback")
        root.choice, root.ident = ObserverChoice("polling", f"{reason}: polling"), ident
        return True

    def _start_native(self, root: _Root) -> str | None:
        """Start the native observer; return why coverage is incomplete, or None."""
        if self._native is None:  # not Linux or an older watchdog: plain observer, no guard
            from watchdog.observers import Observer

            self._run(root, Observer())
            return None
        observer_cls, fd_cls = self._native
        if self._fd is None:
            fd = fd_cls()
            fd.start()
            self._fd = fd
        guard = Guard(self, root.path)
        root.guard = guard
        self._run(root, observer_cls(self._fd, guard))
        return verify(guard, self.walk_options, self._stopping)

    def _start_polling(self, root: _Root) -> None:
        observer = make_polling_observer(
            str(root.path),
            self.walk_options,
            interval=self._poll_interval,
            on_denied=self.report_denied,
            hash_content=not ctime_trusted_at(root.path),
            refetch=not known_local_at(root.path),
        )
        root.guard = None
        self._run(root, observer, polled=True)

    def _run(self, root: _Root, observer: Any, *, polled: bool = False) -> None:
        sink = root.mounts.outside(self.sink) if root.mounts is not None else self.sink
        handler = EventMapper(root.path, sink, self.walk_options, self.report_gone, polled=polled)
        start_observer(observer, handler, root.path)
        root.observer = observer

    def _detach(self, root: _Root) -> None:
        observer, root.observer, root.guard = root.observer, None, None
        mounts, root.mounts = root.mounts, None
        if observer is not None:
            dispose(observer)
        if mounts is not None:
            mounts.stop()

    def _report_once(self, root: _Root, error: str) -> None:
        if error not in root.reported:
            root.reported.add(error)
            self._log.warning("error", root=str(root.path), error=error, action="retrying")
