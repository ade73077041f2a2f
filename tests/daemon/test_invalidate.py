"""Invalidate on the event: a source's caches go when its event arrives, not when its batch closes.

The fast path with synthetic events (the :class:`Invalidator` in front of a recording sink, the
real :class:`BatchHandler` removing real pycs), then the real daemon on real inotify with a quiet
period of a minute: the pyc is gone while the batch is still open.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from cachewatchd.config.settings import CommandLine, build_settings
from cachewatchd.config.user import Config
from cachewatchd.daemon.batch_handler import BatchHandler, Counters
from cachewatchd.daemon.invalidate import Invalidator
from cachewatchd.daemon.loop import Daemon
from cachewatchd.errors import EXIT_FAILURE
from cachewatchd.watch.batch import Batch
from tests.support.inproc import running_daemon
from tests.support.pycs import write
from tests.support.wait import compile_pyc, wait_until


class Recorder:
    """The batcher's place: records what is passed on."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Path]] = []

    def source_changed(self, path: Path) -> None:
        self.calls.append(("changed", path))

    def source_removed(self, path: Path) -> None:
        self.calls.append(("removed", path))

    def dir_removed(self, path: Path) -> None:
        self.calls.append(("dir", path))

    def rescan(self, root: Path, reason: str) -> None:
        self.calls.append(("rescan", root))


@pytest.fixture
def tree(tmp_path: Path, clean_env: None) -> Path:
    root = tmp_path.resolve() / "proj"
    write(root / "pkg" / "__init__.py", "")
    write(root / "pkg" / "mod.py", "X = 1\n")
    write(root / "pkg" / "gone.py", "Y = 1\n")
    return root


@pytest.fixture
def handler(tree: Path) -> BatchHandler:
    return BatchHandler({tree: ()}, pycache_prefix=None, counters=Counters(), eager=True)


@pytest.fixture
def invalidator(handler: BatchHandler) -> Iterator[tuple[Invalidator, Recorder]]:
    sink = Recorder()
    inv = Invalidator(sink, handler.invalidate_now)
    inv.start()
    try:
        yield inv, sink
    finally:
        inv.stop()


def test_a_changed_source_loses_its_caches_before_any_batch(
    tree: Path, handler: BatchHandler, invalidator: tuple[Invalidator, Recorder]
) -> None:
    inv, sink = invalidator
    mod = tree / "pkg" / "mod.py"
    pyc = compile_pyc(mod)
    opt = compile_pyc(mod, optimize=2)
    other = compile_pyc(tree / "pkg" / "__init__.py")
    with capture_logs() as logs:
        inv.source_changed(mod)
        assert inv.sync(10)
    assert not pyc.exists()
    assert not opt.exists()
    assert other.exists()  # only the source's own entries
    assert sink.calls == [("changed", mod)]  # passed on to the batcher as well
    assert handler.counters.invalidations == 2
    assert [(e["event"], e["source"]) for e in logs if e["log_level"] != "debug"] == [
        ("invalidated", str(mod))
    ]
    assert handler.rechecker.next_due() is not None  # the second look stays


def test_sources_of_one_directory_invalidated_at_once_give_one_line(
    tree: Path, handler: BatchHandler
) -> None:
    """A storm's wake-up logs one line per directory: ``directory``, ``sources``, ``removed``;
    one source alone keeps its ``source`` line."""
    mod, init, gone = (tree / "pkg" / name for name in ("mod.py", "__init__.py", "gone.py"))
    pycs = {source: compile_pyc(source) for source in (mod, init, gone)}
    extra = compile_pyc(mod, optimize=1)
    with capture_logs() as logs:
        assert handler.invalidate_now([mod, init], [gone]) == 4
        write(mod, "X = 2\n")
        again = compile_pyc(mod)
        assert handler.invalidate_now([mod], []) == 1
    assert not any(p.exists() for p in [*pycs.values(), extra, again])
    logs = [e for e in logs if e["log_level"] != "debug"]
    removed = logs[0].pop("removed")
    assert logs[0] == {
        "event": "invalidated",
        "log_level": "info",
        "directory": str(tree / "pkg"),
        "sources": sorted(str(s) for s in (mod, init, gone)),
    }
    assert removed[:2] == [str(pycs[init]), str(pycs[gone])]  # by source
    assert sorted(removed[2:]) == sorted([str(pycs[mod]), str(extra)])
    assert logs[1] == {
        "event": "invalidated",
        "log_level": "info",
        "source": str(mod),
        "removed": [str(again)],
    }
    assert len(logs) == 2


