"""An oracle process's epoch clock on a development chain, and its per-epoch tally of heartbeats.

``edil oracle run --clock chain`` measures epochs by the chain's block time (plus the wall time
since the latest block was seen), so a demo that moves the chain's clock moves the oracle's epochs;
the oracle tallies heartbeats by the epoch their own timestamps fall in, so what it reports for an
epoch is not mixed with traffic stamped for another.
"""

from __future__ import annotations

from edil import ChainError
from edil import runtime as rt
from edil.app._oracle_cli import ChainClock
from edil.proofs import Chain
from tests._chain_fixtures import make_key
from tests.test_runtime_conformance import fresh_seed
from tests.test_runtime_oracle import _deploy_short_epochs


def test_the_chain_clock_follows_blocks_and_counts_wall_time_between_them() -> None:
    blocks = [1_000]
    wall = [50.0]

    def read() -> int:
        if blocks[0] < 0:
            raise ChainError("the node did not answer")
        return blocks[0]

    clock = ChainClock(read, wall=lambda: wall[0])
    assert clock() == 1_000.0
    wall[0] += 2.5  # no block mined: the chain's time still goes on
    assert clock() == 1_002.5
    blocks[0] = 1_600  # the clock was moved (a block at the next epoch)
    wall[0] += 0.1
    assert clock() == 1_600.0  # from when this block was first seen, not from the previous one
    wall[0] += 1.0
    assert clock() == 1_601.0
    blocks[0] = 1_300  # a block below the interpolated time (e.g. a clock set back): the block wins
    assert clock() == 1_300.0
    blocks[0] = -1  # one failed read: the time goes on from the last block seen
    wall[0] += 4.0
    assert clock() == 1_304.0


def test_the_oracle_tallies_heartbeats_by_the_epoch_they_are_stamped_in() -> None:
    node, stranger = rt.NodeIdentity.from_seed(fresh_seed()), rt.NodeIdentity.from_seed(fresh_seed())
    chain = Chain.in_process()
    dep = _deploy_short_epochs(chain, [make_key("tally-oracle")], [node.address], epoch_s=60)
    now = [dep.genesis_time + 5 * 60 + 10.0]  # 10 s into epoch 5
    oracle = rt.NatsOracle(make_key("tally-oracle"), dep, slot_s=10, registry=rt.StaticRegistry([node.address]), clock=lambda: now[0])
    ms = int(now[0] * 1000)
    card = node.card(rt.Capabilities((), 1 << 30))
    assert oracle.presence.receive_announcement(node.address, rt.make_announcement(node, card, seq=1, now_ms=ms))
    beat = oracle.presence.receive_heartbeat
    assert beat(node.address, rt.make_heartbeat(node, seq=ms, now_ms=ms))
    forged = bytearray(rt.make_heartbeat(node, seq=ms + 1, now_ms=ms))
    forged[3] ^= 1
    assert not beat(node.address, bytes(forged))
    assert not beat(stranger.address, rt.make_heartbeat(stranger, seq=1, now_ms=ms))
    old = ms - 50_000  # stamped in epoch 4, 50 s ago: refused as stale, tallied in epoch 4
    assert not beat(node.address, rt.make_heartbeat(node, seq=ms + 2, now_ms=old))
    far = ms + 100 * 60_000  # a made-up time 100 epochs ahead: refused, and tallied nowhere
    assert not beat(node.address, rt.make_heartbeat(node, seq=ms + 3, now_ms=far))
    assert not beat(node.address, b"\x00" * 80)  # unparsable: names no epoch
    assert oracle.heartbeat_tally(5) == {"accepted": 1, "rejected": {"bad_signature": 1, "unregistered": 1}}
    assert oracle.heartbeat_tally(4) == {"accepted": 0, "rejected": {"stale": 1}}
    assert oracle.heartbeat_tally(105) == {"accepted": 0, "rejected": {}}
    assert sorted(oracle.presence.tally) == [4, 5]
    assert oracle.presence.rejected == {"bad_signature": 1, "unregistered": 1, "stale": 2, "malformed": 1}
    # Once epoch 5 is observed and agreed on, the older epochs' tallies are let go.
    oracle.start()
    now[0] = dep.genesis_time + 8 * 60 + 30.0
    oracle.due()  # epochs 6 and 7 observed, being agreed on: epoch 4's tally goes
    assert sorted(oracle.presence.tally) == [5]
    now[0] += 10.0
    oracle.due()  # attested: nothing older than the epoch before the next one is kept
    assert sorted(oracle.presence.tally) == []
