"""Filesystem type per root and the observer it gets."""

from __future__ import annotations

import os
from collections import namedtuple
from pathlib import Path

import psutil
import pytest

from cachewatchd.watch.mounts import (
    Mount,
    ObserverChoice,
    choose_observer,
    ctime_trusted,
    is_known_local,
    is_network_fs,
    mount_for,
    mounts_below,
    polled_mounts,
)

_Part = namedtuple("_Part", "device mountpoint fstype opts")


def _fake_partitions(monkeypatch: pytest.MonkeyPatch, parts: list[_Part]) -> None:
    def fake(all: bool = False) -> list[_Part]:
        assert all is True
        return parts

    monkeypatch.setattr(psutil, "disk_partitions", fake)


def test_mount_for_a_real_directory(tmp_path: Path) -> None:
    mount = mount_for(tmp_path)
    assert mount is not None
    real = os.path.realpath(tmp_path)
    assert real == str(mount.mountpoint) or real.startswith(str(mount.mountpoint).rstrip("/") + "/")
    listed = {(p.mountpoint, p.fstype) for p in psutil.disk_partitions(all=True)}
    assert (str(mount.mountpoint), mount.fstype) in listed


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_mount_for_picks_the_longest_prefix_on_this_machine() -> None:
    mount = mount_for(Path("/dev/shm"))
    assert mount is not None
    assert mount.mountpoint == Path("/dev/shm")
    assert mount.fstype == "tmpfs"


