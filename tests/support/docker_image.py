"""The tests' container image, made of this machine's own files (no registry is reachable).

:func:`write_rootfs` writes a tar that ``docker import`` turns into an image holding:

* the CPython that runs the tests (its base interpreter, at the same absolute path, so that the
  compiled extensions of its venv load there too), its standard library without tests, GUI or
  ``ensurepip``, with the stdlib's own pycs, and ``python``/``python3`` in ``/usr/local/bin``;
* cachewatchd (the package of this checkout) and its run-time dependencies, copied from the running
  venv into that interpreter's ``site-packages``, and its ``cachewatchd`` console script in
  ``/usr/local/bin``, as ``pip install cachewatchd`` in an image would;
* ``/bin/sh`` (a static busybox and a few of its applets, or else dash), every shared library these
  need (found with ``ldd``), ``/etc/passwd``, ``/tmp``.

It is about 70 MB and is written in a few seconds; the session's dockerd imports it once.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement

import cachewatchd

__all__ = ["Rootfs", "write_rootfs"]

PYTHON = "/usr/local/bin/python"
"""The image's Python (a symlink to the interpreter at its host path)."""

_SKIP_STDLIB = {
    "test", "tests", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
    "site-packages", "dist-packages", "__phello__", "venv",
}  # fmt: skip
_SKIP_DYNLOAD = re.compile(r"^(_test|_xx|xx|_tkinter|_ctypes_test)")
_APPLETS = ("sh", "cat", "echo", "ls", "sleep", "kill", "ps", "rm", "mkdir", "touch", "true", "env")
_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
_GROUP = "root:x:0:\nnogroup:x:65534:\n"
_SCRIPT = """\
#!{python}
import sys

from cachewatchd.cli import run

sys.exit(run())
"""


@dataclass(frozen=True)
class Rootfs:
    tar: Path
    python: str
    """The interpreter's path in the image (and on this machine)."""
    site_packages: str
    version: str
    """``"3.11"``: the image's Python is the running one."""


def write_rootfs(tar_path: Path) -> Rootfs:
    """Write the image's root filesystem to *tar_path* (see the module docstring)."""
    base = Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
    stdlib = Path(sysconfig.get_path("stdlib"))
    dynload = Path(sysconfig.get_path("platstdlib")) / "lib-dynload"
    if not dynload.is_dir():
        dynload = stdlib / "lib-dynload"
    site_dir = _site_packages(base)
    with tarfile.open(tar_path, "w", format=tarfile.GNU_FORMAT) as tar:
        writer = _Writer(tar)
        for directory in ("tmp", "root", "app", "etc", "usr/local/bin", "bin"):
            writer.directory(directory, mode=0o1777 if directory == "tmp" else 0o755)
        writer.text("etc/passwd", _PASSWD)
        writer.text("etc/group", _GROUP)
        elves = [base, *writer.shell()]
        writer.file(base)
        for name in ("python", "python3"):
            writer.symlink(f"usr/local/bin/{name}", str(base))
        writer.text("usr/local/bin/cachewatchd", _SCRIPT.format(python=base), mode=0o755)
        for path in _stdlib_files(stdlib):
            writer.file(path)
        if dynload.is_dir() and not dynload.is_relative_to(stdlib):
            for path in _stdlib_files(dynload):
                writer.file(path)
        elves += sorted(p for p in dynload.glob("*.so") if not _SKIP_DYNLOAD.match(p.name))
        for source, arc in _site_files(site_dir):
            writer.file(source, arc)
            if source.suffix == ".so":
                elves.append(source)
        for library in _libraries(elves):
            writer.file(library)
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return Rootfs(tar=tar_path, python=str(base), site_packages=str(site_dir), version=version)


