"""An audit's use of the verification index (:mod:`.index`): the records of a cache directory,
whether one still applies to the files as they are, and what an exact check found, remembered.

A record applies only when the fingerprints of the pyc and its source are those it was made for
(and, where ctime cannot be trusted, the hash of both files' content). A result is remembered only
when both files kept their fingerprints through the check, and their last change is older than the
filesystem's tick: a change within the tick of the check could keep every fingerprint.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence

from cachewatchd.cache.checks import CheckPool, Outcome
from cachewatchd.cache.exact import Pending, finish
from cachewatchd.cache.index import Record, VerifyIndex, content_hash, fingerprint
from cachewatchd.cache.judge import TICK_NS, WHOLE_SECOND_NS, prejudge
from cachewatchd.cache.named import NamedTuple
from cachewatchd.cache.plan import AuditOptions
from cachewatchd.cache.pyc import Mode
from cachewatchd.cache.states import Kind, State, VanishedError, Verdict

__all__ = ["Checked", "Memory", "definitive"]

_DEFINITIVE = frozenset({"same", "differs", "no_compile", "corrupt"})
"""Outcomes of an exact check that settle the entry (the others hit a limit of the checking
process, or could not read a file: checked again next time)."""

_STATES = {state.value: state for state in State}
_MODES: dict[str, Mode] = {"timestamp": "timestamp", "checked-hash": "checked-hash"}
_MODES["unchecked-hash"] = "unchecked-hash"


def definitive(outcome: Outcome) -> bool:
    return outcome.result in _DEFINITIVE or (
        outcome.result == "failed" and not outcome.source_failed
    )


class Checked(NamedTuple):
    """An entry waiting for the exact check, with what is needed to remember its result."""

    pending: Pending
    source: str
    tag: str
    opt: str
    kind: Kind
    pyc_stat: os.stat_result
    source_stat: os.stat_result
    content: bytes | None
    known: Verdict | None = None
    """The index's verdict, when it settles the entry without a check (the entry still waits with
    the others, so that an audit's order does not depend on the index)."""


class Memory:
    """The verification index as one audit sees it."""

    def __init__(self, options: AuditOptions) -> None:
        self.index = VerifyIndex(enabled=options.use_index)
        self._enabled = options.use_index
        self._deep = options.deep
        self._untrusted = tuple(os.fspath(p) for p in options.ctime_untrusted)
        self._dir: str | None = None
        self._records: dict[str, Record] = {}

    def close(self) -> None:
        self.index.close()

    def flush(self) -> None:
        self.index.flush()

    def untrusted(self, source_dir: str) -> bool:
        """Whether ctime cannot be trusted for the sources in *source_dir*."""
        return any(
            source_dir == u or source_dir.startswith(u.rstrip(os.sep) + os.sep)
            for u in self._untrusted
        )

    def records(self, cache_dir: str) -> dict[str, Record]:
        """The records of *cache_dir*'s pycs (one query per directory)."""
        if not self._enabled:
            return {}
        if cache_dir != self._dir:
            self._dir, self._records = cache_dir, self.index.directory(cache_dir)
        return self._records

    def judge(
        self,
        path: str,
        source: str,
        st: os.stat_result,
        tag: str,
        opt: str,
        data: bytes,
        pst: os.stat_result,
        kind: Kind,
        record: Record | None,
        untrusted: bool,
        now_ns: int,
    ) -> Verdict | Checked:
        """:func:`~cachewatchd.cache.judge.prejudge`, settled by *record* where it applies; an
        entry the exact check must settle comes back as :class:`Checked` (:meth:`settle`).
        Raises :class:`VanishedError` or :class:`OSError` as ``prejudge`` does."""
        judged = prejudge(
            path,
            source,
            st,
            tag,
            opt,
            data,
            pst,
            deep=self._deep,
            ctime_trusted=not untrusted,
            now_ns=now_ns,
        )
        if (
            isinstance(judged, Verdict)
            and judged.state is State.FRESH
            and (record is None or record.state == State.FRESH.value)
        ):
            return judged  # fresh either way: no fingerprint to compare
        if record is not None and (
            isinstance(judged, Pending) or judged.state in (State.FRESH, State.SUSPECT)
        ):
            known = self.known(record, path, pst, source, st, untrusted)
            if known is not None and not isinstance(judged, Pending):
                return known
        else:
            known = None
        if isinstance(judged, Pending):
            content = None if known is not None else self.content(source, path, untrusted)
            return Checked(judged, source, tag, opt, kind, pst, st, content, known)
        return judged

    def settle(
        self, pending: Sequence[Checked], checks: CheckPool
    ) -> Iterator[tuple[Checked, Verdict | OSError | None]]:
        """The exact checks of *pending*, in one pipeline: each entry's verdict (``None``: a file
        vanished; an :class:`OSError`: one could not be read), remembered where it may be."""
        unknown = [(c.pending.pyc, c.pending.source, c.pending.optimize) for c in pending]
        unknown = [request for request, c in zip(unknown, pending, strict=True) if not c.known]
        outcomes = iter(checks.exact_many(unknown) if unknown else [])
        for item in pending:
            if item.known is not None:
                yield item, item.known
                continue
            outcome = next(outcomes)
            try:
                verdict = finish(item.pending, outcome)
            except VanishedError:
                yield item, None
                continue
            except OSError as exc:
                yield item, exc
                continue
            self.remember(item, outcome, verdict, item.content is not None)
            yield item, verdict

    def content(self, source: str, pyc: str, untrusted: bool) -> bytes | None:
        return content_hash(source, pyc) if untrusted else None

    def known(
        self,
        record: Record | None,
        pyc: str,
        pyc_stat: os.stat_result,
        source: str,
        source_stat: os.stat_result,
        untrusted: bool,
    ) -> Verdict | None:
        """The remembered verdict when *record* applies to the files as they are; else ``None``."""
        if record is None:
            return None
        content = self.content(source, pyc, untrusted)
        if untrusted and content is None:
            return None
        if not record.matches(fingerprint(pyc_stat), source, fingerprint(source_stat), content):
            return None
        state = _STATES.get(record.state)
        if state is None:
            return None
        mode = None if record.mode is None else _MODES.get(record.mode)
        return Verdict(state, record.reason, mode)  # the same words as the check that made it

    def remember(self, item: Checked, outcome: Outcome, verdict: Verdict, untrusted: bool) -> None:
        """Keep *verdict* of *item* when *outcome* settled it and the files did not move."""
        if not self._enabled or not definitive(outcome):
            return
        pyc, source = item.pending.pyc, item.source
        try:
            pyc_now, source_now = os.stat(pyc), os.stat(source)
        except OSError:
            return
        if fingerprint(pyc_now) != fingerprint(item.pyc_stat) or fingerprint(
            source_now
        ) != fingerprint(item.source_stat):
            return
        if untrusted and self.content(source, pyc, untrusted) != item.content:
            return
        last = max(pyc_now.st_ctime_ns, source_now.st_ctime_ns, pyc_now.st_mtime_ns)
        tick = WHOLE_SECOND_NS if not last % 1_000_000_000 else TICK_NS
        if time.time_ns() <= last + tick:  # racily clean: a change now could keep every stamp
            return
        self.index.add(
            pyc,
            pyc_now,
            source,
            source_now,
            item.content,
            verdict.state.value,
            verdict.reason,
            verdict.mode,
        )
