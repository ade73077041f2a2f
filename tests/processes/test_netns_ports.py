"""The ports a process in another network namespace listens on (a container's server): read from
its own namespace's tables, where psutil looks in ours only. The process here listens in a network
namespace of its own (``unshare --net``); the real container is in tests/e2e."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from cachewatchd.processes.netns_ports import foreign_network, listening_ports_of
from cachewatchd.processes.ready import listening_ports
from tests.support.servers import Reaper
from tests.support.wait import wait_until

_LISTEN = """\
import pathlib, signal, socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 8123))
s.listen(1)
pathlib.Path(sys.argv[1]).touch()
signal.pause()
"""


def test_a_server_in_another_network_namespace_is_seen_listening(
    reaper: Reaper, tmp_path: Path
) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("unshare --net is not permitted here (needs root)")
    ready = tmp_path / "ready"
    server = reaper.popen(["unshare", "--net", sys.executable, "-c", _LISTEN, str(ready)])
    wait_until(ready.exists, message="the namespaced server listens")
    proc = psutil.Process(server.pid)  # unshare exec()s the command: the same pid
    assert foreign_network(proc.pid)
    assert listening_ports_of(proc.pid) == {8123}
    assert listening_ports([proc]) == {8123}
    # what psutil alone reads: our namespace's table, where its socket is not
    assert not [c for c in proc.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
