"""Walk trees and judge every bytecode cache entry: the engine behind scan, clean and the daemon."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cachewatchd.errors import UsageError
from cachewatchd.judge import (
    DANGEROUS,
    Entry,
    Kind,
    State,
    VanishedError,
    Verdict,
    judge_legacy,
    judge_pycache,
)
from cachewatchd.pyc import parse_cache_name
from cachewatchd.walk import Excluder, WalkOptions, walk

__all__ = [
    "DANGEROUS",
    "AuditError",
    "AuditOptions",
    "AuditReport",
    "Entry",
    "State",
    "audit",
    "check_root",
    "mirror_dir",
]

_SOURCE_SUFFIXES = (".py", ".pyw")


@dataclass(frozen=True)
class AuditOptions:
    deep: bool = False
    include_venvs: bool = False
    excludes: tuple[str, ...] = ()
    default_excludes: bool = True
    pycache_prefix: Path | None = None
    """Also audit the ``PYTHONPYCACHEPREFIX`` tree mirroring each root."""

    def walk_options(self) -> WalkOptions:
        return WalkOptions(self.include_venvs, self.excludes, self.default_excludes)


@dataclass(frozen=True)
class AuditError:
    path: Path
    error: str


@dataclass
class AuditReport:
    roots: list[Path]
    entries: list[Entry] = field(default_factory=list)
    errors: list[AuditError] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        counts = {state.value: 0 for state in State}
        for entry in self.entries:
            counts[entry.state.value] += 1
        return counts

    def non_fresh(self) -> list[Entry]:
        return [e for e in self.entries if e.state is not State.FRESH]

    def dangerous(self) -> bool:
        return any(e.state in DANGEROUS for e in self.entries)


def check_root(path: Path) -> Path:
    """Resolve a root given by the user; raise :class:`UsageError` when unusable."""
    try:
        resolved = path.expanduser().resolve(strict=True)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such directory") from None
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    if not resolved.is_dir():
        raise UsageError(f"{path}: not a directory")
    if not os.access(resolved, os.R_OK | os.X_OK):
        raise UsageError(f"{path}: permission denied")
    return resolved


def mirror_dir(prefix: Path, directory: Path) -> Path:
    """Where CPython keeps caches of *directory*'s sources under ``PYTHONPYCACHEPREFIX``."""
    return prefix / directory.relative_to(directory.anchor)


def _error_text(exc: OSError) -> str:
    return exc.strerror or str(exc)


