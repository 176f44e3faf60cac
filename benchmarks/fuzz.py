"""Fuzz campaign over every decoder of bytes that cross a trust boundary.

    python -m benchmarks.fuzz [--quick] [--cases N] [--seed S] [--decoders a,b,...]

Each decoder gets ``N`` cases: its valid payloads first (they must decode), then mutations of
them: bit flips, truncations, extensions, insertions, splices of two payloads, forged length
fields, interesting bytes, random bytes; and format-aware mutations, where the JSON or wire
record inside is re-encoded with huge integers, deep nesting (also hidden behind brackets inside
strings), non-canonical numbers, wrong types, unknown or missing fields, and the envelope is
re-sealed with a valid checksum and, where the decoder trusts the sender's key, re-signed, so that
mutations reach the code behind the checksum and the signature.

Cases run in worker subprocesses (``--worker``): a crash (segfault, abort) kills a worker, not
the campaign; the parent counts it against the case that was running and restarts the worker
after that case. Every case runs under a 5 s alarm (a hang), and the parent kills a worker silent
for 30 s (a hang inside C code, which the alarm cannot interrupt). A decoder may raise only
``EdilError`` subclasses; anything else is counted, with examples to reproduce
(``--decoders NAME --cases I+1 --seed S`` replays case ``I``).

Workers import the whole stack first (``edil.proofs`` pulls in web3/py-evm, which raise the
recursion limit to 100,000): the decoders are fuzzed in the conditions they run in.

Memory: the full campaign runs each decoder in its own worker (``--quick`` runs them all in one);
a worker's address space is capped at its size after setup + 4 GiB, so a runaway allocation
raises MemoryError (counted as a failure) instead of swapping the machine, and the peak RSS growth
over the worker's post-setup RSS must stay within ``MEMORY_BOUND_MIB`` per decoder.

Writes ``benchmarks/results/fuzz.json`` and ``fuzz.md``; exits 1 when a target is missed:
any non-EdilError exception, crash or hang, a decoder over the memory bound, a decoder that
refused one of its own valid payloads, or fewer than ``MIN_TOTAL_CASES`` cases in a full run.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import queue
import random
import resource
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Cases per decoder in a full campaign (15 decoders: >= 20,000 in all) and with --quick.
FULL_CASES, QUICK_CASES = 4000, 40
MIN_TOTAL_CASES = 20_000
#: A case slower than this is a hang (the environment variable is for the harness's own test).
HANG_S = float(os.environ.get("EDIL_FUZZ_HANG_S", "5.0"))
#: A worker silent this long is killed (a hang the alarm could not interrupt).
SILENT_S = 30.0
#: Largest peak-RSS growth a decoder may cause over its worker's post-setup RSS.
MEMORY_BOUND_MIB = 512
#: Address-space headroom of a worker over its size after setup.
ADDRESS_HEADROOM = 4 << 30
#: Crashes after which the rest of a decoder's cases are skipped (and the run fails).
MAX_CRASHES = 10
NOW_MS = 1_700_000_000_000

DECODER_NAMES = [
    "json",
    "wire",
    "envelope",
    "heartbeat",
    "node_card",
    "tensor",
    "model",
    "task",
    "transcript",
    "coordinator_json",
    "chain_revert",
    "ckks_context",
    "ckks_tensor",
    "paillier_context",
    "paillier_tensor",
]


# --- mutation of raw bytes ------------------------------------------------------------------------
_INTERESTING_BYTES = b'\x00\xff\x7f\x80\x01[]{}"\\:,'
_INTERESTING_WORDS = [
    0,
    1,
    0x7F,
    0x80,
    0xFF,
    0x7FFF,
    0xFFFF,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFF,
    (1 << 63) - 1,
    1 << 63,
    (1 << 64) - 1,
]


def _flip(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return bytes([rng.randrange(256)])
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(buf))
        buf[i] ^= 1 << rng.randrange(8)
    return bytes(buf)


def _truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data) + 1)]


def _extend(rng: random.Random, data: bytes) -> bytes:
    return data + rng.randbytes(rng.choice([1, 7, 64, 1000]))


def _insert(rng: random.Random, data: bytes) -> bytes:
    i = rng.randrange(len(data) + 1)
    return data[:i] + rng.randbytes(rng.randint(1, 32)) + data[i:]


def _length_field(rng: random.Random, data: bytes) -> bytes:
    """Overwrite 1, 2, 4 or 8 bytes with an interesting integer (either byte order)."""
    size = rng.choice([1, 2, 4, 8])
    value = rng.choice(_INTERESTING_WORDS + [len(data), len(data) + 1, len(data) - 1]) % (1 << (8 * size))
    word = value.to_bytes(size, rng.choice(["big", "little"]))
    i = rng.randrange(len(data) + 1)
    return data[:i] + word + data[i + size :]


def _interesting(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return bytes([rng.choice(_INTERESTING_BYTES)])
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        buf[rng.randrange(len(buf))] = rng.choice(_INTERESTING_BYTES)
    return bytes(buf)


def _duplicate(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    j = min(len(data), i + rng.randint(1, 64))
    return data[:j] + data[i:j] * rng.randint(1, 50) + data[j:]


def mutate_bytes(rng: random.Random, seeds: list[bytes]) -> bytes:
    """One generic mutation of one (or, for a splice, two) of ``seeds``."""
    data = rng.choice(seeds)
    op = rng.randrange(9)
    if op == 0:
        return _flip(rng, data)
    if op == 1:
        return _truncate(rng, data)
    if op == 2:
        return _extend(rng, data)
    if op == 3:
        return _insert(rng, data)
    if op == 4:
        return _length_field(rng, data)
    if op == 5:
        return _interesting(rng, data)
    if op == 6:
        return _duplicate(rng, data)
    if op == 7:
        other = rng.choice(seeds)
        return data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1) :]
    return rng.randbytes(rng.choice([0, 1, 16, 200, 4096]))


# --- format-aware mutation: trees of JSON or wire values -------------------------------------------
@dataclass(frozen=True)
class Raw:
    """Encoded text inserted verbatim (JSON text, or wire bytes), to say what an encoder would not."""

    text: Any


def _paths(v: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(v, dict):
        for k, x in v.items():
            out += _paths(x, prefix + (k,))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            out += _paths(x, prefix + (i,))
    return out


def mutate_tree(rng: random.Random, tree: Any, nasty: Callable[[random.Random], Any]) -> Any:
    """A copy of ``tree`` with one to three nodes replaced, deleted, duplicated or retyped."""
    tree = copy.deepcopy(tree)
    for _ in range(rng.choice([1, 1, 2, 3])):
        path = rng.choice(_paths(tree))
        if not path:
            tree = nasty(rng) if rng.random() < 0.5 else [tree]
            continue
        parent = tree
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        op = rng.randrange(6)
        if op <= 2:
            parent[key] = nasty(rng)
        elif op == 3 and isinstance(parent, dict):
            del parent[key]
        elif op == 3:
            parent.pop(key)
        elif op == 4 and isinstance(parent, dict):
            parent["zz_unknown"] = nasty(rng)
        elif op == 4:
            parent.append(nasty(rng))
        else:
            v = parent[key]
            parent[key] = {"v": v} if not isinstance(v, dict) else [v]
    return tree


def _deep(d: int, open_: str = "[", close: str = "]") -> str:
    return open_ * d + close * d


def nasty_json(rng: random.Random) -> Any:
    """A JSON value meant to hurt a decoder (``Raw`` for what ``json.dumps`` would not write)."""
    # 50,000 levels: past the C stack, yet under the 100,000 recursion limit the chain stack sets.
    d = rng.choice([33, 1000, 50_000, 200_000])
    k = rng.choice([20, 400, 4400, 20_000])
    choices: list[Any] = [
        Raw("9" * k),
        Raw("-" + "9" * k),
        Raw("1" + "0" * k + ".5"),
        Raw("1e999"),
        Raw("-1e999"),
        Raw("1e-999"),
        Raw("NaN"),
        Raw("Infinity"),
        Raw("-0"),
        Raw("0x10"),
        Raw("01"),
        Raw(_deep(d)),
        Raw('{"a":' * min(d, 50_000) + "1" + "}" * min(d, 50_000)),
        Raw('["' + "]" * d + '", ' + _deep(d) + "]"),  # brackets in a string hide deep nesting
        Raw('"' + "\\\\" * 3 + '"'),
        Raw('"\\"' + "[" * d),  # an unterminated string with brackets after an escaped quote
        Raw('"\\ud800"'),
        Raw('"\\u0000"'),
        Raw("[" * d),
        Raw("{" * d),
        Raw('{"a": 1, "a": 2}'),
        "",
        "x" * rng.choice([1, 100, 100_000]),
        "[[[{{{",
        '"',
        "\\",
        "\u0000\ud7ff",
        True,
        False,
        None,
        [],
        {},
        [0] * rng.choice([1, 10_000]),
        2**64,
        -1,
        0,
        2**63 - 1,
        2**63,
        -(2**63) - 1,
        1.5,
        -0.0,
        1e308,
        "0x" + "f" * rng.choice([1, 64, 5000]),
        "f" * rng.choice([1, 2047, 2048, 2049, 4096, 100_000]),
        "0" + "f" * 64,
    ]
    return rng.choice(choices)


def json_text(v: Any) -> str:
    if isinstance(v, Raw):
        return str(v.text)
    if isinstance(v, dict):
        return "{" + ", ".join(json.dumps(str(k)) + ": " + json_text(x) for k, x in v.items()) + "}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(json_text(x) for x in v) + "]"
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return json.dumps(v)


def mutate_json(rng: random.Random, tree: Any) -> bytes:
    text = json_text(mutate_tree(rng, tree, nasty_json))
    return text.encode("utf-8", "surrogatepass")


_U32 = struct.Struct(">I")


def wire_bytes(v: Any, top: bool = True) -> bytes:
    """The runtime's wire encoding, but accepting ``Raw`` bytes anywhere (not canonical on purpose)."""
    out = b"EW1" if top else b""
    if isinstance(v, Raw):
        return out + bytes(v.text)
    if v is None:
        return out + b"N"
    if v is True:
        return out + b"T"
    if v is False:
        return out + b"F"
    if isinstance(v, int):
        t = str(v).encode()
        return out + b"i" + _U32.pack(len(t)) + t
    if isinstance(v, float):
        return out + b"f" + struct.pack(">d", v)
    if isinstance(v, str):
        t = v.encode("utf-8", "surrogatepass")
        return out + b"s" + _U32.pack(len(t)) + t
    if isinstance(v, bytes | bytearray):
        return out + b"b" + _U32.pack(len(v)) + bytes(v)
    if isinstance(v, list | tuple):
        return out + b"l" + _U32.pack(len(v)) + b"".join(wire_bytes(x, False) for x in v)
    if isinstance(v, dict):
        return out + b"d" + _U32.pack(len(v)) + b"".join(wire_bytes(str(k), False) + wire_bytes(x, False) for k, x in v.items())
    raise TypeError(type(v))


