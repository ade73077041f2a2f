"""The daemon registry: one small JSON record per running daemon of this user.

The record is both the "one daemon per set of roots" lock and the status file that
``cachewatchd status`` reads. It lives in ``<runtime dir>/daemons/<pid>@<host>.json`` (the runtime
dir falls back to the state dir, see :func:`cachewatchd.paths.runtime_dir`), is private to the user
(mode 0600) and is always replaced atomically (temporary file in the same directory, then
``os.replace``), so a reader never sees half a record.

Registration happens under an ``fcntl.flock`` on ``daemons/.lock``: records of dead processes are
dropped (a recorded ``create_time`` guards against pid reuse), then a daemon whose roots overlap a
live daemon's roots (equal, ancestor or descendant after ``resolve()``) is refused.

A record is a :class:`DaemonRecord` (who the daemon is, what it watches) plus the status the daemon
publishes (:meth:`Registration.update`). Readers get the whole record as the JSON document
``cachewatchd status --json`` prints; :meth:`DaemonRecord.from_json` reads its core back.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import fcntl
import json
import os
import re
import socket
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from cachewatchd import __version__
from cachewatchd.errors import RuntimeFailure, UsageError
from cachewatchd.log import get_logger
from cachewatchd.paths import is_under, read_regular, runtime_dir
from cachewatchd.processes.os_procs import alive
from cachewatchd.processes.status import timestamp

__all__ = [
    "DaemonRecord",
    "Registration",
    "find_daemons",
    "list_daemons",
    "process_of",
    "register_daemon",
    "registry_dir",
]

_CREATE_TIME_SLACK = 0.05
"""Seconds: psutil derives create_time from boot time and clock ticks, identically per process."""


def registry_dir() -> Path:
    """``<runtime dir>/daemons`` (created on demand, mode 0700)."""
    directory = runtime_dir() / "daemons"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return directory


@dataclasses.dataclass(frozen=True)
class DaemonRecord:
    """The core of a daemon's record: which process it is and what it watches."""

    pid: int
    create_time: float
    """psutil's ``create_time`` of the daemon (a reused pid has another one)."""
    started: str
    """When it registered, as :func:`~cachewatchd.processes.status.timestamp` writes it."""
    roots: tuple[str, ...]
    """The watched roots, resolved."""
    host: str
    uid: int
    version: str
    """The cachewatchd version of the daemon."""

    def to_json(self) -> dict[str, Any]:
        """The record's core keys, as the status document has them."""
        return {**dataclasses.asdict(self), "roots": list(self.roots)}

    @classmethod
    def from_json(cls, record: object) -> DaemonRecord:
        """The core of *record*; :class:`ValueError` when *record* is not a daemon's record."""
        if not isinstance(record, Mapping):
            raise ValueError("a daemon record is a JSON object")  # noqa: TRY004 - bad data
        types: dict[str, type] = {"create_time": float, "roots": list}
        types.update(pid=int, uid=int, started=str, host=str, version=str)
        core: dict[str, Any] = {key: record.get(key) for key in types}
        wrong = [k for k, v in core.items() if not isinstance(v, types[k]) or isinstance(v, bool)]
        if wrong or not all(isinstance(root, str) for root in core["roots"]):
            raise ValueError(f"daemon record without well-formed {', '.join(wrong) or 'roots'}")
        return cls(**{**core, "roots": tuple(core["roots"])})


_CORE_KEYS = frozenset(field.name for field in dataclasses.fields(DaemonRecord))


