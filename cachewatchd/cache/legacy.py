"""Judge a legacy ``m.pyc``/``m.pyo`` beside where ``m.py`` would be, as Python 3 reads it (only
without its source, never a ``.pyo``) and as Python 2.7 reads it (its live cache: magic and the
source's mtime)."""

from __future__ import annotations

import os

from cachewatchd.cache.checks import CheckPool, Outcome
from cachewatchd.cache.exact import Pending, Unchecked, finish, unmarshal_check
from cachewatchd.cache.judge import MASK, read_pyc, trigger, version_text, why_superseded
from cachewatchd.cache.pyc import HEADER_SIZE, Header, HeaderError, parse_header
from cachewatchd.cache.states import State, Verdict

__all__ = ["judge_legacy"]

_PY27_LIVE = 0x7FFFFFFF
"""Python 2.7 reads the header's mtime as a signed 32-bit number and compares it with the source's
mtime modulo 2**32: only mtimes whose 32 bits stay below 2**31 can match."""


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
    data, pyc_stat = read_pyc(pyc)
    size = pyc_stat.st_size
    try:
        header: Header | None = parse_header(data)
    except HeaderError as exc:
        header, error = None, exc
    if header is not None and header.version == (2, 7):
        verdict = _judge_py27(pyc, header, pyc_stat, source_stat, deep)
        if not isinstance(verdict, Pending):
            return verdict
        if source is None:  # deep, sourceless: the body must unmarshal
            reader = "python2 -O" if pyc.endswith(".pyo") else "Python 2.7"
            return _sourceless(checks, pyc, f"{reader} imports this bytecode", header)
        pending = verdict._replace(source=source)
        return finish(pending, _exact27(checks, pending))
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
    superseded = why_superseded(data, None)
    if superseded is not None:  # a pre-release's magic, or another implementation's (PyPy)
        return Verdict(
            State.SOURCELESS,
            f"no source beside it, and {superseded}: CPython {version_text(header.version)} "
            "refuses to import it (bad magic number); an interpreter using this magic (that "
            "pre-release, PyPy) imports this bytecode",
            header.mode,
        )
    what = f"Python {version_text(header.version)} imports this bytecode"
    if deep and header.version is not None:
        return _sourceless(checks, pyc, what, header)
    return Verdict(State.SOURCELESS, f"no source beside it: {what}", header.mode)


def _sourceless(checks: CheckPool, pyc: str, what: str, header: Header) -> Verdict:
    """A sourceless pyc whose body was unmarshalled by the interpreter that reads it."""
    note = ""
    try:
        bad = unmarshal_check(checks, pyc)
    except Unchecked as exc:
        bad, note = None, f" (its body could not be checked: {exc})"
    if bad is not None:
        return Verdict(bad.state, f"sourceless pyc, {bad.reason}", header.mode)
    return Verdict(State.SOURCELESS, f"no source beside it: {what}{note}", header.mode)


def _exact27(checks: CheckPool, pending: Pending) -> Outcome:
    """The exact check of a Python 2.7 pyc; a ``.pyo`` is the code of ``-O`` or of ``-OO``
    (2.7 writes both to ``.pyo``, and reads either)."""
    outcome = checks.exact(pending.pyc, pending.source, pending.optimize)
    if pending.optimize == 1 and outcome.result == "differs":
        again = checks.exact(pending.pyc, pending.source, 2)
        if again.result == "same":
            return again
    return outcome


def _judge_py27(
    pyc: str,
    header: Header,
    pyc_stat: os.stat_result,
    source_stat: os.stat_result | None,
    deep: bool,
) -> Verdict | Pending:
    """A legacy pyc of Python 2.7, judged as 2.7 reads it: magic, then the source's mtime (whole
    seconds, modulo 2**32, against the header's read as a signed 32-bit number); no size. Its code
    is compared by a Python 2.7 (:mod:`.interpreters`) when the times cannot prove it holds its
    source's code (:func:`.judge.trigger`) or with *deep*: a :class:`Pending` (its ``source`` left empty) says so; a ``.pyo`` is compared at
    ``-O``, then ``-OO``."""
    reader = "python2 -O" if pyc.endswith(".pyo") else "Python 2.7"
    if pyc_stat.st_size <= HEADER_SIZE:
        what = "header without a body"
        return Verdict(
            State.CORRUPT,
            what if source_stat is not None else f"sourceless pyc, {what}",
            "timestamp",
        )
    if source_stat is None:
        if deep:
            return Pending(pyc, "", 0, "timestamp", changed_since=False)
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
    changed_since = trigger(source_stat.st_ctime_ns, pyc_stat) is not None
    if changed_since or deep:
        return Pending(pyc, "", 1 if pyc.endswith(".pyo") else 0, "timestamp", changed_since)
    return Verdict(State.FRESH, f"header matches the source: {reader} imports it", "timestamp")
