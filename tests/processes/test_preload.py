"""Warm restarts (processes/warm, preloader, warm_boot) with real interpreters: each safety rule,
and a warm generation that behaves as a cold one (output, exit codes, signals, process group,
crash-loop backoff)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from structlog.testing import capture_logs

from cachewatchd.processes import warm as warm_module
from cachewatchd.processes.own_child import OwnChild
from cachewatchd.processes.preloader import Preloader, PreloadError
from cachewatchd.processes.staleness import importers
from cachewatchd.processes.warm import WarmStarter
from cachewatchd.processes.warm_plan import WarmPlan, warm_plan
from tests.conftest import child_env
from tests.support.servers import events
from tests.support.wait import other_interpreter, wait_until

PY = sys.executable
SESSION = sys.version_info < (3, 11)  # as the cold child: a session of its own on 3.10


@dataclass
class World:
    """A project root (watched) and a site directory outside it (on ``PYTHONPATH``)."""

    root: Path
    site: Path
    env: dict[str, str]

    def package(self, name: str, body: str) -> Path:
        init = self.site / name / "__init__.py"
        init.parent.mkdir(parents=True, exist_ok=True)
        init.write_text(body, encoding="utf-8")
        return init

    def script(self, body: str, name: str = "app.py") -> list[str]:
        (self.root / name).write_text(body, encoding="utf-8")
        return [PY, name]

    def plan(self, command: list[str]) -> WarmPlan:
        plan, why = warm_plan(command, str(self.root), self.env)
        assert plan is not None, why
        return plan

    def child(self, command: list[str], *, warm: bool = True, **kwargs: object) -> OwnChild:
        starter = (
            WarmStarter(
                command, cwd=self.root, env=self.env, roots=[self.root], session=SESSION, name="app"
            )
            if warm
            else None
        )
        return OwnChild(command, cwd=self.root, env=self.env, warm=starter, name="app", **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def world(tmp_path: Path) -> World:
    root, site = tmp_path / "proj", tmp_path / "site"
    root.mkdir()
    site.mkdir()
    env = child_env(PYTHONPATH=str(site), MARK=str(tmp_path / "mark"), TEST_SID=str(os.getsid(0)))
    return World(root, site, env)


@pytest.fixture
def closing() -> Iterator[list[OwnChild | Preloader]]:
    things: list[OwnChild | Preloader] = []
    yield things
    for thing in things:
        thing.close()


def _exit_of(child: OwnChild) -> int:
    wait_until(lambda: (child.poll(), child.last_exit)[1] is not None, 30)
    assert child.last_exit is not None
    return child.last_exit


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _parent(pid: int) -> int:
    return psutil.Process(pid).ppid()


PARITY = """\
import os, signal, sys
print("main", __name__, __file__, sys.argv, sys.path[0] == os.getcwd(), flush=True)
print("group", os.getpgrp() == os.getpid(), os.getsid(0) == int(os.environ["TEST_SID"]), flush=True)
print("stdin", repr(sys.stdin.read()), flush=True)
print("signals", signal.getsignal(signal.SIGCHLD), signal.getsignal(signal.SIGINT), flush=True)
def inheritable(fd):
    try:
        return os.get_inheritable(fd)
    except OSError:  # listdir's own
        return False
inherited = [fd for fd in map(int, os.listdir("/proc/self/fd")) if fd > 2 and inheritable(fd)]
print("inherited", inherited, "env", os.environ.get("WARM_TEST"), flush=True)
print("cmdline", open("/proc/self/cmdline", "rb").read().rstrip(b"\\0").split(b"\\0")[1:], flush=True)
sys.stderr.write("last words\\n")
sys.exit(3)
"""


def test_a_warm_generation_is_what_a_cold_one_is(
    world: World, closing: list[OwnChild | Preloader], capfd: pytest.CaptureFixture[str]
) -> None:
    world.env["WARM_TEST"] = "yes"
    command = world.script(PARITY)
    seen = {}
    for warm in (False, True):
        child = world.child([*command, "arg"], warm=warm)
        closing.append(child)
        with capture_logs():  # the log lines would be on stdout
            child.start()  # (it exits at once: whose child it was is asserted below)
            assert _exit_of(child) == 3
        assert child.last_reason == "exited with code 3: last words"
        seen[warm] = capfd.readouterr().out
        if warm:
            assert child.warm is not None
            assert child.warm.forks == 1
        child.close()
    assert seen[True] == seen[False]
    assert f"main __main__ {world.root / 'app.py'} ['app.py', 'arg'] True" in seen[True]
    assert "group True" in seen[True]
    assert "inherited []" in seen[True]


SLEEPER = """\
import os, signal, subprocess, sys
if sys.argv[1] == "handler":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
sub = subprocess.Popen(["sleep", "60"])  # in the same process group
with open(os.environ["MARK"], "w") as f:
    f.write(str(sub.pid))
