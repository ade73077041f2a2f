"""The batcher: storms become a handful of batches, quiet period, max window, stop flushes."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from cachewatchd.watch.batch import Batch, Batcher, Debounce, GitMove, Rescan
from tests.support.wait import wait_until


class _Recorder:
    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, batch: Batch) -> None:
        with self.lock:
            self.batches.append(batch)
            self.threads.add(threading.current_thread().name)

    def all_changed(self) -> set[Path]:
        with self.lock:
            return {p for b in self.batches for p in b.changed}

    def count(self) -> int:
        with self.lock:
            return len(self.batches)


class _FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the window arithmetic, on a fake clock ---------------------------------------------------------
def test_debounce_closes_after_quiet_period() -> None:
    clock = _FakeClock()
    window = Debounce(quiet=0.05, max_window=1.0)
    assert window.deadline() is None
    assert not window.due(clock.now)
    window.note(clock.now)
    clock.now += 0.04
    assert not window.due(clock.now)
    window.note(clock.now)  # pushes the quiet deadline back
    clock.now += 0.04
    assert not window.due(clock.now)
    clock.now += 0.011
    assert window.due(clock.now)


def test_debounce_max_window_caps_a_storm() -> None:
    clock = _FakeClock()
    window = Debounce(quiet=0.05, max_window=1.0)
    start = clock.now
    closed_at = None
    for _ in range(1000):  # an event every 10 ms, forever quiet-less
        window.note(clock.now)
        clock.now += 0.01
        if window.due(clock.now):
            closed_at = clock.now
            break
    assert closed_at is not None
    assert closed_at - start == pytest.approx(1.0, abs=0.011)
    window.reset()
    assert window.deadline() is None


# -- the threaded batcher, real clock -------------------------------------------------------------
def test_storm_of_10k_events_gives_a_handful_of_batches(tmp_path: Path) -> None:
    rec = _Recorder()
    paths = [tmp_path / f"m{i}.py" for i in range(10_000)]
    with Batcher(rec, quiet=0.05, max_window=1.0) as batcher:
        for p in paths:
            batcher.source_changed(p)
        wait_until(batcher.idle, 10, message="batcher idle")
        wait_until(lambda: rec.all_changed() == set(paths), 10, message="every path handed over")
    assert 1 <= rec.count() <= 5
    assert sum(b.events for b in rec.batches) == 10_000
    assert rec.threads == {"cachewatchd-batcher"}


def test_storm_from_many_threads_loses_nothing(tmp_path: Path) -> None:
    rec = _Recorder()
    with Batcher(rec) as batcher:

        def feed(k: int) -> None:
            for i in range(1000):
                batcher.source_changed(tmp_path / f"t{k}" / f"m{i}.py")

        workers = [threading.Thread(target=feed, args=(k,)) for k in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wait_until(lambda: len(rec.all_changed()) == 4000, 10, message="4000 paths")
    assert sum(b.events for b in rec.batches) == 4000


def test_quiet_period_closes_a_batch_without_flush(tmp_path: Path) -> None:
    rec = _Recorder()
    with Batcher(rec, quiet=0.02, max_window=60) as batcher:
        batcher.source_changed(tmp_path / "a.py")
        wait_until(lambda: rec.count() == 1, 10, message="quiet close")
        batcher.source_removed(tmp_path / "b.py")
        wait_until(lambda: rec.count() == 2, 10, message="second batch")
    assert rec.batches[0].changed == {tmp_path / "a.py"}
    assert rec.batches[1].removed == {tmp_path / "b.py"}
    assert not rec.batches[1].changed


def test_max_window_closes_a_batch_during_a_continuous_storm(tmp_path: Path) -> None:
    rec = _Recorder()
    stop = threading.Event()
    with Batcher(rec, quiet=5.0, max_window=0.1) as batcher:

        def storm() -> None:
            i = 0
            while not stop.is_set():
                batcher.source_changed(tmp_path / f"m{i % 50}.py")
                i += 1
                stop.wait(0.001)

        feeder = threading.Thread(target=storm)
        feeder.start()
        try:
            # the quiet period (5 s) never elapses, yet batches keep closing
            wait_until(lambda: rec.count() >= 2, 10, message="two batches mid-storm")
        finally:
            stop.set()
            feeder.join()


def test_stop_flushes_the_pending_batch(tmp_path: Path) -> None:
    rec = _Recorder()
    batcher = Batcher(rec, quiet=60, max_window=60)
    batcher.start()
    batcher.source_changed(tmp_path / "a.py")
    batcher.dir_removed(tmp_path / "pkg")
    batcher.rescan(tmp_path, "overflow")
    batcher.stop()
    assert rec.count() == 1
    batch = rec.batches[0]
    assert batch.changed == {tmp_path / "a.py"}
    assert batch.dirs_removed == {tmp_path / "pkg"}
    assert batch.rescans == {Rescan(tmp_path, "overflow")}
    assert batch.events == 3
    assert not batcher._thread.is_alive()
    batcher.source_changed(tmp_path / "late.py")  # ignored after stop, no error
    assert rec.count() == 1


def test_flush_closes_now(tmp_path: Path) -> None:
    rec = _Recorder()
    with Batcher(rec, quiet=60, max_window=60) as batcher:
        batcher.source_changed(tmp_path / "a.py")
        batcher.flush()
        wait_until(lambda: rec.count() == 1, 10, message="flushed batch")


def test_events_during_a_slow_batch_go_to_the_next_one(tmp_path: Path) -> None:
    gate = threading.Event()
    entered = threading.Event()
    seen: list[Batch] = []

    def slow(batch: Batch) -> None:
        seen.append(batch)
        entered.set()
        gate.wait(10)

    with Batcher(slow, quiet=0.01) as batcher:
        batcher.source_changed(tmp_path / "a.py")
        assert entered.wait(10)
        assert not batcher.idle()
        batcher.source_changed(tmp_path / "b.py")
        batcher.source_changed(tmp_path / "c.py")
        assert batcher.pending() == 2  # what the daemon's restart hold asks
        gate.set()
        wait_until(lambda: len(seen) == 2, 10, message="second batch")
    assert seen[0].changed == {tmp_path / "a.py"}
    assert seen[1].changed == {tmp_path / "b.py", tmp_path / "c.py"}


def test_git_moves_and_rescans_coalesce_per_repo_and_root(tmp_path: Path) -> None:
    rec = _Recorder()
    repo = tmp_path / "repo"
    with Batcher(rec, quiet=60, max_window=60) as batcher:
        batcher.git_moved(GitMove(repo, "a" * 40, "b" * 40))
        batcher.git_moved(GitMove(repo, "b" * 40, "c" * 40))
        batcher.rescan(tmp_path, "overflow")
        batcher.rescan(tmp_path, "overflow")
        batcher.rescan(tmp_path, "observer fallback")
    (batch,) = rec.batches
    assert batch.git_moves == {GitMove(repo, "a" * 40, "c" * 40)}
    assert batch.rescans == {Rescan(tmp_path, "overflow; observer fallback")}


def test_a_failing_handler_is_logged_and_the_batcher_carries_on(tmp_path: Path) -> None:
    calls: list[Batch] = []

    def flaky(batch: Batch) -> None:
        calls.append(batch)
        if len(calls) == 1:
            raise RuntimeError("boom")

    with capture_logs() as logs, Batcher(flaky, quiet=0.01) as batcher:
        batcher.source_changed(tmp_path / "a.py")
        wait_until(lambda: len(calls) == 1 and batcher.idle(), 10, message="first batch")
        batcher.source_changed(tmp_path / "b.py")
        wait_until(lambda: len(calls) == 2, 10, message="second batch")
    errors = [e for e in logs if e["event"] == "error"]
    assert len(errors) == 1
    assert "boom" in errors[0]["error"]


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        Batcher(lambda b: None, quiet=0)


def test_stop_from_inside_the_handler_does_not_deadlock(tmp_path: Path) -> None:
    holder: list[Batcher] = []

    def stopper(batch: Batch) -> None:
        holder[0].stop()

    batcher = Batcher(stopper, quiet=0.01)
    holder.append(batcher)
    batcher.start()
    batcher.source_changed(tmp_path / "a.py")
    wait_until(lambda: not batcher._thread.is_alive(), 10, message="thread ended")
    batcher.stop()


def test_git_settled_is_carried_once_per_work_tree(tmp_path: Path) -> None:
    rec = _Recorder()
    with Batcher(rec, quiet=60, max_window=60) as batcher:
        batcher.git_settled(tmp_path / "repo")
        batcher.git_settled(tmp_path / "repo")
    (batch,) = rec.batches
    assert batch.git_settled == {tmp_path / "repo"}
    assert batch  # a batch of its own: the daemon's restart hold is offered again
