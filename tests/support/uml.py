"""A user-mode-linux guest serving and mounting NFS on its own loopback, for real NFS tests.

This machine's kernel may have no NFS client, but Debian's ``user-mode-linux`` runs a Linux kernel as
an ordinary process, with the sunrpc, nfs and nfsd modules (``/usr/lib/uml/modules``). The guest's
root is this machine's ``/`` (hostfs), so it runs the project's own venv; its PID 1 is a shell script
that loads the modules, mounts ``nfsd`` and ``rpc_pipefs``, and then runs the commands that the host
drops into a queue directory, one at a time, writing their output and exit code beside them. Every
write the guest makes to a host path goes through hostfs, so ``/run`` and ``/var/lib/nfs`` are tmpfs
inside the guest; the NFS traffic stays on the guest's own loopback.

:class:`Guest` boots, runs commands (:meth:`Guest.run`), and powers off (KILLed by pid if it must).
:func:`unavailable` says why the guest cannot run here, or None.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.support.servers import Reaper
from tests.support.wait import wait_until

__all__ = ["Guest", "booted", "unavailable"]

UML = "linux.uml"
MODULES = Path("/usr/lib/uml/modules")
NFS_MODULES = ("kernel/fs/nfs/nfsv3.ko", "kernel/fs/nfs/nfsv4.ko", "kernel/fs/nfsd/nfsd.ko")
TOOLS = {
    "busybox": "busybox-static",
    "rpcbind": "rpcbind",
    "exportfs": "nfs-kernel-server",
    "rpc.nfsd": "nfs-kernel-server",
    "rpc.mountd": "nfs-kernel-server",
    "mount.nfs": "nfs-common",
    "mkfs.ext4": "e2fsprogs",
}


def _which(tool: str) -> str | None:
    path = "/usr/sbin:/usr/bin:/sbin:/bin"
    return shutil.which(tool, path=f"{os.environ.get('PATH', '')}:{path}")


def _module_dir() -> Path | None:
    found = sorted(MODULES.glob("*/modules.dep")) if MODULES.is_dir() else []
    return found[-1].parent if found else None


def unavailable() -> str | None:
    """Why no NFS guest can run here (with the package to install), or None."""
    if _which(UML) is None:
        return "user-mode-linux is not installed (apt-get install user-mode-linux)"
    if _module_dir() is None:
        return f"no user-mode-linux modules under {MODULES}"
    for tool, package in TOOLS.items():
        if _which(tool) is None:
            return f"{tool} is not installed (apt-get install {package})"
    if not os.access("/dev/shm", os.W_OK):
        return "/dev/shm is not writable: user-mode-linux keeps its memory there"
    return None


def _load_order(moddir: Path) -> list[Path]:
    """The NFS client and server modules with their dependencies, dependencies first."""
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        name, _, needs = line.partition(":")
        deps[name] = needs.split()
    order: list[str] = []

    def add(module: str) -> None:
        if module in order:
            return
        for need in deps.get(module, []):
            add(need)
        order.append(module)

    for module in NFS_MODULES:
        add(module)
    return [moddir / m for m in order]


def _init_script(queue: Path, moddir: Path) -> str:
    bb = _which("busybox")
    modules = " ".join(str(m) for m in _load_order(moddir))
    return f"""#!/bin/sh