def nasty_wire(rng: random.Random) -> Any:
    """A wire value meant to hurt a decoder (``Raw`` for bytes the encoder would not write)."""
    k = rng.choice([4300, 4302, 100_000])
    d = rng.choice([33, 10_000])
    choices: list[Any] = [
        Raw(b"i" + _U32.pack(k) + b"9" * k),
        Raw(b"i" + _U32.pack(3) + b"+12"),
        Raw(b"i" + _U32.pack(3) + b" 12"),
        Raw(b"i" + _U32.pack(3) + b"1_0"),
        Raw(b"i" + _U32.pack(2) + b"01"),
        Raw(b"i" + _U32.pack(2) + b"-0"),
        Raw(b"i" + _U32.pack(0)),
        Raw(b"i" + _U32.pack(2) + "\u0663\u0664".encode()[:2]),
        Raw(b"l" + _U32.pack(0xFFFFFFFF)),
        Raw(b"d" + _U32.pack(0x7FFFFFFF)),
        Raw(b"b" + _U32.pack(0xFFFFFFFF)),
        Raw(b"s" + _U32.pack(2) + b"\xed\xa0"),
        Raw((b"l" + _U32.pack(1)) * d + b"N"),
        Raw((b"d" + _U32.pack(1) + b"s" + _U32.pack(1) + b"a") * d + b"N"),
        Raw(b"d" + _U32.pack(2) + b"s" + _U32.pack(1) + b"a" + b"N" + b"s" + _U32.pack(1) + b"a" + b"N"),
        Raw(b"d" + _U32.pack(1) + b"i" + _U32.pack(1) + b"1" + b"N"),
        Raw(b"Z"),
        Raw(b""),
        float("nan"),
        float("inf"),
        -float("inf"),
        -0.0,
        1e308,
        2**64,
        2**256,
        -1,
        -(2**63),
        0,
        True,
        None,
        "",
        "x" * rng.choice([1, 100, 100_000]),
        "0x" + "zz" * 20,
        "0x" + "11" * 20,
        b"",
        b"\x00" * rng.choice([1, 31, 32, 33, 64, 65, 66]),
        rng.randbytes(rng.choice([8, 100, 100_000])),
        [],
        {},
        [None] * rng.choice([1, 1000]),
        {"x": 1},
    ]
    return rng.choice(choices)


