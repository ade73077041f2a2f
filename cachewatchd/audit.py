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


class _Place:
    """A directory of sources and the directory of their caches; each ``Path`` is made once.

    Building a ``Path`` from a whole string costs twice as much as joining one name to a parent
    ``Path``, and a scan makes two per entry: this keeps them off the hot path.
    """

    __slots__ = ("_cache_path", "_source_path", "cache_dir", "source_dir")

    def __init__(self, source_dir: str, cache_dir: str) -> None:
        self.source_dir = source_dir
        self.cache_dir = cache_dir
        self._source_path: Path | None = None
        self._cache_path: Path | None = None

    def source(self, name: str) -> Path:
        if self._source_path is None:
            self._source_path = Path(self.source_dir)
        return self._source_path / name

    def cache(self, name: str) -> Path:
        if self._cache_path is None:
            self._cache_path = Path(self.cache_dir)
        return self._cache_path / name


class _Auditor:
    def __init__(self, options: AuditOptions, report: AuditReport) -> None:
        self.options = options
        self.report = report
        self.seen: set[str] = set()
        self._entries = report.entries

    def on_error(self, path: str, exc: OSError) -> None:
        self.report.errors.append(AuditError(Path(path), _error_text(exc)))

    def add(
        self,
        path: Path,
        source: Path | None,
        verdict: Verdict,
        tag: str,
        opt: str,
        kind: Kind,
    ) -> None:
        self._entries.append(
            Entry(path, source, verdict.state, verdict.reason, tag, opt, verdict.mode, kind)
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
        if legacy:
            here = _Place(dirpath, dirpath)
            for entry in legacy:
                self.legacy(entry, sources, here)
        if pycache is not None and pycache.is_dir(follow_symlinks=False):
            try:
                with os.scandir(pycache.path) as it:
                    cached = [e for e in it if e.name.endswith(".pyc")]
            except FileNotFoundError:
                return
            except OSError as exc:
                self.on_error(pycache.path, exc)
                return
            place = _Place(dirpath, pycache.path)
            for entry in cached:
                self.cached(entry.path, entry.name, place, sources, "pycache")

    def legacy(
        self, entry: os.DirEntry[str], sources: dict[str, os.DirEntry[str]], here: _Place
    ) -> None:
        if entry.path in self.seen or not entry.is_file(follow_symlinks=False):
            return
        self.seen.add(entry.path)
        stem = entry.name[:-4]
        has_source = f"{stem}.py" in sources or f"{stem}.pyw" in sources
        try:
            verdict = judge_legacy(entry.path, has_source, deep=self.options.deep)
        except VanishedError:
            return
        except OSError as exc:
            self.on_error(entry.path, exc)
            return
        source = here.source(f"{stem}.py") if has_source else None
        self.add(here.cache(entry.name), source, verdict, "", "", "legacy")

    def cached(
        self,
        path: str,
        name: str,
        place: _Place,
        sources: dict[str, os.DirEntry[str]] | None,
        kind: Kind,
    ) -> None:
        seen = self.seen
        if path in seen:
            return
        seen.add(path)
        parsed = parse_cache_name(name)
        if parsed is None:
            verdict = Verdict(State.ORPHAN, "not a name CPython imports")
            self.add(place.cache(name), None, verdict, "", "", kind)
            return
        source, source_name, stat = self._find_source(place.source_dir, parsed.stem, sources)
        if source is None or stat is None:
            verdict = Verdict(State.ORPHAN, f"source {parsed.stem}.py is gone: never imported")
            self.add(place.cache(name), None, verdict, parsed.tag, parsed.opt, kind)
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
        self.add(
            place.cache(name), place.source(source_name), verdict, parsed.tag, parsed.opt, kind
        )

    def _find_source(
        self, source_dir: str, stem: str, sources: dict[str, os.DirEntry[str]] | None
    ) -> tuple[str | None, str, os.stat_result | None]:
        """The source's path, name and stat; ``None`` path when no source can be stat-ed."""
        for suffix in _SOURCE_SUFFIXES:
            name = stem + suffix
            try:
                if sources is not None:
                    entry = sources.get(name)
                    if entry is not None:
                        return entry.path, name, entry.stat()
                else:
                    path = os.path.join(source_dir, name)
                    return path, name, os.stat(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                self.on_error(os.path.join(source_dir, name), exc)
                return None, "", None
        return None, "", None

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
            place = _Place(source_dir, path)
            for entry in entries:
                child_rel = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir(follow_symlinks=False):
                    if not excluder.excluded(entry.name, child_rel):
                        stack.append((entry.path, child_rel))
                elif entry.name.endswith(".pyc") and entry.is_file(follow_symlinks=False):
                    self.cached(entry.path, entry.name, place, None, "prefix")


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
