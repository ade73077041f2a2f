"""Turn one batch into cache invalidations: events first, audits where events cannot say enough.

- A source changed: every cache entry of it goes (every tag, every opt level, the prefix tree),
  without looking at timestamps: the event is the proof. In the daemon this happens the moment the
  event arrives (:meth:`BatchHandler.invalidate_now`, called by
  :class:`~cachewatchd.daemon.invalidate.Invalidator`); a handler made with ``eager=True`` leaves
  it out of the batch.
- A source deleted or renamed away while watched: the same, plus a legacy ``m.pyc`` beside it (it
  became a ghost under our eyes), unless the source is back by the time the batch is handled.
- A directory deleted or moved away: its mirror in the ``PYTHONPYCACHEPREFIX`` tree goes.
- A git move or a rescan request: one audit of the repository or root, and every entry that is not
  fresh goes, except sourceless legacy pycs (they may be shipped on purpose): what ``clean``
  removes by default (:func:`~cachewatchd.cache.clean.removed_by_default`).

Logged events: ``invalidated`` (one line per directory of sources whose caches went at once),
``git-moved``, ``rescan``, ``error``.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cachewatchd.cache.audit import AuditOptions, AuditReport, audit
from cachewatchd.cache.clean import removed_by_default
from cachewatchd.cache.pyc import mirror_dir
from cachewatchd.cache.remove import RemoveResult, cache_files_by_source, remove_cache_files
from cachewatchd.daemon.recheck import Rechecker
from cachewatchd.daemon.reconcile import Sweeper
from cachewatchd.log import ReportedPaths, get_logger
from cachewatchd.paths import is_under
from cachewatchd.processes.status import timestamp
from cachewatchd.watch.batch import Batch, GitMove
from cachewatchd.watch.mounts import ctime_untrusted_in

__all__ = ["BatchHandler", "Counters", "Outcome"]

_MAX_ERROR_LINES = 20


@dataclass
class Counters:
    invalidations: int = 0
    """Cache files removed."""
    rescans: int = 0
    errors: int = 0
    batches: int = 0
    events: int = 0
    git_moves: int = 0
    last_event: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)
    """Held while they change (status readers take it too): the counters' own, so that the
    handlers of before and after a reload guard them with one lock."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "invalidations": self.invalidations,
            "rescans": self.rescans,
            "errors": self.errors,
            "batches": self.batches,
            "events": self.events,
            "git_moves": self.git_moves,
        }


@dataclass
class Outcome:
    touched: set[Path] = field(default_factory=set)
    """Paths whose code changed: what managed processes care about."""
    removed: int = 0
    reconciled: set[Path] = field(default_factory=set)
    """Roots audited in this batch."""


