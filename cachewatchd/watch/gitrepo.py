"""git repositories under the roots: find them and read HEAD without running git.

A repository is a work tree with a ``.git`` directory, or a ``.git`` file pointing at its git dir
(linked work trees from ``git worktree add``, submodules). Refs are resolved from the *common* dir
(``commondir`` file) so that a linked work tree sees its branch: loose ref first, then ``packed-refs``.

:func:`git_state` tells which locks and multi-step operations are present; when that means a move is
*settled* is the watcher's policy (:mod:`cachewatchd.watch.git`).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cachewatchd.cache.walk import WalkOptions, walk
from cachewatchd.paths import read_regular

__all__ = [
    "GitRepo",
    "GitState",
    "find_repositories",
    "git_state",
    "is_settled",
    "repo_at",
]

_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_LOCKS = ("index.lock", "HEAD.lock")
_OPERATIONS = (
    ("rebase-merge", "rebase"),
    ("rebase-apply", "rebase"),
    ("MERGE_HEAD", "merge"),
    ("CHERRY_PICK_HEAD", "cherry-pick"),
    ("REVERT_HEAD", "revert"),
    ("sequencer", "sequence"),
)


_SMALL_FILE = 64 * 1024
"""``HEAD``, a loose ref, ``.git`` and ``commondir`` files: a line each."""
_PACKED_REFS = 64 * 1024 * 1024
"""``packed-refs``: a line per ref (a repository with 100k tags has a few MB)."""


def _read(path: Path, limit: int = _SMALL_FILE) -> str | None:
    """The stripped text of *path*; None when it is missing, unreadable, not a regular file (a
    FIFO would block the reader forever) or larger than *limit* bytes."""
    try:
        return read_regular(path, limit).decode("utf-8", errors="replace").strip()
    except OSError:
        return None


@dataclass(frozen=True)
class GitRepo:
    """One work tree and where git keeps its state."""

    worktree: Path
    gitdir: Path
    """Per-work-tree git dir: ``HEAD``, ``index``, locks, operation markers."""
    commondir: Path
    """Shared git dir: ``refs/``, ``packed-refs`` (equal to ``gitdir`` for a main work tree)."""

    def head(self) -> str | None:
        """The commit HEAD points at, or None (unborn branch, unreadable repository)."""
        return self._resolve("HEAD", 0)

    def ref(self, name: str) -> str | None:
        """The commit a full ref name (``refs/heads/main``, ``refs/stash``) points at, or None."""
        return self._resolve(name, 0)

    def _resolve(self, name: str, depth: int) -> str | None:
        if depth > 8:
            return None
        for base in (self.gitdir, self.commondir):
            text = _read(base / name)
            if text is None:
                continue
            if text.startswith("ref:"):
                return self._resolve(text[4:].strip(), depth + 1)
            return text if _SHA.match(text) else None
        packed = self._packed(name)
        if packed is not None:
            return packed
        if (self.commondir / "reftable").is_dir():
            return self._rev_parse(name)
        return None

    def _packed(self, name: str) -> str | None:
        text = _read(self.commondir / "packed-refs", _PACKED_REFS)
        if not text:
            return None
        for line in text.splitlines():
            if line.startswith(("#", "^")):
                continue
            sha, _, ref = line.partition(" ")
            if ref == name and _SHA.match(sha):
                return sha
        return None

    def _rev_parse(self, name: str) -> str | None:
        """Ask git itself (reftable repositories keep refs in a binary format)."""
        try:
            out = subprocess.run(
                ["git", "-C", str(self.worktree), "rev-parse", "--verify", "-q", name],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        sha = out.stdout.strip()
        return sha if out.returncode == 0 and _SHA.match(sha) else None


@dataclass(frozen=True)
class GitState:
    locks: tuple[str, ...]
    """Lock files present in the git dir."""
    operation: str | None
    """``rebase``, ``merge``, ``cherry-pick``, ``revert``, ``sequence`` or None."""
    lock_age: float | None = None
    """Seconds since the youngest lock was last written (wall clock); None without locks."""


def git_state(repo: GitRepo) -> GitState:
    locks, ages = [], []
    now = time.time()
    for name in _LOCKS:
        try:
            written = os.stat(repo.gitdir / name).st_mtime
        except OSError:
            continue
        locks.append(name)
        ages.append(max(0.0, now - written))
    operation = next((op for marker, op in _OPERATIONS if (repo.gitdir / marker).exists()), None)
    return GitState(tuple(locks), operation, min(ages) if ages else None)


def is_settled(repo: GitRepo) -> bool:
    """No lock and no multi-step operation under way (the policy: :mod:`cachewatchd.watch.git`)."""
    state = git_state(repo)
    return not state.locks and state.operation is None


def repo_at(worktree: Path) -> GitRepo | None:
    """The repository whose work tree is *worktree* (``.git`` directory or file), or None."""
    dotgit = worktree / ".git"
    if dotgit.is_dir():
        gitdir = dotgit
    elif dotgit.is_file():
        text = _read(dotgit) or ""
        if not text.startswith("gitdir:"):
            return None
        gitdir = Path(os.path.normpath(worktree / text[len("gitdir:") :].strip()))
    else:
        return None
    if not (gitdir / "HEAD").is_file():
        return None
    common = _read(gitdir / "commondir")
    commondir = gitdir / common if common else gitdir
    return GitRepo(
        Path(os.path.realpath(worktree)),
        Path(os.path.realpath(gitdir)),
        Path(os.path.realpath(commondir)),
    )


def find_repositories(root: Path, options: WalkOptions | None = None) -> list[GitRepo]:
    """Every repository whose work tree is *root*, below it, or encloses it."""
    found: dict[Path, GitRepo] = {}
    top = Path(os.path.realpath(root))
    for parent in top.parents:
        enclosing = repo_at(parent)
        if enclosing is not None:
            found[enclosing.worktree] = enclosing
            break
    for dirpath, entries in walk(str(top), options or WalkOptions(), lambda p, e: None):
        if any(e.name == ".git" for e in entries):
            repo = repo_at(Path(dirpath))
            if repo is not None:
                found[repo.worktree] = repo
    return sorted(found.values(), key=lambda r: r.worktree)