def mutate_wire(rng: random.Random, tree: Any) -> bytes:
    return wire_bytes(mutate_tree(rng, tree, nasty_wire))


def seal_envelope_bytes(
    magic: bytes, kind: bytes, header: bytes, body: bytes, prefix: bytes = b"", *, version: int = 1, hlen: int | None = None
) -> bytes:
    """``edil``'s checksummed envelope (see ``edil._scheme.Envelope``), built here so that any
    field can be forged while the checksum stays valid."""
    n = len(header) if hlen is None else hlen
    payload = magic + kind + struct.pack("<HI", version, n % (1 << 32)) + prefix + header + body
    return payload + hashlib.sha256(payload).digest()


def nasty_tensor(rng: random.Random) -> bytes:
    """A canonical-tensor header with a hostile dtype or shape, and a payload of some length."""
    descr = rng.choice(
        [
            b"<f8",
            b"|b1",
            b"<u8",
            b"O",
            b"|O",
            b"<U8",
            b"V8",
            b"|V8",
            b"(2,)<i4",
            b"[('a','<i4')]",
            b"<M8[s]",
            b"S5",
            b">f8",
            b"<f16",
            b"<c16",
            b"",
            rng.randbytes(rng.randint(1, 40)),
            b"<f8" * 85,
        ]
    )[:255]
    ndim = rng.choice([0, 1, 2, 3, 32, 33, 64, 255])
    dims = [rng.choice([0, 1, 2, 3, 1 << 31, 1 << 62, (1 << 64) - 1]) for _ in range(ndim)]
    header = b"EDT1" + bytes([len(descr)]) + descr + bytes([ndim]) + b"".join(d.to_bytes(8, "big") for d in dims)
    if rng.random() < 0.2:
        header = header[: rng.randrange(len(header) + 1)]
    payload_len = rng.choice([0, 1, 8, 64, 4096])
    return header + rng.randbytes(payload_len)


# --- the decoders and their valid payloads ---------------------------------------------------------
@dataclass
class Target:
    """One decoder: its valid payloads, the call, and a format-aware mutator."""

    name: str
    seeds: list[bytes]
    decode: Callable[[bytes], Any]
    structured: Callable[[random.Random], bytes] | None = None
    structured_share: float = 0.6

    def case(self, i: int, rng: random.Random) -> bytes:
        if i < len(self.seeds):
            return self.seeds[i]
        if self.structured is not None and rng.random() < self.structured_share:
            return self.structured(rng)
        return mutate_bytes(rng, self.seeds)


def _keys() -> dict[str, Any]:
    from edil.runtime import CoordinatorIdentity, NodeIdentity

    return {
        "coord": CoordinatorIdentity.from_seed(b"edil-fuzz-coordinator-seed-0000"),
        "node": NodeIdentity.from_seed(b"edil-fuzz-node-seed-000000000000"),
        "other": NodeIdentity.from_seed(b"edil-fuzz-other-seed-00000000000"),
    }


def _model() -> Any:
    import numpy as np

    from edil.models import Dense, Flatten, Polynomial, Sequential

    rng = np.random.default_rng(0)
    return Sequential(
        (
            Flatten(),
            Dense(rng.normal(size=(4, 3)), rng.normal(size=3)),
            Polynomial((0.1, 0.5, 0.25)),
            Dense(rng.normal(size=(3, 1)), np.zeros(1)),
        ),
        kind="binary",
    )


def _json_target() -> Target:
    from edil._scheme import json_from_untrusted

    docs: list[Any] = [
        {"coeff_mod_bit_sizes": [45, 30, 45], "depth": 1, "poly_modulus_degree": 8192, "precision_bits": 30},
        {"frac_bits": 16, "int_bits": 16, "n": "c5" * 64, "pack": True, "slot_bits": 77},
        {"a": ["]]]", "[[[", {"b": [1, 2.5, None, True]}], "c": '\\"['},
        [[[[1]]]],
        "plain string",
    ]
    seeds = [json.dumps(d).encode() for d in docs]
    return Target("json", seeds, json_from_untrusted, lambda rng: mutate_json(rng, rng.choice(docs)))


def _wire_target() -> Target:
    from edil.runtime import _wire

    docs: list[Any] = [
        {"a": 1, "b": [1.5, "x", b"\x00\x01", None, True, False], "c": {"d": -(2**70)}},
        [[[[[]]]]],
        {"tag": "EDIL/heartbeat/v1", "node": "0x" + "ab" * 20, "seq": 3, "ts": NOW_MS},
    ]
    seeds = [_wire.dumps(d) for d in docs]
    return Target("wire", seeds, _wire.loads, lambda rng: mutate_wire(rng, rng.choice(docs)))


def _task_record() -> dict[str, Any]:
    import numpy as np

    from edil.runtime import array_to_bytes, model_to_bytes

    return {
        "scheme": "plain",
        "params": {"scheme": "plain"},
        "model": model_to_bytes(_model()),
        "input": array_to_bytes(np.arange(8, dtype=np.float64).reshape(2, 4)),
        "work_units": 123,
        "needs_gpu": False,
        "context": b"",
        "node": "",
    }


def _task_from_record(rec: dict[str, Any]) -> Any:
    from edil.runtime import Task

    fields = {k: rec[k] for k in ("scheme", "params", "model", "input", "work_units", "needs_gpu", "context", "node")}
    return Task(**fields)