class BatchHandler:
    """Handles batches for a fixed set of roots (rebuilt on reload). Counters are shared.

    A problem is logged once per path through *reported*; whoever owns that set counts the first
    reports (its ``on_first``), since a watcher may be the first to meet the path. Without one,
    the handler makes its own set, counted in ``counters.errors``.
    """

    def __init__(
        self,
        excludes: dict[Path, tuple[str, ...]],
        *,
        pycache_prefix: Path | None,
        counters: Counters,
        reported: ReportedPaths | None = None,
        eager: bool = False,
    ) -> None:
        """*eager*: the sources' events were invalidated already (:meth:`invalidate_now`); a batch
        only removes the legacy pycs of sources that stayed gone."""
        self.roots = list(excludes)
        self._eager = eager
        self._excludes = excludes
        self._prefix = pycache_prefix
        self.counters = counters
        self._reported = ReportedPaths(self._count) if reported is None else reported
        """Paths already reported (shared with the watchers: one report per path)."""
        self.lock = counters.lock
        """Held while counters change (:attr:`Counters.lock`)."""
        self._untrusted = ctime_untrusted_in(self.roots)
        """Where ctime cannot be trusted (sshfs...): content hashes stand in there."""
        self.rechecker = Rechecker(pycache_prefix=pycache_prefix, ctime_untrusted=self._untrusted)
        self.sweepers: dict[Path, Sweeper] = {}
        """Per root: its rescans re-judge only the directories whose stat fingerprint changed."""
        self._log = get_logger(__name__)

    def handle(self, batch: Batch) -> Outcome:
        outcome = Outcome()
        gone = batch.removed - batch.changed
        ghosts = {source for source in gone if not os.path.lexists(source)}
        if self._eager:
            self._invalidate(sorted(ghosts), ghosts, outcome, schedule=())
        else:
            sources = sorted(batch.changed | gone)
            self._invalidate(sources, ghosts, outcome, [s for s in sources if s not in ghosts])
        for directory in sorted(batch.dirs_removed):
            self._prefix_tree(directory, outcome)
        if batch.pycs:
            self._verify(batch.pycs, outcome)
        for move in sorted(batch.git_moves, key=lambda m: str(m.repo)):
            self._git_move(move, outcome)
        for rescan in sorted(batch.rescans, key=lambda r: str(r.root)):
            self.reconcile(rescan.root, rescan.reason, outcome)
        outcome.touched |= batch.changed | batch.removed | batch.dirs_removed
        with self.lock:
            self.counters.batches += 1
            self.counters.events += batch.events
            self.counters.invalidations += outcome.removed
            self.counters.last_event = timestamp()
        return outcome

    # -- events ----------------------------------------------------------------------------------
    def invalidate_now(self, changed: Sequence[Path], removed: Sequence[Path]) -> int:
        """Remove every cache entry of these sources at once (no legacy pycs: whether a removed
        source stays gone is the batch's to say); the second look is scheduled for each.
        Thread-safe; returns how many files went."""
        sources = sorted({*changed, *removed}, key=str)  # str: Path's own order is far slower
        outcome = Outcome()
        # every source gets the second look (one that stays gone has no caches to list then):
        # an lstat per source here costs a 10k-file checkout ~60 ms on the invalidation thread
        self._invalidate(sources, set(), outcome, sources)
        with self.lock:
            self.counters.invalidations += outcome.removed
            if outcome.removed:
                self.counters.last_event = timestamp()
        return outcome.removed

    def _invalidate(
        self,
        sources: Sequence[Path],
        ghosts: set[Path],
        outcome: Outcome,
        schedule: Iterable[Path],
    ) -> None:
        """Remove every cache entry of *sources* (legacy pycs too for *ghosts*), one listing per
        directory: a 10k-file checkout must not list a 10k-entry ``__pycache__`` 10k times.
        *schedule*: the sources to look at again (:mod:`~cachewatchd.daemon.recheck`)."""
        listing = cache_files_by_source(sources, pycache_prefix=self._prefix, legacy=ghosts)
        owner = {pyc: source for source, files in listing.items() for pyc in files}
        self._log.debug(
            "cache-listed",
            sources=len(listing),
            found=[str(p) for p in itertools.islice(owner, 20)],
        )
        self.rechecker.schedule(schedule)
        if not owner:
            return
        result = remove_cache_files(owner, self.roots, pycache_prefix=self._prefix)
        self._report(result)
        outcome.removed += len(result.removed)
        self._log_removed(result.removed, owner)

    def _log_removed(self, removed: Sequence[Path], owner: dict[Path, Path]) -> None:
        """One ``invalidated`` line per directory of sources: ``source`` for one, ``directory``
        and ``sources`` for several (a 10k-file checkout writes hundreds of lines, not 10k)."""
        by_dir: dict[Path, dict[Path, list[str]]] = {}
        for path in removed:
            source = owner[path]
            by_dir.setdefault(source.parent, {}).setdefault(source, []).append(str(path))
        for directory, group in sorted(by_dir.items()):
            sources = sorted(group)
            if len(sources) == 1:
                self._log.info("invalidated", source=str(sources[0]), removed=group[sources[0]])
            else:
                self._log.info(
                    "invalidated",
                    directory=str(directory),
                    sources=[str(source) for source in sources],
                    removed=[name for source in sources for name in group[source]],
                )

    def _prefix_tree(self, directory: Path, outcome: Outcome) -> None:
        if self._prefix is None or not directory.is_absolute():
            return
        mirror = mirror_dir(self._prefix, directory)
        files = [
            Path(dirpath, name)
            for dirpath, _, names in os.walk(mirror)
            for name in names
            if name.endswith(".pyc")
        ]
        if not files:
            return
        result = remove_cache_files(files, self.roots, pycache_prefix=self._prefix)
        self._report(result)
        outcome.removed += len(result.removed)
        if result.removed:
            self._log.info(
                "invalidated", source=str(directory), removed=[str(p) for p in result.removed]
            )

    def recheck(self) -> set[Path]:
        """Second look at recently invalidated sources; returns those whose caches went."""
        due = self.rechecker.take_due()
        listing = cache_files_by_source(due, pycache_prefix=self._prefix)  # once per directory
        owner = {
            pyc: source
            for source in due
            for pyc in self.rechecker.wrong_caches(source, listing[source])
        }
        if not owner:
            return set()
        result = remove_cache_files(owner, self.roots, pycache_prefix=self._prefix)
        self._report(result)
        with self.lock:
            self.counters.invalidations += len(result.removed)
        for path in result.removed:
            self._log.info(
                "invalidated",
                source=str(owner[path]),
                removed=[str(path)],
                reason="written with the old code while the source was being edited",
            )
        return {owner[path] for path in result.removed}

    def _verify(self, pycs: Iterable[Path], outcome: Outcome) -> None:
        """Compare each pyc just written with its source; remove those holding other code."""
        stale = self.rechecker.verify(sorted(pycs))
        if not stale:
            return
        result = remove_cache_files(stale, self.roots, pycache_prefix=self._prefix)
        self._report(result)
        outcome.removed += len(result.removed)
        outcome.touched |= {stale[path] for path in result.removed}
        for path in result.removed:
            self._log.info(
                "invalidated",
                source=str(stale[path]),
                removed=[str(path)],
                reason="written with other code than its source's (checked when it appeared)",
            )

    # -- audits ----------------------------------------------------------------------------------
    def _git_move(self, move: GitMove, outcome: Outcome) -> None:
        repo = move.repo
        targets = [r for r in self.roots if is_under(r, repo)]
        if not targets and any(is_under(repo, r) for r in self.roots):
            targets = [repo]
        report, removed = self._audit_and_clean(targets, outcome)
        with self.lock:
            self.counters.git_moves += 1
        outcome.touched.add(repo)
        self._log.info(
            "git-moved",
            repository=str(repo),
            old=move.old,
            new=move.new,
            counts=report.summary(),
            removed=removed,
        )

    def reconcile(self, root: Path, reason: str, outcome: Outcome | None = None) -> int:
        """Audit *root*; remove every entry that is not fresh (sourceless ones excepted)."""
        outcome = outcome if outcome is not None else Outcome()
        # the periodic one compares every pyc the verification index does not know yet
        deep = reason == "reconcile interval"
        report, removed = self._audit_and_clean([root], outcome, sweep=True, deep=deep)
        outcome.reconciled.add(root)
        with self.lock:
            self.counters.rescans += 1
        self._log.info(
            "rescan", root=str(root), reason=reason, counts=report.summary(), removed=removed
        )
        return removed

    def _audit_and_clean(
        self, targets: Sequence[Path], outcome: Outcome, *, sweep: bool = False, deep: bool = False
    ) -> tuple[AuditReport, int]:
        reports = [self._audit(target, sweep, deep) for target in targets if target.is_dir()]
        report = AuditReport(roots=list(targets))
        for part in reports:
            report.merge(part)
        self._errors(((e.path, e.error) for e in report.errors), during="audit")
        doomed = [e for e in report.entries if removed_by_default(e.state)]
        if not doomed:
            return report, 0
        result = remove_cache_files(
            (e.path for e in doomed), self.roots, pycache_prefix=self._prefix
        )
        self._report(result)
        removed = set(result.removed)
        outcome.removed += len(removed)
        outcome.touched |= {e.source or e.path for e in doomed if e.path in removed}
        return report, len(removed)

    def _audit(self, target: Path, sweep: bool = False, deep: bool = False) -> AuditReport:
        """Audit *target*; a root with *sweep*: only its directories that changed since its last
        sweep (:mod:`~cachewatchd.daemon.reconcile`)."""
        root = next((r for r in self.roots if is_under(target, r)), target)
        options = AuditOptions(
            deep=deep,
            excludes=self._excludes.get(root, ()),
            pycache_prefix=self._prefix,
            ctime_untrusted=self._untrusted,
        )
        if sweep and target == root:
            sweeper = self.sweepers.get(root)
            if sweeper is None:
                sweeper = self.sweepers[root] = Sweeper(options)
            return sweeper.audit(root, options)
        return audit([target], options)

    # -- errors ----------------------------------------------------------------------------------
    def _report(self, result: RemoveResult) -> None:
        self._errors(result.errors, during="removal")

    def _errors(self, errors: Iterable[tuple[Path, str]], *, during: str) -> None:
        """Log each problem once (a reconcile finds the same unreadable directory every time)."""
        fresh = [(path, error) for path, error in errors if self._reported.first_time(path)]
        for path, error in fresh[:_MAX_ERROR_LINES]:
            self._log.warning("error", path=str(path), error=error, during=during)
        if len(fresh) > _MAX_ERROR_LINES:
            more = len(fresh) - _MAX_ERROR_LINES
            self._log.warning("error", error=f"{more} more problems", during=during)

    def _count(self, path: str) -> None:
        """One more problem reported (the ``on_first`` of the handler's own set)."""
        with self.lock:
            self.counters.errors += 1
