"""The Docker Engine API client against a fake dockerd on a real unix socket (tests/support)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachewatchd.processes.docker_api import (
    ANSWER_LIMIT,
    DockerClient,
    DockerError,
    DockerNotFound,
    demultiplex,
    socket_path,
)
from cachewatchd.processes.docker_model import parse_time
from tests.support.fake_docker import FakeContainer, FakeDocker, fake_docker

ID = "3f2a1b0c9d8e" + "a" * 52


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeDocker]:
    with fake_docker(tmp_path) as server:
        yield server


def _client(fake: FakeDocker, timeout: float = 5.0) -> DockerClient:
    return DockerClient(f"unix://{fake.socket}", timeout=timeout)


def test_inspect_reads_state_start_pid_mounts_and_labels(fake: FakeDocker) -> None:
    fake.add(
        FakeContainer(
            ID,
            "backend",
            started_at="2026-12-06T05:00:00.123456789Z",
            pid=4242,
            binds=[("/src/app", "/app")],
            labels={"com.docker.compose.service": "backend"},
            stop_timeout=30,
        )
    )
    container = _client(fake).container("backend")
    assert container.id == ID
    assert container.name == "backend"
    assert container.label == "backend (3f2a1b0c9d8e)"
    assert container.running
    assert container.pid == 4242
    assert container.stop_timeout == 30
    assert container.started_at == pytest.approx(parse_time("2026-12-06T05:00:00.123456Z"))
    binds = [(m.source, m.destination) for m in container.mounts if m.type == "bind"]
    assert binds == [("/src/app", "/app")]
    assert container.labels["com.docker.compose.service"] == "backend"


def test_compose_labels_select_containers_oldest_first(fake: FakeDocker) -> None:
    labels = {"com.docker.compose.project": "shop", "com.docker.compose.service": "backend"}
    fake.add(FakeContainer("b" * 64, "shop-backend-2", labels=labels, created=20))
    fake.add(FakeContainer("a" * 64, "shop-backend-1", labels=labels, created=10))
    fake.add(
        FakeContainer("c" * 64, "shop-db-1", labels={**labels, "com.docker.compose.service": "db"})
    )
    fake.add(FakeContainer("d" * 64, "shop-backend-3", labels=labels, state="exited"))
    client = _client(fake)
    assert client.container_ids(labels, running=True) == ["a" * 64, "b" * 64]
    assert set(client.container_ids(labels)) == {"a" * 64, "b" * 64, "d" * 64}


def test_restart_passes_the_stop_timeout_and_kill_the_signal(fake: FakeDocker) -> None:
    fake.add(FakeContainer(ID, "backend"))
    client = _client(fake)
    client.restart(ID, 2.5, timeout=10)
    client.restart(ID, None, timeout=10)
    client.kill(ID, "SIGHUP")
    assert fake.paths()[-3:] == [
        f"/containers/{ID}/restart?t=3",
        f"/containers/{ID}/restart",
        f"/containers/{ID}/kill?signal=HUP",
    ]


def test_a_missing_container_is_not_found_with_dockers_words(fake: FakeDocker) -> None:
    with pytest.raises(DockerNotFound, match="No such container: nope"):
        _client(fake).container("nope")


def test_an_error_answer_is_one_line(fake: FakeDocker) -> None:
    fake.hostile = "error"
    with pytest.raises(DockerError) as caught:
        _client(fake).container("x")
    assert "\n" not in caught.value.message
    assert "driver failed programming external connectivity" in caught.value.message


def test_a_huge_answer_is_refused_not_read_whole(fake: FakeDocker) -> None:
    fake.hostile = "huge"
    with pytest.raises(DockerError, match=f"larger than {ANSWER_LIMIT} bytes"):
        _client(fake).container("x")


def test_a_trickling_answer_ends_at_the_deadline(fake: FakeDocker) -> None:
    fake.hostile = "trickle"
    # 100 bytes at 50 ms each: each read is within the socket's timeout, the whole is not
    with pytest.raises(DockerError, match=r"did not answer GET /containers/x/json within 0\.5s"):
        _client(fake, timeout=0.5).container("x")


def test_an_answer_that_is_not_json_is_one_line(fake: FakeDocker) -> None:
    fake.hostile = "garbage"
    with pytest.raises(DockerError, match="with something not JSON"):
        _client(fake).container("x")


def test_exec_returns_exit_code_and_output(fake: FakeDocker) -> None:
    fake.add(FakeContainer(ID, "backend"))
    fake.exec_result = (1, b"out\n", b"SyntaxError: bad\n")
    code, output = _client(fake).exec_run(ID, ["python", "-c", "1"], workdir="/app", env=["A=1"])
    assert code == 1
    assert output == b"out\nSyntaxError: bad\n"
    assert fake.execs[-1]["Cmd"] == ["python", "-c", "1"]
    assert fake.execs[-1]["WorkingDir"] == "/app"


def test_ping(fake: FakeDocker) -> None:
    _client(fake).ping()


def test_a_missing_socket_says_so(tmp_path: Path) -> None:
    client = DockerClient(f"unix://{tmp_path}/none.sock")
    with pytest.raises(DockerError, match=r"none.sock does not exist \(is dockerd running"):
        client.ping()


def test_a_socket_nobody_listens_on_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dead.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()
    with pytest.raises(DockerError, match="connection refused"):
        DockerClient(f"unix://{path}").ping()


def test_the_socket_comes_from_host_then_docker_host_then_rootless(tmp_path: Path) -> None:
    assert socket_path("unix:///a.sock", {"DOCKER_HOST": "unix:///b.sock"}) == "/a.sock"
    assert socket_path(None, {"DOCKER_HOST": "unix:///b.sock"}) == "/b.sock"
    with pytest.raises(DockerError, match="only over a unix socket"):
        socket_path(None, {"DOCKER_HOST": "tcp://10.0.0.1:2375"})
    (tmp_path / "docker.sock").touch()
    if not Path("/var/run/docker.sock").exists():
        assert socket_path(None, {"XDG_RUNTIME_DIR": str(tmp_path)}) == f"{tmp_path}/docker.sock"


def test_parse_time() -> None:
    assert parse_time("0001-01-01T00:00:00Z") is None
    assert parse_time("nonsense") is None
    assert parse_time(12) is None
    assert parse_time("1970-01-01T00:00:01.5Z") == 1.5
    assert parse_time("1970-01-01T00:00:01.123456789Z") == pytest.approx(1.123456)


def test_demultiplex_tolerates_truncation_and_tty_streams() -> None:
    frames = b"\x01\0\0\0\0\0\0\x03abc" + b"\x02\0\0\0\0\0\0\x05de"
    assert demultiplex(frames) == b"abcde"
    assert demultiplex(b"plain tty output") == b"plain tty output"