def _envelope_target() -> Target:
    import nacl.signing

    from edil.runtime import ReplayGuard, _wire, open_envelope, seal_envelope

    k = _keys()
    coord, node = k["coord"], k["node"]
    box = bytes(node.box.public_key)
    task_wire = _task_from_record(_task_record()).to_wire()
    bodies: list[Any] = [
        {"job_id": b"\x01" * 32, "epoch": 1, "task": task_wire},
        {"session": b"\x02" * 16, "opened": b"EDT1"},
        None,
    ]
    seeds = [
        seal_envelope(kind, body, signing_key=coord.signing, recipient_box_key=box, nonce=bytes([i]) * 16, now_ms=NOW_MS)
        for i, (kind, body) in enumerate(zip(["task", "mpc_step", "ping"], bodies, strict=True))
    ]
    stranger = nacl.signing.SigningKey(b"\x07" * 32)

    def structured(rng: random.Random) -> bytes:
        import nacl.public

        header = {
            "kind": rng.choice(["task", "mpc_step", "ping"]),
            "body": rng.choice(bodies),
            "from": bytes(coord.signing.verify_key),
            "to": box,
            "nonce": rng.randbytes(16),
            "ts": NOW_MS,
        }
        signed_part = mutate_wire(rng, header) if rng.random() < 0.8 else _wire.dumps(header)
        signer = coord.signing if rng.random() < 0.9 else stranger
        signed = bytes(signer.sign(signed_part))
        if rng.random() < 0.15:
            signed = mutate_bytes(rng, [signed])
        return nacl.public.SealedBox(nacl.public.PublicKey(box)).encrypt(signed)

    def decode(data: bytes) -> Any:
        return open_envelope(data, box_key=node.box, trusted=[coord.verify_key], guard=ReplayGuard(), now_ms=NOW_MS)

    return Target("envelope", seeds, decode, structured)


def _heartbeat_target() -> Target:
    from edil.runtime import HeartbeatMonitor, _wire, make_heartbeat, parse_heartbeat

    k = _keys()
    node = k["node"]

    class _Admitted:
        def is_admitted(self, address: str) -> bool:
            return address == node.address

    monitor = HeartbeatMonitor(_Admitted(), epoch_ms=60_000, interval_ms=1_000, max_skew_ms=10**13)
    monitor.add_card(node.card(_caps()))
    seeds = [make_heartbeat(node, seq=s, now_ms=NOW_MS + 1000 * s) for s in range(3)]
    record = {"tag": "EDIL/heartbeat/v1", "node": node.address, "seq": 5, "ts": NOW_MS}

    def structured(rng: random.Random) -> bytes:
        msg = mutate_wire(rng, record) if rng.random() < 0.9 else _wire.dumps(record)
        return bytes(node.signing.sign(msg)) if rng.random() < 0.7 else rng.randbytes(64) + msg

    def decode(data: bytes) -> Any:
        hb = parse_heartbeat(data)
        monitor.receive(data, now_ms=NOW_MS)  # never raises: the monitor counts what it refuses
        return hb

    return Target("heartbeat", seeds, decode, structured)


def _caps() -> Any:
    from edil.runtime import Capabilities

    return Capabilities(("gpu",), 1 << 34)


def _node_card_target() -> Target:
    from edil.runtime import NodeCard, _wire

    k = _keys()
    cards = [k["node"].card(_caps()).to_wire(), k["other"].card(_caps()).to_wire()]
    seeds = [_wire.dumps(c) for c in cards]

    def decode(data: bytes) -> Any:
        return NodeCard.from_wire(_wire.loads(data)).verify()

    return Target("node_card", seeds, decode, lambda rng: mutate_wire(rng, rng.choice(cards)))


def _tensor_target() -> Target:
    import numpy as np

    from edil.runtime import array_from_bytes, array_to_bytes

    arrays = [
        np.arange(12, dtype=np.float64).reshape(3, 4),
        np.arange(5, dtype=np.uint64),
        np.array([[True, False], [False, True]]),
        np.array(7, dtype=np.int8),
        np.array([1 + 2j, 3 - 4j]),
        np.zeros((0, 3)),
        np.ones(3, dtype=np.float16),
    ]
    seeds = [array_to_bytes(a) for a in arrays]
    return Target("tensor", seeds, array_from_bytes, nasty_tensor, structured_share=0.4)


def _model_target() -> Target:
    import numpy as np

    from edil.runtime import _wire, array_to_bytes, model_from_bytes, model_to_bytes

    seeds = [model_to_bytes(_model())]
    tree = _wire.loads(seeds[0])
    bad_tensors = [
        array_to_bytes(np.array([[np.nan]])),
        array_to_bytes(np.ones((2, 2), dtype=np.complex128)),
        array_to_bytes(np.ones((2, 2, 2))),
        array_to_bytes(np.ones((7, 3))),
    ]

    def structured(rng: random.Random) -> bytes:
        if rng.random() < 0.3:
            t = copy.deepcopy(tree)
            layer = rng.choice([la for la in t["layers"] if la["t"] == "dense"])
            layer[rng.choice(["w", "b"])] = rng.choice(bad_tensors + [nasty_tensor(rng)])
            return _wire.dumps(t)
        return mutate_wire(rng, tree)

    return Target("model", seeds, model_from_bytes, structured)


def _task_target() -> Target:
    from edil.runtime import Task, _wire

    task = _task_from_record(_task_record())
    seeds = [task.to_bytes()]
    tree = _wire.loads(seeds[0])
    return Target("task", seeds, Task.from_bytes, lambda rng: mutate_wire(rng, tree))


def _domain() -> Any:
    from edil.proofs import Eip712Domain

    return Eip712Domain("EDIL PoAI", "1", 31337, "0x" + "11" * 20)


def _transcript_target() -> Target:
    from edil.proofs import Transcript, sign_transcript, transcript_from_wire, transcript_to_wire
    from edil.runtime import _wire

    node = _keys()["node"]
    t = Transcript(
        b"\x01" * 32, 3, node.address, b"\x02" * 32, b"\x03" * 32, b"\x04" * 32, b"\x05" * 32, 1000, NOW_MS, NOW_MS + 5
    )
    rec = transcript_to_wire(sign_transcript(t, node.chain_key, _domain()))
    seeds = [_wire.dumps(rec)]

    def decode(data: bytes) -> Any:
        return transcript_from_wire(_wire.loads(data))

    return Target("transcript", seeds, decode, lambda rng: mutate_wire(rng, rec))


def _coordinator_target() -> Target:
    from edil.runtime import CoordinatorKeys

    coord = _keys()["coord"]
    doc = CoordinatorKeys(coord.verify_key, coord.box_key, _domain()).to_json()
    seeds = [json.dumps(doc).encode(), json.dumps(doc, indent=2).encode()]
    return Target("coordinator_json", seeds, CoordinatorKeys.from_json, lambda rng: mutate_json(rng, doc))


