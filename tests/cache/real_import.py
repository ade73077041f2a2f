"""Ask a real interpreter what it runs: ``<python> -B -v -c "import m; print(m.X)"`` in a tree.

``-v`` says where the module's code came from: a pyc CPython accepted (``# <pyc> matches <source>``,
then ``# code object from '<pyc>'``; 2.7: ``import m # precompiled from <pyc>``) or its source,
compiled because the pyc was refused (``# code object from <source>``; 2.7: ``import m # from
<source>``), and why it was refused (``bad magic number``, ``bytecode is stale``, ``has bad
mtime``). ``-B`` writes nothing, so the tree stays as the test built it.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.conftest import child_env
from tests.support.wait import find_interpreters

__all__ = ["Imported", "import_v", "interpreter", "python27"]

_LOADED = re.compile(r"^(?:# code object from |import \S+ # (?:precompiled )?from )'?([^']+)'?$")


class Imported(NamedTuple):
    value: str
    """What ``print(m.X)`` printed ("" when the import failed)."""
    loaded: Path | None
    """The file the module's code came from: a pyc, or the source; ``None``: not imported."""
    log: str
    """The lines of ``-v`` about the module's files, and the error of a failed import."""


def import_v(exe: str, cwd: Path, *flags: str, module: str = "m", **env: str) -> Imported:
    """Import *module* with the interpreter *exe* (``-B -v`` and *flags*) in *cwd*."""
    proc = subprocess.run(
        [exe, "-B", "-v", *flags, "-c", f"import {module}; print({module}.X)"],
        cwd=cwd,
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    mentions = re.compile(rf"(^|[/' ]){re.escape(module)}(\.|'|$)")
    loaded = None
    lines = []
    for line in proc.stderr.splitlines():
        match = _LOADED.match(line.strip())
        if match is not None and os.path.basename(match[1]).startswith(f"{module}."):
            loaded = Path(match[1])
        if mentions.search(line) or "Error" in line:
            lines.append(line)
    if loaded is not None and not loaded.is_absolute():  # 2.7: "from m.py" in the current directory
        loaded = cwd / loaded
    return Imported(proc.stdout.strip(), loaded, "\n".join(lines))


def interpreter(version: str) -> str:
    """The executable of CPython *version* ("3.12"); the test is skipped when it is absent."""
    exe = python27() if version == "2.7" else find_interpreters().get(version)
    if exe is None:
        pytest.skip(f"CPython {version} is not installed here: the claim needs it to be proven")
    return exe


@functools.cache
def python27() -> str | None:
    """An executable of CPython 2.7 (pyenv's, or ``python2.7`` on PATH), or ``None``."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = (
        sorted(str(p / "bin" / "python") for p in root.glob("2.7*")) if root.is_dir() else []
    )
    candidates += [exe for exe in (shutil.which("python2.7"),) if exe]
    for exe in candidates:
        try:
            out = subprocess.run(
                [exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        if out == "2.7":
            return exe
    return None
