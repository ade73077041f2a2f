"""RestartHold: restarts wait while git is at work where they were touched (no threads)."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from structlog.testing import capture_logs

from cachewatchd.daemon.hold import RestartHold


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
    assert hold.offer({Path("/r/a.py")})  # git is not at work: at once
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
    assert hold.offer(set())  # the batch that says git is done
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
