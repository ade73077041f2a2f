"""The daemon registry: overlap refused with a real second process, dead records pruned,
private atomic status file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

import psutil
import pytest
from structlog.testing import capture_logs

from cachewatchd.daemon.registry import (
    DaemonRecord,
    find_daemons,
    list_daemons,
    process_of,
    register_daemon,
    registry_dir,
)
from cachewatchd.errors import EXIT_FAILURE, RuntimeFailure, UsageError
from tests.support.fs import full_filesystem

CHILD = """\
import sys
from pathlib import Path
from cachewatchd.daemon.registry import register_daemon
registration = register_daemon([Path(p) for p in sys.argv[1:]])
print("ready", flush=True)
sys.stdin.readline()
registration.close()
"""


@pytest.fixture(autouse=True)
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private runtime dir for this test (inherited by child processes)."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return runtime


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for sub in ("a/inner", "b", "c"):
        (tmp_path / "tree" / sub).mkdir(parents=True)
    return tmp_path / "tree"


@contextmanager
def registered_child(roots: Sequence[Path]) -> Iterator[subprocess.Popen[str]]:
    """A real second process that registers *roots* and waits on stdin; stopped by pid at the end."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, *map(str, roots)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            _, err = proc.communicate(timeout=30)
            pytest.fail(f"child did not register: {err}")
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=30)


def records_on_disk() -> list[Path]:
    return sorted(registry_dir().glob("*.json"))


def test_register_writes_a_private_record_and_close_removes_it(tree: Path, xdg: Path) -> None:
    with register_daemon([tree / "a", tree / "b" / ".." / "c"]) as registration:
        assert registration.file.parent == xdg / "cachewatchd" / "daemons"
        assert stat.S_IMODE(registration.file.stat().st_mode) == 0o600
        assert stat.S_IMODE(registration.file.parent.stat().st_mode) == 0o700
        record = json.loads(registration.file.read_text())
        me = psutil.Process()
        assert record["pid"] == os.getpid() == registration.pid
        assert record["create_time"] == me.create_time()
        assert record["roots"] == [str((tree / "a").resolve()), str((tree / "c").resolve())]
        assert record["uid"] == os.getuid()
        started = datetime.fromisoformat(record["started"])
        assert started.utcoffset() is not None
        assert started.utcoffset() == timezone.utc.utcoffset(None)
        assert [d["pid"] for d in list_daemons()] == [os.getpid()]
        assert process_of(record) is not None
    assert not registration.file.exists()
    assert list_daemons() == []


def test_the_core_of_a_record_is_typed(tree: Path) -> None:
    with register_daemon([tree / "a"]) as mine:
        mine.update({"counters": {"invalidations": 1}})
        document = json.loads(mine.file.read_text())
        core = DaemonRecord.from_json(document)
        assert core == mine.core
        assert core.pid == os.getpid()
        assert core.roots == (str((tree / "a").resolve()),)
        assert core.to_json() == {key: document[key] for key in core.to_json()}
        assert set(document) - set(core.to_json()) == {"counters", "updated"}
        assert process_of(core) is not None
        updated = datetime.fromisoformat(document["updated"])  # the same format as "started"
        assert document["updated"] == updated.isoformat(timespec="seconds")
        assert updated.utcoffset() == timezone.utc.utcoffset(None)
    without_version = {key: value for key, value in document.items() if key != "version"}
    broken = [
        {**document, "pid": True},
        {**document, "create_time": "1"},
        {**document, "roots": ["/a", 1]},
        without_version,
    ]
    for record in broken:
        with pytest.raises(ValueError, match="daemon record"):
            DaemonRecord.from_json(record)
        assert process_of(record) is None
    with pytest.raises(ValueError, match="daemon record"):
        DaemonRecord.from_json([document])


