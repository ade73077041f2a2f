"""What an audit covers: its options, and its parts (the roots, and with a pycache prefix the
prefix tree's mirrors of them), in report order."""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

from cachewatchd.cache.named import TYPE_CHECKING, NamedTuple
from cachewatchd.cache.pyc import mirror_path
from cachewatchd.cache.walk import WalkOptions
from cachewatchd.errors import UsageError

if TYPE_CHECKING:
    from pathlib import Path  # the API's type; the engine takes any path (scan's start needs none)

    from cachewatchd.cache.pyc import StrPath

__all__ = ["AuditOptions", "Part", "plan", "prefix_identity", "resolve_root", "within"]


class AuditOptions(NamedTuple):
    """What an audit walks and how hard it looks."""

    deep: bool = False
    """Compare every pyc with a fresh compile by the interpreter that reads it (another version's:
    :mod:`cachewatchd.cache.interpreters`) and unmarshal every body."""
    include_venvs: bool = False
    """Also enter virtual environments."""
    excludes: tuple[str, ...] = ()
    """Globs of names or root-relative paths to skip."""
    default_excludes: bool = True
    """Skip ``.git``, ``node_modules``, ``.tox`` and the other tool directories."""
    pycache_prefix: Path | None = None
    """Also audit the ``PYTHONPYCACHEPREFIX`` tree mirroring each root."""
    keep_fresh: bool = False
    """Keep an :class:`Entry` for every fresh entry too (``clean --all``); else only count them."""
    aliases: tuple[Path, ...] = ()
    """Other absolute paths of the roots or of directories inside them (a symlink, as the user
    gave it): the prefix tree's mirror of each is audited too."""
    ctime_untrusted: tuple[Path, ...] = ()
    """Directories (mount points, roots) on filesystems whose ctime cannot be trusted (sshfs
    reports ctime == mtime in whole seconds): no time proves that a source did not change after
    its pyc was written, so every pyc of this Python there is checked exactly once and then
    recognised by a hash of its and its source's content (the caller decides, from the
    filesystem type: :func:`cachewatchd.watch.mounts.ctime_trusted`)."""
    use_index: bool = True
    """Consult and fill the verification index (:mod:`cachewatchd.cache.index`)."""

    def walk_options(self) -> WalkOptions:
        return WalkOptions(self.include_venvs, self.excludes, self.default_excludes)


class Part(NamedTuple):
    """A part of an audit: a root walked as a source tree, or a directory of the prefix tree."""

    path: str
    source: str | None = None
    """For a prefix-tree directory: the source directory it mirrors."""
    skip: frozenset[str] = frozenset()
    """Prefix-tree directories below *path* that other parts judge."""


def resolve_root(path: StrPath) -> str:
    """Resolve a root given by the user; raise :class:`UsageError` when unusable."""
    try:
        resolved = os.path.realpath(os.path.expanduser(path), strict=True)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such directory") from None
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    except RuntimeError:  # a symlink loop before Python 3.13 (an OSError since)
        raise UsageError(f"{path}: {os.strerror(errno.ELOOP)}") from None
    if not os.path.isdir(resolved):
        raise UsageError(f"{path}: not a directory")
    if not os.access(resolved, os.R_OK | os.X_OK):
        raise UsageError(f"{path}: permission denied")
    return resolved


def prefix_identity(prefix: StrPath | None) -> list[tuple[int, int]]:
    """``(st_dev, st_ino)`` of the prefix tree, which a walk of a root never enters."""
    if prefix is None:
        return []
    try:
        st = os.stat(prefix)
    except OSError:
        return []
    return [(st.st_dev, st.st_ino)]


def within(path: str, base: str) -> bool:
    """*path* is *base* or below it (both absolute and normalised)."""
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


def plan(roots: Sequence[StrPath], options: AuditOptions) -> list[Part]:
    """The parts of an audit of *roots*, in report order.

    Without a prefix, the roots. With one (CPython 3.8+ keeps every cache at ``<prefix>/<the source
    directory's absolute path>``, and reads no ``__pycache__``), each root is followed by its
    mirrors: that of the root as given (unresolved: CPython mirrors a ``sys.path`` entry as
    written, symlinks and all), that of its resolved path, and those of the *aliases* that resolve
    into it. A root inside the prefix tree is judged as the part of the tree it is; a prefix tree
    inside a root is not walked as the root's sources (its pycs would look like legacy pycs without
    a source) but judged whole as the prefix tree, after the roots.
    """
    prefix = options.pycache_prefix
    if prefix is None:
        return [Part(os.fspath(root)) for root in roots]
    real_prefix = os.path.realpath(prefix)
    aliases = [(os.path.realpath(alias), os.path.abspath(alias)) for alias in options.aliases]
    parts: list[Part] = []
    mirrors: set[str] = set()
    prefix_inside = False
    for root in roots:
        real = os.path.realpath(root)
        if within(real, real_prefix):
            rel = os.path.relpath(real, real_prefix)
            parts.append(Part(os.fspath(root), os.sep if rel == os.curdir else os.sep + rel))
            continue
        parts.append(Part(os.fspath(root)))
        prefix_inside = prefix_inside or within(real_prefix, real)
        sources = [os.path.abspath(root), real]
        sources += [alias for real_alias, alias in aliases if within(real_alias, real)]
        for source in sources:
            mirror = mirror_path(prefix, source)
            if mirror not in mirrors:
                mirrors.add(mirror)
                parts.append(Part(mirror, source))
    if prefix_inside:
        parts.append(Part(os.fspath(prefix), os.sep, frozenset(mirrors)))
    return parts
