"""On a filesystem not known to be local (network, FUSE, unknown) the poller reads a directory that changed from the server again on the
pass after (watch/polling: ``refetch``): an NFS client keeps a listing while the directory's change
attribute stays the same, and a server that derives it from a coarse ctime (NFSv3, v4 without
``i_version``) keeps it the same for an entry made in the tick of a change the client had listed.
Seen in the real-NFS tests: a source created in the tick of its ``__pycache__`` was never listed,
so its stale pyc stayed. That ``POSIX_FADV_DONTNEED`` on a directory makes a real NFS client read
it again was checked with the client's READDIR counters (``/proc/self/mountstats``); here, which
directories get it and when."""

from __future__ import annotations

import os
from collections import namedtuple
from pathlib import Path
from typing import Any

import psutil
import pytest

from cachewatchd.cache.listing import drop_listing_cache
from cachewatchd.cache.walk import WalkOptions
from cachewatchd.watch import observers, polling
from cachewatchd.watch.polling import SourceLister
from tests.watch.test_observers import watching


def _pass(lister: SourceLister, root: Path) -> None:
    """One snapshot's listings: the root first, then every directory below it."""
    stack = [str(root)]
    first = True
    while stack:
        directory = stack.pop()
        entries = list(lister(None if first else directory))
        first = False
        stack.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))


@pytest.fixture
def dropped(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    monkeypatch.setattr(polling, "drop_listing_cache", calls.append)
    return calls


def _lister(root: Path, *, refetch: bool) -> SourceLister:
    return SourceLister(str(root), WalkOptions(), lambda path, exc: None, refetch=refetch)


def test_a_changed_directory_is_read_again_on_the_pass_after(
    tmp_path: Path, dropped: list[str]
) -> None:
    root = tmp_path.resolve()
    pkg = root / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text("X = 1\n")
    lister = _lister(root, refetch=True)
    _pass(lister, root)
    _pass(lister, root)
    assert dropped == []  # nothing changed: the cache serves
    (pkg / "n.py").write_text("N = 1\n")
    _pass(lister, root)  # sees the change (a listing the client had to fetch anyway)
    assert dropped == []
    _pass(lister, root)  # the pass after: from the server again
    assert dropped == [str(pkg)]
    _pass(lister, root)
    assert dropped == [str(pkg)]  # once per change


def test_local_pollers_leave_the_cache_alone(tmp_path: Path, dropped: list[str]) -> None:
    root = tmp_path.resolve()
    lister = _lister(root, refetch=False)
    _pass(lister, root)
    (root / "m.py").write_text("X = 1\n")
    _pass(lister, root)
    _pass(lister, root)
    assert dropped == []


def test_dropping_the_cache_never_fails(tmp_path: Path) -> None:
    drop_listing_cache(str(tmp_path))
    drop_listing_cache(str(tmp_path / "gone"))
    (tmp_path / "file").write_text("")
    drop_listing_cache(str(tmp_path / "file"))
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_the_invalidation_lists_each_pycache_from_the_filesystem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listing that finds a source's pycs (the eager invalidation, the second look) is not
    served from a cache that may miss a pyc written in the tick of an earlier listing."""
    from cachewatchd.cache import remove

    calls: list[str] = []
    monkeypatch.setattr(remove, "drop_listing_cache", lambda d: calls.append(str(d)))
    source = tmp_path / "m.py"
    source.write_text("X = 1\n")
    (tmp_path / "__pycache__").mkdir()
    pyc = tmp_path / "__pycache__" / "m.cpython-311.pyc"
    pyc.write_bytes(b"")
    assert remove.cache_files_for_source(source) == [pyc]
    assert calls == [str(tmp_path / "__pycache__")]


_Part = namedtuple("_Part", "device mountpoint fstype opts")


@pytest.mark.parametrize(
    ("fstype", "refetch"),
    [("nfs", True), ("fuse.sshfs", True), ("hostfs", True), ("ext4", False), ("tmpfs", False)],
)
def test_every_polled_filesystem_not_known_local_reads_changed_directories_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fstype: str, refetch: bool
) -> None:
    """hostfs (user-mode Linux's view of its host) is neither known local nor known network: a
    root the probe sent to polling gets the re-read too, since whether its listings are cached is
    not known; known local filesystems never need it."""
    root = (tmp_path / "root").resolve()
    root.mkdir()
    real = psutil.disk_partitions

    def fake(all: bool = False) -> list[object]:
        return [*real(all=True), _Part("dev", str(root), fstype, "rw")]

    monkeypatch.setattr(psutil, "disk_partitions", fake)
    made: list[bool] = []
    original = polling.make_polling_observer

    def recording(*args: Any, **kwargs: Any) -> Any:
        made.append(kwargs["refetch"])
        return original(*args, **kwargs)

    monkeypatch.setattr(observers, "make_polling_observer", recording)
    with watching([root], poll_mode="always") as (watcher, _):
        assert watcher.observers()[root].kind == "polling"
    assert made == [refetch]
