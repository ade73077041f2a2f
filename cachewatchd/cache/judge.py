"""Judge one cache entry against its source: the seven states (README, "The states of a cache entry").

This is the hot path of every scan: a header check costs a few microseconds and reads 16 bytes; the
exact check (unmarshal + compile + compare) runs only when the cheap evidence cannot settle the
question, and then in a checking process with memory and time limits (:mod:`.checks`): pyc bodies
and sources are untrusted input, never unmarshalled or compiled in this process.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from enum import Enum
from pathlib import Path
from typing import Literal, NamedTuple

from cachewatchd.cache.checks import MAX_SOURCE_BYTES, CheckPool, Outcome
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

__all__ = [
    "DANGEROUS",
    "FRESH_HEADER",
    "MASK",
    "Entry",
    "Kind",
    "Pending",
    "State",
    "VanishedError",
    "Verdict",
    "finish",
    "judge_header",
    "judge_legacy",
    "judge_pycache",
    "prejudge",
    "read_header",
]

MASK = 0xFFFFFFFF
"""CPython stores the source mtime and size modulo 2**32."""
_PY27_LIVE = 0x7FFFFFFF
"""Python 2.7 reads the header's mtime as a signed 32-bit number and compares it with the source's
mtime modulo 2**32: only mtimes whose 32 bits stay below 2**31 can match."""
_RUNNING_TAG = sys.implementation.cache_tag
_RUNNING_TAG_VERSION = None if _RUNNING_TAG is None else version_of_tag(_RUNNING_TAG)
_RUNNING_VERSION = (sys.version_info[0], sys.version_info[1])


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


class _Unchecked(Exception):
    """The exact check hit a limit of the checking process; ``str()`` says which."""


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


def _outcome_error(outcome: Outcome) -> None:
    """Raise what the worker could not read, as the in-process reads would."""
    if outcome.result == "gone":
        raise VanishedError(outcome.detail)
    if outcome.result == "unreadable":
        raise OSError(errno.EIO, outcome.detail)


def _exact_verdict(outcome: Outcome) -> Verdict | None:
    """The verdict of an exact check (:meth:`CheckPool.exact`): ``None`` when the code is
    identical; a verdict whose mode is left for the caller otherwise; raises
    :class:`VanishedError` or :class:`OSError` when a file could not be read. The states, as
    CPython would behave (docs/api.md, "Untrusted files"):

    - the body cannot be unmarshalled, or is not a code object, or the worker dies or times out
      while unmarshalling it: ``corrupt`` (CPython's import of it fails the same way);
    - the source does not compile (``SyntaxError``, ``ValueError``, ``RecursionError``: CPython's
      own limits, so an import of the source alone would fail the same way): ``stale``, since the
      header matches and Python runs the cached code instead of failing;
    - the compile exceeds a limit of the checking process (memory, time, the size cap, a crash):
      raises :class:`_Unchecked` (the caller judges by the header alone).
    """
    _outcome_error(outcome)
    result, detail = outcome.result, outcome.detail
    if result == "same":
        return None
    if result == "corrupt":
        return Verdict(State.CORRUPT, detail)
    if result == "failed" and not outcome.source_failed:
        return Verdict(
            State.CORRUPT, f"the body cannot be unmarshalled (checking process {detail})"
        )
    if result == "differs":
        field = f" ({detail})" if detail else ""
        return Verdict(
            State.STALE,
            f"header matches the source but the code differs{field} (same-second or "
            "mtime-restored edit): Python runs the old code",
        )
    if result == "no_compile":
        return Verdict(
            State.STALE,
            f"the source does not compile ({detail}) but the header matches: "
            "Python runs the old cached code",
        )
    if result == "failed":
        detail = f"compiling the source failed (checking process {detail})"
    raise _Unchecked(detail)


class Pending(NamedTuple):
    """An entry of this Python whose verdict needs the exact check: ask
    ``checks.exact(pending.pyc, pending.source, pending.optimize)`` (or many at once with
    :meth:`CheckPool.exact_many`), then :func:`finish` with the outcome."""

    pyc: str
    source: str
    optimize: int
    mode: Mode
    changed_since: bool
    """The source changed after the pyc was written (the trigger); else ``deep`` asked."""


def finish(pending: Pending, outcome: Outcome) -> Verdict:
    """The verdict of *pending* given the exact check's *outcome*.

    Raises :class:`VanishedError` or :class:`OSError` when a file could not be read.
    """
    mode = pending.mode
    try:
        verdict = _exact_verdict(outcome)
    except _Unchecked as exc:
        why_not = f"the exact check could not run: {exc}"
        if mode != "timestamp":
            return Verdict(State.FRESH, f"source hash matches ({why_not})", mode)
        if not pending.changed_since:
            return Verdict(State.FRESH, f"header matches the source ({why_not})", mode)
        return Verdict(
            State.SUSPECT,
            f"header matches but the source changed after the cache was written, and {why_not}",
            mode,
        )
    if verdict is not None:
        return Verdict(verdict.state, verdict.reason, mode)
    if mode != "timestamp":
        return Verdict(State.FRESH, "source hash matches; code identical to a fresh compile", mode)
    return Verdict(State.FRESH, "code identical to a fresh compile", mode)


def _unmarshal_check(checks: CheckPool, pyc: str) -> Verdict | None:
    """``None`` when the body unmarshals to a code object; else why not (``corrupt``); raises
    :class:`_Unchecked` when a limit of the checking process stopped it."""
    outcome = checks.load(pyc)
    _outcome_error(outcome)
    if outcome.result == "loaded":
        return None
    if outcome.result == "corrupt":
        return Verdict(State.CORRUPT, outcome.detail)
    if outcome.result == "failed":
        return Verdict(
            State.CORRUPT, f"the body cannot be unmarshalled (checking process {outcome.detail})"
        )
    raise _Unchecked(outcome.detail)


def judge_pycache(
    pyc: str,
    source: str,
    source_stat: os.stat_result,
    tag: str,
    opt: str,
    *,
    checks: CheckPool,
    deep: bool = False,
) -> Verdict:
    """Judge a ``__pycache__`` or prefix-tree entry whose source exists.

    Raises :class:`VanishedError` when a file disappears, :class:`OSError` when unreadable.
    """
    data, pyc_mtime_ns, pyc_size = read_header(pyc)
    return judge_header(
        pyc, source, source_stat, tag, opt, data, pyc_mtime_ns, pyc_size, checks=checks, deep=deep
    )


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
    checks: CheckPool,
    deep: bool = False,
) -> Verdict:
    """:func:`judge_pycache` once the header has been read with :func:`read_header`.

    The exact check of a pyc of this Python (when the source changed after the pyc was written,
    or with *deep*) runs in *checks*' worker process.
    """
    verdict = prejudge(pyc, source, source_stat, tag, opt, data, pyc_mtime_ns, pyc_size, deep=deep)
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
    pyc_mtime_ns: int,
    pyc_size: int,
    *,
    deep: bool = False,
) -> Verdict | Pending:
    """:func:`judge_header` up to the exact check: the verdict, or what the check must settle.

    Reads nothing but the source of a hash pyc (at most :data:`MAX_SOURCE_BYTES` of it).
    """
    tag_version = _RUNNING_TAG_VERSION if tag == _RUNNING_TAG else version_of_tag(tag)
    if tag_version is not None and data[:4] != RUNNING_MAGIC:  # PyPy's magics are its own
        superseded = _superseded(data, tag_version)
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
            f"magic of CPython {_version_text(header.version)} in a {tag} file",
            header.mode,
        )
    if header.version == (2, 7):
        return Verdict(
            State.ORPHAN,
            "pyc of CPython 2.7, which never reads __pycache__ or a prefix tree: never imported",
        )
    ours = header.magic == RUNNING_MAGIC
    if header.mode != "timestamp":
        return _judge_hash(pyc, source, header, opt, ours, deep)
    mtime = int(source_stat.st_mtime)
    if header.version is not None and header.version < (3, 7) and not 0 <= mtime <= MASK:
        # 3.3-3.6 compare the header's 32 bits with the whole mtime (3.7 masks both sides).
        return Verdict(
            State.OUTDATED,
            f"CPython {_version_text(header.version)} compares the header with the source's "
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
    changed_since = source_stat.st_ctime_ns > pyc_mtime_ns
    if ours and (changed_since or deep):
        return Pending(pyc, source, _opt_level(opt), "timestamp", changed_since)
    if not changed_since:
        return FRESH_HEADER
    return Verdict(
        State.SUSPECT,
        "header matches but the source changed after the cache was written, and this pyc of "
        f"CPython {_version_text(header.version)} cannot be compared here",
        "timestamp",
    )


def _mode_of(data: bytes) -> Mode | None:
    """The mode a header declares, or ``None`` when it cannot be parsed."""
    try:
        return parse_header(data, any_magic=True).mode
    except HeaderError:
        return None


def _superseded(data: bytes, tag_version: tuple[int, int] | None) -> str | None:
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
    text = _version_text(version)
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


def judge_legacy(
    pyc: str,
    source: str | None,
    source_stat: os.stat_result | None,
    *,
    checks: CheckPool,
    deep: bool = False,
) -> Verdict:
    """Judge a legacy ``m.pyc``/``m.pyo`` lying beside where ``m.py`` would be (*source* and its
    stat when it exists).

    Python 3 reads a legacy ``m.pyc`` only when ``m.py`` is missing, and never a ``.pyo``; Python
    2.7 reads ``m.pyc`` (``m.pyo`` under ``-O``) beside ``m.py`` as its live cache when the header's
    mtime matches the source's, and imports it without ``m.py``.
    """
    data, pyc_mtime_ns, size = read_header(pyc)
    try:
        header: Header | None = parse_header(data)
    except HeaderError as exc:
        header, error = None, exc
    if header is not None and header.version == (2, 7):
        return _judge_py27(pyc, header, size, source_stat, pyc_mtime_ns)
    if pyc.endswith(".pyo"):
        if source is not None:
            return Verdict(State.OUTDATED, "legacy .pyo beside its source: never imported")
        return Verdict(State.ORPHAN, "legacy .pyo: Python 3.5+ never imports .pyo files")
    if source is not None:
        return Verdict(
            State.OUTDATED,
            "legacy .pyc beside its source: ignored while the source exists, "
            "imported if the source is deleted",
        )
    if header is None:
        return Verdict(State.CORRUPT, f"sourceless pyc, {error}")
    if size <= HEADER_SIZE:
        return Verdict(State.CORRUPT, "sourceless pyc, header without a body", header.mode)
    superseded = _superseded(data, None)
    if superseded is not None:  # a pre-release's magic, or another implementation's (PyPy)
        return Verdict(
            State.SOURCELESS,
            f"no source beside it, and {superseded}: CPython {_version_text(header.version)} "
            "refuses to import it (bad magic number); an interpreter using this magic (that "
            "pre-release, PyPy) imports this bytecode",
            header.mode,
        )
    note = ""
    if deep and header.magic == RUNNING_MAGIC:
        try:
            bad = _unmarshal_check(checks, pyc)
        except _Unchecked as exc:
            bad, note = None, f" (its body could not be checked: {exc})"
        if bad is not None:
            return Verdict(bad.state, f"sourceless pyc, {bad.reason}", header.mode)
    return Verdict(
        State.SOURCELESS,
        f"no source beside it: Python {_version_text(header.version)} imports this bytecode{note}",
        header.mode,
    )


def _judge_py27(
    pyc: str,
    header: Header,
    size: int,
    source_stat: os.stat_result | None,
    pyc_mtime_ns: int,
) -> Verdict:
    """A legacy pyc of Python 2.7, judged as 2.7 reads it: magic, then the source's mtime (whole
    seconds, modulo 2**32, against the header's read as a signed 32-bit number); no size. Its code
    cannot be compared here (Python 3 neither unmarshals nor compiles Python 2)."""
    reader = "python2 -O" if pyc.endswith(".pyo") else "Python 2.7"
    if size <= HEADER_SIZE:
        what = "header without a body"
        return Verdict(
            State.CORRUPT,
            what if source_stat is not None else f"sourceless pyc, {what}",
            "timestamp",
        )
    if source_stat is None:
        return Verdict(
            State.SOURCELESS, f"no source beside it: {reader} imports this bytecode", "timestamp"
        )
    seconds = source_stat.st_mtime_ns // 1_000_000_000  # 2.7's time_t: the whole seconds, floored
    if seconds & MASK > _PY27_LIVE:
        return Verdict(
            State.OUTDATED,
            "Python 2.7 reads the header's mtime as a signed 32-bit number, which never equals "
            f"the source's ({seconds}: before 1970, or 2038 to 2106): {reader} recompiles it on "
            "every import",
            "timestamp",
        )
    if header.mtime != seconds & MASK:
        return Verdict(
            State.OUTDATED,
            f"source mtime differs from the header: {reader} recompiles it on import",
            "timestamp",
        )
    if source_stat.st_ctime_ns > pyc_mtime_ns:
        return Verdict(
            State.SUSPECT,
            "header matches but the source changed after the cache was written, and this pyc of "
            "CPython 2.7 cannot be compared here",
            "timestamp",
        )
    return Verdict(State.FRESH, f"header matches the source: {reader} imports it", "timestamp")
