"""Judge a ``__pycache__`` or prefix-tree entry against its source by its header: the states of
README's "The states of a cache entry", up to the exact check.

This is the hot path of every scan: a header check costs a few microseconds and reads 16 bytes; the
exact check (unmarshal + compile + compare) runs only when the cheap evidence cannot settle the
question, and then in a checking process with memory and time limits (:mod:`.exact`,
:mod:`.checks`): pyc bodies and sources are untrusted input, never unmarshalled or compiled in this
process. Legacy ``m.pyc``/``m.pyo`` files are judged by :mod:`.legacy`.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time

from cachewatchd.cache.checks import MAX_SOURCE_BYTES, CheckPool
from cachewatchd.cache.exact import Pending, finish
from cachewatchd.cache.pyc import (
    HEADER_SIZE,
    RUNNING_MAGIC,
    Header,
    HeaderError,
    Mode,
    parse_header,
    released_magics,
    source_hash,
    version_of_magic,
    version_of_tag,
)
from cachewatchd.cache.states import State, VanishedError, Verdict

__all__ = [
    "FRESH_HEADER",
    "MASK",
    "TICK_NS",
    "judge_header",
    "judge_pycache",
    "prejudge",
    "read_header",
    "read_pyc",
    "trigger",
    "version_text",
    "why_superseded",
]

MASK = 0xFFFFFFFF
"""CPython stores the source mtime and size modulo 2**32."""
_RUNNING_TAG = sys.implementation.cache_tag
_RUNNING_TAG_VERSION = None if _RUNNING_TAG is None else version_of_tag(_RUNNING_TAG)
_RUNNING_VERSION = (sys.version_info[0], sys.version_info[1])

TICK_NS = 10_000_000
"""The timestamp tick of a filesystem with sub-second times: the kernel stamps files from a coarse
clock (a jiffy: 1-10 ms), and since Linux 6.13 some stamps are fine-grained, so a later change can
carry an earlier time than an earlier one by up to a tick. On NFS the server's clock stamps."""
WHOLE_SECOND_NS = 2_000_000_000
"""The tick where both times are whole seconds (ext3, HFS+, sshfs, FAT's 2 s)."""

FRESH_HEADER = Verdict(State.FRESH, "header matches the source", "timestamp")
"""The verdict of nearly every entry of a warm tree, made once (verdicts are immutable)."""


def version_text(version: tuple[int, int] | None) -> str:
    return "?" if version is None else f"{version[0]}.{version[1]}"


def read_header(pyc: str, dir_fd: int | None = None) -> tuple[bytes, int, int]:
    """First bytes of *pyc* (relative to *dir_fd* if given), its ``st_mtime_ns`` and its size."""
    data, st = read_pyc(pyc, dir_fd)
    return data, st.st_mtime_ns, st.st_size


