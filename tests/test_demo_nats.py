"""The demo's runtime step on the embedded network: anvil, nats-server, node daemons and oracles as processes.

Checks the same table as the in-process run; that the availability each node claimed was signed
by the two ``edil oracle run`` processes from the heartbeats the daemons published on the bus; and
that every process the demo started is gone afterwards (by pid): after a normal end, an error,
Ctrl-C, and SIGKILL of the demo.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from edil import RuntimeTaskError
from edil.app import cli, run_runtime_demo
from edil.runtime import SignedAvailability
from tests._chain_fixtures import anvil_node
from tests.test_runtime_demo import _check_run

_STARTED = re.compile(r"(chain: anvil|bus: nats-server|node 0x[0-9a-fA-F]+|oracle 0x[0-9a-fA-F]+)\S*.*?\(pid (\d+)\)")


def _pids(lines: list[str]) -> dict[str, int]:
    """The processes the demo says it started: ``{what: pid}``."""
    out = {}
    for line in lines:
        m = _STARTED.match(line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _gone_soon(pids: dict[str, int], within_s: float = 30.0) -> list[str]:
    """The processes still running after ``within_s`` (a killed parent's children stop on their own)."""
    deadline = time.monotonic() + within_s
    while any(_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [what for what, pid in pids.items() if _alive(pid)]


def test_runtime_demo_through_node_daemons_and_oracle_processes() -> None:
    lines: list[str] = []
    details: dict = {}
    rows = run_runtime_demo(lines.append, executor="nats", samples=60, paillier_key_bits=1024, details=details)
    _check_run(rows, details)  # the availability in the table: [230, 255, 255], with the forged and stranger beats refused
    assert any(line.startswith("executor: nats, 3 nodes up") for line in lines), lines
    pids = _pids(lines)
    daemons = [line for line in lines if "`edil node run` daemon" in line]
    # anvil, the bus, 3 daemons, the cheater's process and 2 oracle processes
    assert len(daemons) == 3 and "chain: anvil" in pids and "bus: nats-server" in pids and len(pids) == 8, pids
    oracles = {what.split()[1].lower(): pid for what, pid in pids.items() if what.startswith("oracle")}

    # The availability each honest node claimed is what both oracle processes attested (their own
    # printed records), signed by each process's own key under the ledger's domain.
    processes = details["oracle_processes"]
    assert len(processes) == 2
    honest = {a: n for a, n in details["nodes"].items() if a != details["cheater"]}
    for oracle, seen in processes.items():
        assert oracles[oracle.lower()[:10]] == seen["pid"]
        # Counted from the daemons' heartbeats stamped in the epoch: 3 nodes x 10 slots, one missed;
        # the forged heartbeat and the unregistered node's were refused.
        assert seen["heartbeats"] == {"accepted": 29, "rejected": {"bad_signature": 1, "unregistered": 1}}, seen["heartbeats"]
        for node, claimed in honest.items():
            att = seen["attested"][node]
            rec = SignedAvailability(oracle, node, att["epoch"], att["availability"], bytes.fromhex(att["signature"][2:]))
            assert rec.verify(details["availability_domain"]) is rec
            assert att["availability"] == claimed["availability"]
    assert any("the daemons published theirs for the 10 slots" in line for line in lines)
    assert _gone_soon(pids, within_s=0) == []


def test_an_interrupted_demo_on_anvil_stops_every_process_it_started() -> None:
    """With ``--chain URL`` the oracle processes read that chain; Ctrl-C once the demo moved it to
    the oracles' first epoch leaves none of the demo's processes running (the chain is not its own)."""
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        if line.endswith("the oracle processes watch it from its start (the chain's clock)"):
            raise KeyboardInterrupt

    with anvil_node() as url, pytest.raises(KeyboardInterrupt):
        run_runtime_demo(say, chain_url=url, executor="nats", samples=8, paillier_key_bits=1024)
    pids = _pids(lines)
    assert len(pids) == 6 and sum(what.startswith("oracle") for what in pids) == 2 and "chain: anvil" not in pids, pids
    assert _gone_soon(pids, within_s=0) == []


def test_an_error_in_the_demo_stops_its_anvil_and_everything_else() -> None:
    lines: list[str] = []

    def say(line: str) -> None:
        lines.append(line)
        if line.startswith("executor: nats"):
            raise RuntimeError("a failure midway")

    with pytest.raises(RuntimeError, match="a failure midway"):
        run_runtime_demo(say, executor="nats", samples=8, paillier_key_bits=1024)
    pids = _pids(lines)
    assert len(pids) == 7 and "chain: anvil" in pids, pids  # anvil, the bus, 3 daemons, 2 oracles
    assert _gone_soon(pids, within_s=0) == []


def test_a_killed_demo_takes_its_processes_with_it(tmp_path) -> None:
    """SIGKILL runs no cleanup: anvil, the daemons, the oracles and nats-server still stop, because
    each gets SIGTERM when the process that started it dies (``PR_SET_PDEATHSIG``)."""
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
    pids = _pids(proc.stdout.splitlines())
    assert len(pids) == 7 and "chain: anvil" in pids and "bus: nats-server" in pids, proc.stdout
    assert _gone_soon(pids) == []


def test_a_missing_anvil_is_a_one_line_error_naming_the_make_target(tmp_path, monkeypatch, capsys) -> None:
    from edil.app import _embedded

    monkeypatch.setattr(_embedded, "ANVIL_BIN", tmp_path / "node_modules" / ".bin" / "anvil")
    with pytest.raises(RuntimeTaskError, match="make install"):
        run_runtime_demo(print, executor="nats")
    assert cli.main(["demo", "--no-masked", "--no-he", "--no-federated", "--executor", "nats"]) == 1
    err = capsys.readouterr().err.strip()
    assert "anvil is not installed" in err and "make install" in err and "\n" not in err and "Traceback" not in err, err
