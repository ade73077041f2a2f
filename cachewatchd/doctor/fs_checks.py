"""``doctor`` probes of the machine: can a change under a root be seen at all?

Per root: the filesystem, the observer the daemon would choose, whether native events really arrive (a
probe file is written and removed) and the clock skew between this machine and the filesystem (the
probe's mtime). On Linux: the inotify limits against this user's instances and watches in use.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cachewatchd.config.settings import RootPlan
from cachewatchd.doctor.findings import Finding, Severity, plural
from cachewatchd.watch.mounts import choose_observer, mount_for

__all__ = ["check_inotify", "probe_root"]

# -- filesystem, events, clock --------------------------------------------------------------------

_SKEW_LIMIT = 2.0  # seconds: beyond FAT's 2 s mtime granularity
_POLL_ADVICE = (
    'poll this root: `--poll always`, or poll = "always" in the config or [tool.cachewatchd]'
)


def probe_root(plan: RootPlan, timeout: float) -> list[Finding]:
    """Filesystem type, observer choice, native-event probe and clock skew for one root."""
    root = plan.path
    mount = mount_for(root)
    choice = choose_observer(root, plan.poll)
    fs = f"{mount.fstype} mounted at {mount.mountpoint}" if mount else "unknown filesystem"
    where = str(root)
    how = "native events" if choice.kind == "native" else "polling"
    message = f"{fs}; watched by {how} ({choice.reason})"
    findings = [Finding("filesystem", "info", message, "", where)]
    if plan.poll == "always":
        message = f'polling is forced for this root (poll = "always" from the {plan.poll_source})'
        findings.append(Finding("polling", "info", message, "", where))
    probe = _probe(root, timeout)
    if isinstance(probe[0], str):
        severity: Severity = (
            "warning" if probe[0] == "warning" and choice.kind == "native" else "info"
        )
        action = _POLL_ADVICE if severity == "warning" else ""
        return [*findings, Finding("events", severity, str(probe[1]), action, where)]
    arrived, skew = probe
    if choice.kind == "native" and not arrived:
        message = (
            f"no native event arrived within {timeout:g} s of writing a file: changes are missed"
        )
        findings.append(Finding("events", "warning", message, _POLL_ADVICE, where))
    else:
        seen = "arrive" if arrived else "do not arrive"
        note = " (polling is not needed)" if arrived and choice.kind == "polling" else ""
        findings.append(Finding("events", "info", f"native events {seen}{note}", "", where))
    if abs(skew) > _SKEW_LIMIT:
        message = f"a file written now gets an mtime {skew:+.1f} s off this machine's clock"
        action = "synchronise the clocks (NTP) of this machine and the file server"
        findings.append(Finding("clock-skew", "warning", message, action, where))
    return findings


def _probe(root: Path, timeout: float) -> tuple[bool, float] | tuple[Severity, str]:
    """Write and remove a probe file: (native event seen, its mtime minus the wall clock), or
    (severity, why not probed)."""
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers import Observer

    if not os.access(root, os.W_OK):
        return "info", "not writable here: native events and the clock were not probed"
    name = f".cachewatchd-doctor-{secrets.token_hex(6)}"
    seen = threading.Event()

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            if os.path.basename(os.fsdecode(event.src_path)) == name:
                seen.set()

    observer = Observer()
    try:
        observer.schedule(Handler(), str(root), recursive=False)
        observer.start()
    except OSError as exc:  # e.g. the inotify instance or watch limit
        return "warning", f"no native watcher could be started: {exc.strerror or exc}"
    with _quiet_watchdog():
        return _write_probe(root, name, seen, observer, timeout)


def _write_probe(
    root: Path, name: str, seen: threading.Event, observer: Any, timeout: float
) -> tuple[bool, float] | tuple[Severity, str]:
    path = root / name
    try:
        before = time.time()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"cachewatchd doctor probe\n")
        finally:
            os.close(fd)
        after = time.time()
        mtime = path.stat().st_mtime
        arrived = seen.wait(timeout)
    except OSError as exc:
        return "info", f"no probe file could be written ({exc.strerror or exc}): nothing probed"
    finally:
        path.unlink(missing_ok=True)
        observer.stop()
        observer.join()
    return arrived, (mtime - after if mtime > after else min(mtime - before, 0.0))


@contextlib.contextmanager
def _quiet_watchdog() -> Iterator[None]:
    """No stray lines from watchdog's loggers on stderr while the probe observer stops (stopping
    races its emitter, which logs "queue_events() called when the thread is inactive" through
    logging's last-resort handler when nothing is configured). Records still propagate."""
    logger = logging.getLogger("watchdog")
    handler = logging.NullHandler()
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


# -- inotify --------------------------------------------------------------------------------------


def check_inotify(directories: int) -> list[Finding]:
    """Limits from /proc/sys/fs/inotify against this user's inotify instances and watches."""
    limits = Path("/proc/sys/fs/inotify")
    max_watches = int((limits / "max_user_watches").read_text())
    max_instances = int((limits / "max_user_instances").read_text())
    instances, watches = _inotify_use(os.getuid())
    message = (
        f"this user has {instances}/{max_instances} inotify instances and {watches}/{max_watches} "
        f"watches in use; the roots need about {plural(directories, 'watch', 'watches')}"
    )
    findings = [Finding("inotify", "info", message)]
    sysctl = "sudo sysctl fs.inotify.{}={} (and persist it in /etc/sysctl.d/)"
    if watches + directories > max_watches:
        message = (
            "not enough inotify watches left for the roots: directories beyond are not watched"
        )
        action = sysctl.format("max_user_watches", max(524288, 2 * (watches + directories)))
        findings.append(Finding("inotify-watches", "warning", message, action))
    if instances >= max_instances:
        message = "no inotify instance left: starting a watcher fails"
        action = sysctl.format("max_user_instances", max(1024, 2 * max_instances))
        findings.append(Finding("inotify-instances", "warning", message, action))
    return findings


def _inotify_use(uid: int) -> tuple[int, int]:
    """(inotify instances, watches) of *uid*'s processes, from /proc/*/fd and /proc/*/fdinfo."""
    instances = watches = 0
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii", errors="replace") as info:
                    watches += sum(1 for line in info if line.startswith("inotify wd:"))
            except OSError:
                continue
            instances += 1
    return instances, watches
