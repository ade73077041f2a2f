"""A managed target's status record: its states, its entry in the status document, timestamps."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from cachewatchd.processes.status import TargetState, TargetStatus, timestamp

STATES = [
    "starting", "running", "restarting", "blocked", "failed", "not-found", "unreachable",
    "backoff", "exited", "stopped",
]  # fmt: skip
"""The states `cachewatchd status` shows (README), in the document and in the text."""


def test_the_states_are_the_documented_strings() -> None:
    assert [state.value for state in TargetState] == STATES
    for value in STATES:
        state = TargetState(value)
        assert state == value  # a str: compares, hashes and serialises as its value
        assert (str(state), f"{state}", json.dumps(state)) == (value, value, f'"{value}"')


def _entry(**changes: Any) -> dict[str, Any]:
    status = TargetStatus(
        name="web",
        kind="process",
        state=TargetState.NOT_FOUND,
        pids=(7, 9),
        restarts=2,
        last_action="restarted in 0.3s",
        last_action_at="2026-11-21T19:59:07+00:00",
        pending=True,
        stale_reason="pid 7 started before app.py changed",
        problem="pidfile /r/w.pid names pid 9, which is not running",
    )
    return {**status.to_json(), **changes}


def test_to_json_from_json_round_trip() -> None:
    full = TargetStatus.from_json(_entry())
    bare = TargetStatus(name="child", kind="child", state=TargetState.STARTING)
    for status in (full, bare):
        entry = json.loads(json.dumps(status.to_json()))  # what a reader of the file gets
        assert TargetStatus.from_json(entry) == status
        assert entry == status.to_json()
    assert _entry() == {
        "name": "web",
        "kind": "process",
        "pids": [7, 9],
        "state": "not-found",
        "restarts": 2,
        "last_action": "restarted in 0.3s",
        "last_action_at": "2026-11-21T19:59:07+00:00",
        "pending": True,
        "stale": True,
        "stale_reason": "pid 7 started before app.py changed",
        "problem": "pidfile /r/w.pid names pid 9, which is not running",
        "crashes": 0,
        "last_exit": None,
        "containers": [],
    }
    assert bare.to_json()["stale"] is False
    assert bare.to_json()["pids"] == []


@pytest.mark.parametrize(
    "changes",
    [
        {"state": "sleeping"},
        {"pids": ["7"]},
        {"pids": 7},
        {"restarts": "2"},
        {"pending": 1},
        {"problem": 3},
        {"crashes": "2"},
        {"last_exit": 1},
        {"stale": False},  # says not stale, with a reason
        {"name": None},
    ],
)
def test_from_json_refuses_a_malformed_entry(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="status"):
        TargetStatus.from_json(_entry(**changes))


def test_from_json_refuses_a_missing_key() -> None:
    entry = _entry()
    del entry["kind"]
    with pytest.raises(ValueError, match="without 'kind'"):
        TargetStatus.from_json(entry)


def test_timestamp_is_utc_iso_to_the_second() -> None:
    local = datetime(2026, 11, 21, 21, 59, 7, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert timestamp(local) == "2026-11-21T19:59:07+00:00"
    now = datetime.fromisoformat(timestamp())
    assert now.utcoffset() == timedelta(0)
    assert abs(now - datetime.now(timezone.utc)) < timedelta(seconds=5)


def test_a_crashing_child_entry_and_an_entry_written_before_crashes_existed() -> None:
    crashed = TargetStatus(
        name="app",
        kind="child",
        state=TargetState.BACKOFF,
        crashes=3,
        last_exit="exited with code 3: ERROR: [Errno 98] ... address already in use",
    )
    entry = json.loads(json.dumps(crashed.to_json()))
    assert (entry["crashes"], entry["last_exit"]) == (3, crashed.last_exit)
    assert TargetStatus.from_json(entry) == crashed
    older = {k: v for k, v in _entry().items() if k not in ("crashes", "last_exit")}
    assert TargetStatus.from_json(older).crashes == 0  # a daemon of the previous version


def test_a_docker_targets_containers_round_trip_and_older_documents_have_none() -> None:
    from cachewatchd.processes.status import ContainerStatus

    shown = ContainerStatus(
        "shop-backend-1", "3f2a1b0c9d8e", "running", "2026-12-06T05:00:00+00:00"
    )
    status = TargetStatus(name="api", kind="docker", state=TargetState.RUNNING, containers=(shown,))
    entry = json.loads(json.dumps(status.to_json()))
    assert TargetStatus.from_json(entry) == status
    older = {k: v for k, v in entry.items() if k != "containers"}
    assert TargetStatus.from_json(older).containers == ()
    with pytest.raises(ValueError, match="malformed container status"):
        TargetStatus.from_json({**entry, "containers": [{"name": 1}]})
