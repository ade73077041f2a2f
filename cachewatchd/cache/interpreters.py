"""The CPython that reads a pyc of another version than the running one, found on this machine.

The exact check of a pyc (unmarshal its body, compare it with a compile of its source) must run in
the interpreter that reads it: a 3.12 pyc cannot be unmarshalled by 3.11, nor its source compiled
to 3.12's bytecode. :class:`Finder` looks for a CPython whose magic number is the pyc's, in this
order, and asks each candidate its magic number (``importlib.util.MAGIC_NUMBER``, or
``imp.get_magic()`` on 2.7) before trusting it:

1. the executables named in ``CACHEWATCHD_PYTHONS`` (separated by ``os.pathsep``);
2. ``pythonX.Y`` on ``PATH`` (not pyenv's shims: slow, and what they run is searched next; not a
   relative entry such as ``.``);
3. pyenv's: ``$PYENV_ROOT/versions/X.Y.*/bin/pythonX.Y`` (``~/.pyenv`` by default);
4. uv's managed Pythons: ``cpython-X.Y.*/bin/pythonX.Y`` under ``$UV_PYTHON_INSTALL_DIR`` (by
   default ``$XDG_DATA_HOME/uv/python``, ``~/.local/share/uv/python``);
5. the ``home`` of a virtual environment's ``pyvenv.cfg`` in a directory above the pyc, or in a
   directory beside one of those (a project's ``.venv``): ``<home>/pythonX.Y``. The tree being
   judged may have written that file, so such an interpreter is run only if it lies outside every
   directory above the pyc and no other user can change it (:func:`runnable`); name any other in
   ``CACHEWATCHD_PYTHONS``;
6. an interpreter reached through a command that sees the pyc (:mod:`~cachewatchd.cache.remote_pythons`:
   the Python of a container whose bind mount holds it, run by ``docker exec``).

What is found (or not) is remembered for the life of the finder: one audit, scan or daemon.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from cachewatchd.cache.pyc import version_of_magic
from cachewatchd.cache.remote_pythons import Command, commands_for
from cachewatchd.paths import read_regular

__all__ = ["ENV_VAR", "Finder", "Interpreter", "runnable", "why_missing"]

ENV_VAR = "CACHEWATCHD_PYTHONS"
"""Executables to try first, separated by ``os.pathsep``."""
_ASK_TIMEOUT = 10.0
_MAX_CHILDREN = 2000
"""Entries of one directory looked at for a ``*/pyvenv.cfg`` (a huge home directory is cut short)."""
_ASK = """\
import sys, binascii
try:
    import importlib.util
    magic = importlib.util.MAGIC_NUMBER
except (ImportError, AttributeError):
    import imp
    magic = imp.get_magic()
