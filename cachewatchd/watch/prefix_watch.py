"""Watch the mirrors of the roots in a ``PYTHONPYCACHEPREFIX`` tree: report every pyc written there.

With a pycache prefix, CPython writes the caches of ``/srv/app/m.py`` to
``PREFIX/srv/app/m.cpython-312.pyc``: outside the roots, where their observers see nothing. Each
root's mirror (of the root as given and as resolved: CPython mirrors the unresolved ``sys.path``
entry) gets an observer of its own, native where the prefix's filesystem delivers events and
polled elsewhere (or when the roots are polled anyway), whose events only ever report pycs written
(:class:`~cachewatchd.watch.events.PycSink`): the daemon compares each with its source the moment it
appears, as it does for ``__pycache__``.

A mirror may not exist yet (nothing imported since the prefix was emptied), or be removed and made
again (the daemon itself removes the prefix tree's directories it empties): every *check_interval*
seconds, and at once when a watched mirror goes away, each mirror is looked at again, an observer
attached where it appeared (and every pyc already in it reported: all were written since the last
look) and dropped where it went away or its observer stopped (a directory made again may get the
same inode number). A prefix that is missing, unreadable or cannot be watched is logged once and
looked at again; it never stops the daemon.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cachewatchd.cache.pyc import LEGACY_SUFFIXES, mirror_dir
from cachewatchd.cache.walk import WalkOptions
from cachewatchd.log import get_logger
from cachewatchd.threads import daemon_thread
from cachewatchd.watch.events import EventMapper, EventSink, PycSink
from cachewatchd.watch.mount_pollers import dispose, start_observer
from cachewatchd.watch.mounts import PollMode, choose_observer
from cachewatchd.watch.polling import make_polling_observer

__all__ = ["PrefixWatcher", "mirrors"]


def mirrors(prefix: Path, roots: Sequence[Path]) -> list[Path]:
    """The directories of *prefix* that mirror *roots*, as given (absolute) and resolved."""
    found: dict[Path, None] = {}
    for root in roots:
        for path in (os.path.abspath(root), os.path.realpath(root)):
            found[mirror_dir(prefix, Path(path))] = None
    return list(found)


class PrefixWatcher:
    """Observers of the mirrors of *roots* inside *prefix*, feeding the pycs written to *sink*.

    :meth:`start` attaches the mirrors that exist; a thread attaches the others as they appear
    (every *check_interval* seconds); :meth:`stop` stops every thread. *poll_mode* is the roots'
    (``always`` polls the mirrors too).
    """

    def __init__(
        self,
        prefix: Path,
        roots: Sequence[Path],
        sink: EventSink,
        *,
        options: WalkOptions,
        poll_mode: PollMode = "auto",
        poll_interval: float = 1.0,
        check_interval: float = 5.0,
    ) -> None:
        self._sink = _PycsOnly(sink)
        self._options = options
        self._poll_mode: PollMode = poll_mode
        self._poll_interval = poll_interval
        self._check_interval = check_interval
        self._mirrors: dict[Path, _Mirror] = {m: _Mirror() for m in mirrors(prefix, roots)}
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread = daemon_thread(self._run, "cachewatchd-prefix")
        self._log = get_logger(__name__)

    def start(self) -> None:
        self._check(report=False)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        for mirror in self._mirrors.values():
            mirror.detach()

    def watched(self) -> list[Path]:
        """The mirrors being watched now."""
        return [path for path, m in self._mirrors.items() if m.observer is not None]

    def _run(self) -> None:
        while True:
            self._wake.wait(self._check_interval)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self._check(report=True)
            except Exception as exc:  # noqa: BLE001 - the prefix never stops the daemon
                self._log.error("error", error=f"pycache prefix check failed: {exc!r}")

    def _check(self, *, report: bool) -> None:
        """Attach the mirrors that appeared (their pycs reported when *report*), drop the ones
        that went away or were replaced."""
        for path, mirror in self._mirrors.items():
            ident = _ident(path)
            if mirror.observer is not None and ident == mirror.ident and _alive(mirror.observer):
                continue
            mirror.detach()
            if ident is None:
                continue
            try:
                mirror.observer = self._observe(path)
            except OSError as exc:
                if mirror.error != str(exc):
                    mirror.error = str(exc)
                    error = f"pycache prefix not watched: {exc.strerror or exc}"
                    self._log.warning("error", path=str(path), error=error, action="retrying")
                continue
            mirror.ident, mirror.error = ident, None
            if report:
                _report_all(path, self._sink)

    def _observe(self, path: Path) -> Any:
        """A started observer of *path*: native where events arrive (polled when the native one
        cannot start: the inotify limit reached)."""
        if choose_observer(path, self._poll_mode).kind == "native":
            from watchdog.observers import Observer

            try:
                return self._start(Observer(), path, polled=False)
            except OSError as exc:
                reason = f"prefix tree not watched natively ({exc.strerror or exc}): polling"
                self._log.warning(
                    "observer-fallback", root=str(path), observer="polling", reason=reason
                )
        observer = make_polling_observer(
            str(path),
            self._options,
            interval=self._poll_interval,
            on_denied=_ignore_denied,
            pycs=True,
        )
        return self._start(observer, path, polled=True)

    def _start(self, observer: Any, path: Path, *, polled: bool) -> Any:
        handler = EventMapper(path, self._sink, self._options, self._gone, polled=polled)
        start_observer(observer, handler, path)
        return observer

    def _gone(self, path: Path) -> None:
        """A watched mirror went away (an observer's thread): look again at once."""
        self._wake.set()


class _Mirror:
    def __init__(self) -> None:
        self.observer: Any = None
        self.ident: tuple[int, int] | None = None
        self.error: str | None = None

    def detach(self) -> None:
        observer, self.observer, self.ident = self.observer, None, None
        if observer is not None:
            dispose(observer)


class _PycsOnly:
    """An :class:`EventSink` that passes on only the pycs written (a prefix tree holds no
    sources: its directories going away say nothing about the roots)."""

    def __init__(self, sink: EventSink) -> None:
        self._pycs = sink if isinstance(sink, PycSink) else None

    def source_changed(self, path: Path) -> None: ...
    def source_removed(self, path: Path) -> None: ...
    def dir_removed(self, path: Path) -> None: ...
    def rescan(self, root: Path, reason: str) -> None: ...

    def pyc_written(self, path: Path) -> None:
        if self._pycs is not None:
            self._pycs.pyc_written(path)


def _report_all(mirror: Path, sink: _PycsOnly) -> None:
    """Every pyc below *mirror* to *sink* (an unreadable directory is skipped)."""
    for directory, _, files in os.walk(mirror):
        for name in sorted(files):
            if name.endswith(LEGACY_SUFFIXES):
                sink.pyc_written(Path(directory, name))


def _ident(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino) if os.path.isdir(path) else None


def _alive(observer: Any) -> bool:
    """Whether *observer* still watches (its emitter stops when the watched directory goes)."""
    emitters = observer.emitters
    return observer.is_alive() and bool(emitters) and all(e.is_alive() for e in emitters)


def _ignore_denied(path: str, exc: OSError) -> None:
    """An unreadable directory of the prefix tree: its pycs are found by the audits."""