class _Auditor:
    def __init__(self, options: AuditOptions, report: AuditReport) -> None:
        self.options = options
        self.report = report
        self.seen: set[str] = set()

    def on_error(self, path: str, exc: OSError) -> None:
        self.report.errors.append(AuditError(Path(path), _error_text(exc)))

    def add(
        self, path: str, source: str | None, verdict: Verdict, tag: str, opt: str, kind: Kind
    ) -> None:
        self.report.entries.append(
            Entry(
                Path(path),
                None if source is None else Path(source),
                verdict.state,
                verdict.reason,
                tag,
                opt,
                verdict.mode,
                kind,
            )
        )

    def tree(self, root: str) -> None:
        for dirpath, entries in walk(root, self.options.walk_options(), self.on_error):
            self.directory(dirpath, entries)

    def directory(self, dirpath: str, entries: list[os.DirEntry[str]]) -> None:
        sources: dict[str, os.DirEntry[str]] = {}
        legacy: list[os.DirEntry[str]] = []
        pycache: os.DirEntry[str] | None = None
        for entry in entries:
            name = entry.name
            if name.endswith(_SOURCE_SUFFIXES):
                sources[name] = entry
            elif name.endswith((".pyc", ".pyo")):
                legacy.append(entry)
            elif name == "__pycache__":
                pycache = entry
        for entry in legacy:
            self.legacy(entry, sources)
        if pycache is not None and pycache.is_dir(follow_symlinks=False):
            try:
                with os.scandir(pycache.path) as it:
                    cached = [e for e in it if e.name.endswith(".pyc")]
            except FileNotFoundError:
                return
            except OSError as exc:
                self.on_error(pycache.path, exc)
                return
            for entry in cached:
                self.cached(entry.path, entry.name, dirpath, sources, "pycache")

    def legacy(self, entry: os.DirEntry[str], sources: dict[str, os.DirEntry[str]]) -> None:
        if entry.path in self.seen or not entry.is_file(follow_symlinks=False):
            return
        self.seen.add(entry.path)
        stem = entry.name[:-4]
        has_source = f"{stem}.py" in sources or f"{stem}.pyw" in sources
        source = os.path.join(os.path.dirname(entry.path), f"{stem}.py")
        try:
            verdict = judge_legacy(entry.path, has_source, deep=self.options.deep)
        except VanishedError:
            return
        except OSError as exc:
            self.on_error(entry.path, exc)
            return
        self.add(entry.path, source if has_source else None, verdict, "", "", "legacy")

    def cached(
        self,
        path: str,
        name: str,
        source_dir: str,
        sources: dict[str, os.DirEntry[str]] | None,
        kind: Kind,
    ) -> None:
        if path in self.seen:
            return
        self.seen.add(path)
        parsed = parse_cache_name(name)
        if parsed is None:
            self.add(path, None, Verdict(State.ORPHAN, "not a name CPython imports"), "", "", kind)
            return
        source, stat = self._find_source(source_dir, parsed.stem, sources)
        if source is None or stat is None:
            verdict = Verdict(State.ORPHAN, f"source {parsed.stem}.py is gone: never imported")
            self.add(path, None, verdict, parsed.tag, parsed.opt, kind)
            return
        try:
            verdict = judge_pycache(
                path, source, stat, parsed.tag, parsed.opt, deep=self.options.deep
            )
        except VanishedError:
            return
        except OSError as exc:
            self.on_error(path, exc)
            return
        self.add(path, source, verdict, parsed.tag, parsed.opt, kind)

    def _find_source(
        self, source_dir: str, stem: str, sources: dict[str, os.DirEntry[str]] | None
    ) -> tuple[str | None, os.stat_result | None]:
        for suffix in _SOURCE_SUFFIXES:
            name = stem + suffix
            try:
                if sources is not None:
                    entry = sources.get(name)
                    if entry is not None:
                        return entry.path, entry.stat()
                else:
                    path = os.path.join(source_dir, name)
                    return path, os.stat(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                self.on_error(os.path.join(source_dir, name), exc)
                return None, None
        return None, None

    def prefix_tree(self, root: Path, prefix: Path) -> None:
        mirror = mirror_dir(prefix, root)
        excluder = Excluder(self.options.walk_options())
        stack = [(str(mirror), "")]
        while stack:
            path, rel = stack.pop()
            try:
                with os.scandir(path) as it:
                    entries = list(it)
            except FileNotFoundError:
                continue
            except OSError as exc:
                self.on_error(path, exc)
                continue
            source_dir = os.path.join(str(root), rel) if rel else str(root)
            for entry in entries:
                child_rel = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir(follow_symlinks=False):
                    if not excluder.excluded(entry.name, child_rel):
                        stack.append((entry.path, child_rel))
                elif entry.name.endswith(".pyc") and entry.is_file(follow_symlinks=False):
                    self.cached(entry.path, entry.name, source_dir, None, "prefix")


def audit(roots: Sequence[Path], options: AuditOptions | None = None) -> AuditReport:
    """Judge every cache entry under *roots* (already resolved directories)."""
    opts = options if options is not None else AuditOptions()
    report = AuditReport(roots=list(roots))
    auditor = _Auditor(opts, report)
    for root in roots:
        auditor.tree(str(root))
        if opts.pycache_prefix is not None:
            auditor.prefix_tree(root, opts.pycache_prefix)
    return report
