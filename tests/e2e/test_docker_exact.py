"""The exact check of the pycs a container writes in its bind mount, run by the container's Python.

The image's Python is the one running these tests; the daemon and ``scan`` run here under another
CPython version and with no interpreter of the image's version to be found on this host (``PATH``
holds only ``docker``, no pyenv or uv Pythons). A same-size edit with its mtime restored leaves
the container's pyc with the old code under a header that matches: judged by its header alone it
is ``suspect``; checked in the container (``docker exec``) it is ``stale``, and the daemon removes
it, while the pyc of an unchanged module stays.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import REPO, DaemonProc
from tests.support.docker_app import wait_answer, write_unix_app
from tests.support.dockerd import Dockerd
from tests.support.e2e import E2E, toml_config
from tests.support.servers import Reaper

OTHER_PYTHONS = "CACHEWATCHD_TEST_OTHER_PYTHONS"
"""Interpreters (``os.pathsep``-separated) of another version that can run cachewatchd; else the
checkout's ``.venv*/bin/python`` (CI makes one per version)."""
_PROBE = (
    "import sys, cachewatchd, watchdog, psutil, platformdirs, structlog; print(sys.version_info[1])"
)


_WRITE_OLD_CODE = """\
import importlib.util, marshal, os, struct, sys
st = os.stat("/app/late.py")
header = struct.pack("<III", 0, int(st.st_mtime) & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF)
body = marshal.dumps(compile("VALUE = 'old'\\n", "/app/late.py", "exec"))
with open("/app/__pycache__/late.tmp", "wb") as f:
    f.write(importlib.util.MAGIC_NUMBER + header + body)
os.replace("/app/__pycache__/late.tmp", importlib.util.cache_from_source("/app/late.py"))
"""
"""In the container: the pyc of ``late.py`` with ``VALUE = 'old'`` under the header of its source
(``VALUE = 'new'``, the same size)."""


