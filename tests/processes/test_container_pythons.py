"""How the exact check reaches a container's Python: ``docker exec -i`` for the pycs under its bind
mounts, with the paths it sees; or why not (no ``docker`` command, the container not running)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cachewatchd.processes.container_pythons import FALLBACK_PYTHON, exec_commands
from cachewatchd.processes.docker_model import Container, Mount


def _container(src: Path, state: str = "running") -> Container:
    mounts = (Mount("bind", str(src), "/app"), Mount("volume", "/var/lib/docker/v", "/data"))
    return Container("c0ffee" * 8, "backend", state, mounts=mounts)


@pytest.fixture
def docker_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text("#!/bin/sh\nexit 1\n")
    docker.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    return docker


def test_a_pyc_under_a_bind_mount_is_checked_by_docker_exec(
    tmp_path: Path, docker_on_path: Path
) -> None:
    src = tmp_path / "src"
    pyc = src / "pkg" / "__pycache__" / "m.cpython-399.pyc"
    container = _container(src)
    (command,) = exec_commands([container], str(pyc), "unix:///d.sock", lambda c: "/venv/bin/py")
    assert command.argv == (
        str(docker_on_path), "-H", "unix:///d.sock", "exec", "-i", container.id, "/venv/bin/py"
    )  # fmt: skip
    assert command.path(str(pyc)) == "/app/pkg/__pycache__/m.cpython-399.pyc"
    assert command.name == f"container backend ({container.id[:12]})"
    (fallback,) = exec_commands([container], str(pyc), None, lambda c: None)
    assert fallback.argv[-4:] == ("exec", "-i", container.id, FALLBACK_PYTHON)
    assert exec_commands([container], str(tmp_path / "elsewhere" / "m.pyc"), None, str) == []


def test_without_docker_or_a_running_container_it_says_why(
    tmp_path: Path, docker_on_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    pyc = str(src / "__pycache__" / "m.cpython-399.pyc")
    (stopped,) = exec_commands([_container(src, "exited")], pyc, None, lambda c: "python")
    assert stopped.argv == ()
    assert stopped.why == "is exited: its Python cannot check them"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    (missing,) = exec_commands([_container(src)], pyc, None, lambda c: "python")
    assert missing.argv == ()
    assert missing.why == "no docker command on PATH to run its Python"
    assert os.path.realpath(src) == missing.host
