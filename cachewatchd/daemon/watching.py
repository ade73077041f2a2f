"""The watchers of one settings generation: a file watcher and a git watcher per group of roots.

Roots that share their polling mode and exclude globs share one :class:`Watcher` and one
:class:`GitWatcher` (and, with a pycache prefix, one
:class:`~cachewatchd.watch.prefix_watch.PrefixWatcher` of their mirrors in the prefix tree); the file watchers feed *sink* (the daemon's
:class:`~cachewatchd.daemon.invalidate.Invalidator`, in front of its one batcher), the git
watchers the batcher; all report problems once through the daemon's one
:class:`~cachewatchd.log.ReportedPaths`. Rebuilt on every reload.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

from cachewatchd.cache.walk import WalkOptions
from cachewatchd.config.settings import DaemonSettings, RootPlan
from cachewatchd.log import ReportedPaths
from cachewatchd.watch.batch import Batcher
from cachewatchd.watch.events import EventSink
from cachewatchd.watch.git import GitWatcher
from cachewatchd.watch.observers import Watcher
from cachewatchd.watch.prefix_watch import PrefixWatcher

__all__ = ["ROOT_CHECK", "Watching"]

ROOT_CHECK = 5.0
"""Seconds between the file watchers' checks that each root is still the directory they watch (a
root replaced or moved away is re-attached and rescanned; a root deleted is noticed by its event
at once). An idle daemon wakes for little else."""


class Watching:
    """The watchers of one settings generation (rebuilt on reload)."""

    def __init__(
        self,
        settings: DaemonSettings,
        batcher: Batcher,
        reported: ReportedPaths,
        sink: EventSink | None = None,
    ) -> None:
        groups: dict[tuple[str, tuple[str, ...]], list[RootPlan]] = {}
        for plan in settings.roots:
            groups.setdefault((plan.poll, plan.exclude), []).append(plan)
        self.watchers: list[Watcher] = []
        self.gits: list[GitWatcher] = []
        self.prefixes: list[PrefixWatcher] = []
        for (_, exclude), plans in groups.items():
            paths, poll = [p.path for p in plans], plans[0].poll
            self.watchers.append(
                Watcher(
                    paths,
                    poll_mode=poll,
                    poll_interval=settings.poll_interval,
                    excludes=exclude,
                    batcher=batcher if sink is None else sink,
                    reported=reported,
                    forced_by={p.path: p.poll_reason for p in plans},
                    check_interval=ROOT_CHECK,
                )
            )
            if settings.pycache_prefix is not None:
                self.prefixes.append(
                    PrefixWatcher(
                        settings.pycache_prefix,
                        paths,
                        batcher if sink is None else sink,
                        options=WalkOptions(excludes=exclude),
                        poll_mode=poll,
                        poll_interval=settings.poll_interval,
                        check_interval=ROOT_CHECK,
                    )
                )
            self.gits.append(
                GitWatcher(
                    paths,
                    sink=batcher,
                    poll_mode=poll,
                    poll_interval=settings.poll_interval,
                    options=WalkOptions(excludes=exclude),
                )
            )

    def start(self) -> None:
        for watcher in self.watchers:
            watcher.start()
        for git in self.gits:
            git.start()
        for prefix in self.prefixes:
            prefix.start()

    def stop(self) -> None:
        for prefix in self.prefixes:
            prefix.stop()
        for git in self.gits:
            git.stop()
        for watcher in self.watchers:
            watcher.stop()

    def refresh_git(self) -> None:
        for git in self.gits:
            git.refresh()

    def git_busy(self, paths: Collection[Path]) -> list[Path]:
        """Work trees covering *paths* where git is at work (:meth:`GitWatcher.busy`)."""
        return [tree for git in self.gits for tree in git.busy(paths)]

    def observers(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for watcher in self.watchers:
            attached = watcher.attached()
            for root, choice in watcher.observers().items():
                out[str(root)] = {
                    "observer": choice.kind,
                    "reason": choice.reason,
                    "attached": attached.get(root, False),
                }
        return out
