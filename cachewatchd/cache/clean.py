"""Clean trees: audit, remove what the policy says, optionally recompile.

The engine of ``cachewatchd clean`` and of :func:`cachewatchd.clean`. Only cache files are ever
deleted (:func:`~cachewatchd.cache.remove.remove_cache_files` refuses anything else), and the
``__pycache__`` directories left empty go with them.

The policy: every entry that is not fresh goes, except sourceless legacy pycs (they may be a
deliberate sourceless deployment). ``fresh=True`` (``clean --all``) removes fresh entries too,
``sourceless=True`` (``clean --sourceless``) sourceless ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cachewatchd.cache.audit import AuditReport
from cachewatchd.cache.parallel import audit_jobs
from cachewatchd.cache.plan import AuditOptions
from cachewatchd.cache.pyc import Mode
from cachewatchd.cache.remove import remove_cache_files
from cachewatchd.cache.states import Entry, State

__all__ = ["REMOVED_BY_DEFAULT", "CleanResult", "clean", "removed_by_default"]

REMOVED_BY_DEFAULT = frozenset(
    {State.OUTDATED, State.STALE, State.SUSPECT, State.ORPHAN, State.CORRUPT}
)
"""The states ``clean`` (and the daemon's reconciliation) removes without being asked for more:
all but fresh and sourceless."""

_MODES: tuple[Mode, ...] = ("timestamp", "checked-hash", "unchecked-hash")


def removed_by_default(state: State) -> bool:
    """Whether ``clean`` without options (and the daemon's reconciliation) removes *state*."""
    return state in REMOVED_BY_DEFAULT


def _wanted(state: State, *, fresh: bool, sourceless: bool) -> bool:
    if state is State.SOURCELESS:
        return sourceless
    if state is State.FRESH:
        return fresh
    return removed_by_default(state)


@dataclass(frozen=True)
class CleanResult:
    """What :func:`clean` did."""

    report: AuditReport
    """The audit the removal acted on (its entries: the fresh ones too with ``fresh=True``)."""
    removed: tuple[Path, ...]
    """Cache files removed, in audit order; with ``dry_run``, the files that would be removed."""
    removed_dirs: tuple[Path, ...]
    """Cache directories left empty and removed (none with ``dry_run``)."""
    kept: tuple[Entry, ...]
    """Entries that are not fresh and that the policy kept (sourceless ones, unless asked)."""
    recompiled: tuple[Path, ...]
    """Cache files written by ``recompile``."""
    errors: tuple[tuple[Path, str], ...]
    """``(path, message)`` of each problem: unreadable directories of the audit, files that could
    not be removed, sources that could not be recompiled."""
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        """No errors: everything the policy wanted gone is gone (or, with ``dry_run``, could be)."""
        return not self.errors


def clean(
    roots: Sequence[Path],
    options: AuditOptions | None = None,
    *,
    fresh: bool = False,
    sourceless: bool = False,
    dry_run: bool = False,
    recompile: bool = False,
    invalidation_mode: Mode | None = None,
    jobs: int = 1,
) -> CleanResult:
    """Audit *roots* (existing directories) and remove the cache entries the policy wants gone.

    *fresh* removes fresh entries too (``clean --all``), *sourceless* sourceless legacy pycs too
    (``--sourceless``). *dry_run* removes nothing and reports what would go. *recompile* compiles
    fresh caches for this Python of the sources whose caches were removed, with
    *invalidation_mode* (default: ``timestamp``, or ``checked-hash`` when ``SOURCE_DATE_EPOCH`` is
    set). *jobs* > 1 shares a big tree's audit with forked processes (only from a process without
    other threads; see :mod:`cachewatchd.cache.parallel`).

    One failure never stops the rest: problems are collected in :attr:`CleanResult.errors`.
    Raises :class:`ValueError` for an unknown *invalidation_mode*.
    """
    if invalidation_mode is not None and invalidation_mode not in _MODES:
        raise ValueError(f"invalidation_mode must be one of {', '.join(_MODES)}")
    opts = options if options is not None else AuditOptions()
    if fresh and not opts.keep_fresh:
        opts = opts._replace(keep_fresh=True)
    report = audit_jobs(roots, opts, jobs)
    doomed: list[Entry] = []
    kept: list[Entry] = []
    for entry in report.entries:
        if _wanted(entry.state, fresh=fresh, sourceless=sourceless):
            doomed.append(entry)
        elif entry.state is not State.FRESH:
            kept.append(entry)
    removal = remove_cache_files(
        [e.path for e in doomed], roots, pycache_prefix=opts.pycache_prefix, dry_run=dry_run
    )
    errors = [(e.path, e.error) for e in report.errors] + removal.errors
    recompiled: list[Path] = []
    if recompile and not dry_run:
        from cachewatchd.cache.recompile import recompile as compile_sources

        removed = set(removal.removed)
        recompiled, failed = compile_sources(
            [e for e in doomed if e.path in removed], invalidation_mode
        )
        errors += failed
    return CleanResult(
        report=report,
        removed=tuple(removal.removed),
        removed_dirs=tuple(removal.removed_dirs),
        kept=tuple(kept),
        recompiled=tuple(recompiled),
        errors=tuple(errors),
        dry_run=dry_run,
    )