def _revert_target() -> Target:
    from eth_abi import encode as abi_encode
    from eth_tester.exceptions import TransactionFailed
    from eth_utils import keccak
    from web3.exceptions import ContractLogicError

    from edil import ChainError
    from edil.proofs._chain import translate_revert

    def selector(sig: str) -> bytes:
        return keccak(sig.encode())[:4]

    payloads = [
        selector("Error(string)") + abi_encode(["string"], ["not the owner"]),
        selector("NodeNotAdmitted(address)") + abi_encode(["address"], ["0x" + "22" * 20]),
        selector("QuorumNotMet(uint256,uint256)") + abi_encode(["uint256", "uint256"], [1, 3]),
        selector("AuditAlreadyRecorded(address,uint64,uint8)")
        + abi_encode(["address", "uint64", "uint8"], ["0x" + "33" * 20, 4, 1]),
        selector("EmptyBatch()"),
    ]
    # Byte 0 picks how the data reaches translate_revert (as web3's ContractLogicError.data, as
    # eth-tester's TransactionFailed bytes, as the repr text eth_call reverts carry, or chained).
    seeds = [bytes([m]) + p for m in range(4) for p in payloads[:3]] + [b"\x00" + payloads[3], b"\x01" + payloads[4]]

    def as_exception(data: bytes) -> BaseException:
        mode, payload = (data[0] % 4, data[1:]) if data else (0, b"")
        if mode == 0:
            text = "0x" + payload.hex() if not payload.startswith(b"!") else payload.decode("latin-1")
            return ContractLogicError("execution reverted", data=text)
        if mode == 1:
            return TransactionFailed(payload)
        text = repr(payload) if not payload.startswith(b"!") else payload[1:].decode("latin-1")
        inner = TransactionFailed("execution reverted: " + text)
        if mode == 2:
            return inner
        outer = ContractLogicError("execution reverted")
        outer.__cause__ = inner
        return outer

    def structured(rng: random.Random) -> bytes:
        mode = bytes([rng.randrange(4)])
        p = rng.choice(payloads)
        choice = rng.randrange(7)
        if choice == 0:  # Error(string) with a forged offset or length
            return mode + p[:4] + rng.choice(_INTERESTING_WORDS + [2**255]).to_bytes(32, "big") + p[36:]
        if choice == 1:
            return mode + p[:4] + p[4:36] + rng.choice([2**64, 2**255, 10**6]).to_bytes(32, "big") + p[68:]
        if choice == 2:  # text that is not a bytes repr
            junk = rng.choice(
                [
                    "b'" + "\\" * rng.randint(1, 9),
                    "b'' + " + "(" * 100_000,
                    "b'\\u1234'",
                    "b'''",
                    'b"\'"',
                    "b'" + "\\x" + "zz'",
                    "b'" + "a" * 200_000 + "'",
                    "0x" + "0" * 9,
                    "0x08c379a0zz",
                    "0x123",
                ]
            )
            return mode + b"!" + (b"!" if mode[0] >= 2 else b"") + junk.encode("latin-1", "replace")
        if choice == 3:
            return mode + p + rng.randbytes(rng.choice([1, 31, 64]))
        if choice == 4:
            return mode + rng.choice([p[:4] for p in payloads]) + rng.randbytes(rng.choice([0, 5, 32, 96, 100_000]))
        if choice == 5:
            return mode + p[: rng.randrange(len(p) + 1)]
        return mode + mutate_bytes(rng, [p])

    def decode(data: bytes) -> Any:
        err = translate_revert(as_exception(data))
        if not isinstance(err, ChainError):  # pragma: no cover - a failure this campaign reports
            raise AssertionError(f"translate_revert returned {type(err).__name__}")
        return err

    return Target("chain_revert", seeds, decode, structured)


def _ckks_client() -> Any:
    from edil import CKKS

    return CKKS.for_depth(1)


def _split_envelope(data: bytes, magic: bytes, prefix_len: int = 0) -> tuple[bytes, bytes, bytes, bytes]:
    """(kind, prefix, header, body) of a well-formed envelope made by this process."""
    fixed = len(magic) + 1 + 6
    kind = data[len(magic) : len(magic) + 1]
    (hlen,) = struct.unpack("<I", data[len(magic) + 3 : fixed])
    payload = data[:-32]
    return (
        kind,
        payload[fixed : fixed + prefix_len],
        payload[fixed + prefix_len : fixed + prefix_len + hlen],
        payload[fixed + prefix_len + hlen :],
    )


def _ckks_context_target() -> Target:
    import tenseal as ts

    from edil import CKKS

    client = _ckks_client()
    good = client.public_context_bytes()
    magic = b"EDILCKKS"
    _, _, header, body = _split_envelope(good, magic)
    params = json.loads(header)

    def public(ctx: Any) -> bytes:
        return ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=True, save_relin_keys=True)

    # Bodies that are valid TenSEAL contexts, but not the one the header declares.
    variants: list[bytes] = [CKKS.for_depth(2).public_context_bytes()]
    _, _, _, deeper = _split_envelope(variants[0], magic)
    bfv = ts.context(ts.SCHEME_TYPE.BFV, 8192, plain_modulus=1032193, coeff_mod_bit_sizes=[45, 30, 45])
    private = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[45, 30, 45])
    private.global_scale = 2.0**30
    private.generate_relin_keys()
    other_scale = private.copy()
    other_scale.global_scale = 2.0**25
    other_scale.make_context_public()
    no_relin = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[45, 30, 45])
    no_relin.global_scale = 2.0**30
    no_relin_bytes = no_relin.serialize(
        save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
    )
    other_chain = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[50, 30, 50])
    other_chain.global_scale = 2.0**30
    other_chain.generate_relin_keys()
    wrong_bodies = [
        deeper,
        bfv.serialize(save_secret_key=False),
        private.serialize(save_secret_key=True),
        public(other_scale),
        no_relin_bytes,
        public(other_chain),
    ]
    seeds = [good]
    checks = [seal_envelope_bytes(magic, b"C", header, b) for b in wrong_bodies]

    def structured(rng: random.Random) -> bytes:
        op = rng.randrange(5)
        if op == 0:
            return rng.choice(checks)
        if op == 1:  # the header's JSON mutated, the body kept
            return seal_envelope_bytes(magic, b"C", mutate_json(rng, params), body)
        if op == 2:  # the SEAL body mutated, behind a valid checksum
            return seal_envelope_bytes(
                magic, b"C", header, rng.choice([_flip, _truncate, _insert, _length_field, _interesting, _duplicate])(rng, body)
            )
        if op == 3:  # forged envelope fields
            return seal_envelope_bytes(
                magic,
                rng.choice([b"C", b"T", b"X"]),
                header,
                body,
                version=rng.choice([1, 2, 65535]),
                hlen=rng.choice([len(header), len(header) + 1, 0, 0xFFFFFFFF]),
            )
        return seal_envelope_bytes(magic, b"C", mutate_json(rng, params), rng.choice(wrong_bodies))

    return Target("ckks_context", seeds, CKKS.from_public_context, structured)


