"""Which watched paths concern a container: the host side of its bind mounts, spelled like the
roots (through symlinks, Docker Desktop's ``/host_mnt``), and the refusal of one mounted elsewhere."""

from __future__ import annotations

from pathlib import Path

from cachewatchd.processes.containers import concerned, container_stale, outside_refusal
from cachewatchd.processes.docker_model import Container, Mount
from cachewatchd.processes.staleness import Change


def _container(*sources: str, started: float | None = 1000.0) -> Container:
    mounts = tuple(Mount("bind", s, f"/m{i}") for i, s in enumerate(sources))
    mounts += (Mount("volume", "/var/lib/docker/volumes/v/_data", "/data"),)
    return Container("f" * 64, "backend", "running", started, mounts=mounts)


def test_a_mount_below_a_symlinked_root_is_spelled_like_the_root(tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "src").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real)
    container = _container(str(real / "src"))
    assert concerned([container], [link]) == [link / "src"]
    assert concerned([container], [link, real]) == [link / "src", real / "src"]


def test_a_root_inside_a_mount_is_concerned_whole_and_a_file_mount_alone(tmp_path: Path) -> None:
    (tmp_path / "proj" / "app").mkdir(parents=True)
    settings = tmp_path / "proj" / "settings.py"
    settings.write_text("X = 1\n", encoding="utf-8")
    root = tmp_path / "proj" / "app"
    assert concerned([_container(str(tmp_path))], [root]) == [root]
    assert concerned([_container(str(settings))], [tmp_path / "proj"]) == [settings]


def test_docker_desktops_host_mnt_is_this_hosts_path(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    container = _container(f"/host_mnt{tmp_path}/src")
    assert concerned([container], [tmp_path]) == [tmp_path / "src"]


def test_a_container_mounted_elsewhere_is_refused_with_its_mounts(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "other").mkdir()
    container = _container(str(tmp_path / "other"))
    assert concerned([container], [tmp_path / "root"]) == []
    refusal = outside_refusal([container], [tmp_path / "root"])
    assert refusal == (
        f"container backend ({'f' * 12}) has no bind mount under the watched roots "
        f"({tmp_path / 'root'}; its bind mounts: {tmp_path / 'other'} -> /m0): no change of "
        "theirs reaches it"
    )
    volumes_only = Container("e" * 64, "db", "running", mounts=(Mount("volume", "/v", "/data"),))
    assert "its bind mounts: none" in str(outside_refusal([volumes_only], [tmp_path]))


def test_stale_by_the_start_time_when_this_host_shows_no_process(tmp_path: Path) -> None:
    change = Change(2000.0, tmp_path / "app.py")
    assert container_stale(_container(started=1000.0), [], change) == (
        f"container backend ({'f' * 12}) started 1970-01-01T00:16:40+00:00, before "
        f"{tmp_path / 'app.py'} changed at 1970-01-01T00:33:20+00:00"
    )
    assert container_stale(_container(started=1999.5), [], change) is None  # the 1 s slack
    assert container_stale(_container(started=None), [], change) is None
    assert container_stale(_container(started=1000.0), [], None) is None