def test_longest_prefix_wins_and_later_mounts_shadow(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_partitions(
        monkeypatch,
        [
            _Part("/dev/sda1", "/", "ext4", "rw"),
            _Part("srv:/export", "/mnt/code", "nfs4", "rw"),
            _Part("/dev/sdb1", "/mnt/codebase", "xfs", "rw"),
            _Part("tmpfs", "/mnt/code", "tmpfs", "rw"),  # mounted over the nfs one
        ],
    )
    assert mount_for(Path("/mnt/code/app/x.py")) == Mount(Path("/mnt/code"), "tmpfs", "tmpfs")
    assert mount_for(Path("/mnt/codebase/a")) == Mount(Path("/mnt/codebase"), "xfs", "/dev/sdb1")
    assert mount_for(Path("/mnt/cod")) == Mount(Path("/"), "ext4", "/dev/sda1")


def test_symlinked_root_is_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    _fake_partitions(
        monkeypatch,
        [_Part("/dev/sda1", "/", "ext4", "rw"), _Part("srv:/x", str(real), "nfs", "rw")],
    )
    mount = mount_for(link)
    assert mount is not None
    assert mount.fstype == "nfs"


@pytest.mark.parametrize(
    "fstype",
    [
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "virtiofs",
        "vboxsf",
        "drvfs",
        "prl_fs",
        "vmhgfs",
        "afpfs",
        "fuse.sshfs",
        "fuse.vmhgfs-fuse",
        "fuse.grpcfuse",
        "fuse.osxfs",
        "fuse",
        "ceph",
        "glusterfs",
        "NFS4",
    ],
)
def test_network_and_shared_filesystems(fstype: str) -> None:
    assert is_network_fs(fstype)


@pytest.mark.parametrize(
    "fstype",
    [
        "ext4",
        "xfs",
        "btrfs",
        "zfs",
        "tmpfs",
        "overlay",
        "apfs",
        "fuseblk",
        "fuse.lxcfs",
        "fuse.fuse-overlayfs",
        "f2fs",
        "",
    ],
)
def test_local_filesystems(fstype: str) -> None:
    assert not is_network_fs(fstype)


def test_choose_observer_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_partitions(
        monkeypatch,
        [_Part("/dev/sda1", "/", "ext4", "rw"), _Part("srv:/export", "/mnt", "nfs4", "rw")],
    )
    assert choose_observer(Path("/home/u/app"), "auto") == ObserverChoice(
        "native", "ext4: native events"
    )
    assert choose_observer(Path("/mnt/app"), "auto") == ObserverChoice(
        "polling", "nfs4 mount /mnt: polling"
    )


def test_choose_observer_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_partitions(
        monkeypatch,
        [_Part("/dev/sda1", "/", "ext4", "rw"), _Part("srv:/export", "/mnt", "nfs4", "rw")],
    )
    assert choose_observer(Path("/home/u/app"), "always") == ObserverChoice(
        "polling", "--poll always"
    )
    assert choose_observer(Path("/home/u/app"), "never") == ObserverChoice("native", "--poll never")
    never_nfs = choose_observer(Path("/mnt/app"), "never")
    assert never_nfs.kind == "native"
    assert "nfs4 mount /mnt" in never_nfs.reason


def test_choose_observer_without_mount_information(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_partitions(monkeypatch, [])
    assert choose_observer(Path("/x"), "auto") == ObserverChoice(
        "native", "filesystem unknown: native events"
    )

    def broken(all: bool = False) -> list[_Part]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(psutil, "disk_partitions", broken)
    choice = choose_observer(Path("/x"), "auto")
    assert choice.kind == "native"
    assert "mounts unreadable" in choice.reason


def test_choose_observer_on_this_machine(tmp_path: Path) -> None:
    choice = choose_observer(tmp_path)
    mount = mount_for(tmp_path)
    assert mount is not None
    expected = "polling" if is_network_fs(mount.fstype) else "native"
    assert choice.kind == expected
    assert mount.fstype in choice.reason


# -- ctime, known types, mounts below a root, probes ------------------------------------------------
@pytest.mark.parametrize(
    ("fstype", "trusted"),
    [
        ("ext4", True),
        ("nfs", True),
        ("nfs4", True),
        ("cifs", True),
        ("tmpfs", True),
        ("fuse.bindfs", True),
        ("fuse.sshfs", False),
        ("sshfs", False),
        ("fuse", False),
        ("fuse.someday", False),
        ("vboxsf", False),
    ],
)
def test_ctime_trusted(fstype: str, trusted: bool) -> None:
    assert ctime_trusted(fstype) is trusted


def test_known_local_types() -> None:
    assert is_known_local("ext4")
    assert is_known_local("tmpfs")
    assert is_known_local("fuse.lxcfs")
    assert not is_known_local("hostfs")
    assert not is_known_local("nfs")
    assert not is_known_local("fuse.newfs")


def test_unknown_type_is_probed(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_partitions(
        monkeypatch,
        [_Part("/dev/sda1", "/", "hostfs", "rw"), _Part("srv:/export", "/mnt", "nfs4", "rw")],
    )
    probed: list[Path] = []

    def silent(path: Path) -> bool:
        probed.append(path)
        return False

    root = Path("/home/u/app")
    assert choose_observer(root) == ObserverChoice("native", "hostfs: native events")
    assert choose_observer(root, probe=silent) == ObserverChoice(
        "polling", "hostfs: no native event arrived for a probe file: polling"
    )
    assert probed == [root]
    assert choose_observer(root, probe=lambda p: True).reason == "hostfs: native events (probed)"
    unprobed = choose_observer(root, probe=lambda p: None)
    assert unprobed == ObserverChoice(
        "polling", "hostfs: events could not be probed (not writable, or no watcher): polling"
    )
    # known types are never probed: network ones are polled whatever a local write shows
    assert choose_observer(Path("/mnt/app"), probe=silent).kind == "polling"
    assert probed == [root]


def test_polled_mounts_below_a_root(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_partitions(
        monkeypatch,
        [
            _Part("/dev/sda1", "/", "ext4", "rw"),
            _Part("/dev/sdb1", "/srv", "xfs", "rw"),
            _Part("srv:/a", "/srv/app/data", "nfs4", "rw"),
            _Part("tmpfs", "/srv/app/data/tmp", "tmpfs", "rw"),  # inside the polled one
            _Part("/x", "/srv/app/other", "fuse.sshfs", "rw"),
            _Part("tmpfs", "/srv/app/run", "tmpfs", "rw"),
            _Part("none", "/srv/app/host", "hostfs", "rw"),
            _Part("none", "/srv/app/host2", "hostfs", "rw"),
            _Part("srv:/b", "/srv/application", "nfs", "rw"),  # a sibling, not below
            _Part("proc", "/srv/app/proc", "proc", "rw"),  # pseudo filesystems: never probed
            _Part("systemd-1", "/srv/app/auto", "autofs", "rw"),
        ],
    )
    below = [m.mountpoint for m in mounts_below(Path("/srv/app"))]
    assert below == [
        Path("/srv/app/data"),
        Path("/srv/app/other"),
        Path("/srv/app/run"),
        Path("/srv/app/host"),
        Path("/srv/app/host2"),
        Path("/srv/app/proc"),
        Path("/srv/app/auto"),
        Path("/srv/app/data/tmp"),
    ]
    answers = {Path("/srv/app/host"): False, Path("/srv/app/host2"): True}
    polled = polled_mounts(Path("/srv/app"), lambda p: answers[p])
    assert [(str(m.mountpoint), reason) for m, reason in polled] == [
        ("/srv/app/data", "nfs4 mount /srv/app/data: polling"),
        ("/srv/app/other", "fuse.sshfs mount /srv/app/other: polling"),
        (
            "/srv/app/host",
            "hostfs mount /srv/app/host: no native event arrived for a probe file: polling",
        ),
    ]
    # without a probe, an unknown type keeps the root's native events (as before probes existed)
    assert [str(m.mountpoint) for m, _ in polled_mounts(Path("/srv/app"))] == [
        "/srv/app/data",
        "/srv/app/other",
    ]


def test_real_probe_sees_local_events(tmp_path: Path) -> None:
    from cachewatchd.watch.probe import events_arrive

    assert events_arrive(tmp_path, timeout=10) is True
    assert list(tmp_path.iterdir()) == []
    tmp_path.chmod(0o500)
    try:
        if os.access(tmp_path, os.W_OK):  # root writes anyway
            return
        assert events_arrive(tmp_path, timeout=10) is None
    finally:
        tmp_path.chmod(0o700)