def _ckks_tensor_target() -> Target:
    import numpy as np

    from edil import CKKS

    client = _ckks_client()
    node = CKKS.from_public_context(client.public_context_bytes())
    magic = b"EDILCKKS"
    seeds = [client.serialize(client.encode(np.array([[0.5], [1.5]]))), client.serialize(client.encode(np.array([0.25, -1.0])))]
    parts = [_split_envelope(s, magic, prefix_len=32) for s in seeds]
    foreign = CKKS.for_depth(2)
    foreign_blob = _split_envelope(foreign.serialize(foreign.encode(np.array([[0.5], [1.5]]))), magic, prefix_len=32)[3]

    def structured(rng: random.Random) -> bytes:
        _, fp, meta_raw, body = rng.choice(parts)
        meta = json.loads(meta_raw)
        op = rng.randrange(5)
        if op <= 1:
            return seal_envelope_bytes(magic, b"T", mutate_json(rng, meta), body, prefix=fp)
        if op == 2:  # a ciphertext made under other parameters, with this context's fingerprint
            m = dict(meta, lens=[len(foreign_blob)] * len(meta["lens"]))
            return seal_envelope_bytes(magic, b"T", json.dumps(m).encode(), foreign_blob * len(meta["lens"]), prefix=fp)
        if op == 3:  # a mutated ciphertext blob, its length kept consistent
            blob = rng.choice([_flip, _truncate, _insert, _length_field, _interesting])(rng, body)
            m = dict(meta, lens=[len(blob)] + [0] * (len(meta["lens"]) - 1)) if len(meta["lens"]) == 1 else meta
            return seal_envelope_bytes(magic, b"T", json.dumps(m).encode(), blob, prefix=fp)
        return seal_envelope_bytes(
            magic, rng.choice([b"T", b"C"]), meta_raw, body, prefix=rng.choice([fp, rng.randbytes(32), b""])
        )

    return Target("ckks_tensor", seeds, node.deserialize, structured)


def _paillier_client() -> Any:
    from phe import paillier

    from edil import Paillier

    # A fixed 1024-bit key (generated once per process, so the campaign stays fast); the decoder's
    # bounds do not depend on the key size.
    pub, priv = paillier.generate_paillier_keypair(n_length=1024)
    return Paillier(keypair=(pub, priv))


def _paillier_context_target() -> Target:
    from edil import Paillier

    client = _paillier_client()
    good = client.public_context_bytes()
    magic = b"EDILPAI"
    _, _, header, _ = _split_envelope(good, magic)
    doc = json.loads(header)

    def structured(rng: random.Random) -> bytes:
        if rng.random() < 0.3:  # the modulus alone: huge, even, tiny, prefixed, padded
            n = rng.choice(
                [
                    "f" * rng.choice([2047, 2048, 2049, 100_000, 10_000_000]),
                    "0" + doc["n"],
                    "0x" + doc["n"],
                    doc["n"][:-1] + "2",
                    "1" * 16,
                    doc["n"].upper(),
                    " " + doc["n"],
                    doc["n"] * 2,
                ]
            )
            return seal_envelope_bytes(magic, b"C", json.dumps(dict(doc, n=n)).encode(), b"")
        return seal_envelope_bytes(magic, b"C", mutate_json(rng, doc), rng.choice([b"", b"", b"x"]))

    return Target("paillier_context", [good], Paillier.from_public_context, structured)


def _paillier_tensor_target() -> Target:
    import numpy as np

    from edil import Paillier

    client = _paillier_client()
    node = Paillier.from_public_context(client.public_context_bytes())
    magic = b"EDILPAI"
    seeds = [
        client.serialize(client.encode(np.array([[0.5, 1.0], [1.5, -2.0], [3.0, 0.0]]))),
        client.serialize(client.encode(np.array([0.25, -1.0]))),
    ]
    metas = [json.loads(_split_envelope(s, magic)[2]) for s in seeds]
    n2 = format(int(client.nsquare), "x")

    def structured(rng: random.Random) -> bytes:
        meta = copy.deepcopy(rng.choice(metas))
        if rng.random() < 0.3:
            col = rng.randrange(len(meta["columns"]))
            meta["columns"][col][0] = rng.choice(["0", "1", n2, format(int(client.n), "x"), "f" * 10_000, "f" * 513])
            return seal_envelope_bytes(magic, b"T", json.dumps(meta).encode(), b"")
        return seal_envelope_bytes(magic, b"T", mutate_json(rng, meta), b"")

    return Target("paillier_tensor", seeds, node.deserialize, structured)


TARGETS: dict[str, Callable[[], Target]] = {
    "json": _json_target,
    "wire": _wire_target,
    "envelope": _envelope_target,
    "heartbeat": _heartbeat_target,
    "node_card": _node_card_target,
    "tensor": _tensor_target,
    "model": _model_target,
    "task": _task_target,
    "transcript": _transcript_target,
    "coordinator_json": _coordinator_target,
    "chain_revert": _revert_target,
    "ckks_context": _ckks_context_target,
    "ckks_tensor": _ckks_tensor_target,
    "paillier_context": _paillier_context_target,
    "paillier_tensor": _paillier_tensor_target,
}
assert list(TARGETS) == DECODER_NAMES


def _selftest_target() -> Target:
    """A decoder that fails in each way the campaign counts (byte 0 chooses), to test the harness."""
    import ctypes

    def decode(data: bytes) -> Any:
        mode = data[0] % 5 if data else 0
        if mode == 1:
            raise ValueError("a builtin exception escaped")
        if mode == 2:
            ctypes.string_at(0)  # a segfault
        if mode == 3:
            time.sleep(HANG_S * 4)
        if mode == 4:
            from edil import SerializationError

            raise SerializationError("refused")
        return data

    return Target("_selftest", [bytes([m]) for m in range(5)], decode)


