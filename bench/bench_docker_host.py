"""Docker, from the host: edit on the host -> the container's app answers the new code.

A private dockerd (the test suite's, ``tests/support/dockerd.py``) runs one container per mode,
each on a bind-mounted directory of its own holding the tiny unix-socket app
(``tests/support/docker_app.py``: it answers ``answer.VALUE``). Modes, side by side in one run:

- ``cachewatchd on the host``: a daemon on this host watches the mode's directory, with
  ``[[process]] docker = { container = ... }`` (``grace = 5``): it removes the stale pyc and
  restarts the container through the Engine API; the edit is all the developer does;
- ``wipe + docker restart``: the launcher of the write-up issue 12 starts from: after the edit,
  remove every ``__pycache__`` under the directory, then ``docker restart -t 5``;
- ``docker restart``: after the edit, ``docker restart -t 5`` only.

Each round edits each mode's ``answer.py`` once, in an order rotated every round, after an untimed
warm-up round. Every edit is the one CPython cannot see: the value changes, the size stays, the
mtime is put back (nanoseconds). From the moment the edit (and, for the two restart modes, the
commands after it) began, it asks the socket every 5 ms until the new value comes back; an answer
of the old value after a restart mode's ``docker restart`` returned, or nothing in 20 s, is a missed
edit. The daemon's restart of an edit ends (``restarted`` is logged once the new container stayed
up a moment, ``processes/ready.py``) before its next edit, untimed: an edit during that moment would
be coalesced into one more restart after it. Reported per mode: median and p90 of edit -> new
answer, missed edits, and the daemon's restarts. Targets: no missed edit with cachewatchd and exactly one restart per edit; its median
<= 1.5x the wipe + restart launcher's (the same restart, plus the quiet period of a batch).

``.venv/bin/python bench/bench_docker_host.py`` (``--rounds N``, default 12; ``--quick``: 3). Needs
root and dockerd (``apt-get install docker.io``; ``.ci/run`` installs it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _harness as h

from tests.support.docker_app import ask, write_unix_app
from tests.support.dockerd import Dockerd, session_dockerd

__all__ = ["main"]

TIMEOUT = 20.0
HOST_MODE = "cachewatchd on the host"


@dataclass
class Mode:
    name: str
    src: Path
    cid: str = ""
    value: int = 0
    after_edit: Callable[[], None] = lambda: None
    times: list[float] = field(default_factory=list)
    missed: int = 0


def _edit(answer: Path, value: str) -> None:
    """Same size, mtime put back: the edit a timestamp pyc does not notice."""
    before = answer.stat()
    answer.write_text(f"VALUE = {value!r}\n", encoding="utf-8")
    os.utime(answer, ns=(before.st_atime_ns, before.st_mtime_ns))


def _value(n: int) -> str:
    return f"v{n:05d}"


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def one_edit(mode: Mode) -> float | None:
    """Edit, run the mode's commands, wait for the new answer: seconds, or None (missed)."""
    old, new = _value(mode.value), _value(mode.value + 1)
    mode.value += 1
    sock = mode.src / "app.sock"
    start = time.perf_counter()
    _edit(mode.src / "answer.py", new)
    mode.after_edit()
    got: list[str | None] = [None]

    def answered() -> bool:
        got[0] = ask(sock, timeout=1)
        return got[0] == new or (got[0] == old and mode.name != HOST_MODE)

    if not _wait(answered, TIMEOUT) or got[0] != new:
        return None
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 3
    h.print_header("bench_docker_host", h.child_env(), Path.cwd())
    with (
        tempfile.TemporaryDirectory(prefix="cw-docker-") as tmp,
        session_dockerd(Path(tmp)) as dockerd,
    ):
        if isinstance(dockerd, str):
            print(f"cannot run dockerd here: {dockerd}")
            return 2
        return run(dockerd, Path(tmp), args.rounds)


def run(dockerd: Dockerd, tmp: Path, rounds: int) -> int:
    modes = [Mode(name, tmp / f"m{i}") for i, name in enumerate(
        [HOST_MODE, "wipe + docker restart", "docker restart"]
    )]  # fmt: skip
    for mode in modes:
        write_unix_app(mode.src, _value(0))
        mode.cid = dockerd.run_container(mode.src.name, mode.src, ["python", "/app/serve.py"])
    host, wipe, plain = modes

    def wipe_and_restart() -> None:
        shutil.rmtree(wipe.src / "__pycache__", ignore_errors=True)
        dockerd.restart(wipe.cid)

    wipe.after_edit = wipe_and_restart
    plain.after_edit = lambda: dockerd.restart(plain.cid)
    for mode in modes:
        if not _wait(lambda m=mode: ask(m.src / "app.sock") == _value(0), 30):  # type: ignore[misc]
            print(f"{mode.name}: the app did not start:\n{dockerd.logs(mode.cid)}")
            return 1
    config = tmp / "config.toml"
    config.write_text(
        f'[[process]]\nname = "app"\ngrace = 5\n'
        f'docker = {{ container = "{host.src.name}", host = "{dockerd.host}" }}\n',
        encoding="utf-8",
    )
    env = h.child_env(tmp / "home")
    daemon = h.start_daemon(env, tmp, [host.src], "--config", str(config))
    try:
        print(
            f"  image {dockerd.image}, {rounds} rounds after a warm-up round, same-size edits with"
        )
        print("  the mtime put back; edit -> the new value on the app's unix socket")
        for rep, mode in h.interleaved(modes, rounds):
            seconds = one_edit(mode)
            if mode is host:  # untimed: its restart ends (logged) before its next edit
                _wait(lambda: len(daemon.events("restarted")) >= host.value, 10)
            if rep < 0:
                continue
            if seconds is None:
                mode.missed += 1
            else:
                mode.times.append(seconds)
        restarts = len(daemon.events("restarted"))
    finally:
        daemon.stop()
    widths = [-26, 12, 12, 8]
    print()
    print(h.row(["mode", "median s", "p90 s", "missed"], widths))
    medians: dict[str, float | None] = {}
    for mode in modes:
        median = statistics.median(mode.times) if mode.times else None
        medians[mode.name] = median
        p90 = h.pct(mode.times, 90) if mode.times else None
        cells = ["-" if x is None else f"{x:.3f}" for x in (median, p90)]
        print(h.row([mode.name, *cells, f"{mode.missed}/{rounds}"], widths))
    edits = rounds + 1  # with the warm-up round's
    print(f"  the daemon's restarts: {restarts} for {edits} edits")
    print(f"  load average at the end: {h.loadavg()}")
    targets = h.Targets()
    targets.check(f"{HOST_MODE}: no missed edit ({host.missed})", not host.missed)
    targets.check(f"{HOST_MODE}: one restart per edit ({restarts}/{edits})", restarts == edits)
    targets.ratio(
        f"{HOST_MODE} vs wipe + docker restart (<= 1.5x)",
        medians[host.name], medians[wipe.name], 1.5,
    )  # fmt: skip
    return 0 if targets.report() else 1


if __name__ == "__main__":
    sys.exit(main())