# PID 1 of the guest: modules, NFS filesystems, then the command queue.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
BB={bb}
$BB mount -t proc proc /proc
$BB mount -t sysfs sys /sys
$BB mount -t devtmpfs dev /dev 2>/dev/null
$BB mount -t tmpfs run /run
$BB mkdir -p /run/rpcbind /run/sendsigs.omit.d
$BB mount -t tmpfs nfsstate /var/lib/nfs
$BB mkdir -p /var/lib/nfs/rpc_pipefs /var/lib/nfs/v4recovery
$BB touch /var/lib/nfs/etab /var/lib/nfs/rmtab /var/lib/nfs/xtab
$BB ifconfig lo 127.0.0.1 up
for m in {modules}; do $BB insmod "$m" || echo "insmod $m failed"; done
$BB mount -t nfsd nfsd /proc/fs/nfsd
$BB mount -t rpc_pipefs rpc_pipefs /var/lib/nfs/rpc_pipefs
echo up > {queue}/booted
while :; do
  for f in {queue}/*.cmd; do
    [ -e "$f" ] || continue
    n="${{f%.cmd}}"
    $BB mv "$f" "$n.run"
    sh "$n.run" > "$n.out" 2>&1 < /dev/null
    echo $? > "$n.rc.tmp"
    $BB mv "$n.rc.tmp" "$n.rc"
  done
  $BB usleep 20000
done
"""


class Guest:
    """One booted guest: :meth:`run` a shell command in it, :meth:`stop` it."""

    def __init__(self, base: Path, reaper: Reaper) -> None:
        self.base = base
        self.queue = base / "queue"
        self._reaper = reaper
        self._count = itertools.count()
        self.proc: subprocess.Popen[bytes] | None = None

    def boot(self, disk: Path, timeout: float = 60) -> None:
        moddir = _module_dir()
        assert moddir is not None
        self.queue.mkdir(parents=True)
        init = self.base / "init"
        init.write_text(_init_script(self.queue, moddir))
        init.chmod(0o755)
        console = (self.base / "console.log").open("wb")
        argv = [
            _which(UML) or UML,
            "mem=768M",
            f"ubd1={disk}",
            "rootfstype=hostfs",
            "rootflags=/",
            "rw",
            f"init={init}",
            "con=null",
            "con0=null,fd:1",
        ]
        with console:
            self.proc = self._reaper.popen(
                argv, stdout=console, stderr=subprocess.STDOUT, cwd=self.base
            )

        def up() -> bool:
            return (
                (self.queue / "booted").exists()
                or self.proc is None
                or self.proc.poll() is not None
            )

        wait_until(up, timeout, message="user-mode-linux guest booted")
        if not (self.queue / "booted").exists():
            raise RuntimeError(f"the guest did not boot:\n{self.console()}")

    def console(self) -> str:
        return (self.base / "console.log").read_text(errors="replace")[-4000:]

    def run(self, command: str, timeout: float = 60, *, check: bool = True) -> str:
        """Run *command* with the guest's ``sh``; its output (stdout and stderr)."""
        name = self.queue / f"{next(self._count):05d}"
        tmp = name.with_suffix(".tmp")
        tmp.write_text(command + "\n")
        tmp.rename(name.with_suffix(".cmd"))
        rc_file = name.with_suffix(".rc")

        def done() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"the guest died running {command!r}:\n{self.console()}")
            return rc_file.exists()

        wait_until(done, timeout, message=f"guest command {command!r}")
        out = name.with_suffix(".out").read_text(errors="replace")
        code = int(rc_file.read_text().strip() or "-1")
        if check and code != 0:
            raise AssertionError(f"guest command {command!r} exited {code}:\n{out}")
        return out

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        bb = _which("busybox")
        name = self.queue / "halt"
        name.with_suffix(".tmp").write_text(f"sync; {bb} poweroff -f\n")
        name.with_suffix(".tmp").rename(name.with_suffix(".cmd"))
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(20)


@contextlib.contextmanager
def booted(base: Path, disk_mb: int = 64) -> Iterator[Guest]:
    """A guest with an empty ext4 disk as its ``/dev/ubdb``; powered off (or KILLed) at the end."""
    base.mkdir(parents=True, exist_ok=True)
    disk = base / "disk.img"
    with disk.open("wb") as f:
        f.truncate(disk_mb << 20)
    subprocess.run([_which("mkfs.ext4") or "mkfs.ext4", "-q", "-F", str(disk)], check=True)
    with Reaper() as reaper:
        guest = Guest(base, reaper)
        try:
            guest.boot(disk)
            yield guest
        finally:
            guest.stop()
