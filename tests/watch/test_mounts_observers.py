"""Observers per mount: a network mount below a natively watched root gets a poller of its own.

The mount table is faked here (a sub-directory listed as an NFS mount), the observers are real;
tests/e2e/test_real_mounts.py proves the same on real FUSE and NFS mounts.
"""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path

import psutil
import pytest

from cachewatchd.cache.walk import WalkOptions
from cachewatchd.watch.mount_pollers import MountPollers
from cachewatchd.watch.mounts import ObserverChoice
from tests.support.mounts import bindfs
from tests.support.wait import wait_until
from tests.watch.test_observers import watching

_Part = namedtuple("_Part", "device mountpoint fstype opts")


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = (tmp_path / "root").resolve()
    for sub in ("data/pkg", "local", "node_modules/x"):
        (root / sub).mkdir(parents=True)
    (root / "data" / "pkg" / "m.py").write_text("X = 1\n")
    (root / "local" / "l.py").write_text("L = 1\n")
    real = psutil.disk_partitions

    def fake(all: bool = False) -> list[object]:
        listed: list[object] = list(real(all=True))
        listed.append(_Part("srv:/export", str(root / "data"), "nfs4", "rw,vers=4.2"))
        listed.append(_Part("srv:/nm", str(root / "node_modules" / "x"), "nfs", "rw"))
        return listed

    monkeypatch.setattr(psutil, "disk_partitions", fake)
    return root


def test_a_network_mount_below_a_native_root_is_polled(tree: Path) -> None:
    with watching([tree], poll_mode="auto") as (watcher, feed):
        choice = watcher.observers()[tree]
        assert choice.kind == "native"
        assert f"nfs4 mount {tree / 'data'}: polling" in choice.reason
        assert "node_modules" not in choice.reason  # excluded by default: never watched
        source = tree / "data" / "pkg" / "m.py"
        source.write_text("X = 2\n")
        wait_until(lambda: source in feed.changed(), 10, message="edit below the mount")
        local = tree / "local" / "l.py"
        local.write_text("L = 2\n")
        wait_until(lambda: local in feed.changed(), 10, message="local edit")
        (tree / "data" / "pkg" / "n.py").write_text("N = 1\n")
        source.unlink()
        wait_until(lambda: source in feed.removed(), 10, message="deletion below the mount")
        assert tree / "data" / "pkg" / "n.py" in feed.changed()


@pytest.mark.parametrize("mode", ["never", "always"])
def test_forced_modes_start_no_mount_poller(tree: Path, mode: str) -> None:
    with watching([tree], poll_mode=mode) as (watcher, _):
        assert "nfs4 mount" not in watcher.observers()[tree].reason


def test_the_native_sink_leaves_the_polled_mounts_to_their_pollers(tree: Path) -> None:
    class Sink:
        def __init__(self) -> None:
            self.calls: list[tuple[str, Path]] = []

        def source_changed(self, path: Path) -> None:
            self.calls.append(("changed", path))

        def source_removed(self, path: Path) -> None:
            self.calls.append(("removed", path))

        def dir_removed(self, path: Path) -> None:
            self.calls.append(("dir", path))

        def rescan(self, root: Path, reason: str) -> None:
            self.calls.append(("rescan", root))

        def pyc_written(self, path: Path) -> None:
            self.calls.append(("pyc", path))

    sink = Sink()
    pollers = MountPollers(tree, sink, WalkOptions(), 0.05, lambda p, e: None)
    choice = pollers.start(ObserverChoice("native", "ext4: native events"), None)
    assert choice.reason == f"ext4: native events; nfs4 mount {tree / 'data'}: polling"
    assert pollers.refresh(None) is None  # the same mounts: nothing to do
    try:
        outside = pollers.outside(sink)
        outside.source_changed(tree / "data" / "pkg" / "m.py")
        outside.source_removed(tree / "data" / "m.py")
        outside.dir_removed(tree / "data" / "pkg")
        outside.source_changed(tree / "database.py")
        outside.dir_removed(tree)
        outside.rescan(tree, "x")
        pyc = tree / "data" / "pkg" / "__pycache__" / "m.cpython-311.pyc"
        outside.pyc_written(pyc)  # type: ignore[attr-defined]  # pollers never list __pycache__
    finally:
        pollers.stop()
    expected = [("changed", tree / "database.py"), ("dir", tree), ("rescan", tree), ("pyc", pyc)]
    assert sink.calls == expected


def test_a_mount_made_while_watching_gets_its_poller(tmp_path: Path) -> None:
    """A real bindfs mount made below a watched root after the start (an NFS share mounted after
    the service started): the mount table's change is noticed, the root audited, the mount polled;
    undone, its poller goes."""
    root = (tmp_path / "root").resolve()
    (root / "local").mkdir(parents=True)
    other, late = tmp_path / "other", root / "late"
    with watching([root], poll_mode="auto") as (watcher, feed):
        assert watcher.observers()[root].reason.endswith("native events")
        with bindfs(other, late) as mount:

            def polled() -> bool:
                return f"mount {late}: polling" in watcher.observers()[root].reason

            wait_until(polled, 10, message="the new mount polled")
            wait_until(lambda: "mounts changed" in feed.rescan_reasons(), 10, message="rescan")
            source = mount.other / "m.py"  # the other side: no inotify event reaches the root
            source.write_text("X = 1\n")
            wait_until(lambda: late / "m.py" in feed.changed(), 10, message="edit on the far side")
        wait_until(lambda: not polled(), 10, message="the poller of the mount gone")