@pytest.mark.parametrize("mine", ["a", "a/inner", "."], ids=["equal", "descendant", "ancestor"])
def test_overlapping_second_daemon_is_refused_naming_the_pid(tree: Path, mine: str) -> None:
    with registered_child([tree / "a"]) as child:
        with pytest.raises(RuntimeFailure) as info:
            register_daemon([tree / "b", tree / mine])
        theirs, ours = (tree / "a").resolve(), (tree / mine).resolve()
        if theirs == ours:
            expected = f"{ours} is already watched by another cachewatchd (pid {child.pid})"
        else:
            expected = (
                f"another cachewatchd (pid {child.pid}) already watches {theirs}, "
                f"which overlaps {ours}"
            )
        assert str(info.value) == expected
        assert info.value.exit_code == EXIT_FAILURE
        assert [d["pid"] for d in list_daemons()] == [child.pid]  # nothing of ours was written


def test_a_symlink_loop_is_a_usage_error(tree: Path, tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "back")
    (tmp_path / "back").symlink_to(loop)
    with pytest.raises(UsageError) as info:
        find_daemons([loop])
    assert str(info.value) == f"{loop}: Too many levels of symbolic links"
    assert find_daemons([tree / "missing"]) == []  # a path that does not exist: no daemon


def test_a_full_runtime_dir_fails_the_registration_in_one_line(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with full_filesystem(tmp_path / "full", dirs=("cachewatchd/daemons",)) as full:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(full))
        daemons = full / "cachewatchd" / "daemons"
        with pytest.raises(RuntimeFailure) as info:
            register_daemon([tree / "a"])
        message = str(info.value)
        assert message.startswith(f"cannot write the daemon's record: {daemons}/{os.getpid()}@")
        assert message.endswith(".json: No space left on device")
        assert info.value.exit_code == EXIT_FAILURE
        assert sorted(p.name for p in daemons.iterdir()) == [".lock"]  # no half-written record


def test_overlap_through_a_symlink_is_seen(tree: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(tree / "a", target_is_directory=True)
    with registered_child([link]) as child, pytest.raises(RuntimeFailure, match=str(child.pid)):
        register_daemon([tree / "a" / "inner"])


def test_disjoint_daemons_coexist_and_are_found(tree: Path) -> None:
    with registered_child([tree / "a"]) as child, register_daemon([tree / "b"]) as mine:
        pids = [d["pid"] for d in list_daemons()]
        assert sorted(pids) == sorted([child.pid, mine.pid])
        assert [d["pid"] for d in find_daemons([tree / "a" / "inner"])] == [child.pid]
        assert [d["pid"] for d in find_daemons([tree])] == pids
        assert find_daemons([tree / "c"]) == []
        assert len(find_daemons(None)) == 2
        # a clean exit of the child removes its record
        assert child.stdin is not None
        child.stdin.write("\n")
        child.stdin.flush()
        child.wait(timeout=30)
        assert [d["pid"] for d in list_daemons()] == [mine.pid]


def test_record_of_a_killed_daemon_is_pruned(tree: Path) -> None:
    with registered_child([tree / "a"]) as child:
        files = records_on_disk()
        assert len(files) == 1
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        assert files[0].exists()  # a killed daemon cannot clean up
        with register_daemon([tree / "a"]) as mine:  # no longer refused
            assert [d["pid"] for d in list_daemons()] == [mine.pid]
        assert not files[0].exists()


def test_pid_reuse_is_detected_by_create_time(tree: Path) -> None:
    with register_daemon([tree / "b"]) as mine:
        suffix = mine.file.name.partition("@")[2]  # "<host>.json"
        # a record naming a live pid (our parent's) with another start time: that pid was reused
        parent = os.getppid()
        fake = dict(mine.record, pid=parent, create_time=mine.record["create_time"] - 1000)
        fake["roots"] = [str(tree)]
        reused = mine.file.parent / f"{parent}@{suffix}"
        reused.write_text(json.dumps(fake))
        assert process_of(fake) is None
        assert [d["pid"] for d in list_daemons()] == [mine.pid]
        assert not reused.exists()


def test_broken_records(tree: Path) -> None:
    with register_daemon([tree / "a"]) as mine:
        directory, suffix = mine.file.parent, mine.file.name.partition("@")[2]
        exited = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            check=True,
        )
        dead_pid = int(exited.stdout)
        dead = directory / f"{dead_pid}@{suffix}"
        dead.write_text("{not json")
        live = directory / f"{os.getppid()}@{suffix}"
        live.write_text('{"pid": "x"}')
        other_host = directory / f"{os.getppid()}@elsewhere.json"
        other_host.write_text(json.dumps(dict(mine.record, roots=[str(tree)])))
        assert [d["pid"] for d in list_daemons()] == [mine.pid]
        assert psutil.pid_exists(dead_pid) or not dead.exists()
        assert live.exists()  # a live pid: kept (cannot tell), never listed
        assert other_host.exists()  # another host's record is none of our business


