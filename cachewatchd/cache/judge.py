"""Judge one cache entry against its source: the seven states (README, "The states of a cache entry").

This is the hot path of every scan: a header check costs a few microseconds; the exact check
(unmarshal + compile + compare) runs only when the cheap evidence cannot settle the question.
"""

from __future__ import annotations

import errno
import marshal
import os
import stat
import sys
from enum import Enum
from pathlib import Path
from typing import Literal, NamedTuple

from cachewatchd.cache.pyc import (
    HEADER_SIZE,
    RUNNING_MAGIC,
    HeaderError,
    Mode,
    parse_header,
    source_hash,
    version_of_tag,
)

__all__ = [
    "DANGEROUS",
    "FRESH_HEADER",
    "MASK",
    "Entry",
    "Kind",
    "State",
    "VanishedError",
    "Verdict",
    "judge_header",
    "judge_legacy",
    "judge_pycache",
    "read_header",
]

MASK = 0xFFFFFFFF
"""CPython stores the source mtime and size modulo 2**32."""
_RUNNING_TAG = sys.implementation.cache_tag
_RUNNING_TAG_VERSION = None if _RUNNING_TAG is None else version_of_tag(_RUNNING_TAG)


class State(str, Enum):
    """The state of one cache entry; the user-facing vocabulary."""

    FRESH = "fresh"
    OUTDATED = "outdated"
    STALE = "stale"
    SUSPECT = "suspect"
    ORPHAN = "orphan"
    SOURCELESS = "sourceless"
    CORRUPT = "corrupt"

    def __str__(self) -> str:
        return self.value


DANGEROUS = frozenset({State.STALE, State.SOURCELESS, State.CORRUPT})

Kind = Literal["pycache", "legacy", "prefix"]


class Entry(NamedTuple):
    """One judged cache file."""

    path: Path
    source: Path | None
    state: State
    reason: str
    tag: str
    opt: str
    mode: Mode | None
    kind: Kind = "pycache"


class Verdict(NamedTuple):
    state: State
    reason: str
    mode: Mode | None = None


FRESH_HEADER = Verdict(State.FRESH, "header matches the source", "timestamp")
"""The verdict of nearly every entry of a warm tree, made once (verdicts are immutable)."""


class VanishedError(Exception):
    """The pyc or its source disappeared while being judged."""


def _version_text(version: tuple[int, int] | None) -> str:
    return "?" if version is None else f"{version[0]}.{version[1]}"


def read_header(pyc: str, dir_fd: int | None = None) -> tuple[bytes, int, int]:
    """First bytes of *pyc* (relative to *dir_fd* if given), its ``st_mtime_ns`` and its size.

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
    return data, st.st_mtime_ns, st.st_size


def _open_regular(path: str) -> int:
    """Open *path* for reading without blocking on a FIFO; refuse anything but a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError as exc:
        raise VanishedError(path) from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", path)
    return fd


def _read_bytes(path: str) -> bytes:
    with os.fdopen(_open_regular(path), "rb") as f:
        return f.read()


def _opt_level(opt: str) -> int:
    return int(opt) if opt.isdigit() else 0


def _exact(pyc: str, source: str, opt: str) -> Verdict | None:
    """Compare the pyc's code with a fresh compile; ``None`` means identical."""
    body = _read_bytes(pyc)[HEADER_SIZE:]
    try:
        cached = marshal.loads(body)
    except (EOFError, ValueError, TypeError) as exc:
        return Verdict(State.CORRUPT, f"body does not unmarshal ({exc})")
    try:
        fresh = compile(
            _read_bytes(source), source, "exec", dont_inherit=True, optimize=_opt_level(opt)
        )
    except (SyntaxError, ValueError) as exc:
        return Verdict(
            State.STALE,
            f"the source no longer compiles ({type(exc).__name__}) but the header matches: "
            "Python runs the old cached code",
        )
    if cached == fresh:
        return None
    return Verdict(
        State.STALE,
        "header matches the source but the code differs (same-second or mtime-restored edit): "
        "Python runs the old code",
    )


def _unmarshal_check(pyc: str) -> Verdict | None:
    try:
        marshal.loads(_read_bytes(pyc)[HEADER_SIZE:])
    except (EOFError, ValueError, TypeError) as exc:
        return Verdict(State.CORRUPT, f"body does not unmarshal ({exc})")
    return None