def read_pyc(pyc: str, dir_fd: int | None = None) -> tuple[bytes, os.stat_result]:
    """First bytes of *pyc* (relative to *dir_fd* if given) and its ``fstat``.

    The hot path of a scan: open, one ``fstat`` (regular file? mtime, size), read, close.
    Raises :class:`VanishedError` when *pyc* is gone, :class:`OSError` when it cannot be read.
    """
    try:
        fd = os.open(pyc, os.O_RDONLY | os.O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError as exc:
        raise VanishedError(pyc) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", pyc)
        data = os.read(fd, HEADER_SIZE)
    finally:
        os.close(fd)
    return data, st


def _read_capped(path: str, cap: int) -> bytes | None:
    """The bytes of the regular file *path*; ``None`` when it holds more than *cap*."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError as exc:
        raise VanishedError(path) from exc
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        if st.st_size > cap:
            return None
        data = f.read(cap + 1)
    return None if len(data) > cap else data


def _opt_level(opt: str) -> int:
    return int(opt) if opt.isdigit() else 0


def judge_pycache(
    pyc: str,
    source: str,
    source_stat: os.stat_result,
    tag: str,
    opt: str,
    *,
    checks: CheckPool,
    deep: bool = False,
    ctime_trusted: bool = True,
) -> Verdict:
    """Judge a ``__pycache__`` or prefix-tree entry whose source exists.

    Raises :class:`VanishedError` when a file disappears, :class:`OSError` when unreadable.
    """
    data, pyc_stat = read_pyc(pyc)
    return judge_header(
        pyc,
        source,
        source_stat,
        tag,
        opt,
        data,
        pyc_stat,
        checks=checks,
        deep=deep,
        ctime_trusted=ctime_trusted,
    )


def judge_header(
    pyc: str,
    source: str,
    source_stat: os.stat_result,
    tag: str,
    opt: str,
    data: bytes,
    pyc_stat: os.stat_result,
    *,
    checks: CheckPool,
    deep: bool = False,
    ctime_trusted: bool = True,
) -> Verdict:
    """:func:`judge_pycache` once the header has been read with :func:`read_pyc`.

    The exact check of a pyc of this Python (when :func:`trigger` fires, or with *deep*) runs in
    *checks*' worker process.
    """
    verdict = prejudge(
        pyc,
        source,
        source_stat,
        tag,
        opt,
        data,
        pyc_stat,
        deep=deep,
        ctime_trusted=ctime_trusted,
    )
    if isinstance(verdict, Pending):
        return finish(verdict, checks.exact(verdict.pyc, verdict.source, verdict.optimize))
    return verdict


def prejudge(
    pyc: str,
    source: str,
    source_stat: os.stat_result,
    tag: str,
    opt: str,
    data: bytes,
    pyc_stat: os.stat_result,
    *,
    deep: bool = False,
    ctime_trusted: bool = True,
    now_ns: int | None = None,
) -> Verdict | Pending:
    """:func:`judge_header` up to the exact check: the verdict, or what the check must settle.

    Reads nothing but the source of a hash pyc (at most :data:`MAX_SOURCE_BYTES` of it). Where
    *ctime_trusted* is false (sshfs), no time proves that the source did not change after the pyc
    was written: every header-matching pyc of this Python needs the exact check (or a record of
    the verification index, which keeps a hash of the files there).
    """
    pyc_size = pyc_stat.st_size
    tag_version = _RUNNING_TAG_VERSION if tag == _RUNNING_TAG else version_of_tag(tag)
    if tag_version is not None and data[:4] != RUNNING_MAGIC:  # PyPy's magics are its own
        superseded = why_superseded(data, tag_version)
        if superseded is not None:
            return Verdict(
                State.OUTDATED,
                f"{superseded}: CPython rejects it (bad magic number) and recompiles it on import",
                _mode_of(data),
            )
    try:
        header = parse_header(data, any_magic=tag_version is None)
    except HeaderError as exc:
        return Verdict(State.CORRUPT, str(exc))
    if pyc_size <= HEADER_SIZE:
        return Verdict(State.CORRUPT, "header without a body", header.mode)
    if tag_version is not None and header.version != tag_version:
        return Verdict(
            State.CORRUPT,
            f"magic of CPython {version_text(header.version)} in a {tag} file",
            header.mode,
        )
    if header.version == (2, 7):
        return Verdict(
            State.ORPHAN,
            "pyc of CPython 2.7, which never reads __pycache__ or a prefix tree: never imported",
        )
    ours = header.version is not None  # a CPython pyc: its interpreter checks it (checks.py)
    if header.mode != "timestamp":
        return _judge_hash(pyc, source, header, opt, ours, deep)
    mtime = int(source_stat.st_mtime)
    if header.version is not None and header.version < (3, 7) and not 0 <= mtime <= MASK:
        # 3.3-3.6 compare the header's 32 bits with the whole mtime (3.7 masks both sides).
        return Verdict(
            State.OUTDATED,
            f"CPython {version_text(header.version)} compares the header with the source's "
            f"whole mtime ({mtime}: before 1970 or after 2106), which never fits in its 32 bits: "
            "it recompiles on every import",
            "timestamp",
        )
    if header.mtime != (mtime & MASK) or header.size != (source_stat.st_size & MASK):
        what = "mtime" if header.mtime != (mtime & MASK) else "size"
        return Verdict(
            State.OUTDATED,
            f"source {what} differs from the header: Python recompiles it on import",
            "timestamp",
        )
    why = trigger(source_stat.st_ctime_ns, pyc_stat, now_ns)
    # a pyc on another filesystem than its source (a prefix tree on a local disk, sources on NFS)
    # is stamped by another clock, which may run ahead: checked where it can be, not suspected
    elsewhere = pyc_stat.st_dev != source_stat.st_dev
    if ours and (why is not None or deep or not ctime_trusted or elsewhere):
        return Pending(
            pyc, source, _opt_level(opt), "timestamp", why is not None or not ctime_trusted
        )
    if why is None:
        return FRESH_HEADER
    return Verdict(
        State.SUSPECT,
        f"header matches but {why}, and this pyc of CPython {version_text(header.version)} "
        "cannot be compared here",
        "timestamp",
    )


def trigger(
    source_ctime_ns: int, pyc_stat: os.stat_result, now_ns: int | None = None
) -> str | None:
    """Why the times cannot prove that a header-matching pyc holds its source's code (the exact
    check must settle it), or ``None`` when they do (design.md, "The trigger").

    - the source changed at or after the pyc was written, within the filesystem's tick
      (:data:`TICK_NS`, :data:`WHOLE_SECOND_NS`): a same-size, mtime-kept replacement in the tick
      of the pyc's write leaves the source's ctime *equal* to the pyc's mtime;
    - the pyc's mtime is later than its own ctime (its mtime was set, by a copy preserving times,
      to a moment after it was written here: a clock ahead) or than now.
    """
    pyc_mtime_ns = pyc_stat.st_mtime_ns
    tick = (
        WHOLE_SECOND_NS
        if not (source_ctime_ns % 1_000_000_000 or pyc_mtime_ns % 1_000_000_000)
        else TICK_NS
    )
    if source_ctime_ns >= pyc_mtime_ns - tick:
        return "the source changed at or after the moment the cache was written"
    if pyc_mtime_ns > pyc_stat.st_ctime_ns + tick:
        return "the cache's mtime is later than its own ctime (copied from a clock ahead)"
    if pyc_mtime_ns > (time.time_ns() if now_ns is None else now_ns) + tick:
        return "the cache is dated in the future"
    return None


def _mode_of(data: bytes) -> Mode | None:
    """The mode a header declares, or ``None`` when it cannot be parsed."""
    try:
        return parse_header(data, any_magic=True).mode
    except HeaderError:
        return None


def why_superseded(data: bytes, tag_version: tuple[int, int] | None) -> str | None:
    """Why the interpreters of the version whose magic *data* starts with reject it as a bad magic
    number (the magic of a pre-release: a release reads only its own); ``None`` when they read it,
    when its version has no release yet, or when it contradicts *tag_version*."""
    magic = bytes(data[:4])
    version = version_of_magic(magic)
    if version is None or (tag_version is not None and version != tag_version):
        return None
    released = released_magics(version)
    read = (RUNNING_MAGIC,) if version == _RUNNING_VERSION else released
    if read is None or magic in read:
        return None
    text = version_text(version)
    wanted = " or ".join(str(int.from_bytes(m[:2], "little")) for m in read)
    number = int.from_bytes(magic[:2], "little")
    if released is not None and magic in released:  # this interpreter is a pre-release
        return (
            f"magic {number} of a release of CPython {text}, while this CPython {text} reads "
            f"{wanted}"
        )
    return f"magic {number} of a pre-release of CPython {text}, whose releases read {wanted}"


def _judge_hash(
    pyc: str, source: str, header: Header, opt: str, ours: bool, deep: bool
) -> Verdict | Pending:
    mode = header.mode
    data = _read_capped(source, MAX_SOURCE_BYTES)
    if data is None:
        return Verdict(
            State.SUSPECT,
            f"source over {MAX_SOURCE_BYTES >> 20} MiB (a cap of cachewatchd): its hash is not "
            "computed",
            mode,
        )
    try:
        expected = source_hash(header.magic, data)
    except HeaderError as exc:  # another implementation's magic: its hash key is unknown
        return Verdict(State.SUSPECT, f"cannot hash for this pyc: {exc}", mode)
    del data
    if expected == header.hash:
        if deep and ours:
            return Pending(pyc, source, _opt_level(opt), mode, changed_since=False)
        return Verdict(State.FRESH, "source hash matches", mode)
    if mode == "unchecked-hash":
        return Verdict(
            State.STALE,
            "unchecked-hash pyc whose source changed: Python never checks it and runs the old code",
            mode,
        )
    return Verdict(
        State.OUTDATED,
        "checked-hash pyc whose source changed: Python recompiles it on import",
        mode,
    )
