"""Restart benchmark: edit -> first HTTP response with the new code, and refused connections,
four ways, one run.

Stacks, each serving a tiny ASGI app (``VALUE = '...'``) with uvicorn on 127.0.0.1
(``_restart_stacks.py``):

- ``cachewatchd + child``: ``cachewatchd --foreground APP -- python -m uvicorn app:app ...``
- ``cachewatchd + child --listen``: the same with ``--listen 127.0.0.1:PORT``: the daemon holds the
  port across restarts and uvicorn gets ``--fd N``.
- ``cachewatchd + supervisord``: supervisord (unix socket) runs uvicorn as program ``web``; the
  daemon restarts it through a ``[[process]] supervisor = {...}`` table of its config.
- ``uvicorn --reload``: uvicorn's own reloader (watchfiles), which keeps the socket in its parent.

Edits, with a timestamp pyc of the old code present (the servers write pycs too):
``ordinary`` changes the value, and with it the size and the mtime; ``restored`` keeps the size and
puts the mtime back (``cp -p``, ``tar x``, ``rsync -t``), so the pyc still matches the source's
header and a plain restart imports the old code. Still the old value at the deadline: ``never``.

Each repetition starts the stack afresh in a new directory, waits until it serves the old value,
waits 1-1.2 s (uvicorn's reloader starts watching 0.25 s after its child; the random part spreads
the edit over uvicorn's 100 ms main-loop tick, whose phase decides how long a graceful stop takes:
with a fixed wait every repetition hit the same phase), edits, and from the moment the edit
returned asks ``GET /`` every 5 ms (a fresh connection each time) until the new value comes back or
the deadline passes, then 1.5 s more (the second look 1 s after an invalidation may restart again).
Every request is counted: answered, refused (nothing listened: the kernel refused the connection),
or failed (reset, timed out after 10 s, not 200). Stacks and edit kinds are interleaved within each
repetition. Targets: no slower than ``uvicorn --reload`` where it is correct (medians); 0 refused
connections with ``--listen``.

From the repository root: ``.venv/bin/python bench/bench_restart.py`` (``--quick``: one repetition,
a smoke test; ``--daemon-args`` passes public options to the daemons, ``--child-args`` to those
with an own child only, e.g. ``--cold``; ``--app fastapi`` serves a
FastAPI + SQLAlchemy + pydantic + httpx app instead of the bare one).
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import _harness as h
from _restart_stacks import OLD, STACKS, ListenStack, ReloadStack, Stack, ask, free_port, write_app

__all__ = ["main"]

NEW = {"ordinary": "new-value-ordinary-edit", "restored": "new-value"}
KINDS = tuple(NEW)
assert len(NEW["restored"]) == len(OLD)
TAIL = 1.5
"""Seconds the client keeps asking after the new value came back."""


# --- one measurement -------------------------------------------------------------------------------


def edit(source: Path, kind: str) -> float:
    """Apply the edit; return the wall-clock time at which it was complete."""
    before = source.stat()
    text = source.read_text(encoding="utf-8").replace(repr(OLD), repr(NEW[kind]))
    with open(source, "w", encoding="utf-8") as handle:
        handle.write(text)
    if kind == "restored":
        os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    return time.time()


@dataclass
class Sample:
    seconds: float | None
    """Edit -> first response with the new value; None: never within the deadline."""
    last: str | None
    """What the server answered last."""
    breakdown: dict[str, float] = field(default_factory=dict)
    note: str = ""
    outcomes: Counter[str] = field(default_factory=Counter)
    """Every request from the edit to the end of the tail: answered, refused, failed."""


def measure(
    stack_type: type[Stack],
    kind: str,
    base: Path,
    env: dict[str, str],
    args: argparse.Namespace,
    settle: float,
) -> Sample:
    app = base / "app"
    source = write_app(app, OLD, args.app)
    child_args = shlex.split(args.child_args)
    stack = stack_type(app, free_port(), env, shlex.split(args.daemon_args), child_args)
    deadline: float = args.deadline
    try:
        stack.start()
        time.sleep(settle)
        t0 = edit(source, kind)
        sample = Sample(None, None)
        until = t0 + deadline
        while time.time() < until:
            outcome, body = ask(stack.port)
            sample.outcomes[outcome] += 1
            sample.last = body or sample.last
            if sample.seconds is None and sample.last == NEW[kind]:
                sample.seconds = time.time() - t0  # when the response arrived
                until = time.time() + TAIL
            time.sleep(0.005)
        sample.breakdown = stack.breakdown(t0)
    finally:
        stack.stop()
    if isinstance(stack, ReloadStack):
        sample.note = f"reloader: {stack.reloader()}"
    return sample


# --- main ------------------------------------------------------------------------------------------


def report(
    samples: dict[tuple[str, str], list[Sample]], args: argparse.Namespace
) -> dict[tuple[str, str], float | None]:
    """Print the table; return the medians (None: never, at least once)."""
    print(f"\nedit -> first response with the new code, {args.reps} repetitions (seconds)")
    widths = (-10, -28, 8, 8, 8, 7)
    print(h.row(("edit", "stack", "median", "min", "max", "never"), widths) + "  detail")
    medians: dict[tuple[str, str], float | None] = {}
    for (kind, name), runs in samples.items():
        times = [s.seconds for s in runs if s.seconds is not None]
        never = len(runs) - len(times)
        med = statistics.median(times) if times and never == 0 else None
        medians[kind, name] = med
        stats = (
            [f"{med:.3f}", f"{min(times):.3f}", f"{max(times):.3f}"] if med else ["never", "", ""]
        )
        detail = ""
        for key in ("invalidated", "restarted"):
            values = [s.breakdown[key] for s in runs if key in s.breakdown]
            if values:
                detail += f"{key} {statistics.median(values):.3f}  "
        if never:
            detail += f"still served {sorted({str(s.last) for s in runs if s.seconds is None})}"
        print(h.row((kind, name, *stats, never), widths) + f"  {detail}")
    print(f"  never: the new value was not served within {args.deadline:g} s")
    print(
        "  detail: medians of the daemon's own log stamps, s after the edit (restarted = act done)"
    )
    return medians


def report_refused(samples: dict[tuple[str, str], list[Sample]]) -> dict[str, Counter[str]]:
    """Print the requests per stack (both edit kinds, every repetition); return them."""
    print(f"\nrequests every 5 ms from the edit to {TAIL:g} s after the new value (all edits)")
    widths = (-28, 7, 9, 9, 7, 13)
    print(h.row(("stack", "edits", "answered", "refused", "failed", "refused/edit"), widths))
    totals: dict[str, Counter[str]] = {}
    for (_, name), runs in samples.items():
        total = totals.setdefault(name, Counter())
        total["edits"] += len(runs)
        for sample in runs:
            total.update(sample.outcomes)
    for name, total in totals.items():
        per_edit = total["refused"] / total["edits"] if total["edits"] else 0.0
        cells = (name, total["edits"], total["answered"], total["refused"], total["failed"])
        print(h.row((*cells, f"{per_edit:.1f}"), widths))
    print("  refused: the kernel refused the connection (nothing listened); failed: reset,")
    print("  no answer within 10 s, or not 200")
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: one repetition")
    parser.add_argument("--reps", type=int, help="repetitions per stack and edit (5)")
    parser.add_argument("--deadline", type=float, default=10.0, help="seconds before 'never'")
    parser.add_argument(
        "--app",
        choices=("tiny", "fastapi"),
        default="tiny",
        help="tiny: a bare ASGI app; fastapi: FastAPI + SQLAlchemy + pydantic + httpx (tiny)",
    )
    parser.add_argument(
        "--daemon-args", default="", help='e.g. --daemon-args="--reconcile-interval 300"'
    )
    parser.add_argument(
        "--child-args", default="", help='only the daemons with an own child: --child-args="--cold"'
    )
    parser.add_argument(
        "--work", type=Path, default=Path(tempfile.gettempdir()), help="temp dirs go here ($TMPDIR)"
    )  # short: supervisord's socket path must fit in 108 bytes
    args = parser.parse_args(argv)
    args.reps = args.reps or (1 if args.quick else 5)
    samples: dict[tuple[str, str], list[Sample]] = {
        (kind, stack.name): [] for kind in KINDS for stack in STACKS
    }
    jitter = random.Random(4)
    with tempfile.TemporaryDirectory(prefix="cw-rb-", dir=args.work) as tmp:
        env = h.child_env(Path(tmp) / "home", bytecode=True)  # servers write pycs, as in production
        h.print_header("bench_restart", env, Path(tmp))
        print(f"  the daemons also get: {args.daemon_args or '-'}; app: {args.app}")
        print(f"  the daemons with an own child also get: {args.child_args or '-'}")
        for rep in range(args.reps):
            for kind in KINDS:
                for stack in STACKS:
                    base = Path(tmp) / f"{rep}-{kind}-{stack.__name__}"
                    base.mkdir()
                    settle = 1.0 + jitter.uniform(0, 0.2)  # see the module docstring
                    sample = measure(stack, kind, base, env, args, settle)
                    samples[kind, stack.name].append(sample)
                    shown = f"{sample.seconds:.3f} s" if sample.seconds is not None else "never"
                    asked = ", ".join(f"{k} {v}" for k, v in sorted(sample.outcomes.items()))
                    line = f"  rep {rep} {kind:<9} {stack.name:<28} {shown}  ({asked})"
                    print(f"{line}  {sample.note}".rstrip())
    print(f"  load average at end: {h.loadavg()}")
    medians = report(samples, args)
    totals = report_refused(samples)
    targets = h.Targets()
    for kind in KINDS:  # no slower than uvicorn --reload where it is correct; correct everywhere
        reload = medians.get((kind, ReloadStack.name))
        for stack in STACKS:
            if stack is not ReloadStack:
                name = f"{kind} edit, {stack.name} no slower than uvicorn --reload (median)"
                targets.ratio(name, medians.get((kind, stack.name)), reload, 1.0)
    listen = totals[ListenStack.name]
    targets.check(
        f"{ListenStack.name}: 0 refused connections ({listen['refused']})", not listen["refused"]
    )
    targets.report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
