"""Managed processes end to end: the daemon as users run it (a subprocess, JSON log lines), real edits on
disk, real servers on 127.0.0.1 (uvicorn, gunicorn, supervisord) answering HTTP.

The edit that matters is the one CPython cannot see: same size, mtime restored. A server restarted
over it still imports the old pyc (the first test shows that with a plain restart); a server the
daemon restarts serves the new code, because the daemon removed the pyc first.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from cachewatchd.cache.audit import audit
from cachewatchd.daemon.status import STATUS_REFRESH
from cachewatchd.processes.staleness import SLACK
from tests.support.daemon import cli
from tests.support.e2e import E2E, child_command, toml_config
from tests.support.servers import (
    Reaper,
    Supervisord,
    app_body,
    fetch,
    free_port,
    gunicorn_command,
    set_value,
    uvicorn_command,
    wait_value,
    write_asgi_app,
    write_wsgi_app,
)
from tests.support.wait import compile_pyc, wait_until

GRACE = "5"


@pytest.fixture
def e2e(tmp_path: Path, reaper: Reaper) -> E2E:
    return E2E(tmp_path, reaper)


def _gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _no_tracebacks(text: str) -> None:
    assert "Traceback" not in text, text


# -- 1. own child ------------------------------------------------------------------------------------
def test_own_child_serves_new_code_after_a_restored_mtime_edit_where_a_plain_restart_does_not(
    e2e: E2E,
) -> None:
    app = write_asgi_app(e2e.proj, "old-1")
    pyc = compile_pyc(app)  # the timestamp pyc a first import would have written
    port = free_port()
    server = uvicorn_command(port)

    # Control: the same edit, then a plain restart of the server with the pyc in place.
    set_value(app, "old-1", "new-1", keep_mtime=True)
    plain = e2e.serve(server, e2e.proj)
    wait_value(port, "old-1")  # the STALE pyc: this is what the daemon must prevent
    plain.terminate()
    plain.wait(10)
    set_value(app, "new-1", "old-1", keep_mtime=True)  # the pyc matches the source again

    args = [str(e2e.proj), "--grace", GRACE, "--", *child_command(server)]
    with e2e.daemon(args, cwd=e2e.proj) as daemon:
        daemon.ready()
        assert pyc.exists(), "the start audit keeps a fresh pyc"
        wait_value(port, "old-1")
        first = e2e.published(daemon)["processes"][0]["pids"]
        assert len(first) == 1

        set_value(app, "old-1", "new-1", keep_mtime=True)  # the control's edit
        gone = daemon.wait_event("invalidated", lambda e: e["source"] == str(app))
        assert gone["removed"] == [str(pyc)]
        restarted = daemon.wait_event("restarted")
        assert restarted["target"] == "child"
        assert restarted["pids"] != first
        wait_value(port, "new-1")
        wait_until(pyc.exists, 10, message="the new child wrote its pyc")
        summary = audit([e2e.proj]).summary()
        assert summary.get("stale", 0) == 0
        assert summary["fresh"] == 1
    assert daemon.proc is not None
    assert daemon.proc.returncode == 0
    assert fetch(port) is None, "the child stopped with the daemon"
    _no_tracebacks(daemon.stderr())


# -- 2. supervisord ----------------------------------------------------------------------------------
def test_supervisord_program_from_the_user_config(e2e: E2E) -> None:
    app = write_asgi_app(e2e.proj, "old-2")
    compile_pyc(app)
    port = free_port()
    program = f"command = {' '.join(uvicorn_command(port))}\ndirectory = {e2e.proj}"
    sv = Supervisord(e2e.tmp, {"web": program}, e2e.reaper)
    try:
        wait_value(port, "old-2")
        first = sv.pids("web")
        config = toml_config(
            e2e.tmp / "config.toml",
            [{"name": "web", "supervisor": sv.table("web"), "grace": 5.0,
              "health_url": f"http://127.0.0.1:{port}/", "health_timeout": 30.0}],
        )  # fmt: skip
        with e2e.daemon(["--config", str(config), str(e2e.proj)]) as daemon:
            daemon.ready()
            set_value(app, "old-2", "new-2", keep_mtime=True)
            restarted = daemon.wait_event("restarted")
            assert restarted["target"] == "web"
            assert isinstance(restarted["seconds"], float | int)
            assert restarted["seconds"] > 0
            assert restarted["pids"] == sv.pids("web") != first
            assert fetch(port) == "new-2"  # healthy before `restarted`: the new code at once
        assert not daemon.events("restart-failed")
        _no_tracebacks(daemon.stderr())
    finally:
        sv.stop()


# -- 3. gunicorn master, HUP -------------------------------------------------------------------------
def test_gunicorn_master_found_by_match_takes_hup_and_its_new_workers_serve_new_code(
    e2e: E2E,
) -> None:
    app = write_wsgi_app(e2e.proj, "old-3")
    compile_pyc(app)
    port = free_port()
    master = e2e.serve(gunicorn_command(port, workers=2), e2e.proj)
    wait_value(port, "old-3")
    master_proc = psutil.Process(master.pid)
    wait_until(lambda: len(master_proc.children()) == 2, 20, message="2 gunicorn workers")
    workers = {p.pid for p in master_proc.children()}
    config = toml_config(
        e2e.tmp / "config.toml",
        [{"name": "api", "match": rf"gunicorn .*127\.0\.0\.1:{port}\b", "cwd": e2e.proj,
          "action": "signal", "signal": "HUP"}],
    )  # fmt: skip
    with e2e.daemon(["--config", str(config), str(e2e.proj)]) as daemon:
        daemon.ready()
        # Make the edit unmistakably newer than the workers (stale means older by more than
        # SLACK; Linux create_time is coarse), so that a worker seen after the HUP would count.
        born = max(p.create_time() for p in master_proc.children())
        wait_until(lambda: time.time() > born + SLACK + 0.25, 10, message="workers past SLACK")
        set_value(app, "old-3", "new-3", keep_mtime=True)
        signalled = daemon.wait_event("signalled")
        assert signalled["target"] == "api"
        assert signalled["pids"] == [master.pid]
        assert signalled["signal"] == "HUP"

        def replaced() -> bool:
            now = {p.pid for p in master_proc.children()}
            return len(now) == 2 and not now & workers

        wait_until(replaced, 30, message="both workers replaced")
        assert [fetch(port) for _ in range(4)] == ["new-3"] * 4
        assert master.poll() is None, "HUP reloads gunicorn, it does not stop it"
        target = e2e.published(daemon)["processes"][0]
        assert target["pids"] == [master.pid]
        assert target["stale"] is False, "the workers (the importers) are new"
        assert not daemon.events("stale-process"), "the swap under way is not a stale process"
    _no_tracebacks(daemon.stderr())


# -- 4. plain uvicorn found by match, restarted -------------------------------------------------------
def test_uvicorn_found_by_match_is_relaunched_with_its_cmdline_cwd_and_environment(
    e2e: E2E,
) -> None:
    app = write_asgi_app(e2e.proj, "old-4")
    compile_pyc(app)
    port = free_port()
    old = e2e.serve(uvicorn_command(port), e2e.proj, CACHEWATCHD_E2E_MARK="kept")
    wait_value(port, "old-4")
    old_proc = psutil.Process(old.pid)
    config = toml_config(
        e2e.tmp / "config.toml",
        [{"name": "web", "match": rf"uvicorn app:app .*--port {port}\b", "cwd": e2e.proj,
          "grace": 5.0}],
    )  # fmt: skip
    try:
        with e2e.daemon(["--config", str(config), str(e2e.proj)]) as daemon:
            daemon.ready()
            set_value(app, "old-4", "new-4", keep_mtime=True)
            restarted = daemon.wait_event("restarted")
            e2e.relaunched(restarted["pids"])
            wait_value(port, "new-4")
        (new_pid,) = restarted["pids"]
        assert old.wait(10) is not None
        assert _gone(old_proc)
        new = psutil.Process(new_pid)
        assert new.cmdline() == uvicorn_command(port)
        assert Path(new.cwd()) == e2e.proj
        assert new.environ()["CACHEWATCHD_E2E_MARK"] == "kept"
        assert "PYTHONDONTWRITEBYTECODE" not in new.environ()
        assert new.ppid() != daemon.pid, "relaunched detached"
        assert fetch(port) == "new-4", "the relaunched server outlives the daemon"
        _no_tracebacks(daemon.stderr())
    finally:
        e2e.sweep(rf"--port {port}\b")  # the relaunched server, whatever happened


# -- 5. import gate ----------------------------------------------------------------------------------
def test_import_gate_keeps_the_old_server_on_a_syntax_error_and_the_fix_restarts_it(
    e2e: E2E,
) -> None:
    app = write_asgi_app(e2e.proj, "old-5")
    port = free_port()
    args = [str(e2e.proj), "--grace", GRACE, "--import-check", "app", "--",
            *child_command(uvicorn_command(port))]  # fmt: skip
    with e2e.daemon(args, cwd=e2e.proj) as daemon:
        daemon.ready()
        wait_value(port, "old-5")
        (pid,) = e2e.published(daemon)["processes"][0]["pids"]
        good = app.read_text(encoding="utf-8")
        app.write_text(good.replace("VALUE = 'old-5'", "VALUE = ('new-5'"), encoding="utf-8")
        blocked = daemon.wait_event("restart-blocked")
        assert blocked["target"] == "child"
        assert blocked["module"] == "app"
        assert "SyntaxError" in blocked["error"]
        assert f"{app}, line 1" in blocked["error"]
        assert fetch(port) == "old-5", "the old server keeps answering"
        assert psutil.Process(pid).is_running()

        def shown_blocked() -> bool:
            target = e2e.record(daemon)["processes"][0]
            return bool(target["state"] == "blocked" and target["pids"] == [pid])

        wait_until(shown_blocked, STATUS_REFRESH / 2, message="`blocked` in the status record")
        last_action = e2e.record(daemon)["processes"][0]["last_action"]
        assert last_action.startswith("blocked: import app failed: SyntaxError")
        assert not daemon.events("restarted")

        app.write_text(good.replace("old-5", "new-5"), encoding="utf-8")
        restarted = daemon.wait_event("restarted")
        assert restarted["pids"] != [pid]
        wait_value(port, "new-5")
        assert len(daemon.events("restart-blocked")) == 1
    _no_tracebacks(daemon.stderr())


# -- 6. a burst of edits -----------------------------------------------------------------------------
def test_a_burst_of_50_edits_gives_one_restart(e2e: E2E) -> None:
    parts = [f"p{i}" for i in range(5)]
    for name in parts:
        (e2e.proj / f"{name}.py").write_text("PART = '..'\n", encoding="utf-8")
    write_asgi_app(e2e.proj, "v", parts=parts)
    port = free_port()
    args = [str(e2e.proj), "--grace", GRACE, "--", *child_command(uvicorn_command(port))]
    with e2e.daemon(args, cwd=e2e.proj) as daemon:
        daemon.ready()
        wait_value(port, app_body("v", [".."] * 5))
        before = e2e.published(daemon)
        assert before["processes"][0]["restarts"] == 0

        for i in range(50):  # as fast as Python writes: ten rewrites of each of five modules
            (e2e.proj / f"{parts[i % 5]}.py").write_text(f"PART = '{i:02d}'\n", encoding="utf-8")
        daemon.wait_event("restarted")
        wait_value(port, app_body("v", ["45", "46", "47", "48", "49"]))

        def idle() -> bool:
            target = e2e.published(daemon)["processes"][0]
            return bool(target["state"] == "running" and not target["pending"] and target["pids"])

        wait_until(idle, 30, message="the target idle, nothing pending")
        after = e2e.published(daemon)
    restarts = after["processes"][0]["restarts"]
    batches = after["counters"]["batches"] - before["counters"]["batches"]
    done = daemon.events("restarted") + daemon.events("restart-superseded")
    assert len(done) == restarts, "no restart after the target was idle"
    # Each batch that touches the target requests one restart; requests arriving during a
    # restart coalesce into one more. The 50 writes take milliseconds, well inside one debounce
    # window (50 ms quiet): one batch, one restart. Only when this test process was descheduled
    # mid-burst on a busy machine does the burst straddle a batch boundary; then the second batch
    # may arrive while the first restart runs and coalesce into exactly one more.
    if batches == 1:
        assert restarts == 1
    else:
        assert 1 <= restarts <= 2, f"{batches} batches gave {restarts} restarts"
    _no_tracebacks(daemon.stderr())


# -- 7. health check ----------------------------------------------------------------------------------
def test_failed_health_check_is_logged_as_restart_failed(e2e: E2E) -> None:
    app = write_asgi_app(e2e.proj, "old-7")
    port = free_port()
    old = e2e.serve(uvicorn_command(port), e2e.proj)
    wait_value(port, "old-7")
    pidfile = e2e.tmp / "web.pid"
    pidfile.write_text(f"{old.pid}\n", encoding="ascii")
    config = toml_config(
        e2e.tmp / "config.toml",
        [{"name": "web", "pidfile": pidfile, "grace": 5.0,
          "health_url": f"http://127.0.0.1:{port}/fail", "health_timeout": 1.0}],
    )  # fmt: skip
    try:
        with e2e.daemon(["--config", str(config), str(e2e.proj)]) as daemon:
            daemon.ready()
            set_value(app, "old-7", "new-7")
            failed = daemon.wait_event("restart-failed")
            e2e.relaunched(failed["pids"])
            assert failed["target"] == "web"
            assert "did not answer HTTP 200 within 1s (last: HTTP 500)" in failed["error"]
            assert not daemon.events("restarted")
            wait_value(port, "new-7")  # relaunched, just not healthy by its health URL
            assert pidfile.read_text(encoding="ascii").split() == [str(p) for p in failed["pids"]]
        _no_tracebacks(daemon.stderr())
    finally:
        e2e.sweep(rf"--port {port}\b")


# -- 8. refusal ---------------------------------------------------------------------------------------
def test_hup_for_a_uvicorn_reload_parent_is_refused_and_nothing_is_killed(e2e: E2E) -> None:
    srv = e2e.proj / "srv"
    write_asgi_app(srv, "old-8")
    lib = e2e.proj / "lib"
    lib.mkdir()
    (lib / "util.py").write_text("U = 1\n", encoding="utf-8")
    port = free_port()
    parent = e2e.serve(uvicorn_command(port, "--reload", "--reload-dir", str(srv)), srv)
    wait_value(port, "old-8")
    parent_proc = psutil.Process(parent.pid)
    servers = parent_proc.children()
    assert servers, "uvicorn --reload runs its server in a child process"
    config = toml_config(
        e2e.tmp / "config.toml",
        [{"name": "dev", "match": rf"uvicorn app:app .*--port {port}\b", "action": "signal",
          "signal": "HUP"}],
    )  # fmt: skip
    with e2e.daemon(["--config", str(config), str(e2e.proj)]) as daemon:
        daemon.ready()
        warned = daemon.wait_event("error", lambda e: e.get("target") == "dev")
        refusal = f"refusing to send HUP to the `uvicorn --reload` parent pid {parent.pid}"
        assert warned["error"].startswith(refusal)
        assert "\n" not in warned["error"]

        (lib / "util.py").write_text("U = 2\n", encoding="utf-8")  # outside uvicorn's reload dir
        failed = daemon.wait_event("restart-failed")
        assert failed["error"] == warned["error"]
        assert not daemon.events("signalled")
    assert parent.poll() is None, "the reload parent was not signalled"
    assert parent_proc.children() == servers, "its server was not orphaned or replaced"
    assert fetch(port) == "old-8"
    _no_tracebacks(daemon.stderr())


# -- 9. status ----------------------------------------------------------------------------------------
def test_status_shows_the_target_pid_and_a_stale_process(e2e: E2E) -> None:
    app = write_asgi_app(e2e.proj, "old-9")
    port = free_port()
    old = e2e.serve(uvicorn_command(port), e2e.proj)
    wait_value(port, "old-9")
    # The code changes while no daemon watches (the seeds' "old Python process still running").
    # Stale means changed more than 1 s (Linux create_time is coarse) after the process started:
    # stamp the change 1.5 s after the start rather than wait for the clock.
    set_value(app, "old-9", "new-9")
    changed_at = psutil.Process(old.pid).create_time() + 1.5
    os.utime(app, (changed_at, changed_at))
    config = toml_config(
        e2e.tmp / "config.toml",
        [{"name": "web", "match": rf"uvicorn app:app .*--port {port}\b", "cwd": e2e.proj,
          "grace": 5.0}],
    )  # fmt: skip
    try:
        with e2e.daemon(["--config", str(config), str(e2e.proj)]) as daemon:
            daemon.ready()
            logged = daemon.wait_event("stale-process")
            assert logged["target"] == "web"

            def target() -> dict[str, Any]:
                status = json.loads(cli(["status", "--json"], e2e.env).stdout)
                (record,) = status["daemons"]
                shown = record.get("processes") or [{}]  # none until the controller starts
                return dict(shown[0])

            # A target's change is published at once, not at the next periodic refresh.
            soon = STATUS_REFRESH / 2
            wait_until(lambda: target().get("stale"), soon, message="stale in `status --json`")
            shown = target()
            assert shown["name"] == "web"
            assert shown["kind"] == "process"
            assert shown["pids"] == [old.pid]
            assert shown["stale_reason"] == logged["reason"]
            assert f"pid {old.pid} started" in logged["reason"]
            assert f"before {app} changed" in logged["reason"]
            human = cli(["status"], e2e.env).stdout
            assert f"process web: running pid {old.pid}, STALE" in human
            assert fetch(port) == "old-9", "stale indeed: the old code still answers"

            set_value(app, "new-9", "nxt-9")  # the daemon restarts it on the next edit
            restarted = daemon.wait_event("restarted")
            e2e.relaunched(restarted["pids"])
            wait_value(port, "nxt-9")

            def relaunched_and_fresh() -> bool:
                shown = target()
                return bool(shown["pids"] == restarted["pids"] and not shown["stale"])

            wait_until(relaunched_and_fresh, soon, message="the relaunched pid, not stale")
        _no_tracebacks(daemon.stderr())
    finally:
        e2e.sweep(rf"--port {port}\b")