signal.pause()
"""


@pytest.mark.parametrize("mode", ["handler", "default"])
def test_signals_and_the_process_group_as_cold(
    world: World, closing: list[OwnChild | Preloader], mode: str
) -> None:
    command = world.script(SLEEPER)
    mark = Path(world.env["MARK"])
    codes = {}
    for warm in (False, True):
        mark.unlink(missing_ok=True)
        child = world.child([*command, mode], warm=warm, grace=5)
        closing.append(child)
        pid = child.start()
        wait_until(mark.exists)
        wait_until(lambda: mark.read_text() != "")
        grandchild = int(mark.read_text())
        assert os.getpgid(grandchild) == pid
        codes[warm] = child.stop()
        assert not _running(pid)
        wait_until(lambda g=grandchild: not _running(g))  # type: ignore[misc]
        child.close()
    assert codes[True] == codes[False] == (0 if mode == "handler" else -signal.SIGTERM)


def test_crash_loop_backoff_as_cold(world: World, closing: list[OwnChild | Preloader]) -> None:
    command = world.script("import sys\nsys.exit(1)\n")
    delays = {}
    for warm in (False, True):
        child = world.child(command, warm=warm, backoff=(0.05, 1.0))
        closing.append(child)
        with capture_logs() as logs:
            child.start()
            wait_until(lambda c=child, lg=logs: (c.poll(), len(events(lg, "child-exited")))[1] >= 3)  # type: ignore[misc]
            child.close()
        delays[warm] = [e["restart_in"] for e in events(logs, "child-exited")][:3]
        assert child.crashes >= 3
        if warm:
            assert child.warm is not None
            assert child.warm.forks >= 3
    assert delays[True] == delays[False] == [0.05, 0.1, 0.2]


ROOTMOD = (
    "import os\nwith open(os.environ['MARK'], 'a') as f:\n    f.write('%d\\n' % os.getpid())\n"
)


def test_nothing_under_the_roots_is_ever_preloaded(
    world: World, closing: list[OwnChild | Preloader]
) -> None:
    (world.root / "projmod.py").write_text(ROOTMOD, encoding="utf-8")
    world.package("okpkg", "VALUE = 1\n")
    world.package("extpkg", "import projmod\n")  # a third-party module importing project code
    mark = Path(world.env["MARK"])
    plan = world.plan(world.script("pass\n"))

    def preloader(names: list[str]) -> Preloader:
        made = Preloader(
            plan,
            cwd=str(world.root),
            env=world.env,
            names=names,
            roots=[str(world.root)],
            session=SESSION,
        )
        closing.append(made)
        return made

    first = preloader(["okpkg", "projmod"])
    assert first.ready(30)
    assert "under a watched root" in first.skipped["projmod"]
    with pytest.raises(PreloadError, match="projmod is under a watched root") as caught:
        preloader(["okpkg", "extpkg"]).ready(30)
    assert caught.value.culprit == "extpkg"
    assert not mark.exists()  # projmod's code never ran in a preloader


def test_learned_from_the_last_generation_without_the_projects_modules(
    world: World, closing: list[OwnChild | Preloader]
) -> None:
    (world.root / "projmod.py").write_text(ROOTMOD, encoding="utf-8")
    world.package("okpkg", "VALUE = 1\n")
    command = world.script("import okpkg, projmod, signal\nsignal.pause()\n")
    child = world.child(command, grace=5)
    closing.append(child)
    starter = child.warm
    assert starter is not None
    with capture_logs() as logs:
        child.start()  # forked from a preloader that imports nothing
        wait_until(lambda: (child.poll(), {"projmod", "okpkg"} <= set(starter.learned))[1])
        wait_until(lambda: (child.poll(), len(events(logs, "preloaded")))[1] >= 2)
        second = child.restart()
        assert _parent(second) == starter.preloader_pid
        mark = Path(world.env["MARK"])
        wait_until(lambda: str(second) in mark.read_text().split())
    assert events(logs, "preloaded")[-1]["modules"] >= 2
    marks = Path(world.env["MARK"]).read_text().split()
    assert starter.preloader_pid is not None
    assert str(starter.preloader_pid) not in marks  # only generations imported projmod
    assert str(second) in marks


THREADS = "import threading, time\nthreading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n"


def test_a_module_that_starts_a_thread_is_left_out(
    world: World, closing: list[OwnChild | Preloader]
) -> None:
    world.package("threadpkg", THREADS)
    world.package("okpkg", "VALUE = 1\n")
    command = world.script("import okpkg, threadpkg, signal\nsignal.pause()\n")
    child = world.child(command, grace=5)
    closing.append(child)
    starter = child.warm
    assert starter is not None
    with capture_logs() as logs:
        child.start()
        wait_until(lambda: (child.poll(), "threadpkg" in starter.learned)[1])
        wait_until(lambda: (child.poll(), starter._candidate is not None)[1])
        child.restart()  # the candidate failed: threadpkg left out, this one from the first
        wait_until(lambda: (child.poll(), len(events(logs, "preloaded")))[1] >= 2)
        pid = child.restart()
        assert _parent(pid) == starter.preloader_pid
        assert len(os.listdir(f"/proc/{starter.preloader_pid}/task")) == 1
    skipped = events(logs, "preload-skipped")
    assert len(skipped) == 1
    assert "importing threadpkg started a thread" in skipped[0]["reason"]
    assert starter.forks == 3


USR1 = """\
import signal, threading, time
signal.signal(signal.SIGUSR1, lambda *_: threading.Thread(target=time.sleep, args=(3600,), daemon=True).start())
"""


def test_forks_only_with_one_thread_else_cold_said_once(
    world: World, closing: list[OwnChild | Preloader]
) -> None:
    world.package("usr1pkg", USR1)
    command = world.script("import usr1pkg, signal\nsignal.pause()\n")
    child = world.child(command, grace=5)
    closing.append(child)
    starter = child.warm
    assert starter is not None
    with capture_logs() as logs:
        child.start()
        wait_until(lambda: (child.poll(), len(events(logs, "preloaded")))[1] >= 2, 30)
        child.restart()  # from the preloader that imported usr1pkg
        preloader = starter.preloader_pid
        assert preloader is not None
        os.kill(preloader, signal.SIGUSR1)  # it starts a thread now
        wait_until(lambda: len(os.listdir(f"/proc/{preloader}/task")) == 2)
        cold = child.restart()
        assert _parent(cold) == os.getpid()
    said = events(logs, "warm-fallback")
    assert [e["reason"] for e in said] == ["the preloader has 2 threads: cold start"]
    assert not psutil.pid_exists(preloader) or psutil.Process(preloader).status() == "zombie"


def test_rebuilt_when_an_imported_file_changes(
    world: World, closing: list[OwnChild | Preloader]
) -> None:
    init = world.package("okpkg", "VALUE = 1\n")
    out = world.root / "out"
    command = world.script(
        f"import okpkg, signal\nopen({str(out)!r}, 'w').write(str(okpkg.VALUE))\nsignal.pause()\n"
    )
    child = world.child(command, grace=5)
    closing.append(child)
    starter = child.warm
    assert starter is not None
    with capture_logs() as logs:
        child.start()
        wait_until(lambda: (child.poll(), len(events(logs, "preloaded")))[1] >= 2, 30)
        child.restart()
        first = starter.preloader_pid
        wait_until(lambda: out.exists() and out.read_text() == "1")
        # what pip install does to a module (another size: a same-size edit in the same second
        # would leave its timestamp pyc looking fresh, and CPython would import the old code)
        init.write_text("VALUE = 22\n", encoding="utf-8")
        out.unlink()
        pid = child.restart()  # cold, while the new preloader imports in the background
        assert _parent(pid) == os.getpid()
        wait_until(lambda: out.exists() and out.read_text() == "22")
        wait_until(lambda: (child.poll(), len(events(logs, "preloaded")))[1] >= 3, 30)
        out.unlink()
        pid = child.restart()
        wait_until(lambda: out.exists() and out.read_text() == "22")
        assert starter.preloader_pid not in (None, first)
        assert _parent(pid) == starter.preloader_pid
        assert first is not None
        os.kill(starter.preloader_pid, signal.SIGKILL)  # a preloader that dies: rebuilt too
        assert _parent(child.restart()) == os.getpid()
        wait_until(lambda: (child.poll(), len(events(logs, "preloaded")))[1] >= 4, 30)
        assert _parent(child.restart()) == starter.preloader_pid
    assert not events(logs, "warm-fallback")  # a rebuild is no fallback: preload-stale said why
    stale = [e["reason"] for e in events(logs, "preload-stale")]
    assert stale == [f"{init} changed since it was preloaded", "the preloader exited"]


def test_a_preloader_that_fails_falls_back_to_cold(
    world: World, closing: list[OwnChild | Preloader], tmp_path: Path
) -> None:
    fake = tmp_path / "bin" / "python3"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\n[ "$1" = "-c" ] && exit 7\nexec {PY} "$@"\n', encoding="utf-8")
    fake.chmod(0o755)
    world.script("import signal\nsignal.pause()\n")
    child = world.child([str(fake), "app.py"], grace=5)
    closing.append(child)
    with capture_logs() as logs:
        assert _parent(child.start()) == os.getpid()
        for _ in range(3):
            assert _parent(child.restart()) == os.getpid()
    said = [e["reason"] for e in events(logs, "warm-fallback")]
    assert said == ["the preloader exited (exit code 7): cold start"]
    assert len(events(logs, "warm-off")) == 1


VERSIONED = (
    "import signal, sys\nprint('ran on', sys.version_info[:2], flush=True)\nsignal.pause()\n"
)


@pytest.mark.parametrize("version", ["3.6", "3.7", "3.9", "3.12", "3.13"])
def test_the_apps_own_interpreter_runs_the_preloader(
    world: World, closing: list[OwnChild | Preloader], version: str
) -> None:
    """The preloader runs in the command's interpreter, not the daemon's: 3.7+ forks, an older
    one starts cold with one line (no traceback of the preloader)."""
    python = other_interpreter(version)
    if python is None:
        pytest.skip(f"CPython {version} is not installed")
    world.script(VERSIONED)
    world.env.pop("PYTHONPATH")  # this interpreter's own site-packages
    child = world.child([python, "app.py"])
    closing.append(child)
    with capture_logs() as logs:
        pid = child.start()
        warm = _parent(pid) != os.getpid()
        assert child.stop() == -signal.SIGTERM
    assert warm is (version != "3.6")
    said = [e["reason"] for e in events(logs, "warm-fallback")]
    assert said == ([] if warm else [f"{python} is older than Python 3.7: cold start"])


def test_the_module_run_by_dash_m_is_never_preloaded(
    world: World,
    closing: list[OwnChild | Preloader],
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``python -m tool.cli``: a cold start imports ``tool``, then runs ``tool.cli`` as
    ``__main__``; a preloader that imported ``tool.cli`` would make runpy warn."""
    world.package("tool", "")
    (world.site / "tool" / "cli.py").write_text(
        "import json, os, signal\nwith open(os.environ['MARK'], 'a') as f:\n"
        "    f.write('%d\\n' % os.getpid())\nsignal.pause()\n",
        encoding="utf-8",
    )
    mark = Path(world.env["MARK"])
    monkeypatch.setattr(warm_module, "_SETTLED", 0.0)
    child = world.child([PY, "-W", "always", "-m", "tool.cli"], grace=5)
    closing.append(child)
    starter = child.warm
    assert starter is not None
    with capture_logs() as logs:
        first = child.start()
        wait_until(lambda: mark.exists() and str(first) in mark.read_text().split())
        wait_until(lambda: (child.poll(), len(events(logs, "preloaded")))[1] >= 2, 30)
        assert "tool.cli" in starter.learned
        pid = child.restart()
        assert _parent(pid) == starter.preloader_pid
        wait_until(lambda: str(pid) in mark.read_text().split())
        child.poll()  # what it imported is known: nothing new, no other preloader is built
        assert starter._candidate is None
        child.stop()
    assert "RuntimeWarning" not in capfd.readouterr().err
    assert len(events(logs, "preloaded")) == 2


def test_a_preloader_is_never_taken_for_a_stale_importer(
    world: World, closing: list[OwnChild | Preloader]
) -> None:
    """It works in the project's directory and predates the edits, but never imports their code
    (``cachewatchd status``'s and ``doctor``'s stale processes leave it out)."""
    world.script("pass\n")
    plan = world.plan([PY, "app.py"])
    preloader = Preloader(
        plan, cwd=str(world.root), env=world.env, names=[], roots=[str(world.root)], session=SESSION
    )
    closing.append(preloader)
    assert preloader.ready(30)
    assert importers([psutil.Process(preloader.pid)]) == []
