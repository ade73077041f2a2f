"""Remove cache entries safely: only cache files, never through a symlink out of a root."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cachewatchd.cache.listing import drop_listing_cache
from cachewatchd.cache.pyc import LEGACY_SUFFIXES, mirror_dir, parse_cache_name
from cachewatchd.paths import is_under

__all__ = [
    "RemoveResult",
    "cache_files_by_source",
    "cache_files_for_source",
    "invalidate_source",
    "is_cache_file",
    "remove_cache_files",
]


@dataclass
class RemoveResult:
    removed: list[Path] = field(default_factory=list)
    errors: list[tuple[Path, str]] = field(default_factory=list)
    removed_dirs: list[Path] = field(default_factory=list)

    def extend(self, other: RemoveResult) -> None:
        self.removed += other.removed
        self.errors += other.errors
        self.removed_dirs += other.removed_dirs


def _index(directory: Path, stems: Container[str]) -> dict[str, list[Path]]:
    """Cache files in *directory* of the sources named *stems*, by stem
    (``m.cpython-311.opt-1.pyc`` -> ``m``)."""
    drop_listing_cache(directory)  # an NFS client's cached listing can miss a same-tick pyc
    try:
        names = os.listdir(directory)
    except OSError:
        return {}
    index: dict[str, list[Path]] = {}
    for name in names:
        if name.partition(".")[0] not in stems:
            continue
        parsed = parse_cache_name(name)
        if parsed is not None:
            index.setdefault(parsed.stem, []).append(directory / name)
    return index


def _stem(source: Path) -> str:
    return source.name.rsplit(".", 1)[0]


def cache_files_by_source(
    sources: Iterable[Path],
    *,
    pycache_prefix: Path | None = None,
    legacy: Container[Path] = (),
) -> dict[Path, list[Path]]:
    """Existing cache files of each of *sources*: every tag and opt level, in ``__pycache__`` and,
    for an absolute source, in the prefix tree; also ``m.pyc``/``m.pyo`` beside ``m.py`` for the
    sources in *legacy*. The sources need not exist any more.

    Lists each directory once: a 10k-file checkout must not list a 10k-entry ``__pycache__`` 10k
    times.
    """
    by_name: dict[str, list[Path]] = {}  # by the directory's name: cheaper than Path.parent
    for source in sources:
        by_name.setdefault(os.path.dirname(source), []).append(source)
    by_dir = {members[0].parent: members for members in by_name.values()}
    found: dict[Path, list[Path]] = {}
    for directory, members in by_dir.items():
        stems = {_stem(source) for source in members}
        index = _index(directory / "__pycache__", stems)
        if pycache_prefix is not None and directory.is_absolute():
            for stem, files in _index(mirror_dir(pycache_prefix, directory), stems).items():
                index.setdefault(stem, []).extend(files)
        for source in members:
            stem = _stem(source)
            files = list(index.get(stem, ()))
            if source in legacy:
                files += [
                    directory / (stem + suffix)
                    for suffix in LEGACY_SUFFIXES
                    if os.path.lexists(directory / (stem + suffix))
                ]
            found[source] = files
    return found


def cache_files_for_source(
    source: Path, *, pycache_prefix: Path | None = None, legacy: bool = False
) -> list[Path]:
    """Existing cache files of *source*: :func:`cache_files_by_source` of one source.

    With *legacy*, also ``m.pyc``/``m.pyo`` beside ``m.py``. *source* need not exist any more.
    """
    return cache_files_by_source(
        [source], pycache_prefix=pycache_prefix, legacy=(source,) if legacy else ()
    )[source]


def _within(path: str, bases: Sequence[str]) -> bool:
    return any(is_under(path, base) for base in bases)


class _Safety:
    """Decides whether a path may be deleted. The roots are resolved once per removal run, and
    what depends only on a file's directory (resolved, inside the prefix tree or a root, a
    ``__pycache__`` that is no symlink) once per directory: a storm removes many files per
    directory. Per file: its name, and an ``lstat`` (a regular file)."""

    def __init__(self, roots: Sequence[Path], pycache_prefix: Path | None) -> None:
        self.roots = [os.path.realpath(r) for r in roots]
        self.prefix = None if pycache_prefix is None else [os.path.realpath(pycache_prefix)]
        self._real: dict[Path, str] = {}
        """Resolved directories."""
        self._places: dict[Path, str] = {}
        """Per directory: ``prefix``, ``pycache``, ``beside`` (a legacy pyc beside its source),
        or why nothing in it may go."""

    def _realpath(self, directory: Path) -> str:
        real = self._real.get(directory)
        if real is None:
            real = self._real[directory] = os.path.realpath(directory)
        return real

    def in_prefix(self, directory: Path) -> bool:
        """*directory* lies strictly inside the prefix tree."""
        if self.prefix is None:
            return False
        real = self._realpath(directory)
        return real != self.prefix[0] and _within(real, self.prefix)

    def _place(self, directory: Path) -> str:
        place = self._places.get(directory)
        if place is None:
            real = self._realpath(directory)
            if self.prefix is not None and _within(real, self.prefix):
                place = "prefix"
            elif not _within(real, self.roots):
                place = "outside the watched roots"
            elif directory.name == "__pycache__":
                place = "not a cache entry" if os.path.islink(directory) else "pycache"
            else:
                place = "beside"
            self._places[directory] = place
        return place

    def refusal(self, path: Path) -> str | None:
        name = path.name
        if not name.endswith(LEGACY_SUFFIXES):
            return "not a .pyc/.pyo file"
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return "already gone"
        except OSError as exc:
            return exc.strerror or str(exc)
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        place = self._place(path.parent)
        if place == "prefix":
            return None if name.endswith(".pyc") else "not a .pyc file"
        if place == "pycache":
            return None if parse_cache_name(name) is not None else "not a cache entry"
        if place == "beside":
            return None  # a legacy m.pyc / m.pyo inside a root
        return place


def is_cache_file(
    path: Path, roots: Sequence[Path], pycache_prefix: Path | None = None
) -> str | None:
    """``None`` when *path* is a cache file that may be deleted, else why not."""
    return _Safety(roots, pycache_prefix).refusal(path)


def remove_cache_files(
    paths: Iterable[Path],
    roots: Sequence[Path],
    *,
    pycache_prefix: Path | None = None,
    dry_run: bool = False,
) -> RemoveResult:
    """Delete each cache file of *paths*; refuse anything else. One failure never stops the rest."""
    result = RemoveResult()
    parents: set[Path] = set()
    safety = _Safety(roots, pycache_prefix)
    for path in paths:
        refused = safety.refusal(path)
        if refused == "already gone":
            continue
        if refused is not None:
            result.errors.append((path, f"refused: {refused}"))
            continue
        if not dry_run:
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                result.errors.append((path, _describe(exc)))
                continue
        result.removed.append(path)
        parent = path.parent
        if parent.name == "__pycache__" or safety.in_prefix(parent):
            parents.add(parent)
    if not dry_run:
        _prune(parents, safety, result)
    return result


def _prune(directories: set[Path], safety: _Safety, result: RemoveResult) -> None:
    """Remove the ``__pycache__`` directories left empty, and the prefix tree's empty mirrors up
    to (not including) the prefix itself."""
    for directory in sorted(directories, key=lambda d: (-len(d.parts), d)):
        current = directory
        while current.name == "__pycache__" or safety.in_prefix(current):
            try:
                os.rmdir(current)
            except OSError:
                break
            result.removed_dirs.append(current)
            if current.name == "__pycache__":
                break
            current = current.parent


def _describe(exc: OSError) -> str:
    if exc.errno == errno.EROFS:
        return "read-only file system"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return exc.strerror or str(exc)


def invalidate_source(
    source: Path,
    roots: Sequence[Path],
    *,
    pycache_prefix: Path | None = None,
    legacy: bool = False,
) -> RemoveResult:
    """Remove every cache entry of *source* (the event is the proof: no timestamps consulted)."""
    files = cache_files_for_source(source, pycache_prefix=pycache_prefix, legacy=legacy)
    if not files:
        return RemoveResult()
    return remove_cache_files(files, roots, pycache_prefix=pycache_prefix)
