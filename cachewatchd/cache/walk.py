"""Walk a project tree the way every cachewatchd component agrees on.

Skips version-control and tool caches by name, every virtual environment (recognised by its
``pyvenv.cfg``, not by its name) and user globs; never follows a symlink to a directory; reports an
unreadable directory through a callback and carries on.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Iterable, Iterator, Sequence

from cachewatchd.cache.named import NamedTuple

__all__ = [
    "DEFAULT_EXCLUDES",
    "Excluder",
    "WalkOptions",
    "list_directory",
    "subdirectories",
    "walk",
    "walk_stack",
]

DEFAULT_EXCLUDES: tuple[str, ...] = (
    ".git",
    ".hg",
    ".svn",
    "node_modules",
    ".tox",
    ".nox",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
)

VENV_MARKER = "pyvenv.cfg"


class WalkOptions(NamedTuple):
    include_venvs: bool = False
    excludes: tuple[str, ...] = ()
    """Globs matched against a name and against the path relative to the root."""
    default_excludes: bool = True


class Excluder:
    """Decides which directories and files a walk leaves out.

    *avoid*: ``(st_dev, st_ino)`` of directories a walk never enters, whatever their path (the
    ``PYTHONPYCACHEPREFIX`` tree inside a root: it is judged as the prefix tree, apart).
    """

    def __init__(self, options: WalkOptions, avoid: Iterable[tuple[int, int]] = ()) -> None:
        self._names = frozenset(DEFAULT_EXCLUDES if options.default_excludes else ())
        self._globs = tuple(options.excludes)
        self.include_venvs = options.include_venvs
        self._avoid = frozenset(avoid)
        self._avoid_inodes = frozenset(ino for _, ino in self._avoid)

    def avoided(self, entry: os.DirEntry[str]) -> bool:
        """True when the directory *entry* is one of *avoid* (its inode number is free on Linux and
        macOS; its device is looked up only when the inode number is one of them)."""
        if not self._avoid_inodes:
            return False
        try:
            if entry.inode() not in self._avoid_inodes:
                return False
            st = entry.stat(follow_symlinks=False)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) in self._avoid

    def excluded(self, name: str, relpath: str) -> bool:
        """True when *name* (at *relpath* below its root, ``/``-separated) is left out."""
        if name in self._names:
            return True
        for pattern in self._globs:
            if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(relpath, pattern):
                return True
        return False

    def is_venv(self, names: Sequence[str]) -> bool:
        return not self.include_venvs and VENV_MARKER in names


def walk(
    root: str,
    options: WalkOptions,
    on_error: Callable[[str, OSError], None],
) -> Iterator[tuple[str, list[os.DirEntry[str]]]]:
    """Yield ``(dirpath, entries)`` for *root* and every directory below it that is not excluded.

    ``__pycache__`` directories are listed among the entries but not descended into: the caller
    reads them. The root itself is always walked, even when it is a virtual environment.
    """
    return walk_stack([(root, "")], Excluder(options), on_error, top_is_root=True)


def walk_stack(
    stack: list[tuple[str, str]],
    excluder: Excluder,
    on_error: Callable[[str, OSError], None],
    *,
    top_is_root: bool = False,
) -> Iterator[tuple[str, list[os.DirEntry[str]]]]:
    """:func:`walk` from a stack of ``(path, path relative to the root)``, popped from the end.

    Every directory is judged as a directory below the root (a virtual environment is skipped),
    except the first one popped when *top_is_root*. Walking ``[(d, rel)]`` yields exactly the
    part of a whole walk that starts at ``d``, in the same order.
    """
    root = top_is_root
    while stack:
        path, rel = stack.pop()
        entries = list_directory(path, excluder, on_error, root=root)
        root = False
        if entries is None:
            continue
        yield path, entries
        stack += subdirectories(entries, rel, excluder)


def list_directory(
    path: str,
    excluder: Excluder,
    on_error: Callable[[str, OSError], None],
    *,
    root: bool = False,
) -> list[os.DirEntry[str]] | None:
    """The entries of *path*; ``None`` when it is gone, unreadable (reported) or a venv below a root."""
    try:
        with os.scandir(path) as it:
            entries = list(it)
    except FileNotFoundError:
        return None
    except OSError as exc:
        on_error(path, exc)
        return None
    if not root and excluder.is_venv([e.name for e in entries]):
        return None
    return entries


def subdirectories(
    entries: list[os.DirEntry[str]], rel: str, excluder: Excluder
) -> list[tuple[str, str]]:
    """``(path, relpath)`` of the directories a walk enters below *entries*, in push order."""
    found = []
    for entry in entries:
        name = entry.name
        if name == "__pycache__":
            continue
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            continue
        if not is_dir:
            continue
        child_rel = f"{rel}/{name}" if rel else name
        if excluder.excluded(name, child_rel) or excluder.avoided(entry):
            continue
        found.append((entry.path, child_rel))
    return found
