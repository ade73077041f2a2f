"""The one watchdog event filter: the filesystem watch sees attribute changes, the git watch does not."""

from __future__ import annotations

from watchdog import events as ev

from cachewatchd.watch.events import event_filter


def test_event_filter_differs_only_by_attribute_events() -> None:
    files, git = set(event_filter()), set(event_filter(attrib=False))
    assert files - git == {ev.FileAttribEvent}
    assert git <= files
    for quiet in (ev.FileOpenedEvent, ev.FileClosedNoWriteEvent, ev.DirModifiedEvent):
        assert quiet not in files  # reading a file, or listing a directory, wakes nothing