impl = getattr(sys, "implementation", None)
name = impl.name if impl is not None else sys.subversion[0].lower()
sys.stdout.write("%s %s\\n" % (binascii.hexlify(magic).decode("ascii"), name))
"""
"""What a candidate is asked: its magic number and implementation (Python 2.7 and 3 syntax)."""


class Interpreter(NamedTuple):
    """A CPython found here, with the magic number it said it reads."""

    exe: str
    version: tuple[int, int]
    magic: bytes
    via: Command | None = None
    """Run by this command instead of :attr:`exe` (which then only names it); paths mapped."""


class Finder:
    """Finds, asks and remembers interpreters (see the module's docstring). Thread-safe."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._env = dict(os.environ if environ is None else environ)
        self._lock = threading.Lock()
        self._asked: dict[str, bytes | None] = {}
        """Executable -> the magic it said it reads (``None``: not a CPython that answered)."""
        self._found: dict[bytes, Interpreter | None] = {}
        """Magic -> the interpreter found in the usual places (``None``: none there)."""
        self._homes: dict[str, list[str]] = {}
        """Directory -> the ``home`` of each ``pyvenv.cfg`` in it or in its subdirectories."""
        self.missing: dict[tuple[int, int], str] = {}
        """Versions looked for and not found -> what was looked at (for a report)."""

    def find(self, magic: bytes, near: str | None = None) -> Interpreter | None:
        """A CPython that reads pycs of *magic*: from the usual places, else from the homes of the
        venvs in or beside the directories above *near* (a pyc's path); ``None`` when none is
        found (the version is then in :attr:`missing`)."""
        version = version_of_magic(magic)
        if version is None or version < (2, 7) or (3, 0) <= version < (3, 3):
            return None
        with self._lock:
            if magic not in self._found:
                self._found[magic] = self._first(magic, version, self._usual(version))
            found = self._found[magic]
            if found is None and near is not None:
                found = self._first(magic, version, self._venv_homes(version, near))
            whys: list[str] = []
            if found is None and near is not None:
                found = self._command(magic, version, near, whys)
            if found is None:
                self.missing[version] = "; ".join([why_missing(version), *whys])
            return found

    def _command(
        self, magic: bytes, version: tuple[int, int], near: str, whys: list[str]
    ) -> Interpreter | None:
        """The interpreter of a command that sees *near* and reads *magic*; why each other
        one does not go to *whys*."""
        for command in commands_for(near):
            if not command.argv:
                whys.append(f"{command.name}: {command.why}")
                continue
            key = "\0".join(command.argv)
            if key not in self._asked:
                self._asked[key] = _ask(command.argv)
            said = self._asked[key]
            if said == magic:
                return Interpreter(" ".join(command.argv), version, magic, command)
            other = None if said is None else version_of_magic(said)
            whys.append(
                f"{command.name}: {command.argv[-1]} "
                + ("did not answer" if other is None else f"is CPython {other[0]}.{other[1]}")
            )
        return None

    def _first(
        self, magic: bytes, version: tuple[int, int], candidates: Iterator[str]
    ) -> Interpreter | None:
        for exe in candidates:
            if exe not in self._asked:
                self._asked[exe] = _ask([exe])
            if self._asked[exe] == magic:
                return Interpreter(exe, version, magic)
        return None

    def _usual(self, version: tuple[int, int]) -> Iterator[str]:
        name = f"python{version[0]}.{version[1]}"
        yield from (p for p in self._env.get(ENV_VAR, "").split(os.pathsep) if p)
        home = Path(self._env.get("HOME") or Path.home())
        pyenv = Path(self._env.get("PYENV_ROOT") or home / ".pyenv")
        on_path = shutil.which(name, path=self._env.get("PATH", os.defpath))
        # not pyenv's shims (slow, and what they run is in versions/), nor a relative PATH entry
        # (the current directory may be the tree being judged)
        if on_path and os.path.isabs(on_path) and Path(on_path).parent != pyenv / "shims":
            yield on_path
        yield from _installs(pyenv / "versions", f"{version[0]}.{version[1]}.", name)
        data = Path(self._env.get("XDG_DATA_HOME") or home / ".local" / "share")
        uv = Path(self._env.get("UV_PYTHON_INSTALL_DIR") or data / "uv" / "python")
        yield from _installs(uv, f"cpython-{version[0]}.{version[1]}.", name)

    def _venv_homes(self, version: tuple[int, int], near: str) -> Iterator[str]:
        """The ``pythonX.Y`` of each venv home in or beside the directories above *near*, when
        it may be run (:func:`runnable`: the tree being judged could have written the
        ``pyvenv.cfg``)."""
        name = f"python{version[0]}.{version[1]}"
        directory = os.path.dirname(os.path.abspath(near))
        above = []
        while True:
            above.append(directory)
            if directory not in self._homes:
                self._homes[directory] = _homes_in(directory)
            for home in self._homes[directory]:
                exe = os.path.join(home, name)
                if runnable(exe, above):
                    yield exe
            parent = os.path.dirname(directory)
            if parent == directory:
                return
            directory = parent


def runnable(exe: str, untrusted: list[str]) -> bool:
    """Whether *exe*, named by a ``pyvenv.cfg`` that a cloned repository could have written, may be
    run: an absolute path whose real file lies in none of the *untrusted* directories (those above
    the pyc: the tree being judged is among them; ``/`` excepted), a regular file owned by root or
    by this user, which neither it nor its directory lets another user change."""
    if not os.path.isabs(exe):
        return False
    real = os.path.realpath(exe)
    for directory in untrusted:
        top = os.path.realpath(directory)
        if top != os.sep and (real == top or real.startswith(top.rstrip(os.sep) + os.sep)):
            return False
    for path in (real, os.path.dirname(real), os.path.dirname(exe)):
        try:
            st = os.stat(path)
        except OSError:
            return False
        if st.st_uid not in (0, os.getuid()) or st.st_mode & 0o022:
            return False
    return os.path.isfile(real)


def why_missing(version: tuple[int, int]) -> str:
    """The sentence a verdict carries when no interpreter of *version* was found."""
    name = f"python{version[0]}.{version[1]}"
    return (
        f"no CPython {version[0]}.{version[1]} found to check it ({name} on PATH, pyenv, uv's "
        f"Pythons, the venvs' homes; {ENV_VAR} names others)"
    )


def _installs(root: Path, prefix: str, name: str) -> Iterator[str]:
    """``<root>/<prefix>*/bin/<name>``, the newest patch release first."""
    try:
        dirs = [e.name for e in os.scandir(root) if e.name.startswith(prefix)]
    except OSError:
        return
    dirs.sort(key=_patch_order, reverse=True)
    for d in dirs:
        exe = root / d / "bin" / name
        if os.access(exe, os.X_OK):
            yield str(exe)


def _patch_order(name: str) -> tuple[int, ...]:
    digits = name.rsplit("-", 1)[-1] if name.startswith("cpython-") else name
    parts = digits.replace("-", ".").split(".")
    return tuple(int(p) if p.isdigit() else -1 for p in parts[2:3] or ["-1"])


def _homes_in(directory: str) -> list[str]:
    """The ``home`` of ``<directory>/pyvenv.cfg`` and of ``<directory>/*/pyvenv.cfg``."""
    configs = [os.path.join(directory, "pyvenv.cfg")]
    try:
        with os.scandir(directory) as it:
            for i, entry in enumerate(it):
                if i >= _MAX_CHILDREN:
                    break
                if entry.is_dir(follow_symlinks=False):
                    configs.append(os.path.join(entry.path, "pyvenv.cfg"))
    except OSError:
        pass
    homes = []
    for config in configs:
        home = _home_of(config)
        if home is not None and home not in homes:
            homes.append(home)
    return homes


def _home_of(config: str) -> str | None:
    try:
        text = read_regular(config, 1 << 16).decode("utf-8", "replace")
    except OSError:  # absent, not a regular file (a FIFO never blocks here), too big
        return None
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip().lower() == "home" and value.strip():
            return value.strip()
    return None


def _ask(command: Sequence[str]) -> bytes | None:
    """The magic number the interpreter *command* runs reads, if it is a CPython that answers
    within the timeout."""
    try:
        proc = subprocess.run(
            [*command, "-E", "-s", "-S", "-c", _ASK],
            capture_output=True,
            timeout=_ASK_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    words = proc.stdout.split()
    if proc.returncode != 0 or len(words) != 2 or words[1] != b"cpython":
        return None
    try:
        return bytes.fromhex(words[0].decode("ascii"))
    except ValueError:
        return None