class _Writer:
    """Adds files to the tar under their absolute path, owned by root, parents first."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self._tar = tar
        self._seen: set[str] = set()

    def directory(self, arc: str, mode: int = 0o755) -> None:
        arc = arc.strip("/")
        if not arc or arc in self._seen:
            return
        self.directory(os.path.dirname(arc))
        self._seen.add(arc)
        info = tarfile.TarInfo(arc)
        info.type = tarfile.DIRTYPE
        info.mode = mode
        self._tar.addfile(info)

    def file(self, source: Path, arc: str | None = None) -> None:
        """*source*'s content (symlinks followed) at *arc* (default: its own path)."""
        arc = (arc or str(source)).strip("/")
        if arc in self._seen:
            return
        real = os.path.realpath(source)
        try:
            data = open(real, "rb")  # noqa: SIM115 (closed below; a dangling link is left out)
        except OSError:
            return
        with data:
            self.directory(os.path.dirname(arc))
            self._seen.add(arc)
            info = self._tar.gettarinfo(fileobj=data, arcname=arc)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            self._tar.addfile(info, data)

    def symlink(self, arc: str, target: str) -> None:
        self.directory(os.path.dirname(arc))
        self._seen.add(arc)
        info = tarfile.TarInfo(arc)
        info.type = tarfile.SYMTYPE
        info.linkname = target
        self._tar.addfile(info)

    def text(self, arc: str, content: str, mode: int = 0o644) -> None:
        data = content.encode()
        info = tarfile.TarInfo(arc)
        info.size = len(data)
        info.mode = mode
        self._tar.addfile(info, io.BytesIO(data))
        self._seen.add(arc)

    def shell(self) -> list[Path]:
        """``/bin/sh``: a static busybox with a few applets, else dash; the ELF files to ldd."""
        busybox = shutil.which("busybox")
        if busybox and _is_static(Path(busybox)):
            self.file(Path(busybox), "bin/busybox")
            for applet in _APPLETS:
                self.symlink(f"bin/{applet}", "busybox")
            return []
        dash = shutil.which("dash") or "/bin/sh"
        self.file(Path(dash), "bin/sh")
        return [Path(dash)]


def _site_packages(base: Path) -> Path:
    out = subprocess.run(
        [str(base), "-I", "-c", "import site; print(site.getsitepackages()[0])"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip()  # fmt: skip
    return Path(out)


def _stdlib_files(top: Path) -> Iterator[Path]:
    tag = sys.implementation.cache_tag
    for dirpath, dirnames, filenames in os.walk(top):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if d not in _SKIP_STDLIB and not d.startswith("config-")]
        for name in filenames:
            if here.name == "__pycache__":
                if name.endswith(f".{tag}.pyc"):
                    yield here / name
            elif not name.endswith((".exe", ".a")) and not _SKIP_DYNLOAD.match(name):
                yield here / name


def _site_files(site_dir: Path) -> Iterator[tuple[Path, str]]:
    """cachewatchd (this checkout's package, no caches) and its run-time distributions' files."""
    package = Path(cachewatchd.__file__).parent
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            yield path, str(site_dir / "cachewatchd" / path.relative_to(package))
    for dist in _runtime_distributions():
        for file in dist.files or ():
            if "__pycache__" in file.parts or file.parts[0] == "..":
                continue
            source = Path(str(dist.locate_file(file)))
            if source.is_file():
                yield source, str(site_dir / file)


def _runtime_distributions() -> list[importlib.metadata.Distribution]:
    """The distributions cachewatchd needs at run time on this Python (markers, no extras)."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = ["cachewatchd"]
    while todo:
        name = todo.pop()
        for line in importlib.metadata.requires(name) or ():
            requirement = Requirement(line)
            key = requirement.name.lower().replace("_", "-")
            if key in found:
                continue
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue
            found[key] = importlib.metadata.distribution(requirement.name)
            todo.append(requirement.name)
    return list(found.values())


def _is_static(exe: Path) -> bool:
    result = subprocess.run(["ldd", str(exe)], capture_output=True, text=True, timeout=30)
    return result.returncode != 0 or "not a dynamic executable" in result.stdout + result.stderr


def _libraries(elves: Iterable[Path]) -> list[Path]:
    """Every shared library (and the loader) *elves* load, at the path ldd resolves it to."""
    found: set[str] = set()
    paths = [str(p) for p in elves]
    for start in range(0, len(paths), 200):
        out = subprocess.run(
            ["ldd", *paths[start : start + 200]], capture_output=True, text=True, timeout=60
        ).stdout
        for line in out.splitlines():
            match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if match:
                found.add(match.group(1))
    return sorted(Path(p) for p in found)
