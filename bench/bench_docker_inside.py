"""Docker, inside the container: edit on the host -> the container's app answers the new code.

A private dockerd (the test suite's, ``tests/support/dockerd.py``: its image is this machine's
Python with cachewatchd installed) runs one container per mode, each on a bind-mounted directory of
its own holding the tiny unix-socket app (``tests/support/docker_app.py``: it answers
``answer.VALUE``). Modes, side by side in one run:

- ``cachewatchd inside``: the container's command is ``cachewatchd --foreground /app -- python
  /app/serve.py``; the edit is all the developer does;
- ``wipe + docker restart``: the launcher of the write-up issue 12 starts from: after the edit,
  remove every ``__pycache__`` under the directory, then ``docker restart -t 5``;
- ``docker restart``: after the edit, ``docker restart -t 5`` only.

Each round edits each mode's ``answer.py`` once, in an order rotated every round, after an untimed
warm-up round; cachewatchd's next edit waits until its previous restart is logged as done (a
restart waits for its new generation to stay up one second, ``processes/ready.STEADY``; an edit
made meanwhile is applied after it: up to one more second). Every edit is the one CPython cannot see: the value changes, the size stays, the
mtime is put back (nanoseconds). From the moment the edit (and, for the two restart modes, the
commands after it) began, it asks the socket every 5 ms until the new value comes back; an answer
of the old value by a new generation, or nothing in 20 s, is a missed edit. Reported per mode:
median and p90 of edit -> new answer, missed edits. Targets: no missed edit with cachewatchd,
its median <= 0.5x the wipe + restart launcher's.

``.venv/bin/python bench/bench_docker_inside.py`` (``--rounds N``, default 12; ``--quick``: 3). Needs
root and dockerd (``apt-get install docker.io``; ``.ci/run`` installs it).
"""

from __future__ import annotations

import argparse
import json
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
CACHEWATCHD = ["cachewatchd", "--foreground", "/app", "--"]


@dataclass
class Mode:
    name: str
    src: Path
    cid: str = ""
    value: int = 0
    after_edit: Callable[[], None] = lambda: None
    settled: Callable[[], bool] = lambda: True
    """Whether the previous edit is done with (before the next one)."""
    times: list[float] = field(default_factory=list)
    missed: int = 0


def _edit(answer: Path, value: str) -> None:
    """Same size, mtime put back: the edit a timestamp pyc does not notice."""
    before = answer.stat()
    answer.write_text(f"VALUE = {value!r}\n", encoding="utf-8")
    os.utime(answer, ns=(before.st_atime_ns, before.st_mtime_ns))


def _value(n: int) -> str:
    return f"v{n:05d}"


def _count(dockerd: Dockerd, cid: str, event: str) -> int:
    """How many JSON log lines *event* cachewatchd wrote in the container."""
    lines = dockerd.logs(cid).splitlines()
    return sum(1 for x in lines if x.startswith("{") and json.loads(x).get("event") == event)


def _wait(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def one_edit(mode: Mode) -> float | None:
    """Edit, run the mode's commands, wait for the new answer: seconds, or None (missed)."""
    if not _wait(mode.settled, TIMEOUT):
        print(f"  {mode.name}: the previous edit did not settle within {TIMEOUT:g} s")
    old, new = _value(mode.value), _value(mode.value + 1)
    mode.value += 1
    sock = mode.src / "app.sock"
    start = time.perf_counter()
    _edit(mode.src / "answer.py", new)
    mode.after_edit()
    got: list[str | None] = [None]

    def answered() -> bool:
        got[0] = ask(sock, timeout=1)
        return got[0] == new or (got[0] == old and mode.name != "cachewatchd inside")

    # a restart mode's old generation is gone once docker restart returned: an old answer is a miss
    if not _wait(answered, TIMEOUT) or got[0] != new:
        _edit(mode.src / "answer.py", new)  # keep the value; the next round edits from it
        return None
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 3
    h.print_header("bench_docker_inside", h.child_env(), Path.cwd())
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
        ["cachewatchd inside", "wipe + docker restart", "docker restart"]
    )]  # fmt: skip
    for mode in modes:
        write_unix_app(mode.src, _value(0))
        command = ["python", "/app/serve.py"]
        if mode.name == "cachewatchd inside":
            command = [*CACHEWATCHD, *command]
        mode.cid = dockerd.run_container(mode.src.name, mode.src, command)
    cachewatchd, wipe, plain = modes

    def wipe_and_restart() -> None:
        shutil.rmtree(wipe.src / "__pycache__", ignore_errors=True)
        dockerd.restart(wipe.cid)

    wipe.after_edit = wipe_and_restart
    plain.after_edit = lambda: dockerd.restart(plain.cid)
    # an edit made while the previous restart waits for its steady second would wait for that too
    cachewatchd.settled = lambda: _count(dockerd, cachewatchd.cid, "restarted") >= cachewatchd.value
    if not _wait(lambda: _count(dockerd, cachewatchd.cid, "ready") > 0, 60):
        print(f"cachewatchd in the container did not start:\n{dockerd.logs(cachewatchd.cid)}")
        return 1
    for mode in modes:
        if not _wait(lambda m=mode: ask(m.src / "app.sock") == _value(0), 30):  # type: ignore[misc]
            print(f"{mode.name}: the app did not start:\n{dockerd.logs(mode.cid)}")
            return 1
    print(f"  image {dockerd.image}, {rounds} rounds after a warm-up round, same-size edits with")
    print("  the mtime put back; edit -> the new value on the app's unix socket")
    for rep, mode in h.interleaved(modes, rounds):
        seconds = one_edit(mode)
        if rep < 0:
            continue
        if seconds is None:
            mode.missed += 1
        else:
            mode.times.append(seconds)
    widths = [-24, 12, 12, 8]
    print()
    print(h.row(["mode", "median s", "p90 s", "missed"], widths))
    medians: dict[str, float | None] = {}
    for mode in modes:
        median = statistics.median(mode.times) if mode.times else None
        medians[mode.name] = median
        p90 = h.pct(mode.times, 90) if mode.times else None
        cells = ["-" if x is None else f"{x:.3f}" for x in (median, p90)]
        print(h.row([mode.name, *cells, f"{mode.missed}/{rounds}"], widths))
    print(f"  load average at the end: {h.loadavg()}")
    targets = h.Targets()
    targets.check(
        f"cachewatchd inside: no missed edit ({cachewatchd.missed})", not cachewatchd.missed
    )
    targets.ratio(
        "cachewatchd inside vs wipe + docker restart (<= 0.5x)",
        medians[cachewatchd.name], medians[wipe.name], 0.5,
    )  # fmt: skip
    return 0 if targets.report() else 1


if __name__ == "__main__":
    sys.exit(main())