def test_a_removed_source_leaves_its_legacy_pyc_to_the_batch(
    tree: Path, handler: BatchHandler, invalidator: tuple[Invalidator, Recorder]
) -> None:
    """An atomic save removes the source for a moment: only the batch can say it stayed gone."""
    inv, _ = invalidator
    gone = tree / "pkg" / "gone.py"
    pyc = compile_pyc(gone)
    legacy = compile_pyc(gone, cfile=gone.with_suffix(".pyc"))
    gone.unlink()
    inv.source_removed(gone)
    assert inv.sync(10)
    assert not pyc.exists()
    assert legacy.exists()
    outcome = handler.handle(Batch(removed=frozenset({gone}), events=1))
    assert not legacy.exists()  # still gone when the batch was handled: a ghost
    assert outcome.removed == 1
    assert gone in outcome.touched


def test_an_eager_batch_does_not_remove_what_was_written_after_the_event(
    tree: Path, handler: BatchHandler, invalidator: tuple[Invalidator, Recorder]
) -> None:
    """The event removed the old pyc; one an importer wrote from the new source afterwards is
    fresh, and the batch leaves it (the second look judges it exactly)."""
    inv, _ = invalidator
    mod = tree / "pkg" / "mod.py"
    compile_pyc(mod)
    inv.source_changed(mod)
    assert inv.sync(10)
    fresh = compile_pyc(mod)
    outcome = handler.handle(Batch(changed=frozenset({mod}), events=1))
    assert fresh.exists()
    assert mod in outcome.touched


def test_an_error_while_invalidating_is_logged_and_the_thread_carries_on(tree: Path) -> None:
    calls: list[list[Path]] = []
    errors: list[int] = []

    def invalidate(changed: object, removed: object) -> None:
        calls.append(list(changed))  # type: ignore[call-overload]
        if len(calls) == 1:
            raise OSError("injected")

    inv = Invalidator(Recorder(), invalidate, on_error=lambda: errors.append(1))
    inv.start()
    try:
        with capture_logs() as logs:
            inv.source_changed(tree / "a.py")
            assert inv.sync(10)
            inv.source_changed(tree / "b.py")
            assert inv.sync(10)
        assert inv.alive()
        assert calls == [[tree / "a.py"], [tree / "b.py"]]
        assert errors == [1]
        assert [e["where"] for e in logs if e["event"] == "error"] == ["invalidation"]
    finally:
        inv.stop()
    assert not inv.alive()


class _HookedCondition(threading.Condition):
    """A condition that calls *hook* before each ``with`` acquires it."""

    def __init__(self, hook: Callable[[], None]) -> None:
        super().__init__()
        self._hook = hook

    def __enter__(self) -> bool:
        self._hook()
        return super().__enter__()


@pytest.mark.parametrize("removed", [False, True])
def test_an_event_that_arrives_while_the_thread_takes_the_queue_is_not_lost(
    tree: Path, removed: bool
) -> None:
    """The race the real-NFS test met (a source's event reached the batcher, never the
    invalidation): the observer's thread had picked the queue's dict before taking the lock, the
    invalidation thread took that dict and put a new one in its place, and the event went into
    the dict already taken. Here the observer's thread is held right before the lock while the
    invalidation thread takes the queue."""
    first, queued, late = tree / "first.py", tree / "queued.py", tree / "late.py"
    calls: list[list[Path]] = []
    in_first, release, at_lock, taken = (threading.Event() for _ in range(4))
    observer: list[threading.Thread] = []

    def invalidate(changed: Sequence[Path], gone: Sequence[Path]) -> None:
        calls.append([*changed, *gone])
        if len(calls) == 1:
            in_first.set()
            assert release.wait(10)
        elif len(calls) == 2:
            taken.set()

    def hook() -> None:
        if observer and threading.current_thread() is observer[0] and not at_lock.is_set():
            at_lock.set()
            assert taken.wait(10)

    inv = Invalidator(Recorder(), invalidate)
    inv._cond = _HookedCondition(hook)  # before the thread starts
    inv.start()
    try:
        inv.source_changed(first)
        assert in_first.wait(10)  # the thread is busy with the first event
        inv.source_changed(queued)  # waits in the queue for the thread's next round
        queue = inv.source_removed if removed else inv.source_changed
        observer.append(threading.Thread(target=queue, args=(late,)))
        observer[0].start()
        assert at_lock.wait(10)  # the observer's thread is at the lock
        release.set()  # the thread takes the queue (``queued``) while the observer waits
        observer[0].join(10)
        assert inv.sync(10)
        assert late in [path for call in calls for path in call], calls
    finally:
        release.set()
        inv.stop()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify: Linux only")
