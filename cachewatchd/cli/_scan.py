"""``cachewatchd scan`` and ``cachewatchd clean``: the audit engine run once over trees."""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from cachewatchd.cli._output import colour
from cachewatchd.errors import EXIT_FAILURE, EXIT_FINDINGS, EXIT_OK

TYPE_CHECKING = False  # typing's own: 2 ms of every start-up (mypy honours this name too)
if TYPE_CHECKING:
    from typing import Any

    from cachewatchd.cache.audit import AuditOptions, AuditReport, Entry
    from cachewatchd.cache.clean import CleanResult

__all__ = ["register"]

_STATE_COLOUR = {
    "fresh": "green",
    "outdated": "dim",
    "stale": "red",
    "suspect": "yellow",
    "orphan": "dim",
    "sourceless": "red",
    "corrupt": "red",
}

_ADVICE = {
    "outdated": "harmless (Python recompiles it); `cachewatchd clean` removes it",
    "stale": "Python runs OLD code: `cachewatchd clean`, then restart the process that imported it",
    "suspect": "may be stale: `cachewatchd clean` removes it (or scan with the Python that wrote it)",
    "orphan": "clutter, never imported: `cachewatchd clean` removes it",
    "sourceless": "imported although its source is gone: delete it unless shipped on purpose "
    "(`cachewatchd clean --sourceless`)",
    "corrupt": "import fails or recompiles: `cachewatchd clean` removes it",
}

_DANGER_ORDER = ("stale", "sourceless", "corrupt", "suspect", "outdated", "orphan", "fresh")


def _audit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", metavar="PATH", help="directories (default: .)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--deep",
        action="store_true",
        help="compare every pyc with a fresh compile by the interpreter that reads it, and "
        "unmarshal every body",
    )
    parser.add_argument(
        "--include-venvs", action="store_true", help="also enter virtual environments"
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="skip names or root-relative paths matching GLOB (repeatable)",
    )
    parser.add_argument(
        "--no-default-excludes",
        action="store_true",
        help="also enter .git, node_modules, .tox and the other tool directories",
    )
    parser.add_argument(
        "--pycache-prefix",
        type=Path,
        metavar="DIR",
        help="also audit this PYTHONPYCACHEPREFIX tree (default: $PYTHONPYCACHEPREFIX)",
    )
    parser.add_argument(
        "--jobs",
        type=_jobs,
        default=None,
        metavar="N",
        help="processes sharing a big tree's audit (default: one per core, at most 2, every "
        "core with --deep; 1: this process only)",
    )


def _jobs(text: str) -> int:
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return jobs


def _jobs_of(args: argparse.Namespace) -> int:
    from cachewatchd.cache.parallel import default_jobs

    jobs: int = args.jobs or default_jobs(deep=args.deep)
    return jobs


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic GC off for a one-shot command's audit.

    Nothing the audit makes is cyclic; collections only cost time (7 % of the audit for
    ``clean --all``, which builds an ``Entry`` per cache file).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def register(sub: Any) -> None:
    scan = sub.add_parser(
        "scan",
        help="classify every bytecode cache entry",
        description="Classify every bytecode cache entry under PATH as fresh, outdated, stale, "
        "suspect, orphan, sourceless or corrupt.",
        epilog="Exit status: 0 nothing dangerous; 1 stale, sourceless or corrupt entries found; "
        "2 usage error or unreadable PATH; 3 nothing dangerous found, but part of the tree could "
        "not be read (listed on stderr): the audit is incomplete.",
    )
    _audit_arguments(scan)
    scan.set_defaults(handler=_scan)

    clean = sub.add_parser(
        "clean",
        help="remove outdated, stale, suspect, orphan and corrupt cache entries",
        description="Audit, then remove outdated, stale, suspect, orphan and corrupt cache entries "
        "and the __pycache__ directories left empty. Only cache files are ever deleted.",
        epilog="Exit status: 0 done; 1 dangerous entries were kept (sourceless without "
        "--sourceless); 2 usage error; 3 some files could not be removed.",
    )
    _audit_arguments(clean)
    clean.add_argument("--all", action="store_true", help="remove every cache entry, fresh too")
    clean.add_argument(
        "--sourceless",
        action="store_true",
        help="also remove legacy pycs whose source is gone (they may be a deliberate deployment)",
    )
    clean.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")
    clean.add_argument(
        "--recompile", action="store_true", help="compile fresh caches for this Python afterwards"
    )
    clean.add_argument(
        "--invalidation-mode",
        choices=["timestamp", "checked-hash", "unchecked-hash"],
        default=None,
        help="with --recompile (default: timestamp, or checked-hash when SOURCE_DATE_EPOCH is set)",
    )
    clean.set_defaults(handler=_clean)


def _options(args: argparse.Namespace) -> tuple[list[Path], AuditOptions]:
    from cachewatchd.cache.audit import AuditOptions, check_root

    given = [Path(p) for p in (args.paths or ["."])]
    roots = [check_root(p) for p in given]
    prefix = args.pycache_prefix
    if prefix is None and os.environ.get("PYTHONPYCACHEPREFIX"):
        prefix = Path(os.environ["PYTHONPYCACHEPREFIX"])
    if prefix is not None:
        prefix = prefix.expanduser().absolute()
    options = AuditOptions(
        deep=args.deep,
        include_venvs=args.include_venvs,
        excludes=tuple(args.exclude),
        default_excludes=not args.no_default_excludes,
        pycache_prefix=prefix,
        # CPython mirrors a sys.path entry as written (symlinks unresolved) into the prefix tree
        aliases=tuple(Path(os.path.abspath(p.expanduser())) for p in given),
        # sshfs and the like: content hashes stand in for ctime there
        ctime_untrusted=_ctime_untrusted(roots),
    )
    return roots, options


