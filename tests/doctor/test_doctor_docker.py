"""``doctor`` names the Docker containers that bind-mount code under the roots and were started
before the newest change to it (a fake dockerd on a real unix socket; the real one in
tests/e2e/test_docker_targets.py)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachewatchd.config.settings import RootPlan
from cachewatchd.doctor.docker_checks import check_containers
from cachewatchd.doctor.report import DoctorOptions, run_doctor
from tests.support.fake_docker import FakeContainer, FakeDocker, fake_docker

OLD = "2020-01-01T00:00:00Z"


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeDocker]:
    with fake_docker(tmp_path) as server:
        yield server


@pytest.fixture
def root(tmp_path: Path) -> Path:
    src = tmp_path / "proj" / "backend"
    src.mkdir(parents=True)
    (src / "app.py").write_text("X = 1\n", encoding="utf-8")
    return tmp_path / "proj"


def _env(fake: FakeDocker) -> dict[str, str]:
    return {"DOCKER_HOST": f"unix://{fake.socket}"}


def test_a_container_started_before_its_sources_changed_is_named(
    fake: FakeDocker, root: Path, tmp_path: Path
) -> None:
    fake.add(
        FakeContainer("a" * 64, "backend", started_at=OLD, binds=[(str(root / "backend"), "/app")])
    )
    fake.add(FakeContainer("b" * 64, "fresh", binds=[(str(root / "backend"), "/app")]))
    fake.add(FakeContainer("c" * 64, "other", binds=[(str(tmp_path), "/x")]))
    fake.add(FakeContainer("d" * 64, "db", started_at=OLD))  # mounts no code at all
    findings = {f.id: f for f in check_containers([RootPlan(root, "auto", "default")], _env(fake))}
    stale = findings["stale-containers"]
    assert stale.severity == "warning"
    assert stale.message.startswith("1 Docker container started before the newest change")
    (detail,) = stale.details
    assert detail.startswith("container backend (aaaaaaaaaaaa) started 2020-01-01T00:00:00+00:00")
    assert str(root / "backend" / "app.py") in detail
    assert stale.action.startswith("docker restart backend;")
    mounting = findings["containers"]
    assert mounting.severity == "info"
    # "other" mounts a directory above the root: the root's code is in it too
    assert mounting.details == (
        "backend (aaaaaaaaaaaa)",
        "fresh (bbbbbbbbbbbb)",
        "other (cccccccccccc)",
    )


def test_the_doctor_report_needs_action_for_a_stale_container(fake: FakeDocker, root: Path) -> None:
    fake.add(FakeContainer("a" * 64, "backend", started_at=OLD, binds=[(str(root), "/app")]))
    report = run_doctor([root], DoctorOptions(environ=_env(fake), probe_timeout=0.5))
    assert "stale-containers" in {f.id for f in report.findings}
    assert report.needs_action


def test_no_docker_socket_says_nothing_and_a_dead_one_says_why(tmp_path: Path, root: Path) -> None:
    plans = [RootPlan(root, "auto", "default")]
    assert check_containers(plans, {"DOCKER_HOST": f"unix://{tmp_path}/none.sock"}) == []
    dead = tmp_path / "dead.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(dead))
    sock.close()
    (finding,) = check_containers(plans, {"DOCKER_HOST": f"unix://{dead}"})
    assert (finding.id, finding.severity) == ("containers", "info")
    assert "connection refused" in finding.message
