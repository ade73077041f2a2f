"""Warm restarts as users run them: the real daemon forks each generation of a uvicorn child from
its preloaded interpreter (the default), never serves a site-packages module's old code after it
changed (the stale preloader is rebuilt: tests/processes/test_preload.py proves that rule alone),
and starts every generation afresh with ``--cold``."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from tests.support.daemon import DaemonProc
from tests.support.e2e import E2E, child_command
from tests.support.servers import (
    Reaper,
    free_port,
    set_value,
    uvicorn_command,
    wait_value,
    write_asgi_app,
)
from tests.support.wait import wait_until


@pytest.fixture
def e2e(tmp_path: Path, reaper: Reaper) -> E2E:
    world = E2E(tmp_path, reaper)
    site = tmp_path / "site"  # a package outside the watched root, as in site-packages
    (site / "extpkg").mkdir(parents=True)
    (site / "extpkg" / "__init__.py").write_text('PART = "one"\n', encoding="utf-8")
    world.env["PYTHONPATH"] = f"{site}{os.pathsep}{world.env['PYTHONPATH']}"
    return world


def _generation(daemon: DaemonProc, count: int) -> int:
    wait_until(lambda: len(daemon.events("restarted")) >= count, 60, message=f"restart {count}")
    done = daemon.events("restarted")[count - 1]
    (pid,) = done["pids"]
    return int(pid)


def _preloaders(daemon: DaemonProc) -> list[int]:
    return [int(e["pid"]) for e in daemon.events("preloaded")]


def test_generations_are_forked_from_the_preloader_rebuilt_after_a_site_change(
    e2e: E2E, tmp_path: Path
) -> None:
    app = write_asgi_app(e2e.proj, "v0", parts=["extpkg"])
    port = free_port()
    server = uvicorn_command(port)
    args = [str(e2e.proj), "--listen", f"127.0.0.1:{port}", "--", *child_command(server)]
    with e2e.daemon(args, cwd=e2e.proj) as daemon:
        daemon.ready()
        wait_value(port, "v0|one")
        set_value(app, "v0", "v1")  # the first generation taught what to preload
        first = _generation(daemon, 1)
        wait_value(port, "v1|one")
        daemon.wait_event("preloaded", lambda e: e["modules"] > 0, timeout=60)
        set_value(app, "v1", "v2")
        second = _generation(daemon, 2)
        wait_value(port, "v2|one")
        built = psutil.Process(second).ppid()  # the last preloader built when it was forked
        assert built in _preloaders(daemon)
        assert psutil.Process(second).cmdline()[1:4] == ["-m", "uvicorn", "app:app"]
        init = tmp_path / "site" / "extpkg" / "__init__.py"
        init.write_text('PART = "three"\n', encoding="utf-8")  # what pip install does
        set_value(app, "v2", "v3")
        third = _generation(daemon, 3)
        wait_value(port, "v3|three")  # never the preloaded "one": cold, or a preloader built since
        if daemon.events("preload-stale"):  # the preloader that imported "one" was still current
            assert daemon.events("preload-stale")[0]["reason"] == (
                f"{init} changed since it was preloaded"
            )
        count = len(_preloaders(daemon))
        wait_until(
            lambda: psutil.Process(third).ppid() != daemon.pid or len(_preloaders(daemon)) > count,
            60,
        )
        set_value(app, "v3", "v4")
        fourth = _generation(daemon, 4)
        wait_value(port, "v4|three")
        rebuilt = psutil.Process(fourth).ppid()
        assert rebuilt in _preloaders(daemon)
        assert rebuilt != built
        assert len({first, second, third, fourth}) == 4
    assert daemon.proc is not None
    assert daemon.proc.returncode == 0
    for pid in (built, rebuilt, fourth):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    assert "Traceback" not in daemon.stderr()


def test_cold_starts_every_generation_afresh(e2e: E2E) -> None:
    app = write_asgi_app(e2e.proj, "v0")
    port = free_port()
    server = uvicorn_command(port)
    args = [str(e2e.proj), "--listen", f"127.0.0.1:{port}", "--cold", "--", *child_command(server)]
    with e2e.daemon(args, cwd=e2e.proj) as daemon:
        daemon.ready()
        wait_value(port, "v0")
        set_value(app, "v0", "v1")
        pid = _generation(daemon, 1)
        wait_value(port, "v1")
        assert psutil.Process(pid).ppid() == daemon.pid
        assert not daemon.events("preloaded")