def register_daemon(roots: Sequence[Path]) -> Registration:
    """Record the calling process as the daemon watching *roots*.

    Raises :class:`RuntimeFailure` naming the other daemon's pid when a live daemon of this user
    already watches a root equal to, inside or above one of *roots*, and when the record cannot be
    written (a full or read-only runtime directory).
    """
    resolved = _resolve(roots)
    me = psutil.Process()
    core = DaemonRecord(
        pid=me.pid,
        create_time=me.create_time(),
        started=timestamp(),
        roots=tuple(str(root) for root in resolved),
        host=_host(),
        uid=os.getuid(),
        version=__version__,
    )
    with _writing("cannot write the daemon's record"):
        directory = registry_dir()
        file = directory / f"{me.pid}@{_host()}.json"
        with _locked(directory):
            _refuse_overlap(directory, resolved, me.pid)
            _write_atomic(file, core.to_json())
    return Registration(file, core)


class Registration:
    """This process's record; :meth:`close` (or leaving the ``with`` block) removes it."""

    def __init__(self, file: Path, core: DaemonRecord) -> None:
        self.file = file
        self._core = core
        self._status: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._closed = False

    @property
    def pid(self) -> int:
        return self._core.pid

    @property
    def core(self) -> DaemonRecord:
        """The record's core as last written."""
        with self._lock:
            return self._core

    @property
    def record(self) -> dict[str, Any]:
        """A copy of the record as last written."""
        with self._lock:
            return self._document()

    def update(self, status: Mapping[str, object]) -> bool:
        """Merge *status* into the record (top-level keys replace) and rewrite it atomically.

        The daemon calls it with e.g. ``observers`` per root, ``counters`` (``invalidations``,
        ``rescans``, ``errors``), ``last_event``, ``processes``. Paths, datetimes, enums, sets and
        dataclasses are converted to JSON. Returns ``False`` (and logs ``status-write-failed``)
        when the file cannot be written: the status file must never stop the daemon. Ignored
        after :meth:`close`.
        """
        reserved = _CORE_KEYS.intersection(status)
        if reserved:
            raise ValueError(f"status may not replace {', '.join(sorted(reserved))}")
        with self._lock:
            if self._closed:
                return False
            self._status.update(status)
            self._status["updated"] = timestamp()
            return self._write()

    def set_roots(self, roots: Sequence[Path]) -> None:
        """Change the recorded roots (config reload), refusing overlap like :func:`register_daemon`
        (:class:`RuntimeFailure`, also when the registry cannot be locked)."""
        resolved = _resolve(roots)
        with self._lock, _writing("cannot update the daemon's record"), _locked(self.file.parent):
            _refuse_overlap(self.file.parent, resolved, self.pid)
            self._core = dataclasses.replace(self._core, roots=tuple(map(str, resolved)))
            self._write()

    def close(self) -> None:
        """Remove the record (only in the process that registered; a forked child leaves it)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if os.getpid() == self.pid:
                self.file.unlink(missing_ok=True)

    def __enter__(self) -> Registration:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _document(self) -> dict[str, Any]:
        return {**self._status, **self._core.to_json()}

    def _write(self) -> bool:
        try:
            _write_atomic(self.file, self._document())
        except OSError as exc:
            get_logger(__name__).error("status-write-failed", file=str(self.file), error=str(exc))
            return False
        return True


def list_daemons() -> list[dict[str, Any]]:
    """Records of this user's live daemons on this host, oldest first; dead ones are pruned."""
    return [document for _, document in _listed()]


def find_daemons(paths: Sequence[Path] | None = None) -> list[dict[str, Any]]:
    """Live daemons whose roots overlap any of *paths* (every live daemon when ``None``)."""
    if paths is None:
        return list_daemons()
    wanted = _resolve(paths)
    return [
        document
        for core, document in _listed()
        if any(_overlap(Path(root), path) for root in core.roots for path in wanted)
    ]


def process_of(record: DaemonRecord | Mapping[str, Any]) -> psutil.Process | None:
    """The live process a record describes, or ``None`` (gone, zombie, pid reused, other user,
    not a record)."""
    try:
        core = record if isinstance(record, DaemonRecord) else DaemonRecord.from_json(record)
        return _verified(core)
    except (ValueError, psutil.AccessDenied):
        return None


# -- internals ----------------------------------------------------------------------------------


