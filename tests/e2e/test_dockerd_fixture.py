"""The tests' real dockerd (tests/support/dockerd.py): its image runs Python on a bind mount."""

from __future__ import annotations

from pathlib import Path

from tests.support.docker_app import ask, wait_answer, write_unix_app
from tests.support.dockerd import Dockerd
from tests.support.wait import wait_until


def test_a_container_serves_the_bind_mounted_code_and_the_edit_after_a_restart(
    dockerd: Dockerd, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    answer = write_unix_app(src, "one")
    cid = dockerd.run_container("smoke", src, ["python", "/app/serve.py"])
    wait_answer(src / "app.sock", "one", context=lambda: dockerd.logs(cid))
    state = dockerd.inspect(cid)
    assert state["State"]["Running"]
    assert [m["Source"] for m in state["Mounts"]] == [str(src)]
    assert state["HostConfig"]["NetworkMode"] == "none"

    # another size: the pyc the container wrote in /app/__pycache__ is seen as stale without help
    # (a same-size edit within the mtime's second is the trap cachewatchd is for)
    answer.write_text("VALUE = 'three'\n", encoding="utf-8")
    assert ask(src / "app.sock") == "one"  # the running interpreter keeps its module
    dockerd.restart(cid)
    wait_answer(src / "app.sock", "three", context=lambda: dockerd.logs(cid))
    assert dockerd.logs(cid).split() == ["serving", "one", "serving", "three"]


def test_the_image_has_cachewatchd_and_a_shell(dockerd: Dockerd, tmp_path: Path) -> None:
    cid = dockerd.run_container("idle", tmp_path, ["python", "-c", "import signal; signal.pause()"])
    wait_until(lambda: dockerd.inspect(cid)["State"]["Running"], message="the container runs")
    out = dockerd.exec(cid, "python", "-m", "cachewatchd", "--version").stdout
    assert out.startswith("cachewatchd ")
    assert dockerd.exec(cid, "sh", "-c", "echo $((6 * 7))").stdout.strip() == "42"
