"""The client's side of a ``replicated`` service (:meth:`edil.client.Client.predict`): share, seal, open, reconstruct.

1. ``POST :session``: the gateway returns three parties' X25519 session keys, each signed by its
   node's chain key for (service, session, party index, key). Each signature must recover the
   party's node address, and that address must be one the client trusts for the service: the
   replicas the gateway lists for it, or the addresses the caller passes (e.g. read from the
   chain registry, so that the gateway's listing is not trusted either). A key signed by anyone
   else is refused (:class:`~edil.VerificationError`) before anything is sealed.
2. The input is encoded in fixed point and split into a replicated sharing ``x = x_0 + x_1 + x_2``
   (``x_0, x_1`` uniform from the caller's ``key``); party ``i``'s pair ``(x_i, x_{i+1})`` is sealed
   to party ``i``'s key (AES-256-GCM under an X25519 agreement with a fresh ephemeral key, bound to
   the session, the request id and ``i``), and the three sealed pairs go to ``:predict``.
3. Each party's output pair comes back sealed to the ephemeral key. The client opens each, checks
   that the two copies of every share agree (party ``i``'s second component is party ``i + 1``'s
   first) and names the party that disagrees with both neighbours (both, when it cannot tell),
   then adds the three shares and decodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import _ctr
from ._errors import EdilError, ParameterError, SerializationError, ShapeError, VerificationError
from ._fixed import FixedPoint
from ._sealed_shares import open_pair, seal_pair, session_key_digest, session_key_signer

__all__ = ["predict_replicated"]

_TAG = b"EDIL/client/replicated/v1/"


class _Reply(msgspec.Struct):
    sealed: list[bytes]
    job_id: str
    nodes: list[str]


def _derive(key: bytes, what: bytes, n: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=n, salt=None, info=_TAG + what).derive(key)


def _uniform(key: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform ring values: the AES-256-CTR keystream of ``key`` from counter zero."""
    n = int(np.prod(shape, dtype=np.int64))
    out = _ctr.buffer(n)
    _ctr.CtrWords(algorithms.AES(key)).next_into(out.data, n)
    return _ctr.words(out, n).reshape(shape)


def share(secret: np.ndarray, key: bytes) -> list[tuple[np.ndarray, np.ndarray]]:
    """A replicated sharing of ring values ``secret`` from ``key``: party ``i``'s pair ``(x_i, x_{i+1})``."""
    x0, x1 = _uniform(_derive(key, b"x0"), secret.shape), _uniform(_derive(key, b"x1"), secret.shape)
    with np.errstate(over="ignore"):
        c = [x0, x1, secret - x0 - x1]
    return [(c[i], c[(i + 1) % 3]) for i in range(3)]


def check_session(session: Any, service_id: str, trusted: Sequence[str]) -> tuple[bytes, list[str], list[bytes]]:
    """``(session id, party nodes, party keys)`` once every party's key is signed by a trusted node.

    Raises:
        SerializationError: not a session record.
        VerificationError: a key that is not signed, for this service, session and party, by the
            chain key of a node the client trusts as one of the service's parties (the error names it).
    """
    try:
        sid = bytes.fromhex(str(session["session"]))
        parties = sorted(session["parties"], key=lambda p: int(p["party"]))
        if [int(p["party"]) for p in parties] != [0, 1, 2] or len(sid) != 32:
            raise SerializationError("its parties are not 0, 1 and 2, or its session id is not 32 bytes")
        nodes = [str(p["node"]) for p in parties]
        publics = [bytes.fromhex(str(p["public"])) for p in parties]
        signatures = [bytes.fromhex(str(p["signature"])) for p in parties]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SerializationError(f"the gateway's session is not a session record: {exc}") from None
    allowed = {a.lower() for a in trusted}
    if len({n.lower() for n in nodes}) != 3:
        raise VerificationError("the session's three parties are not three distinct nodes")
    for i, (node, public, sig) in enumerate(zip(nodes, publics, signatures)):
        if node.lower() not in allowed:
            raise VerificationError(f"party {i}'s node {node} is not one of the service's trusted nodes")
        if len(public) != 32:
            raise VerificationError(f"party {i}'s session key is not 32 bytes")
        try:
            signer = session_key_signer(session_key_digest(service_id, sid, i, public), sig)
        except VerificationError as exc:
            raise VerificationError(f"party {i}'s session key (node {node}) is not signed: {exc}") from None
        if signer.lower() != node.lower():
            raise VerificationError(f"party {i}'s session key is not signed by its node {node} (signer {signer})")
    return sid, nodes, publics