if os.environ.get("EDIL_FUZZ_SELFTEST") == "1":
    TARGETS["_selftest"] = _selftest_target


# --- the worker ----------------------------------------------------------------------------------
class _Hang(BaseException):
    """Raised by the per-case alarm (a BaseException, so a decoder's ``except Exception`` cannot eat it)."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Hang


def _vm_size() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # pragma: no cover - not Linux
        return 0


def _rss_kib() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _say(*parts: Any) -> None:
    sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
    sys.stdout.flush()


def _case_rng(seed: int, name: str, i: int) -> random.Random:
    return random.Random(f"edil-fuzz/{seed}/{name}/{i}")


def run_worker(names: list[str], cases: int, seed: int, start: int) -> int:
    """Run cases ``start..cases-1`` of the first decoder, then all cases of the others.

    Protocol on stdout, one line each: ``R recursion_limit`` first, ``S name baseline_kib seeds``
    after a decoder's setup, ``B name i`` before a
    case, ``C name i outcome detail`` after it, ``E name peak_kib`` at the end of a decoder.
    """
    if names != ["_selftest"]:  # the harness's own test needs no stack
        import edil.proofs  # noqa: F401 - the chain stack raises the recursion limit: fuzz under it
        import edil.runtime  # noqa: F401
    from edil import EdilError

    _say("R", sys.getrecursionlimit())
    signal.signal(signal.SIGALRM, _on_alarm)
    limited = False
    for k, name in enumerate(names):
        target = TARGETS[name]()
        if not limited:
            # Cap the address space once the heaviest setup is done (a runaway allocation then
            # fails with MemoryError instead of swapping a shared machine).
            vm = _vm_size()
            if vm:
                resource.setrlimit(resource.RLIMIT_AS, (vm + ADDRESS_HEADROOM, resource.RLIM_INFINITY))
            limited = True
        _say("S", name, _rss_kib(), len(target.seeds))
        for i in range(start if k == 0 else 0, cases):
            data = target.case(i, _case_rng(seed, name, i))
            _say("B", name, i)
            t0 = time.perf_counter()
            outcome, detail = "accepted", ""
            signal.setitimer(signal.ITIMER_REAL, HANG_S)
            try:
                target.decode(data)
            except _Hang:
                outcome = "hang"
            except EdilError as exc:
                outcome, detail = "rejected", type(exc).__name__
            except BaseException as exc:  # noqa: BLE001 - what this campaign exists to find
                outcome, detail = "other", f"{type(exc).__name__}: {str(exc)[:160]}"
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            dt = time.perf_counter() - t0
            if dt > HANG_S:
                outcome = "hang"
            _say("C", name, i, outcome, f"{dt:.4f}", detail.replace("\n", " "))
        _say("E", name, _rss_kib())
        del target
    return 0


# --- the parent ---------------------------------------------------------------------------------
@dataclass
class DecoderStats:
    name: str
    cases: int = 0
    rejected: int = 0
    accepted: int = 0
    other: int = 0
    crashes: int = 0
    hangs: int = 0
    seeds_accepted: int = 0
    seeds: int = 0
    baseline_kib: int = 0
    peak_kib: int = 0
    max_case_s: float = 0.0
    skipped: int = 0
    rejections: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    @property
    def growth_mib(self) -> float:
        return max(0, self.peak_kib - self.baseline_kib) / 1024

    def row(self) -> dict[str, Any]:
        return {
            "decoder": self.name,
            "cases": self.cases,
            "edil_rejections": self.rejected,
            "accepted": self.accepted,
            "other_exceptions": self.other,
            "crashes": self.crashes,
            "hangs": self.hangs,
            "peak_mib": round(self.peak_kib / 1024, 1),
            "growth_mib": round(self.growth_mib, 1),
            "max_case_ms": round(self.max_case_s * 1e3, 1),
            "valid_accepted": f"{self.seeds_accepted}/{self.seeds}",
            "rejected_as": dict(self.rejections.most_common()),
            "examples": self.examples,
            "skipped": self.skipped,
        }


def _reader(stream: Any, q: queue.Queue[str | None]) -> None:
    for line in iter(stream.readline, ""):
        q.put(line)
    q.put(None)


def _run_group(
    names: list[str],
    cases: int,
    seed: int,
    stats: dict[str, DecoderStats],
    n_seeds: dict[str, int],
    log: Callable[[str], None],
    info: dict[str, Any],
) -> str | None:
    """Run ``names`` in workers until every case ran (restarting after crashes). Returns a fatal error."""
    todo, start = list(names), 0
    while todo:
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.fuzz",
            "--worker",
            "--decoders",
            ",".join(todo),
            "--cases",
            str(cases),
            "--seed",
            str(seed),
            "--start",
            str(start),
        ]
        err_path = f"/tmp/edil-fuzz-{os.getpid()}.stderr"
        with open(err_path, "w") as err:
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            )
            q: queue.Queue[str | None] = queue.Queue()
            threading.Thread(target=_reader, args=(proc.stdout, q), daemon=True).start()
            running: tuple[str, int] | None = None
            killed = False
            while True:
                try:
                    line = q.get(timeout=SILENT_S + (120 if running is None else 0))
                except queue.Empty:
                    proc.kill()
                    killed = True
                    break
                if line is None:
                    break
                parts = line.rstrip("\n").split(" ", 5)
                tag = parts[0]
                if tag == "R":
                    info["recursion_limit"] = int(parts[1])
                elif tag == "S":
                    current = parts[1]
                    stats[current].baseline_kib = max(stats[current].baseline_kib, int(parts[2]))
                    n_seeds[current] = int(parts[3])
                elif tag == "B":
                    running = (parts[1], int(parts[2]))
                elif tag == "C":
                    name, i, outcome, dt = parts[1], int(parts[2]), parts[3], float(parts[4])
                    detail = parts[5] if len(parts) > 5 else ""
                    s = stats[name]
                    s.cases += 1
                    s.max_case_s = max(s.max_case_s, dt)
                    if i < n_seeds.get(name, 0):
                        s.seeds += 1
                        s.seeds_accepted += outcome == "accepted"
                    if outcome == "accepted":
                        s.accepted += 1
                    elif outcome == "rejected":
                        s.rejected += 1
                        s.rejections[detail] += 1
                    elif outcome == "hang":
                        s.hangs += 1
                        if len(s.examples) < 5:
                            s.examples.append(f"case {i}: hang ({dt:.1f} s)")
                    else:
                        s.other += 1
                        if len(s.examples) < 5:
                            s.examples.append(f"case {i}: {detail}")
                    running = None
                elif tag == "E":
                    stats[parts[1]].peak_kib = max(stats[parts[1]].peak_kib, int(parts[2]))
                    todo.remove(parts[1])
                    start = 0
            rc = proc.wait()
        if not todo:
            break
        if running is None:
            tail = open(err_path).read()[-2000:]
            return f"worker for {todo} exited with {rc} outside any case:\n{tail}"
        name, i = running
        s = stats[name]
        s.cases += 1
        if killed:
            s.hangs += 1
            what = f"case {i}: silent for {SILENT_S:.0f} s, killed"
        else:
            s.crashes += 1
            what = f"case {i}: worker died with status {rc}"
        if len(s.examples) < 5:
            s.examples.append(what)
        log(f"  {name} {what}")
        start = i + 1
        if s.crashes + s.hangs >= MAX_CRASHES:
            s.skipped = cases - start
            todo.remove(name)
            start = 0
        elif start >= cases:
            todo.remove(name)
            start = 0
    return None


def campaign(names: list[str], cases: int, seed: int, *, isolate: bool, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fuzz ``names`` with ``cases`` cases each; returns the per-decoder rows and the verdict."""
    stats = {n: DecoderStats(n) for n in names}
    n_seeds: dict[str, int] = {}
    info: dict[str, Any] = {}
    t0 = time.perf_counter()
    groups = [[n] for n in names] if isolate else [names]
    fatal = None
    for group in groups:
        log(f"fuzzing {', '.join(group)}: {cases} cases each")
        fatal = _run_group(group, cases, seed, stats, n_seeds, log, info)
        if fatal:
            break
    rows = [stats[n].row() for n in names]
    totals = {
        k: sum(r[k] for r in rows) for k in ("cases", "edil_rejections", "accepted", "other_exceptions", "crashes", "hangs")
    }
    problems = []
    if fatal:
        problems.append(fatal)
    for s in stats.values():
        if s.other or s.crashes or s.hangs:
            problems.append(
                f"{s.name}: {s.other} other exceptions, {s.crashes} crashes, {s.hangs} hangs ({'; '.join(s.examples)})"
            )
        if isolate and s.growth_mib > MEMORY_BOUND_MIB:
            problems.append(f"{s.name}: peak RSS grew {s.growth_mib:.0f} MiB (bound {MEMORY_BOUND_MIB} MiB)")
        if s.seeds_accepted != s.seeds or s.seeds == 0:
            problems.append(f"{s.name}: accepted {s.seeds_accepted} of its {s.seeds} valid payloads")
    return {"rows": rows, "totals": totals, "problems": problems, "seconds": time.perf_counter() - t0, **info}


