"""RestartHold: restarts wait while git is at work where they were touched (no threads)."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from structlog.testing import capture_logs

from cachewatchd.daemon.hold import DRAIN_MAX, REPORT_MAX, RestartHold


class Git:
    def __init__(self) -> None:
        self.at_work: list[Path] = []
        self.asked: list[set[Path]] = []

    def busy(self, paths: Collection[Path]) -> list[Path]:
        self.asked.append(set(paths))
        return list(self.at_work)


def test_touched_paths_wait_for_git_then_restart_once_with_everything() -> None:
    git, restarts = Git(), list[list[Path]]()
    hold = RestartHold(git.busy, restarts.append)
    assert hold.offer({Path("/r/a.py")})  # git is not at work, no more events: at once
    assert restarts == [[Path("/r/a.py")]]
    git.at_work = [Path("/r")]
    with capture_logs() as logs:
        assert not hold.offer({Path("/r/b.py")})
        assert not hold.offer({Path("/r/c.py")})
        assert not hold.offer(set())  # a git_settled batch while git is still at work
    assert [e["event"] for e in logs] == ["restart-held"]  # once per hold
    assert logs[0]["repositories"] == ["/r"]
    assert hold.held == {Path("/r/b.py"), Path("/r/c.py")}
    assert len(restarts) == 1
    git.at_work = []
    assert hold.offer(set(), reported={Path("/r")})  # the batch that says git is done
    assert restarts[1] == [Path("/r/b.py"), Path("/r/c.py")]
    assert hold.held == frozenset()
    assert not hold.offer(set())  # nothing touched, nothing held: no restart, no question
    assert len(git.asked) == 5


def test_drop_forgets_what_is_held() -> None:
    git, restarts = Git(), list[list[Path]]()
    git.at_work = [Path("/r")]
    hold = RestartHold(git.busy, restarts.append)
    hold.offer({Path("/r/a.py")})
    hold.drop()
    git.at_work = []
    assert not hold.offer(set())
    assert restarts == []


def test_a_released_hold_waits_for_the_events_still_arriving_at_most_drain_max() -> None:
    git, restarts, now = Git(), list[list[Path]](), [0.0]
    more = [True]
    hold = RestartHold(git.busy, restarts.append, draining=lambda: more[0], clock=lambda: now[0])
    more[0] = False
    assert hold.offer({Path("/a.py")})
    git.at_work, more[0] = [Path("/r")], True
    hold.offer({Path("/r/b.py")})
    git.at_work = []
    assert not hold.offer(set())  # git is done, its last events wait in the batcher
    now[0] = DRAIN_MAX - 0.1
    assert not hold.offer({Path("/r/c.py")})
    more[0] = False
    assert hold.offer({Path("/r/d.py")}, reported={Path("/r")})  # the batch that took them
    assert restarts[1] == [Path("/r/b.py"), Path("/r/c.py"), Path("/r/d.py")]
    git.at_work = [Path("/r")]
    hold.offer({Path("/r/e.py")})
    git.at_work, more[0] = [], True
    assert not hold.offer(set(), reported={Path("/r")})
    now[0] += DRAIN_MAX
    assert hold.offer(set())  # events never stop: released after DRAIN_MAX


def test_a_batch_with_more_events_behind_it_waits_for_them() -> None:
    """The first batch of a checkout may close only after git is done, its move waiting in the
    batcher: nothing was held, yet a restart now would be followed by another."""
    git, restarts, more = Git(), list[list[Path]](), [True]
    hold = RestartHold(git.busy, restarts.append, draining=lambda: more[0])
    assert not hold.offer({Path("/r/a.py")})
    more[0] = False
    assert hold.offer({Path("/r")})
    assert restarts == [[Path("/r"), Path("/r/a.py")]]


def test_a_restart_held_by_git_waits_for_the_batch_that_reports_it() -> None:
    """git is done, but the batch carrying its move is still being handled (waiting for the
    invalidations behind the checkout): an offer from elsewhere (the second look) must not let
    the restart go, or the move's own batch restarts a second time."""
    git, restarts, now = Git(), list[list[Path]](), [0.0]
    hold = RestartHold(git.busy, restarts.append, clock=lambda: now[0])
    git.at_work = [Path("/r")]
    assert not hold.offer({Path("/r/a.py")})
    git.at_work = []  # git exited; its move is in the batch being handled
    now[0] = 1.0
    assert not hold.offer({Path("/r/b.py")})  # the second look, from the loop's thread
    assert not hold.offer(set(), reported={Path("/other")})  # another repository's report
    assert hold.holding()
    assert hold.offer(set(), reported={Path("/r")})  # the move's batch
    assert restarts == [[Path("/r/a.py"), Path("/r/b.py")]]
    assert not hold.holding()
    assert hold.offer({Path("/r/c.py")})  # an edit afterwards: at once, nothing awaited
    assert len(restarts) == 2


def test_a_report_that_never_comes_holds_at_most_report_max() -> None:
    git, restarts, now = Git(), list[list[Path]](), [0.0]
    hold = RestartHold(git.busy, restarts.append, clock=lambda: now[0])
    git.at_work = [Path("/r")]
    assert not hold.offer({Path("/r/a.py")})
    git.at_work = []
    now[0] = 10.0
    assert not hold.offer(set())  # git idle from now on: the clock starts
    now[0] = 10.0 + REPORT_MAX - 0.1
    assert not hold.offer(set())
    now[0] = 10.0 + REPORT_MAX
    assert hold.offer(set())
    assert restarts == [[Path("/r/a.py")]]