def _other_python() -> str | None:
    """A CPython 3.x of another minor version than this one that imports cachewatchd's deps."""
    named = [p for p in os.environ.get(OTHER_PYTHONS, "").split(os.pathsep) if p]
    for exe in [*named, *sorted(str(p) for p in REPO.glob(".venv*/bin/python"))]:
        try:
            proc = subprocess.run(
                [exe, "-c", _PROBE],
                env={**os.environ, "PYTHONPATH": str(REPO)},
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if proc.returncode == 0 and proc.stdout.strip() not in ("", str(sys.version_info[1])):
            return exe
    return None


@pytest.fixture
def e2e(tmp_path: Path, reaper: Reaper) -> E2E:
    return E2E(tmp_path, reaper)


@pytest.fixture
def other_python() -> str:
    exe = _other_python()
    if exe is None:
        pytest.skip(
            f"needs a venv of another CPython version than {sys.version_info[0]}."
            f"{sys.version_info[1]} with cachewatchd's deps ({OTHER_PYTHONS} or .venv*/bin/python)"
        )
    return exe


def _host_env(e2e: E2E, dockerd: Dockerd, *, docker: bool = True) -> dict[str, str]:
    """No CPython of the image's version on this host's side: ``PATH`` holds only ``docker``."""
    bin_dir = e2e.tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    found = next(
        (
            p
            for d in [*os.defpath.split(":"), "/usr/local/bin"]
            if os.path.isfile(p := f"{d}/docker")
        ),
        None,
    )
    if docker and found is not None and not (bin_dir / "docker").exists():
        (bin_dir / "docker").symlink_to(found)
    empty = e2e.tmp / "no-pythons"
    empty.mkdir(exist_ok=True)
    env = {k: v for k, v in e2e.env.items() if k != "CACHEWATCHD_PYTHONS"}
    env.update(
        PATH=str(bin_dir),
        PYENV_ROOT=str(empty),
        UV_PYTHON_INSTALL_DIR=str(empty),
        DOCKER_HOST=dockerd.host,
        DOCKER_CONFIG=dockerd.env()["DOCKER_CONFIG"],
    )
    return env


def _needs_no_host_python(env: dict[str, str], pyc: Path) -> None:
    """Skip when this host still finds a CPython of *pyc*'s version: a venv beside a directory
    above the test's temporary directory (``/tmp/*/pyvenv.cfg``); run with ``--basetemp``
    elsewhere."""
    from cachewatchd.cache.interpreters import Finder

    found = Finder(env).find(pyc.read_bytes()[:4], str(pyc))
    if found is not None:
        pytest.skip(
            f"this host has {found.exe} near {pyc} (a venv's home): use --basetemp elsewhere"
        )


def _states(python: str, env: dict[str, str], root: Path) -> tuple[dict[str, str], list[str]]:
    proc = subprocess.run(
        [python, "-m", "cachewatchd", "scan", "--json", "--jobs", "1", str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    report = json.loads(proc.stdout)
    states = {Path(e["path"]).name: e["state"] for e in report["entries"]}
    return states, report.get("notes", [])


def test_a_container_pyc_of_a_version_this_host_lacks_is_checked_in_the_container(
    e2e: E2E, dockerd: Dockerd, other_python: str
) -> None:
    src = e2e.proj / "src"
    answer = write_unix_app(src, "one")
    (src / "fresh.py").write_text("VALUE = 'fresh'\n", encoding="utf-8")
    (src / "fresh2.py").write_text("VALUE = 'fresh'\n", encoding="utf-8")
    (src / "late.py").write_text("VALUE = 'new'\n", encoding="utf-8")
    cid = dockerd.run_container("backend", src, ["python", "/app/serve.py"])
    wait_answer(src / "app.sock", "one", timeout=60)
    dockerd.exec(cid, "python", "-c", "import sys; sys.path.insert(0, '/app'); import fresh")
    tag = sys.implementation.cache_tag
    stale_pyc, fresh_pyc = (src / "__pycache__" / f"{m}.{tag}.pyc" for m in ("answer", "fresh"))
    assert stale_pyc.is_file()
    assert fresh_pyc.is_file()
    before = answer.stat()  # the same size and mtime: the container's pyc's header still matches
    answer.write_text("VALUE = 'two'\n", encoding="utf-8")
    os.utime(answer, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert answer.stat().st_size == before.st_size

    env = _host_env(e2e, dockerd)
    _needs_no_host_python(env, stale_pyc)
    states, notes = _states(other_python, env, src)  # no container known to scan
    assert states[stale_pyc.name] == "suspect"
    assert fresh_pyc.name not in states  # fresh: not listed
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert any(
        f"CPython {version}'s cache entries were judged by their headers" in n for n in notes
    )
    # the daemon's audit at start runs before its targets are known: it would remove this one
    # (a suspect, at start) and restart the container, while the test runs commands there
    stale_pyc.unlink()

    table = {
        "name": "backend",
        "grace": 5,
        "docker": {"container": "backend", "host": dockerd.host},
    }
    config = toml_config(e2e.tmp / "config.toml", [table])
    daemon = DaemonProc(["--config", str(config), str(e2e.proj)], env, python=other_python)
    with daemon:
        try:
            daemon.ready(timeout=60)
            # pycs the container writes while the daemon runs are checked when they appear: a
            # fresh one, then the old code under the header of its edited source (what an import
            # racing an edit writes)
            fresh2_pyc, late_pyc = (
                src / "__pycache__" / f"{m}.{tag}.pyc" for m in ("fresh2", "late")
            )
            dockerd.exec(
                cid, "python", "-c", "import sys; sys.path.insert(0, '/app'); import fresh2"
            )
            dockerd.exec(cid, "python", "-c", _WRITE_OLD_CODE)
            removed = daemon.wait_event(
                "invalidated", lambda e: e["removed"] == [str(late_pyc)], timeout=30
            )
            assert not late_pyc.exists()
            assert fresh_pyc.is_file()
            assert fresh2_pyc.is_file()
        finally:
            daemon.stop()
    assert (
        removed["reason"] == "written with other code than its source's (checked when it appeared)"
    )
    assert len(daemon.events("invalidated")) == 1
    assert "Traceback" not in daemon.stderr(), daemon.stderr()