def _ctime_trusted(fstype: str) -> bool:
    from cachewatchd.watch.mounts import ctime_trusted  # only for a type not plainly local

    return ctime_trusted(fstype)


def _ctime_untrusted(roots: Sequence[Path]) -> tuple[Path, ...]:
    """Where content hashes stand in for ctime (sshfs and the like), from the mount table."""
    from cachewatchd.cache.mount_table import ctime_untrusted_areas

    found = ctime_untrusted_areas(roots, _ctime_trusted)
    if found is None:  # no /proc/self/mounts: psutil's table
        from cachewatchd.watch.mounts import ctime_trusted_at

        found = tuple(root for root in roots if not ctime_trusted_at(root))
    return found


def _entry_json(entry: Entry) -> dict[str, Any]:
    return {
        "path": str(entry.path),
        "source": None if entry.source is None else str(entry.source),
        "state": entry.state.value,
        "reason": entry.reason,
        "tag": entry.tag,
        "opt": entry.opt,
        "mode": entry.mode,
    }


def _display(path: Path) -> str:
    try:
        rel = path.relative_to(Path.cwd())
    except ValueError:
        return str(path)
    return str(rel)


def _print_summary(report: AuditReport) -> None:
    summary = report.summary()
    total = sum(summary.values())
    roots = ", ".join(_display(r) or "." for r in report.roots)
    print(f"{_count(total, 'cache entry', 'cache entries')} under {roots}")
    for state, count in summary.items():
        label = colour(f"{state:<11}", _STATE_COLOUR[state]) if count else f"{state:<11}"
        print(f"  {label}{count:>7}")


def _print_entries(entries: list[Entry]) -> None:
    for entry in sorted(entries, key=lambda e: (_DANGER_ORDER.index(e.state.value), str(e.path))):
        state = entry.state.value
        print()
        print(f"{colour(state, _STATE_COLOUR[state])}  {_display(entry.path)}")
        if entry.source is not None:
            print(f"    source: {_display(entry.source)}")
        print(f"    why:    {entry.reason}")
        print(f"    do:     {_ADVICE[state]}")


def _print_errors(errors: Sequence[tuple[Path, str]]) -> None:
    for path, error in errors:
        sys.stderr.write(f"cachewatchd: {path}: {error}\n")


def _print_notes(notes: Sequence[str]) -> None:
    for note in notes:
        sys.stderr.write(f"cachewatchd: note: {note}\n")


def _scan(args: argparse.Namespace) -> int:
    from cachewatchd.cache.parallel import audit_jobs

    roots, options = _options(args)
    with _gc_paused():
        report = audit_jobs(roots, options, _jobs_of(args))
    if args.json:
        import json

        doc = {
            "version": 1,
            "roots": [str(r) for r in roots],
            "summary": report.summary(),
            "entries": [_entry_json(e) for e in report.non_fresh()],
            "errors": [{"path": str(e.path), "error": e.error} for e in report.errors],
            "notes": report.notes,
        }
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_summary(report)
        _print_entries(report.non_fresh())
        _print_errors([(e.path, e.error) for e in report.errors])
        _print_incomplete([e.path for e in report.errors])
        _print_notes(report.notes)
    if report.dangerous():
        return EXIT_FINDINGS
    return EXIT_FAILURE if report.errors else EXIT_OK


def _print_incomplete(unread: Sequence[Path]) -> None:
    """The closing line of a partial audit: how many directories and files were not read."""
    if not unread:
        return
    dirs = sum(1 for path in unread if os.path.isdir(path))
    parts = [_count(dirs, "directory", "directories")] if dirs else []
    if len(unread) > dirs:
        parts.append(_count(len(unread) - dirs, "file"))
    sys.stderr.write(
        f"cachewatchd: incomplete audit: {' and '.join(parts)} could not be read (listed above)\n"
    )


def _clean(args: argparse.Namespace) -> int:
    from cachewatchd.cache.clean import clean

    roots, options = _options(args)
    with _gc_paused():
        result = clean(
            roots,
            options,
            fresh=args.all,
            sourceless=args.sourceless,
            dry_run=args.dry_run,
            recompile=args.recompile,
            invalidation_mode=args.invalidation_mode,
            jobs=_jobs_of(args),
        )
    if args.json:
        import json

        doc = {
            "version": 1,
            "dry_run": result.dry_run,
            "removed": [str(p) for p in result.removed],
            "removed_dirs": [str(p) for p in result.removed_dirs],
            "kept": [_entry_json(e) for e in result.kept],
            "recompiled": [str(p) for p in result.recompiled],
            "errors": [{"path": str(p), "error": err} for p, err in result.errors],
            "summary": result.report.summary(),
            "notes": result.report.notes,
        }
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_clean(result)
        _print_errors(result.errors)
        _print_notes(result.report.notes)
    if result.errors:
        return EXIT_FAILURE
    if any(e.state.value == "sourceless" for e in result.kept):
        return EXIT_FINDINGS
    return EXIT_OK


def _print_clean(result: CleanResult) -> None:
    if result.dry_run:
        for path in result.removed:
            print(f"would remove {_display(path)}")
        print(f"{_count(len(result.removed), 'cache file')} would be removed (dry run)")
    else:
        print(
            f"removed {_count(len(result.removed), 'cache file')} and "
            f"{_count(len(result.removed_dirs), 'empty cache directory', 'empty cache directories')}"
        )
    if result.recompiled:
        print(f"recompiled {_count(len(result.recompiled), 'source')}")
    for entry in result.kept:
        if entry.state.value == "sourceless":
            print(f"kept {colour('sourceless', 'red')} {_display(entry.path)} (use --sourceless)")


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one}" if n == 1 else f"{n} {many or one + 's'}"