class Kind(Enum):
    NATIVE = "native"


def test_update_merges_and_rewrites_atomically(tree: Path) -> None:
    with register_daemon([tree / "a"]) as registration:
        inode = registration.file.stat().st_ino
        assert registration.update(
            {
                "observers": {str(tree / "a"): Kind.NATIVE},
                "counters": {"invalidations": 3, "rescans": 1, "errors": 0},
                "last_event": datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
                "watched": {tree / "a"},
            }
        )
        record = json.loads(registration.file.read_text())
        assert registration.file.stat().st_ino != inode  # replaced, not rewritten in place
        assert stat.S_IMODE(registration.file.stat().st_mode) == 0o600
        assert record["observers"] == {str(tree / "a"): "native"}
        assert record["counters"] == {"invalidations": 3, "rescans": 1, "errors": 0}
        assert record["last_event"] == "2024-01-02T03:04:05+00:00"
        assert record["watched"] == [str(tree / "a")]
        assert "updated" in record
        assert registration.update({"counters": {"invalidations": 4}})
        record = json.loads(registration.file.read_text())
        assert record["counters"] == {"invalidations": 4}
        assert record["observers"] == {str(tree / "a"): "native"}
        assert list_daemons()[0]["counters"] == {"invalidations": 4}
        with pytest.raises(ValueError, match="pid, roots"):
            registration.update({"roots": [], "pid": 1})


def test_readers_never_see_a_partial_record(tree: Path) -> None:
    with register_daemon([tree / "a"]) as registration:
        done = threading.Event()
        big = {f"root{i}": "x" * 200 for i in range(200)}

        def writer() -> None:
            for n in range(300):
                registration.update({"counters": {"invalidations": n}, "big": big})
            done.set()

        thread = threading.Thread(target=writer)
        thread.start()
        seen = 0
        try:
            while not done.is_set():
                record: dict[str, Any] = json.loads(registration.file.read_text())
                assert record["pid"] == registration.pid
                seen += 1
        finally:
            thread.join()
        assert seen > 0
        assert json.loads(registration.file.read_text())["counters"] == {"invalidations": 299}
        names = sorted(p.name for p in registration.file.parent.iterdir())
        assert names == sorted([".lock", registration.file.name])  # no temporary files left


def test_update_failure_is_logged_not_raised(tree: Path) -> None:
    registration = register_daemon([tree / "a"])
    shutil.rmtree(registration.file.parent)
    with capture_logs() as logs:
        assert not registration.update({"counters": {}})
    assert [entry["event"] for entry in logs] == ["status-write-failed"]
    registration.close()
    assert not registration.update({"counters": {}})  # after close: ignored
    assert not registration.file.exists()


def test_set_roots_refuses_overlap(tree: Path) -> None:
    with registered_child([tree / "a"]) as child, register_daemon([tree / "b"]) as mine:
        with pytest.raises(RuntimeFailure, match=f"pid {child.pid}"):
            mine.set_roots([tree / "b", tree / "a" / "inner"])
        mine.set_roots([tree / "c"])
        assert json.loads(mine.file.read_text())["roots"] == [str((tree / "c").resolve())]
        mine.set_roots([tree / "c", tree / "c"])  # overlap with itself is fine


def test_a_fifo_in_the_registry_is_no_record_and_never_blocks() -> None:
    from cachewatchd.daemon import registry

    # named like the record of a live process (this one), so that it is read, not pruned by name
    os.mkfifo(registry.registry_dir() / f"{os.getpid()}@{socket.gethostname()}.json")
    assert registry.list_daemons() == []
