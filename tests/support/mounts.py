"""Real FUSE mounts for tests: bindfs, and sshfs served by a private sshd on 127.0.0.1.

Each helper is a context manager yielding a :class:`Mounted` (the client side, where the mount is,
and the other side: the directory the mount shows) and skips the test with a clear reason when the
tool cannot run here (not installed, no ``/dev/fuse``, not allowed to mount). Every process is ours,
started in the foreground and stopped by its pid after the mount is undone; a mount left by a failing
test is detached lazily.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.support.servers import Reaper
from tests.support.wait import wait_until

__all__ = ["Mounted", "bindfs", "fstype_of", "sshfs"]


@dataclass(frozen=True)
class Mounted:
    client: Path
    """The mountpoint: the tree as this machine's programs see it through the mount."""
    other: Path
    """The same tree on the other side (the directory bindfs shows, the one sshd serves)."""
    fstype: str


_NO_FUSE_CACHE = "attr_timeout=0,entry_timeout=0,negative_timeout=0"
"""The kernel's FUSE attribute and entry caches off (1 s by default: a change made on the other side
shows that much later, README: "Docker, NFS, WSL"): what is measured is cachewatchd, not the caches."""


def fstype_of(path: Path) -> str | None:
    """The type /proc/self/mounts lists for the mountpoint *path*, or None."""
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 2 and fields[1] == str(path):
                return fields[2]
    return None


def _fusermount() -> str:
    exe = shutil.which("fusermount3") or shutil.which("fusermount")
    if exe is None:
        pytest.skip("fusermount is not installed (apt-get install fuse3): no FUSE mount")
    return exe


def _require_fuse(tool: str, package: str) -> str:
    exe = shutil.which(tool)
    if exe is None:
        pytest.skip(f"{tool} is not installed (apt-get install {package}): no {tool} mount")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        pytest.skip(f"/dev/fuse is missing or not usable here: no {tool} mount")
    return exe


@contextlib.contextmanager
def _mounted(argv: list[str], point: Path, what: str) -> Iterator[str]:
    """Run a FUSE filesystem in the foreground until the block ends; yield its type."""
    fusermount = _fusermount()
    with Reaper() as reaper:
        proc = reaper.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def up() -> bool:
            return fstype_of(point) is not None or proc.poll() is not None

        wait_until(up, 30, message=f"{what} mounted")
        fstype = fstype_of(point)
        if fstype is None:
            assert proc.stderr is not None
            pytest.skip(f"{what} could not mount here: {proc.stderr.read().decode().strip()}")
        try:
            yield fstype
        finally:
            done = subprocess.run([fusermount, "-u", str(point)], capture_output=True, check=False)
            if done.returncode != 0:  # busy: detach it now, it goes once unused
                subprocess.run([fusermount, "-uz", str(point)], capture_output=True, check=False)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            if proc.stderr is not None:
                proc.stderr.close()


@contextlib.contextmanager
def bindfs(other: Path, client: Path) -> Iterator[Mounted]:
    """``bindfs -f other client``."""
    exe = _require_fuse("bindfs", "bindfs")
    other.mkdir(parents=True)
    client.mkdir(parents=True)
    argv = [exe, "-f", "--no-allow-other", "-o", _NO_FUSE_CACHE, str(other), str(client)]
    with _mounted(argv, client, "bindfs") as t:
        yield Mounted(client, other, t)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def _sshd(home: Path) -> Iterator[tuple[int, Path]]:
    """A private sshd on 127.0.0.1 (own host key, one user key, own config); yields (port, key)."""
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    keygen = shutil.which("ssh-keygen")
    if not os.path.exists(sshd) or keygen is None:
        pytest.skip("sshd is not installed (apt-get install openssh-server): no sshfs mount")
    if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
        os.mkdir("/run/sshd", 0o755)  # sshd's privilege separation directory (the service makes it)
    home.mkdir(parents=True)
    for name in ("host_key", "user_key"):
        subprocess.run(
            [keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(home / name)], check=True
        )
    (home / "authorized_keys").write_bytes((home / "user_key.pub").read_bytes())
    (home / "authorized_keys").chmod(0o600)
    port = _free_port()
    config = home / "sshd_config"
    config.write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {home / 'host_key'}\n"
        f"AuthorizedKeysFile {home / 'authorized_keys'}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n"
        "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n"
    )
    with Reaper() as reaper:
        proc = reaper.popen(
            [sshd, "-D", "-e", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

        def listening() -> bool:
            if proc.poll() is not None:
                return True
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, 30, message="sshd listening")
        if proc.poll() is not None:
            assert proc.stderr is not None
            pytest.skip(f"sshd could not start here: {proc.stderr.read().decode().strip()}")
        try:
            yield port, home / "user_key"
        finally:
            if proc.stderr is not None:
                proc.stderr.close()


@contextlib.contextmanager
def sshfs(other: Path, client: Path, sshd_home: Path) -> Iterator[Mounted]:
    """``sshfs -f`` of *other*, served by a private sshd (files in *sshd_home*), at *client*.

    Attribute and directory caches are off (``cache=no``, FUSE timeouts 0): what is measured is
    cachewatchd, not sshfs's 20 s caches (README: "Docker, NFS, WSL").
    """
    exe = _require_fuse("sshfs", "sshfs")
    other.mkdir(parents=True)
    client.mkdir(parents=True)
    with _sshd(sshd_home) as (port, key):
        options = (
            f"IdentityFile={key},StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,"
            f"port={port},cache=no,{_NO_FUSE_CACHE},"
            "BatchMode=yes,LogLevel=ERROR"
        )
        user = pwd.getpwuid(os.getuid()).pw_name
        argv = [exe, "-f", "-o", options, f"{user}@127.0.0.1:{other}", str(client)]
        with _mounted(argv, client, "sshfs") as fstype:
            os.listdir(client)  # the SFTP session is up: sshd's session processes exist now
            wait_until(_session_up, 30, message="sshd's sftp session")
            yield Mounted(client, other, fstype)


def _session_up() -> bool:
    """An ``sshd: USER@internal-sftp`` process is among ours (the leak check must see it as the
    fixture's, not as the next test's)."""
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "internal-sftp" in " ".join(proc.cmdline()):
                return True
    return False