def judge_pycache(
    pyc: str, source: str, source_stat: os.stat_result, tag: str, opt: str, *, deep: bool = False
) -> Verdict:
    """Judge a ``__pycache__`` or prefix-tree entry whose source exists.

    Raises :class:`VanishedError` when a file disappears, :class:`OSError` when unreadable.
    """
    data, pyc_mtime_ns, pyc_size = read_header(pyc)
    return judge_header(pyc, source, source_stat, tag, opt, data, pyc_mtime_ns, pyc_size, deep=deep)


def judge_header(
    pyc: str,
    source: str,
    source_stat: os.stat_result,
    tag: str,
    opt: str,
    data: bytes,
    pyc_mtime_ns: int,
    pyc_size: int,
    *,
    deep: bool = False,
) -> Verdict:
    """:func:`judge_pycache` once the header has been read with :func:`read_header`."""
    tag_version = _RUNNING_TAG_VERSION if tag == _RUNNING_TAG else version_of_tag(tag)
    try:
        header = parse_header(data, any_magic=tag_version is None)
    except HeaderError as exc:
        return Verdict(State.CORRUPT, str(exc))
    if pyc_size <= HEADER_SIZE:
        return Verdict(State.CORRUPT, "header without a body", header.mode)
    if tag_version is not None and header.version != tag_version:
        return Verdict(
            State.CORRUPT,
            f"magic of CPython {_version_text(header.version)} in a {tag} file",
            header.mode,
        )
    ours = header.magic == RUNNING_MAGIC
    if header.mode != "timestamp":
        return _judge_hash(pyc, source, header.magic, header.hash, header.mode, ours, deep)
    if header.mtime != (int(source_stat.st_mtime) & MASK) or header.size != (
        source_stat.st_size & MASK
    ):
        what = "mtime" if header.mtime != (int(source_stat.st_mtime) & MASK) else "size"
        return Verdict(
            State.OUTDATED,
            f"source {what} differs from the header: Python recompiles it on import",
            "timestamp",
        )
    changed_since = source_stat.st_ctime_ns > pyc_mtime_ns
    if not (changed_since or deep):
        return FRESH_HEADER
    if ours:
        verdict = _exact(pyc, source, opt)
        if verdict is not None:
            return Verdict(verdict.state, verdict.reason, "timestamp")
        return Verdict(State.FRESH, "code identical to a fresh compile", "timestamp")
    if not changed_since:
        return FRESH_HEADER
    return Verdict(
        State.SUSPECT,
        "header matches but the source changed after the cache was written, and this pyc of "
        f"CPython {_version_text(header.version)} cannot be compared here",
        "timestamp",
    )


def _judge_hash(
    pyc: str, source: str, magic: bytes, stored: bytes, mode: Mode, ours: bool, deep: bool
) -> Verdict:
    try:
        expected = source_hash(magic, _read_bytes(source))
    except HeaderError as exc:  # another implementation's magic: its hash key is unknown
        return Verdict(State.SUSPECT, f"cannot hash for this pyc: {exc}", mode)
    if expected == stored:
        if deep and ours:
            bad = _unmarshal_check(pyc)
            if bad is not None:
                return Verdict(bad.state, bad.reason, mode)
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


def judge_legacy(pyc: str, has_source: bool, *, deep: bool = False) -> Verdict:
    """Judge a legacy ``m.pyc``/``m.pyo`` lying beside where ``m.py`` would be."""
    if pyc.endswith(".pyo"):
        if has_source:
            return Verdict(State.OUTDATED, "legacy .pyo beside its source: never imported")
        return Verdict(State.ORPHAN, "legacy .pyo: Python 3.5+ never imports .pyo files")
    if has_source:
        return Verdict(
            State.OUTDATED,
            "legacy .pyc beside its source: ignored while the source exists, "
            "imported if the source is deleted",
        )
    data, _, size = read_header(pyc)
    try:
        header = parse_header(data)
    except HeaderError as exc:
        return Verdict(State.CORRUPT, f"sourceless pyc, {exc}")
    if size <= HEADER_SIZE:
        return Verdict(State.CORRUPT, "sourceless pyc, header without a body", header.mode)
    if deep and header.magic == RUNNING_MAGIC:
        bad = _unmarshal_check(pyc)
        if bad is not None:
            return Verdict(bad.state, f"sourceless pyc, {bad.reason}", header.mode)
    return Verdict(
        State.SOURCELESS,
        f"no source beside it: Python {_version_text(header.version)} imports this bytecode",
        header.mode,
    )