def test_real_inotify_removes_the_pyc_before_the_quiet_period_ends(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real events, a quiet period of a minute: the pyc goes while the batch is still open."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    (tmp_path / "run").mkdir(mode=0o700)
    mod = tree / "pkg" / "mod.py"
    pyc = compile_pyc(mod)
    with running_daemon(tree, quiet=60.0, max_window=60.0) as daemon:
        observers = daemon.status()["observers"]
        assert observers[str(tree)]["observer"] == "native", observers
        batches = daemon.status()["counters"]["batches"]
        mod.write_text("X = 2\n")
        wait_until(lambda: not pyc.exists(), 10, message="the pyc to go")
        assert daemon.status()["counters"]["batches"] == batches  # the batch is still open
        wait_until(lambda: daemon.status()["counters"]["invalidations"] >= 1, 10)


class Fault(BaseException):
    """Kills the thread (no ``except Exception`` keeps it alive)."""


def test_the_invalidation_thread_dying_stops_the_daemon(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    (tmp_path / "run").mkdir(mode=0o700)

    def boom(self: BatchHandler, changed: object, removed: object) -> int:
        raise Fault("injected")

    settings = build_settings(Config(), CommandLine(paths=(tree,)))
    ready = threading.Event()
    daemon = Daemon(settings, on_ready=ready.set)
    code: list[int] = []
    with capture_logs() as logs:
        thread = threading.Thread(target=lambda: code.append(daemon.run()), name="daemon-run")
        thread.start()
        try:
            wait_until(ready.is_set, 30, message="ready")
            monkeypatch.setattr(BatchHandler, "invalidate_now", boom)
            (tree / "pkg" / "mod.py").write_text("X = 3\n")
            wait_until(lambda: bool(code), 30, message="the daemon to exit")
        finally:
            daemon.request_stop()
            thread.join(30)
    assert code == [EXIT_FAILURE]
    died = [e for e in logs if e["event"] == "thread-died"]
    assert [e["thread"] for e in died] == ["cachewatchd-invalidate"]


def test_a_sync_waiting_for_later_events_returns_when_the_thread_dies(tree: Path) -> None:
    """The batcher's ``sync`` waits for events queued after the one that killed the thread: it
    returns False once the thread is gone, instead of waiting for a wake-up that never comes (the
    daemon's shutdown would hang in the batcher's stop)."""
    entered, release = threading.Event(), threading.Event()

    def invalidate(changed: object, removed: object) -> None:
        entered.set()
        assert release.wait(10)
        raise Fault("injected")

    inv = Invalidator(Recorder(), invalidate)
    with capture_logs() as logs:
        inv.start()
        try:
            inv.source_changed(tree / "a.py")
            assert entered.wait(10)
            inv.source_changed(tree / "b.py")  # queued after the event that will kill it
            result: list[bool] = []
            waiter = threading.Thread(target=lambda: result.append(inv.sync()), name="sync")
            waiter.start()
            # in the condition's wait (the invalidation thread itself is busy, not waiting)
            wait_until(lambda: len(inv._cond._waiters) == 1, 10)  # type: ignore[attr-defined]
            release.set()
            waiter.join(20)
            assert not waiter.is_alive(), "sync() still waits for a thread that is gone"
            assert result == [False]
        finally:
            release.set()
            inv.stop()
    assert [e["thread"] for e in logs if e["event"] == "thread-died"] == ["cachewatchd-invalidate"]


def test_second_looks_due_survive_a_reload_that_replaces_the_handler(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload with new settings replaces the batch handler, which holds the second looks: the
    looks due for the sources invalidated just before stay due (a pyc written with the old code
    a moment after the reload is still looked for)."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    (tmp_path / "run").mkdir(mode=0o700)
    mod = tree / "pkg" / "mod.py"
    compile_pyc(mod)
    new = build_settings(Config(poll_interval=2.0), CommandLine(paths=(tree,)))
    with running_daemon(tree, reload_settings=lambda: new) as daemon:
        old_handler = daemon._handler
        write(mod, "X = 2\n")
        wait_until(lambda: old_handler.rechecker.next_due() is not None, 10, message="scheduled")
        daemon.request_reload()
        wait_until(lambda: daemon._handler is not old_handler, 10, message="the reload")
        assert daemon._handler.rechecker.next_due() is not None
