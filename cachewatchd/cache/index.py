"""The verification index: what exact checks found, remembered by the fingerprints of the files.

An exact check (unmarshal + compile + compare, in a checking process) settles a pyc; its result is
kept here, keyed by the pyc's path and by the fingerprints of the pyc and its source (device, inode,
size, ``mtime_ns``, ``ctime_ns``; plus a hash of both files' content where ctime cannot be trusted,
:attr:`~cachewatchd.cache.plan.AuditOptions.ctime_untrusted`). Anything that changes either file
changes a fingerprint, and the record no longer applies: the pyc is checked again. So ``scan``
gives the exact verdicts of a tree the daemon or a ``--deep`` run verified at header speed, and a
repeated ``--deep`` checks only what changed.

Stored with :mod:`sqlite3` in WAL mode (a daemon and a scan read and write it at once) in
``verified.sqlite3`` of the user cache directory (platformdirs' ``user_cache_dir``, e.g.
``~/.cache/cachewatchd``; ``$CACHEWATCHD_CACHE_DIR`` overrides it). A plain scan of a machine that
never verified anything opens nothing: :mod:`sqlite3` is imported only when the file exists or a
result is to be stored. A record is written only when both files kept their fingerprints through
the check and their last change is older than the filesystem's timestamp tick (a later change in
the same tick would keep the fingerprint: git's "racily clean" problem). A corrupt or unusable
index is set aside and rebuilt (one line on stderr); when even that fails, the audit runs without
it (one line). Where no index can be created at all (no home directory, a read-only cache dir), the
audit runs without one, silently. Never fatal. At most :data:`MAX_RECORDS` records: the oldest go first.
"""

from __future__ import annotations

import os
import sys
import time

from cachewatchd.cache.named import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import sqlite3
    from pathlib import Path
    from typing import Any

__all__ = [
    "ENV_VAR",
    "MAX_RECORDS",
    "Fingerprint",
    "Record",
    "VerifyIndex",
    "content_hash",
    "default_path",
    "fingerprint",
]

ENV_VAR = "CACHEWATCHD_CACHE_DIR"
"""Overrides the directory of the index (tests, several users of one home)."""
MAX_RECORDS = 400_000
"""Records kept at most (about 100 MB); beyond, the oldest tenth goes."""
_FILE = "verified.sqlite3"
_SCHEMA = 1
_BUSY_MS = 10_000

Fingerprint = str
"""``"dev:ino:size:mtime_ns:ctime_ns"`` of a file."""


def fingerprint(st: os.stat_result) -> Fingerprint:
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def content_hash(*paths: str) -> bytes | None:
    """BLAKE2b of the files' bytes (each length-prefixed); ``None`` when one cannot be read."""
    from _blake2 import blake2b  # hashlib would load OpenSSL: 3 ms of a scan's start-up

    digest = blake2b(digest_size=20)
    for path in paths:
        try:
            with open(path, "rb", buffering=0) as f:
                data = f.read()
        except OSError:
            return None
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.digest()


class Record(NamedTuple):
    """What an exact check found for one pyc, and the files it was found for."""

    pyc: Fingerprint
    source: str
    """The source's path."""
    source_fp: Fingerprint
    content: bytes | None
    """Hash of the source and the pyc (:func:`content_hash`), where ctime cannot be trusted."""
    state: str
    reason: str
    mode: str | None

    def matches(
        self, pyc: Fingerprint, source: str, source_fp: Fingerprint, content: bytes | None
    ) -> bool:
        return (
            self.pyc == pyc
            and self.source_fp == source_fp
            and self.source == source
            and self.content == content
        )


def default_path() -> Path:
    """Where the index lives: ``$CACHEWATCHD_CACHE_DIR`` or platformdirs' user cache directory."""
    from pathlib import Path  # not at import: a scan that checks nothing exactly never opens it

    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override) / _FILE
    if sys.platform != "linux":
        import platformdirs

        return Path(platformdirs.user_cache_dir("cachewatchd")) / _FILE
    # platformdirs' answer on Linux, without its import (10 ms of a scan's start-up)
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "cachewatchd" / _FILE


