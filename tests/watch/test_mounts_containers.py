"""The observer of a root seen from inside a container: ``/app`` as a container lists it.

A bind mount of a Linux host shows the host's filesystem type (ext4, xfs...): the host's edits go
through the same kernel and raise inotify events in the container (tests/e2e/test_inside_container.py
shows it with a real dockerd). Docker Desktop runs containers in a VM and shares the host's files
through a virtualized filesystem — ``virtiofs``, ``fuse.grpcfuse`` (gRPC FUSE), ``fuse.osxfs``, and
``fakeowner`` (the layer Docker Desktop 4.15+ shows for a bind mount on top of virtiofs) — whose
events from the host are missing or partial (no DELETE with virtiofs, none at all from Windows): those
are polled, whatever a probe file written from inside the container shows.
"""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path

import psutil
import pytest

from cachewatchd.watch.mounts import ObserverChoice, choose_observer, ctime_trusted

_Part = namedtuple("_Part", "device mountpoint fstype opts")

APP = Path("/app/backend")


def _container_mounts(monkeypatch: pytest.MonkeyPatch, device: str, fstype: str) -> None:
    """A container's mount table: overlay at /, the bind mount at /app."""
    parts = [
        _Part("overlay", "/", "overlay", "rw"),
        _Part("proc", "/proc", "proc", "rw"),
        _Part(device, "/app", fstype, "rw"),
        _Part("/dev/vda1", "/etc/hosts", "ext4", "rw"),
    ]

    def fake(all: bool = False) -> list[_Part]:
        return parts

    monkeypatch.setattr(psutil, "disk_partitions", fake)


def _own_write_seen(path: Path) -> bool:
    """A probe file written from inside the container raises an event there, whatever the mount."""
    return True


@pytest.mark.parametrize(
    ("device", "fstype"),
    [
        ("virtiofs0", "virtiofs"),  # Docker Desktop (VirtioFS file sharing)
        ("/run/host_mark/Users", "fakeowner"),  # Docker Desktop 4.15+: a bind mount over virtiofs
        ("grpcfuse", "fuse.grpcfuse"),  # Docker Desktop (gRPC FUSE file sharing)
        ("osxfs", "fuse.osxfs"),  # Docker for Mac before gRPC FUSE
        ("C:\\", "9p"),  # WSL 2 host drives
    ],
)
def test_docker_desktop_mounts_are_polled_inside_the_container(
    monkeypatch: pytest.MonkeyPatch, device: str, fstype: str
) -> None:
    _container_mounts(monkeypatch, device, fstype)
    assert choose_observer(APP, probe=_own_write_seen) == ObserverChoice(
        "polling", f"{fstype} mount /app: polling"
    )


def test_a_linux_bind_mount_gets_native_events_inside_the_container(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _container_mounts(monkeypatch, "/dev/sda1", "ext4")
    assert choose_observer(APP, probe=_own_write_seen) == ObserverChoice(
        "native", "ext4: native events"
    )


@pytest.mark.parametrize(
    ("fstype", "trusted"),
    [("virtiofs", True), ("fakeowner", True), ("fuse.grpcfuse", False), ("fuse.osxfs", False)],
)
def test_which_docker_desktop_mounts_keep_a_ctime(fstype: str, trusted: bool) -> None:
    """virtiofs passes the host's ctime through; on the FUSE shares the poller hashes content."""
    assert ctime_trusted(fstype) is trusted
