"""The economy's invariants over random sequences of deposits, audits, settlements, refunds,
stakes, unbonding and slashes (tests/_economy_machine.py); a bounded run here, the long campaign
in benchmarks/economy_invariants.py."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from tests._economy_machine import EconomyMachine


def test_economy_invariants_hold_over_random_runs() -> None:
    examples = int(os.environ.get("EDIL_ECONOMY_EXAMPLES", "5"))
    run_state_machine_as_test(
        EconomyMachine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            derandomize=True,
        ),
    )