COLUMNS = [
    "decoder",
    "cases",
    "edil_rejections",
    "accepted",
    "other_exceptions",
    "crashes",
    "hangs",
    "peak_mib",
    "growth_mib",
    "max_case_ms",
]


def main(argv: list[str] | None = None) -> Any:
    """Run the campaign; returns the result payload (the worker's exit status with ``--worker``).

    Raises:
        RuntimeError: a target was missed (the result files are written first).
    """
    p = argparse.ArgumentParser(description="Fuzz every decoder of untrusted bytes (see the module docstring).")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_CASES} cases per decoder, all decoders in one worker")
    p.add_argument("--repeats", type=int, default=None, help=argparse.SUPPRESS)  # the benchmark runner's argument
    p.add_argument("--cases", type=int, default=None, help=f"cases per decoder (default {FULL_CASES})")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--decoders", default=",".join(DECODER_NAMES), help="comma-separated subset")
    p.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one worker per decoder (default: on, off with --quick); needed for per-decoder memory",
    )
    p.add_argument("--no-write", action="store_true", help="print the table, write no result files")
    p.add_argument("--json", default=None, help="also write the result payload (JSON) to this path")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = [n for n in args.decoders.split(",") if n]
    unknown = sorted(set(names) - set(TARGETS))
    if unknown:
        p.error(f"unknown decoders {unknown}; known: {', '.join(DECODER_NAMES)}")
    cases = args.cases if args.cases is not None else (QUICK_CASES if args.quick else FULL_CASES)
    if args.worker:
        return run_worker(names, cases, args.seed, args.start)
    isolate = (not args.quick) if args.isolate is None else args.isolate
    result = campaign(names, cases, args.seed, isolate=isolate)
    full = not args.quick and set(names) == set(DECODER_NAMES) and args.cases is None
    if full and result["totals"]["cases"] < MIN_TOTAL_CASES:
        result["problems"].append(f"only {result['totals']['cases']} cases (target >= {MIN_TOTAL_CASES})")
    from benchmarks._common import markdown_table

    table = markdown_table(result["rows"], COLUMNS, spread=False)
    t = result["totals"]
    verdict = (
        "all targets met" if not result["problems"] else "TARGETS MISSED:\n" + "\n".join(f"- {x}" for x in result["problems"])
    )
    md = (
        f"{table}\n{t['cases']} cases in {result['seconds']:.0f} s, seed {args.seed}: {t['other_exceptions']} non-EdilError "
        f"exceptions, {t['crashes']} crashes, {t['hangs']} hangs over {HANG_S:g} s. Memory bound: peak RSS growth "
        f"<= {MEMORY_BOUND_MIB} MiB per decoder over its worker's post-setup RSS"
        f"{'' if isolate else ' (not measured per decoder: one worker ran them all)'}. Workers ran with the chain stack "
        f"imported (recursion limit {result.get('recursion_limit', '?')}). {verdict}\n"
    )
    print(md)
    payload = {
        "seed": args.seed,
        "cases_per_decoder": cases,
        "isolated_workers": isolate,
        "hang_s": HANG_S,
        "memory_bound_mib": MEMORY_BOUND_MIB,
        "targets": {"min_total_cases": MIN_TOTAL_CASES, "other_exceptions": 0, "crashes": 0, "hangs": 0},
        **result,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2, default=str)
    if not args.no_write:
        from benchmarks._common import write

        print(write("fuzz", payload, md))
    if result["problems"]:
        raise RuntimeError("fuzz campaign missed its targets: " + "; ".join(result["problems"])[:2000])
    return payload


if __name__ == "__main__":
    if "--worker" in sys.argv[1:]:
        sys.exit(main())
    try:
        main()
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
