"""The native observer's emitter calls the root's handler itself (watchdog 7): one queue and one
thread fewer for every event, which a 10k-file checkout's 30k events paid in GIL time
(BENCHMARKS.md, "restarts overlap the old generation's drain; the storm on the GIL")."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from cachewatchd.watch.batch import Batcher
from cachewatchd.watch.events import EventMapper
from cachewatchd.watch.native import inotify_classes
from cachewatchd.watch.observers import Watcher
from tests.support.wait import wait_until

pytestmark = pytest.mark.skipif(
    inotify_classes() is None, reason="needs watchdog's inotify internals (Linux)"
)


def test_events_reach_the_handler_on_the_emitters_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path.resolve()
    seen: list[tuple[str, threading.Thread]] = []
    dispatch = EventMapper.dispatch

    def recording(self: EventMapper, event: Any) -> None:
        seen.append((str(event.src_path), threading.current_thread()))
        dispatch(self, event)

    monkeypatch.setattr(EventMapper, "dispatch", recording)
    changed: list[Path] = []
    batcher = Batcher(lambda batch: changed.extend(batch.changed), quiet=0.02)
    batcher.start()
    watcher = Watcher([root], poll_mode="never", batcher=batcher)
    try:
        watcher.start()
        observer = watcher._roots[root].observer
        emitters = list(observer.emitters)
        if not all(hasattr(e, "direct") for e in emitters):
            pytest.skip("watchdog 6: the observer's thread dispatches")
        source = root / "m.py"
        source.write_text("X = 1\n")
        wait_until(lambda: source in changed, 10, message="the source's event")
        threads = {thread for path, thread in seen if path == str(source)}
        assert threads
        assert threads <= set(emitters)  # never the observer's dispatching thread
    finally:
        watcher.stop()
        batcher.stop()
