"""The one watchdog event filter: the filesystem watch sees attribute changes, the git watch does not."""

from __future__ import annotations

from watchdog import events as ev

from cachewatchd.watch.events import event_filter


def test_event_filter_differs_only_by_attribute_events() -> None:
    files, git = set(event_filter()), set(event_filter(attrib=False))
    attrib = getattr(ev, "FileAttribEvent", None)  # watchdog 7 (6 reports them as modified)
    assert files - git == ({attrib} if attrib is not None else set())
    assert git <= files
    quiet_events = ("FileOpenedEvent", "FileClosedNoWriteEvent", "DirModifiedEvent")
    for quiet in filter(None, (getattr(ev, name, None) for name in quiet_events)):
        assert quiet not in files  # reading a file, or listing a directory, wakes nothing
