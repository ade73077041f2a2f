"""watchdog events: which ones are dispatched, and what they mean for the batcher.

:func:`event_filter` is the one list of watchdog event classes the watchers schedule: file and
directory creations, modifications, deletions and moves (never opened or closed-without-write:
reading a file must not wake a watcher). :class:`EventMapper` is the front door for filesystem
observers: it decides what a watchdog event means (a source changed or went away, a directory went
away) and feeds the sink accordingly. :class:`Poke` only wakes a waiting thread (the git watcher).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cachewatchd.cache.listing import drop_listing_cache
from cachewatchd.cache.pyc import LEGACY_SUFFIXES, SOURCE_SUFFIXES
from cachewatchd.cache.walk import Excluder, WalkOptions

__all__ = ["EventMapper", "EventSink", "Poke", "PycSink", "event_filter"]

_NOT_NORMAL = frozenset(("", os.curdir, os.pardir))
"""Path components that ``os.path.normpath`` would rewrite."""


def event_filter(*, attrib: bool = True, dirs_modified: bool = False) -> list[Any]:
    """The watchdog event classes to dispatch (``event_filter=`` of ``observer.schedule``).

    *attrib*: also attribute-only changes of files (``chmod``, ``touch``: a source's mtime moved).
    The git watcher leaves them out: it reads ``HEAD`` and the refs itself, and its own reading must
    not wake it again. *dirs_modified*: also directories modified, for a poller (a ``__pycache__``
    whose stat moved: a pyc was written there); a native observer raises one per file written.
    """
    from watchdog import events as ev

    files = [ev.FileCreatedEvent, ev.FileModifiedEvent]
    attrib_event = getattr(ev, "FileAttribEvent", None)  # watchdog 7; 6 reports them as modified
    if attrib and attrib_event is not None:
        files.append(attrib_event)
    return [
        *files,
        ev.FileDeletedEvent,
        ev.FileMovedEvent,
        ev.DirCreatedEvent,
        ev.DirDeletedEvent,
        ev.DirMovedEvent,
        *([ev.DirModifiedEvent] if dirs_modified else []),
    ]


class Poke:
    """watchdog handler that only wakes a thread waiting on *wake*."""

    def __init__(self, wake: threading.Event) -> None:
        self._wake = wake

    def dispatch(self, event: Any) -> None:
        self._wake.set()


class EventSink(Protocol):
    """What the watcher feeds: a :class:`cachewatchd.watch.batch.Batcher`."""

    def source_changed(self, path: Path) -> None: ...
    def source_removed(self, path: Path) -> None: ...
    def dir_removed(self, path: Path) -> None: ...
    def rescan(self, root: Path, reason: str) -> None: ...


@runtime_checkable
class PycSink(Protocol):
    """A sink that also wants the pycs written under a root (the daemon verifies each one)."""

    def pyc_written(self, path: Path) -> None: ...


class EventMapper:
    """A watchdog event handler for one root: source and directory events -> :class:`EventSink`.

    Only sources count (``SOURCE_SUFFIXES``: ``.pyw`` on Windows only) (both sides of a move); directories deleted or moved away report
    every source below them gone; anything below ``__pycache__`` or an excluded directory is ignored.
    The root itself deleted calls *on_root_gone*. A ``.git`` appearing asks for a rescan (a new
    repository or work tree for the git watcher to find).

    *polled*: fed by a poller, whose snapshots hold each ``__pycache__`` but none of its children
    (:class:`~cachewatchd.watch.polling.SourceLister`): a ``__pycache__`` created, moved in or
    modified is listed, and every pyc in it goes to the :class:`PycSink` (those verified already
    are settled by the verification index). A native observer reports each pyc itself.
    """

    def __init__(
        self,
        root: Path,
        sink: EventSink,
        options: WalkOptions,
        on_root_gone: Callable[[Path], None],
        *,
        polled: bool = False,
    ) -> None:
        self.root = root
        self.polled = polled
        self.sink = sink
        self.excluder = Excluder(options)
        self.on_root_gone = on_root_gone
        self._pycs = sink if isinstance(sink, PycSink) else None
        self._fast_root: Path | None = None
        self._fast: tuple[str, str] | None = None
        """``(normalized root, its prefix)`` for :meth:`_relative`, when the root is absolute."""

    def dispatch(self, event: Any) -> None:
        kind = event.event_type
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path) if kind == "moved" and event.dest_path else ""
        if event.is_directory and not (dest and _file_took_over(dest)):
            self._directory(kind, src, dest)
            return
        if event.is_directory:  # a poller pairs by inode: a new file took a removed directory's
            self._directory("deleted", src, "")  # (the daemon removes __pycache__ it empties)
        name = os.path.basename(dest or src)
        if name == ".git" and kind in {"created", "moved"}:  # a work tree or submodule appeared
            self.sink.rescan(self.root, "new git repository")
        written = kind in {"created", "moved"} or (self.polled and kind == "modified")
        if self._pycs is not None and written and self._is_pyc(dest or src):
            # importlib writes a pyc, then renames it; a poller sees an in-place rewrite as modified
            self._pycs.pyc_written(Path(dest or src))
        if kind == "moved":
            if self._is_source(src):
                self.sink.source_removed(Path(src))
            if self._is_source(dest):
                self.sink.source_changed(Path(dest))
        elif kind == "deleted":
            if self._is_source(src):
                self.sink.source_removed(Path(src))
        elif kind in {"created", "modified", "attrib", "closed"} and self._is_source(src):
            self.sink.source_changed(Path(src))
        if self.polled and self._pycs is not None and kind == "moved":
            self._list_pycache(dest, self._pycs)  # a new __pycache__ took a removed file's inode

    def _directory(self, kind: str, src: str, dest: str) -> None:
        if kind == "deleted" and src == str(self.root):
            self.sink.dir_removed(self.root)
            self.on_root_gone(self.root)
        elif kind in {"deleted", "moved"} and not self._ignored(src, is_dir=True):
            self.sink.dir_removed(Path(src))
        elif kind == "created" and os.path.basename(src) == ".git":
            self.sink.rescan(self.root, "new git repository")
        if self.polled and self._pycs is not None and kind in {"created", "modified", "moved"}:
            self._list_pycache(dest or src, self._pycs)

    def _list_pycache(self, directory: str, pycs: PycSink) -> None:
        """Every pyc in *directory* when it is a ``__pycache__`` of the root, to *pycs*."""
        if os.path.basename(directory) != "__pycache__":
            return
        if self._ignored(os.path.join(os.path.dirname(directory), "x")):
            return
        drop_listing_cache(directory)  # an NFS client's listing can miss a same-tick write
        try:
            with os.scandir(directory) as it:
                names = [e.name for e in it if e.name.endswith(LEGACY_SUFFIXES)]
        except OSError:  # gone again, or unreadable: the audits report it
            return
        for name in sorted(names):
            pycs.pyc_written(Path(directory, name))

    def _is_pyc(self, path: str) -> bool:
        """A pyc in a ``__pycache__`` or beside its source, not in an excluded directory."""
        if not path.endswith(LEGACY_SUFFIXES):
            return False
        directory = os.path.dirname(path)
        if os.path.basename(directory) == "__pycache__":
            directory = os.path.dirname(directory)
        return not self._ignored(os.path.join(directory, "x"))

    def _is_source(self, path: str) -> bool:
        return bool(path) and path.endswith(SOURCE_SUFFIXES) and not self._ignored(path)

    def _relative(self, path: str) -> str:
        """``os.path.relpath(path, self.root)``, cheaply in the common case: an absolute, normalized
        path below an absolute root, as observers report them (a 10k-file checkout brings 30k
        events; relpath alone cost 0.1 s CPU of them)."""
        root = self.root
        if root is not self._fast_root:
            self._fast_root = root
            text = os.fspath(root)
            base = os.path.normpath(text) if os.path.isabs(text) else None
            self._fast = None if base is None else (base, base.rstrip(os.sep) + os.sep)
        if self._fast is not None:
            base, prefix = self._fast
            if path == base:
                return os.curdir
            if path.startswith(prefix):
                rel = path[len(prefix) :]
                if _NOT_NORMAL.isdisjoint(rel.split(os.sep)):
                    return rel
        return os.path.relpath(path, root)

    def _ignored(self, path: str, *, is_dir: bool = False) -> bool:
        """Below ``__pycache__``, an excluded directory, or outside the root."""
        rel = self._relative(path)
        if rel.startswith(os.pardir):
            return True
        parts = rel.split(os.sep)
        dirs = parts if is_dir else parts[:-1]
        for i, name in enumerate(dirs):
            if name == "__pycache__" or self.excluder.excluded(name, "/".join(parts[: i + 1])):
                return True
        return False


def _file_took_over(dest: str) -> bool:
    """A directory "moved" to *dest* where a file is now: watchdog's snapshot diff pairs paths by
    inode, and a file created after a directory was removed may get the directory's inode."""
    try:
        return not os.path.isdir(dest) and os.path.lexists(dest)
    except (OSError, ValueError):
        return False
