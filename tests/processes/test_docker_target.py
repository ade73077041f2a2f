"""The Docker target in the controller, against a fake dockerd on a real unix socket: which
changes concern a container (its bind mounts), once per batch, restart vs signal, the refusal of
a container mounted outside the roots, the import gate inside the container, stale containers."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil
import pytest
from structlog.testing import capture_logs

from cachewatchd.processes.controller import Controller
from cachewatchd.processes.spec import DockerSpec, ProcessSpec
from cachewatchd.processes.status import TargetState
from cachewatchd.processes.targets import TargetError
from tests.support.fake_docker import FakeContainer, FakeDocker, fake_docker
from tests.support.servers import Reaper, assert_one_line_faults, events, wait_event
from tests.support.wait import wait_until

ID = "c0ffee" + "0" * 58
SLEEP = [sys.executable, "-c", "import signal; signal.pause()"]


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeDocker]:
    with fake_docker(tmp_path) as server:
        yield server


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _spec(
    fake: FakeDocker, docker: DockerSpec | None = None, *, stop: float | None = 3.0, **options: Any
) -> ProcessSpec:
    """A target of *docker* (default: container ``backend``) on *fake*; *stop*: the ``grace``
    the user gave (``None``: none, each container's own stop timeout)."""
    chosen = dataclasses.replace(
        docker or DockerSpec(container="backend"), host=f"unix://{fake.socket}", stop_timeout=stop
    )
    return ProcessSpec(name="api", docker=chosen, grace=stop or 10.0, **options)


def _project(tmp_path: Path) -> tuple[Path, Path]:
    root, src = tmp_path / "project", tmp_path / "project" / "backend"
    src.mkdir(parents=True)
    (src / "app.py").write_text("VALUE = 1\n", encoding="utf-8")
    (root / "other.py").write_text("X = 1\n", encoding="utf-8")
    return root, src


def _running(reaper: Reaper, fake: FakeDocker, container: FakeContainer) -> FakeContainer:
    """*container* with a real main process (this host shows it, started when it 'started')."""
    proc = reaper.popen(SLEEP)
    container.pid = proc.pid
    container.started_at = _iso(psutil.Process(proc.pid).create_time())
    return fake.add(container)


def _restarted(fake: FakeDocker) -> list[str]:
    return [p for p in fake.paths() if "/restart" in p]


def _idle(controller: Controller) -> bool:
    status = controller.status()[0]
    return status.state is TargetState.RUNNING and not status.pending


def test_a_change_in_the_bind_mount_restarts_the_container_once(
    tmp_path: Path, fake: FakeDocker, reaper: Reaper
) -> None:
    root, src = _project(tmp_path)
    _running(reaper, fake, FakeContainer(ID, "backend", binds=[(str(src), "/app")]))
    fake.on_restart = lambda c, query: setattr(c, "started_at", _iso(datetime.now().timestamp()))
    controller = Controller([_spec(fake)], [root])
    with capture_logs() as logs:
        controller.start()
        wait_until(lambda: _idle(controller))
        controller.notify({root / "other.py"})  # under the root, not in the mount
        controller.notify({src / f"m{i}.py" for i in range(20)})
        wait_event(logs, "restarted")
        wait_until(lambda: _idle(controller))
        status = controller.status()[0]
        controller.stop()
    assert _restarted(fake) == [f"/containers/{ID}/restart?t=3"]
    assert status.kind == "docker"
    (shown,) = status.containers
    assert (shown.name, shown.id, shown.state) == ("backend", ID[:12], "running")
    assert shown.started_at is not None
    assert_one_line_faults(logs)


def test_a_container_mounted_outside_the_roots_is_refused_at_start(
    tmp_path: Path, fake: FakeDocker
) -> None:
    root, _ = _project(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    fake.add(FakeContainer(ID, "backend", binds=[(str(elsewhere), "/app")]))
    controller = Controller([_spec(fake)], [root])
    with pytest.raises(TargetError) as refused:
        controller.start()
    controller.stop()
    message = refused.value.message
    assert f"container backend ({ID[:12]}) has no bind mount under the watched roots" in message
    assert f"{elsewhere} -> /app" in message
    assert "\n" not in message
    assert not _restarted(fake)


def test_a_root_inside_the_mount_concerns_the_container(
    tmp_path: Path, fake: FakeDocker, reaper: Reaper
) -> None:
    _, src = _project(tmp_path)
    _running(reaper, fake, FakeContainer(ID, "backend", binds=[(str(tmp_path), "/srv")]))
    controller = Controller([_spec(fake)], [src])
    with capture_logs() as logs:
        controller.start()
        wait_until(lambda: _idle(controller))
        controller.notify({src / "app.py"})
        wait_event(logs, "restarted")
        controller.stop()
    assert len(_restarted(fake)) == 1


def test_a_signal_target_kills_with_the_signal_and_never_restarts(
    tmp_path: Path, fake: FakeDocker, reaper: Reaper
) -> None:
    root, src = _project(tmp_path)
    _running(reaper, fake, FakeContainer(ID, "backend", binds=[(str(src), "/app")]))
    controller = Controller([_spec(fake, action="signal", signal="HUP")], [root])
    with capture_logs() as logs:
        controller.start()
        wait_until(lambda: _idle(controller))
        controller.notify({src / "app.py"})
        wait_event(logs, "signalled")
        controller.stop()
    assert f"/containers/{ID}/kill?signal=HUP" in fake.paths()
    assert not _restarted(fake)


def test_compose_restarts_every_replica_but_not_one_off_runs(
    tmp_path: Path, fake: FakeDocker, reaper: Reaper
) -> None:
    root, src = _project(tmp_path)
    labels = {"com.docker.compose.project": "shop", "com.docker.compose.service": "backend"}
    for n in (1, 2):
        replica = FakeContainer(f"{n}" * 64, f"shop-backend-{n}", labels=labels, created=n)
        replica.binds = [(str(src), "/app")]
        _running(reaper, fake, replica)
    oneoff = {**labels, "com.docker.compose.oneoff": "True"}
    fake.add(
        FakeContainer("9" * 64, "shop-backend-run-1", labels=oneoff, binds=[(str(src), "/app")])
    )
    spec = _spec(fake, DockerSpec(project="shop", service="backend"), stop=None)
    controller = Controller([spec], [root])
    with capture_logs() as logs:
        controller.start()
        wait_until(lambda: _idle(controller))
        controller.notify({src / "app.py"})
        wait_event(logs, "restarted")
        status = controller.status()[0]
        controller.stop()
    # no grace given in a DockerSpec of its own: each container's own stop timeout
    assert _restarted(fake) == [
        "/containers/" + "1" * 64 + "/restart",
        "/containers/" + "2" * 64 + "/restart",
    ]
    assert [c.name for c in status.containers] == ["shop-backend-1", "shop-backend-2"]


def test_the_import_gate_runs_inside_the_container_and_blocks(
    tmp_path: Path, fake: FakeDocker, reaper: Reaper
) -> None:
    root, src = _project(tmp_path)
    _running(reaper, fake, FakeContainer(ID, "backend", binds=[(str(src), "/app")]))
    fake.exec_result = (1, b"", b'  File "/app/app.py", line 1\nSyntaxError: invalid syntax\n')
    controller = Controller([_spec(fake, import_check="app")], [root])
    with capture_logs() as logs:
        controller.start()
        wait_until(lambda: _idle(controller))
        controller.notify({src / "app.py"})
        blocked = wait_event(logs, "restart-blocked")
        controller.stop()
    assert blocked["error"] == "SyntaxError: invalid syntax (/app/app.py, line 1)"
    (run,) = fake.execs
    assert run["Cmd"][0] == sys.executable  # what its process runs, inside the container
    assert run["Cmd"][-1] == "app"
    assert not _restarted(fake)


def test_a_container_started_before_its_sources_changed_is_stale(
    tmp_path: Path, fake: FakeDocker
) -> None:
    root, src = _project(tmp_path)
    fake.add(
        FakeContainer(ID, "backend", started_at="2020-01-01T00:00:00Z", binds=[(str(src), "/app")])
    )
    controller = Controller([_spec(fake)], [root])
    with capture_logs() as logs:
        controller.start()
        wait_until(lambda: controller.status()[0].stale)
        status = controller.status()[0]
        controller.stop()
    assert status.stale_reason is not None
    assert status.stale_reason.startswith(
        f"container backend ({ID[:12]}) started 2020-01-01T00:00:00+00:00, before {src / 'app.py'}"
    )
    assert events(logs, "stale-process")


def test_no_container_and_no_dockerd_are_states_not_crashes(
    tmp_path: Path, fake: FakeDocker
) -> None:
    root, _ = _project(tmp_path)
    gone = ProcessSpec(
        name="gone", docker=DockerSpec(container="x", host=f"unix://{tmp_path}/no.sock")
    )
    controller = Controller([_spec(fake), gone], [root])
    with capture_logs() as logs:
        controller.start()
        wait_until(lambda: all(s.state is TargetState.NOT_FOUND for s in controller.status()))
        missing, unreachable = controller.status()
        controller.stop()
    assert missing.problem == "no container 'backend'"
    assert unreachable.problem is not None
    assert "no.sock does not exist" in unreachable.problem
    assert_one_line_faults(logs)


def test_a_container_that_exits_after_the_restart_fails_it_with_dockers_word(
    tmp_path: Path, fake: FakeDocker, reaper: Reaper
) -> None:
    root, src = _project(tmp_path)
    _running(reaper, fake, FakeContainer(ID, "backend", binds=[(str(src), "/app")]))

    def crash(container: FakeContainer, query: str) -> None:
        container.state, container.exit_code = "exited", 1

    fake.on_restart = crash
    controller = Controller([_spec(fake)], [root])
    with capture_logs() as logs:
        controller.start()
        wait_until(lambda: _idle(controller))
        controller.notify({src / "app.py"})
        failed = wait_event(logs, "restart-failed")
        wait_until(lambda: controller.status()[0].state is TargetState.FAILED)
        status = controller.status()[0]
        controller.stop()
    assert (
        failed["error"]
        == f"container backend ({ID[:12]}) is exited after the restart (exit code 1)"
    )
    assert [c.state for c in status.containers] == ["exited (code 1)"]
    assert_one_line_faults(logs)
