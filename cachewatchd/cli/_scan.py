"""``cachewatchd scan`` and ``cachewatchd clean``: the audit engine run once over trees."""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from cachewatchd.cli._output import colour
from cachewatchd.errors import EXIT_FAILURE, EXIT_FINDINGS, EXIT_OK

TYPE_CHECKING = False  # typing's own: 2 ms of every start-up (mypy honours this name too)
if TYPE_CHECKING:
    from os import PathLike
    from pathlib import Path
    from typing import Any

    from cachewatchd.cache.audit import AuditOptions
    from cachewatchd.cache.clean import CleanResult
    from cachewatchd.cache.rows import Row

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


def _options(args: argparse.Namespace) -> tuple[list[str], AuditOptions]:
    """The resolved roots and the options of the audit (pathlib only for a prefix tree)."""
    from cachewatchd.cache.plan import AuditOptions, resolve_root

    given: list[str] = args.paths or ["."]
    roots = [resolve_root(p) for p in given]
    prefix_text: str | None = args.pycache_prefix
    if prefix_text is None:
        prefix_text = os.environ.get("PYTHONPYCACHEPREFIX") or None
    prefix: Path | None = None
    aliases: tuple[Path, ...] = ()
    if prefix_text is not None:
        from pathlib import Path

        prefix = Path(prefix_text).expanduser().absolute()
        # CPython mirrors a sys.path entry as written (symlinks unresolved) into the prefix tree
        aliases = tuple(Path(os.path.abspath(os.path.expanduser(p))) for p in given)
    options = AuditOptions(
        deep=args.deep,
        include_venvs=args.include_venvs,
        excludes=tuple(args.exclude),
        default_excludes=not args.no_default_excludes,
        pycache_prefix=prefix,
        aliases=aliases,
        # sshfs and the like: content hashes stand in for ctime there
        ctime_untrusted=_ctime_untrusted(roots),
    )
    return roots, options


def _ctime_trusted(fstype: str) -> bool:
    from cachewatchd.watch.mounts import ctime_trusted  # only for a type not plainly local

    return ctime_trusted(fstype)


def _ctime_untrusted(roots: Sequence[str]) -> tuple[Path, ...]:
    """Where content hashes stand in for ctime (sshfs and the like), from the mount table."""
    from cachewatchd.cache.mount_table import ctime_untrusted_areas

    found = ctime_untrusted_areas(roots, _ctime_trusted)
    if found is None:  # no /proc/self/mounts: psutil's table
        from pathlib import Path

        from cachewatchd.watch.mounts import ctime_trusted_at

        found = tuple(Path(root) for root in roots if not ctime_trusted_at(Path(root)))
    return found


def _row_json(row: Row) -> dict[str, Any]:
    path, source, state, reason, tag, opt, mode, _kind = row
    return {
        "path": path,
        "source": source,
        "state": state,
        "reason": reason,
        "tag": tag,
        "opt": opt,
        "mode": mode,
    }


def _display(path: str | PathLike[str]) -> str:
    """*path* relative to the working directory when below it (``.`` for it)."""
    text, cwd = os.fspath(path), os.getcwd()
    if text == cwd:
        return "."
    below = cwd.rstrip(os.sep) + os.sep
    return text[len(below) :] if text.startswith(below) else text


def _print_summary(roots: Sequence[str], summary: dict[str, int]) -> None:
    total = sum(summary.values())
    shown = ", ".join(_display(r) for r in roots)
    print(f"{_count(total, 'cache entry', 'cache entries')} under {shown}")
    for state, count in summary.items():
        label = colour(f"{state:<11}", _STATE_COLOUR[state]) if count else f"{state:<11}"
        print(f"  {label}{count:>7}")


def _print_entries(rows: list[Row]) -> None:
    for path, source, state, reason, *_ in sorted(
        rows, key=lambda row: (_DANGER_ORDER.index(row[2]), row[0])
    ):
        print()
        print(f"{colour(state, _STATE_COLOUR[state])}  {_display(path)}")
        if source is not None:
            print(f"    source: {_display(source)}")
        print(f"    why:    {reason}")
        print(f"    do:     {_ADVICE[state]}")


def _print_errors(errors: Sequence[tuple[str | PathLike[str], str]]) -> None:
    for path, error in errors:
        sys.stderr.write(f"cachewatchd: {path}: {error}\n")


def _print_notes(notes: Sequence[str]) -> None:
    for note in notes:
        sys.stderr.write(f"cachewatchd: note: {note}\n")


def _scan(args: argparse.Namespace) -> int:
    """The audit's plain rows printed: no ``Entry`` nor ``Path`` (pathlib is 2 ms of a start)."""
    from cachewatchd.cache.parallel import audit_results
    from cachewatchd.cache.rows import count_states, merged
    from cachewatchd.cache.states import DANGEROUS, State

    roots, options = _options(args)
    with _gc_paused():
        rows, errors, fresh, notes = merged(audit_results(roots, options, _jobs_of(args)))
    non_fresh = [row for row in rows if row[2] != State.FRESH.value]
    if args.json:
        import json

        doc = {
            "version": 1,
            "roots": roots,
            "summary": count_states((row[2] for row in rows), fresh),
            "entries": [_row_json(row) for row in non_fresh],
            "errors": [{"path": path, "error": error} for path, error in errors],
            "notes": notes,
        }
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_summary(roots, count_states((row[2] for row in rows), fresh))
        _print_entries(non_fresh)
        _print_errors(errors)
        _print_incomplete([path for path, _ in errors])
        _print_notes(notes)
    if any(State(row[2]) in DANGEROUS for row in rows):
        return EXIT_FINDINGS
    return EXIT_FAILURE if errors else EXIT_OK


def _print_incomplete(unread: Sequence[str]) -> None:
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
    from pathlib import Path

    from cachewatchd.cache.audit import row_of
    from cachewatchd.cache.clean import clean

    roots, options = _options(args)
    with _gc_paused():
        result = clean(
            [Path(root) for root in roots],
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
            "kept": [_row_json(row_of(e)) for e in result.kept],
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