def _resolve(paths: Sequence[Path]) -> list[Path]:
    """*paths* made absolute, symlinks resolved; :class:`UsageError` for a symlink loop."""
    resolved = []
    for path in paths:
        real = os.path.realpath(Path(path).expanduser())  # leaves a loop as it is, never raises
        try:
            os.stat(real)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UsageError(f"{path}: {exc.strerror}") from None
        resolved.append(Path(real))
    return resolved


@contextmanager
def _writing(what: str) -> Iterator[None]:
    """An :class:`OSError` inside (full disk, read-only directory) becomes one
    :class:`RuntimeFailure` line: ``<what>: <file>: <reason>``."""
    try:
        yield
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise RuntimeFailure(f"{what}: {where}{exc.strerror or exc}") from None


def _overlap(a: Path, b: Path) -> bool:
    return is_under(a, b) or is_under(b, a)


def _listed() -> list[tuple[DaemonRecord, dict[str, Any]]]:
    """:func:`_live_records`, oldest daemon first."""
    directory = registry_dir()
    with _locked(directory):
        records = _live_records(directory)
    return sorted(records, key=lambda record: (record[0].create_time, record[0].pid))


def _refuse_overlap(directory: Path, roots: Sequence[Path], own_pid: int) -> None:
    for core, _ in _live_records(directory):
        if core.pid == own_pid:
            continue
        for theirs in core.roots:
            for mine in roots:
                if Path(theirs) == mine:
                    raise RuntimeFailure(
                        f"{mine} is already watched by another cachewatchd (pid {core.pid})"
                    )
                if _overlap(Path(theirs), mine):
                    raise RuntimeFailure(
                        f"another cachewatchd (pid {core.pid}) already watches {theirs}, "
                        f"which overlaps {mine}"
                    )


def _live_records(directory: Path) -> list[tuple[DaemonRecord, dict[str, Any]]]:
    """Records of live daemons on this host (core, whole document); records of dead ones are
    removed (call under lock)."""
    live = []
    for file in directory.glob(f"*@{_host()}.json"):
        pid, loaded = file.name.partition("@")[0], _load(file)
        try:
            running = loaded is not None and _verified(loaded[0]) is not None
        except psutil.AccessDenied:  # cannot tell: keep it rather than drop a live daemon
            running = True
        if running and loaded is not None:
            live.append(loaded)
        elif loaded is not None or not (pid.isdigit() and alive(int(pid))):
            file.unlink(missing_ok=True)  # a broken record is kept while its pid runs
    return live


def _verified(core: DaemonRecord) -> psutil.Process | None:
    """Like :func:`process_of`, but lets ``psutil.AccessDenied`` through."""
    try:
        process = psutil.Process(core.pid)
        if abs(process.create_time() - core.create_time) > _CREATE_TIME_SLACK:
            return None
        if process.status() == psutil.STATUS_ZOMBIE or process.uids().real != core.uid:
            return None
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    return process


_RECORD_LIMIT = 1 << 20
"""A daemon's record is a few KiB; anything larger is not one."""


def _load(file: Path) -> tuple[DaemonRecord, dict[str, Any]] | None:
    """A well-formed record (its core, the whole document), or ``None``."""
    try:
        document = json.loads(read_regular(file, _RECORD_LIMIT).decode("utf-8"))
        return DaemonRecord.from_json(document), document
    except (OSError, ValueError):  # unreadable, not a regular file, not JSON, not a record
        return None


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_atomic(file: Path, record: Mapping[str, Any]) -> None:
    """Write *record* to *file* atomically; an :class:`OSError` names *file* (a full disk fails
    the write or the close, which name nothing)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", suffix=".tmp", dir=file.parent)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(file)) from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:  # mkstemp: mode 0600
            json.dump(record, out, indent=2, sort_keys=True, default=_jsonable)
            out.write("\n")
        os.replace(tmp, file)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(file)) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, datetime):
        return timestamp(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "localhost"
