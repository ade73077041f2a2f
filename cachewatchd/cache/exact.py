"""The exact check's outcome as a verdict: what a fresh compile or an unmarshal, run in a checking
process with memory and time limits (:mod:`.checks`), says about an entry whose header matches.

Pyc bodies and sources are untrusted input, never unmarshalled or compiled in this process.
"""

from __future__ import annotations

import errno

from cachewatchd.cache.checks import CheckPool, Outcome
from cachewatchd.cache.named import NamedTuple
from cachewatchd.cache.pyc import Mode
from cachewatchd.cache.states import State, VanishedError, Verdict

__all__ = ["Pending", "Unchecked", "finish", "unmarshal_check"]


class Unchecked(Exception):
    """The exact check hit a limit of the checking process; ``str()`` says which."""


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
      raises :class:`Unchecked` (the caller judges by the header alone).
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
    raise Unchecked(detail)


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
    except Unchecked as exc:
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


def unmarshal_check(checks: CheckPool, pyc: str) -> Verdict | None:
    """``None`` when the body unmarshals to a code object; else why not (``corrupt``); raises
    :class:`Unchecked` when a limit of the checking process stopped it."""
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
    raise Unchecked(outcome.detail)