def reconstruct(pairs: list[tuple[np.ndarray, np.ndarray]], nodes: Sequence[str]) -> np.ndarray:
    """The secret (ring values) of three output pairs, once the two copies of every share agree.

    Raises:
        VerificationError: copies that disagree; it names the party that disagrees with both
            neighbours, or the two parties of the one pair that disagrees.
    """
    if len({p[0].shape for p in pairs} | {p[1].shape for p in pairs}) != 1:
        raise VerificationError("the parties' output pairs have different shapes")
    edges = [(i, (i + 1) % 3) for i in range(3) if not np.array_equal(pairs[i][1], pairs[(i + 1) % 3][0])]
    if edges:
        common = set.intersection(*(set(e) for e in edges))
        blamed = sorted(common or {j for e in edges for j in e})
        who = " or ".join(f"party {j} (node {nodes[j]})" for j in blamed)
        raise VerificationError(f"{who} returned an output pair inconsistent with its neighbours' copies")
    with np.errstate(over="ignore"):
        out: np.ndarray = pairs[0][0] + pairs[1][0] + pairs[2][0]
    return out


def predict_replicated(client: Any, service_id: str, info: dict[str, Any], x: Any, *, key: bytes,
                       nodes: Sequence[str] | None) -> np.ndarray:
    """One prediction of a replicated service through ``client``'s gateway (module docstring).

    Raises:
        VerificationError: a session key not signed by a trusted party node, a sealed output that
            does not open, or output copies that disagree (the error names the party).
        ShapeError, EncodingError, OverflowRangeError: an input the service cannot take.
        GatewayError: the gateway's refusals.
    """
    from edil.client import _path

    if not isinstance(key, bytes) or len(key) < 16:
        raise ParameterError("key must be at least 16 secret bytes")
    arr = np.asarray(x, dtype=np.float64)
    width = info.get("in_features")
    if arr.ndim != 2 or (isinstance(width, int) and arr.shape[1] != width):
        raise ShapeError(f"predict takes a (batch, {width}) array, got shape {arr.shape}")
    params = info.get("params") or {}
    frac_bits = params.get("frac_bits", 16) if isinstance(params, dict) else 16
    if not isinstance(frac_bits, int) or isinstance(frac_bits, bool) or not 1 <= frac_bits <= 30:
        raise SerializationError(f"the gateway's frac_bits {frac_bits!r} is not usable")
    fp = FixedPoint(frac_bits)
    secret = fp.encode(arr)
    trusted = list(nodes) if nodes is not None else [str(a) for a in info.get("parties") or info.get("replicas") or []]
    path = f"/v1/services/{_path(service_id)}"
    try:
        session = msgspec.json.decode(client._request("POST", path + ":session").content)  # noqa: SLF001
    except msgspec.DecodeError as exc:
        raise SerializationError(f"the gateway's session is not JSON: {exc}") from None
    sid, party_nodes, publics = check_session(session, service_id, trusted)
    ephemeral = X25519PrivateKey.from_private_bytes(_derive(key, b"ephemeral"))
    request = _derive(key, b"request", 16)
    pairs = share(secret, key)
    sealed = [seal_pair(ephemeral, publics[i], pairs[i], to_party=True, session=sid, request=request, party=i) for i in range(3)]
    body = {"scheme": "replicated", "session": sid, "request": request, "client": ephemeral.public_key().public_bytes_raw(),
            "shape": list(arr.shape), "sealed": sealed}
    resp = client._request("POST", path + ":predict", content=msgspec.msgpack.encode(body),  # noqa: SLF001
                           headers={"content-type": "application/msgpack", "accept": "application/msgpack"})
    try:
        reply = msgspec.msgpack.decode(resp.content, type=_Reply)
    except msgspec.DecodeError as exc:
        raise SerializationError(f"bad replicated predict reply: {exc}") from None
    if len(reply.sealed) != 3:
        raise VerificationError(f"the gateway returned {len(reply.sealed)} output pairs, not 3")
    outs = []
    for i, data in enumerate(reply.sealed):
        try:
            outs.append(open_pair(ephemeral, publics[i], data, to_party=False, session=sid, request=request, party=i))
        except EdilError as exc:
            raise VerificationError(f"party {i}'s output (node {party_nodes[i]}) does not open: {exc}") from None
    client.last = {"job_id": reply.job_id, "node": ",".join(party_nodes), "nodes": party_nodes, "attempts": 1}
    return fp.decode(reconstruct(outs, party_nodes))
