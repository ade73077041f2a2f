"""Walk a project tree the way every cachewatchd component agrees on.

Skips version-control and tool caches by name, every virtual environment (recognised by its
``pyvenv.cfg``, not by its name) and user globs; never follows a symlink to a directory; reports an
unreadable directory through a callback and carries on.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

__all__ = ["DEFAULT_EXCLUDES", "Excluder", "WalkOptions", "walk"]

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


@dataclass(frozen=True)
class WalkOptions:
    include_venvs: bool = False
    excludes: tuple[str, ...] = ()
    """Globs matched against a name and against the path relative to the root."""
    default_excludes: bool = True


class Excluder:
    """Decides which directories and files a walk leaves out."""

    def __init__(self, options: WalkOptions) -> None:
        self._names = frozenset(DEFAULT_EXCLUDES if options.default_excludes else ())
        self._globs = tuple(options.excludes)
        self.include_venvs = options.include_venvs

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
    excluder = Excluder(options)
    stack: list[tuple[str, str]] = [(root, "")]
    first = True
    while stack:
        path, rel = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except FileNotFoundError:
            continue
        except OSError as exc:
            on_error(path, exc)
            continue
        if not first and excluder.is_venv([e.name for e in entries]):
            continue
        first = False
        yield path, entries
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
            if excluder.excluded(name, child_rel):
                continue
            stack.append((entry.path, child_rel))
