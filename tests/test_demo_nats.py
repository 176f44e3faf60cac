"""The demo's runtime step on the embedded network: nats-server, node daemons and oracles as processes.

Checks the same table as the in-process run, and that every process the demo started is gone
afterwards (by pid), also when the demo is interrupted midway.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from edil.app import run_runtime_demo
from tests._chain_fixtures import anvil_node
from tests.test_runtime_demo import _check_run


def _pids(lines: list[str]) -> dict[str, int]:
    """The processes the demo says it started: ``{what: pid}``."""
    out = {}
    for line in lines:
        m = re.match(r"(bus: nats-server|node 0x[0-9a-fA-F]+|oracle 0x[0-9a-fA-F]+)\S*.*?\(pid (\d+)\)", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_runtime_demo_through_node_daemons_over_nats() -> None:
    lines: list[str] = []
    details: dict = {}
    rows = run_runtime_demo(lines.append, executor="nats", samples=60, paillier_key_bits=1024, details=details)
    _check_run(rows, details)
    assert any(line.startswith("executor: nats, 3 nodes up") for line in lines), lines
    pids = _pids(lines)
    daemons = [line for line in lines if "`edil node run` daemon" in line]
    assert len(daemons) == 3 and "bus: nats-server" in pids and len(pids) == 5, pids  # bus, 3 daemons, the cheater's process
    assert [what for what, pid in pids.items() if _alive(pid)] == []


def test_an_interrupted_demo_on_anvil_stops_every_process_it_started() -> None:
    """On a chain other processes reach, the oracles run as ``edil oracle run`` processes too;
    Ctrl-C once everything is up leaves none of them running."""
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        if line.startswith("executor: nats"):  # the bus, 2 oracles and 3 daemons are up: Ctrl-C now
            raise KeyboardInterrupt

    with anvil_node() as url, pytest.raises(KeyboardInterrupt):
        run_runtime_demo(say, chain_url=url, executor="nats", samples=8, paillier_key_bits=1024)
    pids = _pids(lines)
    assert len(pids) == 6 and sum(what.startswith("oracle") for what in pids) == 2, pids
    assert [what for what, pid in pids.items() if _alive(pid)] == []


def test_a_killed_demo_takes_its_node_daemons_and_its_bus_with_it(tmp_path) -> None:
    """SIGKILL runs no cleanup: the daemons and nats-server still stop, because each gets SIGTERM
    when the process that started it dies (``PR_SET_PDEATHSIG``)."""
    script = tmp_path / "killed.py"
    script.write_text(
        "import os, signal, sys\n"
        "from edil.app import run_runtime_demo\n"
        "def say(line):\n"
        "    print(line, flush=True)\n"
        "    if line.startswith('executor: nats'):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "run_runtime_demo(say, executor='nats', samples=8, paillier_key_bits=1024)\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    daemons = {what: pid for what, pid in _pids(proc.stdout.splitlines()).items() if what.startswith(("node", "bus"))}
    assert len(daemons) == 4 and "bus: nats-server" in daemons, proc.stdout  # 3 daemons and the bus
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in daemons.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [what for what, pid in daemons.items() if _alive(pid)] == []
