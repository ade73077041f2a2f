"""``doctor`` probes of the machine: can a change under a root be seen at all?

Per root: the filesystem, the observer the daemon would choose, whether native events really arrive (a
probe file is written and removed: :mod:`cachewatchd.watch.probe`) and the clock skew between this
machine and the filesystem (the probe's mtime); every network or FUSE mount below the root (polled
for its subtree); NFS attribute caching. On Linux: the inotify limits against this user's instances
and watches in use.
"""

from __future__ import annotations

import os
from pathlib import Path

from cachewatchd.config.settings import RootPlan
from cachewatchd.doctor.findings import Finding, Severity, plural
from cachewatchd.watch.mounts import (
    Mount,
    choose_observer,
    is_network_fs,
    mount_for,
    polled_mounts,
)
from cachewatchd.watch.probe import Probed, probe_events

__all__ = ["check_inotify", "probe_root"]

# -- filesystem, events, clock --------------------------------------------------------------------

_SKEW_LIMIT = 2.0  # seconds: beyond FAT's 2 s mtime granularity
_POLL_ADVICE = (
    'poll this root: `--poll always`, or poll = "always" in the config or [tool.cachewatchd]'
)
_NFS_DEFAULT_ACTIMEO = 60  # seconds: acregmax/acdirmax of Linux's NFS client


def probe_root(plan: RootPlan, timeout: float) -> list[Finding]:
    """Filesystem type, observer choice, native-event probe and clock skew for one root; the
    network mounts below it; NFS attribute caching."""
    root = plan.path
    mount = mount_for(root)
    probe = probe_events(root, timeout)
    arrived = probe.arrived if isinstance(probe, Probed) else None
    choice = choose_observer(root, plan.poll, probe=lambda _: arrived)
    fs = f"{mount.fstype} mounted at {mount.mountpoint}" if mount else "unknown filesystem"
    where = str(root)
    how = "native events" if choice.kind == "native" else "polling"
    message = f"{fs}; watched by {how} ({choice.reason})"
    findings = [Finding("filesystem", "info", message, "", where)]
    if plan.poll == "always":
        message = f'polling is forced for this root (poll = "always" from the {plan.poll_source})'
        findings.append(Finding("polling", "info", message, "", where))
    remote = mount is not None and is_network_fs(mount.fstype)
    if not isinstance(probe, Probed):
        severity: Severity = "warning" if probe.no_watcher and choice.kind == "native" else "info"
        action = _POLL_ADVICE if severity == "warning" else ""
        findings.append(Finding("events", severity, probe.reason, action, where))
    else:
        findings.append(_events(probe.arrived, choice.kind == "native", mount, timeout, where))
        if abs(probe.skew) > _SKEW_LIMIT:
            message = (
                f"a file written now gets an mtime {probe.skew:+.1f} s off this machine's clock"
            )
            action = "synchronise the clocks (NTP) of this machine and the file server"
            findings.append(Finding("clock-skew", "warning", message, action, where))
    if mount is not None and remote:
        findings += _attribute_cache(mount, where)
    if choice.kind == "native" and plan.poll != "never":
        findings += _mounts_below(root, timeout, where)
    return findings


def _events(
    arrived: bool, native: bool, mount: Mount | None, timeout: float, where: str
) -> Finding:
    if mount is not None and is_network_fs(mount.fstype):
        seen = "arrive for changes made here" if arrived else "do not arrive"
        message = (
            f"native events {seen}, but a change made on another machine or on the other side "
            f"of this {mount.fstype} mount never raises one: polling is needed"
        )
        if native:  # --poll never on a network mount
            return Finding("events", "warning", message, _POLL_ADVICE, where)
        return Finding("events", "info", message, "", where)
    if native and not arrived:
        message = (
            f"no native event arrived within {timeout:g} s of writing a file: changes are missed"
        )
        return Finding("events", "warning", message, _POLL_ADVICE, where)
    seen = "arrive" if arrived else "do not arrive"
    note = " (polling is not needed)" if arrived and not native else ""
    return Finding("events", "info", f"native events {seen}{note}", "", where)


def _mounts_below(root: Path, timeout: float, where: str) -> list[Finding]:
    """The mounts below a natively watched root whose subtrees the daemon polls."""
    findings = []
    for mount, reason in polled_mounts(root, lambda d: _arrived(d, timeout)):
        message = f"{mount.fstype} mounted at {mount.mountpoint} below this root; {reason}"
        findings.append(Finding("mount-below", "info", message, "", where))
        findings += _attribute_cache(mount, where)
    return findings


def _arrived(directory: Path, timeout: float) -> bool | None:
    probe = probe_events(directory, timeout)
    return probe.arrived if isinstance(probe, Probed) else None


def _attribute_cache(mount: Mount, where: str) -> list[Finding]:
    """NFS clients cache attributes: a change made on the server shows here (to the poller and to
    Python's own stat of the source) only when the cached attributes expire."""
    if not mount.fstype.lower().startswith("nfs"):
        return []
    options = dict(_option(o) for o in mount.options.split(",") if o)
    if "noac" in options:
        return []
    longest = max(_seconds(options, "acregmax"), _seconds(options, "acdirmax"))
    if longest == 0:
        return []
    message = (
        f"the NFS client at {mount.mountpoint} caches file attributes for up to {longest} s: a "
        f"change made on the server can take that long to be seen here, by the daemon and by "
        f"Python itself"
    )
    action = "mount with lower actimeo= (or noac) when server-side edits must show at once"
    return [Finding("nfs-attribute-cache", "info", message, action, where)]


def _seconds(options: dict[str, str], name: str) -> int:
    """An attribute-cache bound as listed (the kernel lists ``actimeo=`` as the four bounds, and
    lists none that keeps its default of 60 s)."""
    for key in (name, "actimeo"):
        if options.get(key, "").isdigit():
            return int(options[key])
    return _NFS_DEFAULT_ACTIMEO


def _option(text: str) -> tuple[str, str]:
    name, _, value = text.partition("=")
    return name.strip(), value.strip()


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
