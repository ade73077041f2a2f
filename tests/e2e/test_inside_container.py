"""Inside the container: cachewatchd is the container's command and the app its own child
(README "Docker"), against a real dockerd (tests/support/dockerd.py).

The edit is made on this side, in the bind-mounted directory, and it is the one CPython cannot see:
same size, mtime put back. The container's interpreter wrote the pyc in ``/app/__pycache__``; a plain
``docker restart`` serves the old code from it (the control), the own child restarted by cachewatchd
inside the container serves the new code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.support.docker_app import ask, wait_answer, write_unix_app
from tests.support.dockerd import Dockerd
from tests.support.mounts import bindfs
from tests.support.servers import set_value
from tests.support.wait import wait_until

CACHEWATCHD = ["python", "-m", "cachewatchd", "--foreground", "/app", "--"]


def _events(dockerd: Dockerd, cid: str, name: str) -> list[dict[str, Any]]:
    """The JSON log lines *name* of cachewatchd in the container (it logs JSON when not a tty)."""
    found = []
    for line in dockerd.logs(cid).splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == name:
                found.append(event)
    return found


def _serving(dockerd: Dockerd, cid: str) -> list[str]:
    """What each generation of the app said when it started (``serving VALUE``)."""
    return [
        line.split()[1] for line in dockerd.logs(cid).splitlines() if line.startswith("serving")
    ]


def test_a_plain_docker_restart_serves_the_old_code_after_an_edit_cpython_cannot_see(
    dockerd: Dockerd, tmp_path: Path
) -> None:
    """The control: what the test below fixes happens without cachewatchd."""
    src = tmp_path / "src"
    answer = write_unix_app(src, "one")
    cid = dockerd.run_container("plain", src, ["python", "/app/serve.py"])
    wait_answer(
        src / "app.sock", "one", context=lambda: dockerd.logs(cid)
    )  # imported: the container wrote its pyc
    assert (src / "__pycache__").is_dir()
    set_value(answer, "one", "two", keep_mtime=True)
    dockerd.restart(cid)
    wait_until(lambda: _serving(dockerd, cid) == ["one", "one"], message="the second start")
    assert ask(src / "app.sock") == "one"  # the STALE pyc


def test_cachewatchd_in_the_container_restarts_its_child_on_an_edit_made_on_the_host(
    dockerd: Dockerd, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    answer = write_unix_app(src, "one")
    cid = dockerd.run_container("inside", src, [*CACHEWATCHD, "python", "/app/serve.py"])
    wait_until(lambda: _events(dockerd, cid, "ready"), 30, message=f"ready: {dockerd.logs(cid)}")
    wait_answer(src / "app.sock", "one", context=lambda: dockerd.logs(cid))
    assert (src / "__pycache__").is_dir()
    # A local bind mount: the host's edits raise inotify events in the container's mount namespace.
    (ready,) = _events(dockerd, cid, "ready")
    observer = ready["observers"]["/app"]
    assert observer["observer"] == "native", observer
    assert observer["reason"].endswith(": native events"), observer
    status = dockerd.exec(cid, "cachewatchd", "status").stdout  # the console script, as installed
    assert "/app: native" in status
    assert "process child: running" in status

    set_value(answer, "one", "two", keep_mtime=True)
    wait_answer(src / "app.sock", "two", context=lambda: dockerd.logs(cid))
    assert _serving(dockerd, cid) == ["one", "two"]
    (invalidated,) = _events(dockerd, cid, "invalidated")
    # the image's Python is this one (tests/support/docker_image.py)
    assert invalidated["removed"] == [f"/app/__pycache__/answer.{sys.implementation.cache_tag}.pyc"]
    wait_until(lambda: _events(dockerd, cid, "restarted"), message="the restart logged")
    assert "Traceback" not in dockerd.logs(cid)

    # docker stop: cachewatchd, PID 1, stops its child and exits 0 within the grace period
    dockerd.docker("stop", "-t", "20", cid)
    state = dockerd.inspect(cid)["State"]
    assert (state["Running"], state["ExitCode"]) == (False, 0), state
    assert _events(dockerd, cid, "stopping")


def test_on_a_fuse_share_cachewatchd_in_the_container_polls_and_serves_an_edit_made_behind_it(
    dockerd: Dockerd, tmp_path: Path
) -> None:
    """Docker Desktop's shares in miniature: a FUSE mount (bindfs) bind-mounted into the container,
    edited on its far side, which raises no event in the container: the mount type chooses polling
    there, and the poll finds the same-size, mtime-restored edit."""
    with bindfs(tmp_path / "far", tmp_path / "share") as share:
        answer = write_unix_app(share.other, "one", sock="/sock/app.sock")
        sock = tmp_path / "sock"
        sock.mkdir()
        cid = dockerd.run_container(
            "share",
            share.client,
            [*CACHEWATCHD, "python", "/app/serve.py"],
            extra=["-v", f"{sock}:/sock"],
        )
        try:
            wait_until(lambda: _events(dockerd, cid, "ready"), 30, message="ready")
            wait_answer(sock / "app.sock", "one", context=lambda: dockerd.logs(cid))
            (ready,) = _events(dockerd, cid, "ready")
            observer = ready["observers"]["/app"]
            assert observer["observer"] == "polling", observer
            assert observer["reason"] == f"{share.fstype} mount /app: polling", observer
            assert (share.other / "__pycache__").is_dir()  # the container wrote its pyc

            set_value(answer, "one", "two", keep_mtime=True)
            wait_answer(sock / "app.sock", "two", context=lambda: dockerd.logs(cid))
            assert _serving(dockerd, cid) == ["one", "two"]
        finally:
            dockerd.docker("rm", "-f", cid)  # before the share is unmounted
