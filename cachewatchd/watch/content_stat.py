"""The poller's stat where ``st_ctime`` cannot be trusted: the content decides.

sshfs (SFTP) reports the mtime as the ctime, in whole seconds, and an inode number stable per path,
so a same-size edit that puts the mtime back (``cp -p``, ``rsync -t``, ``touch -r``) leaves every
attribute the poller compares as it was (:func:`~cachewatchd.watch.mounts.ctime_trusted`). On such a
filesystem :class:`ContentStat` folds a hash of the file's content into the ``st_mtime`` that
watchdog's snapshot diff compares, so a changed content is a modified file.

Reading every source on every pass would cost a network round trip per file: a file is hashed when
its size, mtime or inode changed, and otherwise in turn, :data:`HASH_BUDGET` unchanged files per pass
(a tree of *n* sources is read in full every ``n / HASH_BUDGET`` passes).
"""

from __future__ import annotations

import hashlib
import os
import stat
import zlib

from cachewatchd.watch.polling import change_stat

__all__ = ["HASH_BUDGET", "ContentStat"]

HASH_BUDGET = 256
"""Unchanged files hashed again per pass, at most (about)."""

_Key = tuple[int, int, int]


class ContentStat:
    """:func:`~cachewatchd.watch.polling.change_stat` whose ``st_mtime`` also carries a hash of
    the content (a number below 2**48: exact as a float). Call :meth:`new_pass` before each pass."""

    def __init__(self, budget: int = HASH_BUDGET) -> None:
        self._budget = max(1, budget)
        self._known: dict[str, tuple[_Key, int]] = {}
        self._current: dict[str, tuple[_Key, int]] = {}
        self._pass = 0
        self._period = 1

    def new_pass(self) -> None:
        """A new snapshot starts: what the last one saw is what is known."""
        if self._current:
            self._known, self._current = self._current, {}
        self._period = max(1, -(-len(self._known) // self._budget))
        self._pass += 1

    def __call__(self, path: str) -> os.stat_result:
        st = change_stat(path)
        if not stat.S_ISREG(st.st_mode):
            return st
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        old = self._known.get(path)
        due = old is None or old[0] != key or self._turn(path)
        value = _digest(path, st.st_mtime_ns) if due or old is None else old[1]
        self._current[path] = (key, value)
        return _with_mtime(st, value)

    def _turn(self, path: str) -> bool:
        return zlib.crc32(os.fsencode(path)) % self._period == self._pass % self._period


def _digest(path: str, stamp_ns: int) -> int:
    """A hash of the mtime and the content; 0 when the file cannot be read (gone meanwhile)."""
    digest = hashlib.blake2b(stamp_ns.to_bytes(16, "little", signed=True), digest_size=6)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 16):
                digest.update(chunk)
    except OSError:
        return 0
    return int.from_bytes(digest.digest(), "big")


def _with_mtime(st: os.stat_result, value: int) -> os.stat_result:
    fields = list(st[:10])
    fields[8] = value  # st_mtime (int seconds)
    extra = {
        "st_atime": st.st_atime,
        "st_mtime": float(value),
        "st_ctime": st.st_ctime,
        "st_atime_ns": st.st_atime_ns,
        "st_mtime_ns": value,
        "st_ctime_ns": st.st_ctime_ns,
    }
    return os.stat_result(fields, extra)