def _prepare(db: sqlite3.Connection) -> None:
    """WAL mode, the table; raises :class:`sqlite3.DatabaseError` for a file that is no index.
    Only a new file is written to (several processes open it at once: a scan's jobs, the daemon)."""
    import sqlite3

    if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS verified (dir TEXT NOT NULL, name TEXT NOT NULL, "
                "pyc TEXT NOT NULL, source TEXT NOT NULL, source_fp TEXT NOT NULL, content BLOB, "
                "state TEXT NOT NULL, reason TEXT NOT NULL, mode TEXT, checked INTEGER NOT NULL, "
                "PRIMARY KEY (dir, name)) WITHOUT ROWID"
            )
            db.execute("CREATE INDEX IF NOT EXISTS by_age ON verified (checked)")
            db.execute(f"PRAGMA user_version = {_SCHEMA}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    elif version != _SCHEMA:
        raise sqlite3.DatabaseError(f"unknown schema version {version}")
    db.execute("SELECT count(*) FROM verified WHERE dir = ''").fetchone()


def _busy(exc: BaseException) -> bool:
    """Another process held the index longer than the busy timeout: skip it this time."""
    text = str(exc)
    return "locked" in text or "busy" in text


def _log(message: str) -> None:
    """One line on stderr (or the daemon's log), through the standard library's logging: structlog,
    unconfigured in ``scan``, would write to stdout (``--json``)."""
    import logging

    stderr = logging.getLogger(__name__)  # not a structured event of the daemon's log
    stderr.warning("cachewatchd: %s", message)


class VerifyIndex:
    """The index at *path* (default: :func:`default_path`), opened on first need.

    Reads go through :meth:`directory` (every record of one cache directory, one query); writes are
    gathered by :meth:`add` and written by :meth:`flush` in one transaction. Safe to use after a
    fork (the child opens its own connection); one thread at a time.
    """

    def __init__(self, path: Path | None = None, *, enabled: bool = True) -> None:
        self._path = path
        self._enabled = enabled
        self._db: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._broken = not enabled
        self._pending: list[tuple[Any, ...]] = []
        self._abandoned: list[Any] = []
        """Connections of the parent after a fork: never used nor closed here."""

    @property
    def path(self) -> Path:
        if self._path is None:
            self._path = default_path()
        return self._path

    # -- reading ---------------------------------------------------------------------------------
    def directory(self, cache_dir: str) -> dict[str, Record]:
        """The records of the pycs in *cache_dir*, by file name (empty when there is no index)."""
        db = self._connection(create=False)
        if db is None:
            return {}
        try:
            rows = db.execute(
                "SELECT name, pyc, source, source_fp, content, state, reason, mode "
                "FROM verified WHERE dir = ?",
                (cache_dir,),
            ).fetchall()
        except Exception as exc:  # noqa: BLE001 - sqlite3.Error, raised by a module not imported
            self._failed(exc)
            return {}
        return {row[0]: Record(*row[1:]) for row in rows}

    def lookup(self, pyc: str) -> Record | None:
        directory, name = os.path.split(pyc)
        return self.directory(directory).get(name)

    # -- writing ---------------------------------------------------------------------------------
    def add(
        self,
        pyc: str,
        pyc_stat: os.stat_result,
        source: str,
        source_stat: os.stat_result,
        content: bytes | None,
        state: str,
        reason: str,
        mode: str | None,
    ) -> None:
        """Remember what the exact check of *pyc* found (written by :meth:`flush`)."""
        if self._broken:
            return
        directory, name = os.path.split(pyc)
        self._pending.append(
            (
                directory,
                name,
                fingerprint(pyc_stat),
                source,
                fingerprint(source_stat),
                content,
                state,
                reason,
                mode,
                time.time_ns(),
            )
        )

    def forget(self, pyc: str) -> None:
        """Drop the record of *pyc* (removed by the daemon, say)."""
        db = self._connection(create=False)
        if db is None:
            return
        try:
            with db:
                db.execute("DELETE FROM verified WHERE dir = ? AND name = ?", os.path.split(pyc))
        except Exception as exc:  # noqa: BLE001 - sqlite3.Error
            self._failed(exc)

    def flush(self) -> None:
        """Write the records gathered by :meth:`add`, in one transaction."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        db = self._connection(create=True)
        if db is None:
            return
        try:
            with db:
                db.executemany(
                    "INSERT OR REPLACE INTO verified VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    pending,
                )
            self._bound(db)
        except Exception as exc:  # noqa: BLE001 - sqlite3.Error
            self._failed(exc)

    def close(self) -> None:
        """Write what is pending and close the connection."""
        self.flush()
        if self._db is not None and self._pid == os.getpid():
            self._db.close()
        self._db = None

    # -- the connection --------------------------------------------------------------------------
    def _connection(self, *, create: bool) -> sqlite3.Connection | None:
        if self._pid != os.getpid():  # forked: the parent's connection is not ours to use
            if self._db is not None:
                self._abandoned.append(self._db)
            self._db, self._pid = None, os.getpid()
        if self._db is not None or self._broken:
            return self._db
        existed = os.path.lexists(self.path)
        if not create and not existed:
            return None
        try:
            self._db = self._open()
        except Exception as exc:  # noqa: BLE001 - corrupt, not a database, locked too long
            if not existed and not os.path.lexists(self.path):
                # nowhere to keep one (no home, a read-only cache dir): nothing is lost, and a
                # line on every run would be noise
                self._broken = True
                return None
            if _busy(exc) or not self._rebuild(exc):
                return None
        return self._db

    def _open(self) -> sqlite3.Connection:
        import sqlite3

        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Processes creating the index at once (a scan's jobs, four scans, the daemon): switching
        # a new file to WAL can fail "locked" at once, without sqlite's busy wait; retry until the
        # busy timeout, else this process's records would be dropped without a word.
        deadline = time.monotonic() + _BUSY_MS / 1000
        while True:
            db = sqlite3.connect(self.path, timeout=_BUSY_MS / 1000, isolation_level=None)
            try:
                _prepare(db)
            except sqlite3.OperationalError as exc:
                db.close()
                if not _busy(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)
                continue
            except BaseException:
                db.close()
                raise
            db.isolation_level = "DEFERRED"  # transactions for the writes of flush()
            return db

    def _rebuild(self, exc: BaseException) -> bool:
        """Set the unusable index aside and start a new one; False when that fails too."""
        if self._db is not None:
            self._db.close()
            self._db = None
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(f"{self.path}{suffix}")
            except FileNotFoundError:
                pass
            except OSError:
                break
        try:
            self._db = self._open()
        except Exception as again:  # noqa: BLE001
            self._broken = True
            _log(
                f"verification index {self.path} unusable ({type(again).__name__}: {again}): "
                "running without it, exact checks are not remembered"
            )
            return False
        _log(f"verification index {self.path} rebuilt ({type(exc).__name__}: {exc})")
        return True

    def _failed(self, exc: BaseException) -> None:
        """A query failed on an open index: rebuild it once; if that fails, do without."""
        if not _busy(exc):
            self._rebuild(exc)

    def _bound(self, db: sqlite3.Connection) -> None:
        (count,) = db.execute("SELECT count(*) FROM verified").fetchone()
        if count <= MAX_RECORDS:
            return
        with db:
            db.execute(
                "DELETE FROM verified WHERE checked <= (SELECT checked FROM verified "
                "ORDER BY checked LIMIT 1 OFFSET ?)",
                (count - MAX_RECORDS * 9 // 10,),
            )
