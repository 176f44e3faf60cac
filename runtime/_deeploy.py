"""Deeploy: private-inference services, signed by their owners and placed on admitted nodes.

A :class:`ServiceSpec` says what to serve (an R1FS model CID, a scheme and its public
parameters) and how (replicas, redundancy, minimum availability, resources). Its owner signs it
with EIP-712 (domain ``EDIL Deeploy``, version ``1``, the chain id), so the spec a node or an
auditor reads is the one the owner approved; a :class:`SignedServiceSpec` is verified before
anything is journaled: the signature must recover the spec's ``owner`` and be canonical (EIP-2
low ``s``, ``v`` of 27 or 28; a ``v`` of 0/1 and upper-case hex are rewritten to that spelling),
so a spec has exactly one valid signature, and the version must be above the service's current
one (a replayed or reordered spec is refused).

A :class:`Reconciler` keeps the services in the coordinator's :class:`~edil.runtime.Journal`
(SQLite; a restarted reconciler sees the same services and placements) and, at each
:meth:`Reconciler.reconcile`, moves replicas so that each service runs ``replicas`` copies on
distinct nodes that the registry admits, that are alive (present in the node view), available
(at least ``min_availability``) and that meet the resources. It re-places the replicas of a
node that dies, is revoked or drops below the availability, and rolls a changed model or
parameters out one replica per call. Every change is journaled.

Typed data signed (``owner`` signs; ``paramsHash`` is the keccak of the parameters' canonical
JSON, sorted keys, so the whole spec is bound)::

    ServiceSpec(string name,string modelCid,string scheme,bytes32 paramsHash,uint32 replicas,
                uint32 redundancy,uint32 minAvailabilityPpm,Resources resources,address owner,
                uint64 version)
    Resources(bool needsGpu,uint64 minMemoryMb)
    RemoveService(bytes32 serviceId,address owner,uint64 version)
"""

from __future__ import annotations

import builtins
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

from edil import AuthorizationError, EdilError, ParameterError, ReplayError, SerializationError, VerificationError

from ._deps import keccak256
from ._journal import Journal, ServiceRecord
from ._r1fs import parse_cid
from ._registry import Registry

__all__ = [
    "PlacementChange",
    "Reconciler",
    "Resources",
    "SERVICE_FORMAT",
    "ServiceSpec",
    "ServiceState",
    "SignedRemoval",
    "SignedServiceSpec",
    "service_id_of",
]

#: ``format`` of a signed service spec's JSON (the file ``edil deploy`` reads).
SERVICE_FORMAT = "edil-service/1"
_REMOVAL_FORMAT = "edil-service-removal/1"
_DOMAIN_NAME, _DOMAIN_VERSION = "EDIL Deeploy", "1"
_SERVICE_TAG = b"EDIL/service/v1"
_MAX_JSON_BYTES = 1 << 18  # a spec is well under 1 KiB plus its parameters (<= 64 values of <= 4 KiB)
_PPM = 1_000_000
_U63 = (1 << 63) - 1
_ADDRESS_RE = r"\A0x[0-9a-fA-F]{40}\Z"

_Address = Annotated[str, msgspec.Meta(pattern=_ADDRESS_RE)]
_ParamKey = Annotated[str, msgspec.Meta(pattern=r"\A[A-Za-z_][A-Za-z0-9_.-]{0,63}\Z")]
_Scalar = Annotated[str, msgspec.Meta(max_length=4096)] | int | float | bool | None
_ParamValue = _Scalar | Annotated[list[_Scalar], msgspec.Meta(max_length=1024)]
# A parameter key naming a secret: "secret", "private" or "seed" anywhere; "sk", "password",
# "passwd", "passphrase" or "mnemonic" as a word (between "_", "." or "-"); those but "sk", and
# "token", as a suffix ("apiToken", "db_password"); "Sk" as a camel-case suffix ("userSk"). A
# whole-word "sk" only: "task", "mask" or "disk" name no secret. Scheme parameters ("key_bits",
# "poly_modulus_degree", ...) match none of these.
_SECRET_KEY_RE = re.compile(
    r"secret|private|seed"
    r"|(?:\A|[_.-])(?:sk|passw(?:or)?d|passphrase|mnemonic)(?:[_.-]|\Z)"
    r"|(?:passw(?:or)?d|passphrase|mnemonic|token)\Z"
    r"|(?-i:[a-z0-9]Sk\Z)",
    re.IGNORECASE,
)
#: The order of secp256k1: a canonical (EIP-2) signature has 1 <= r < N and 1 <= s <= N // 2.
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

_DOMAIN_TYPE = [{"name": "name", "type": "string"}, {"name": "version", "type": "string"}, {"name": "chainId", "type": "uint256"}]
_TYPES = {
    "EIP712Domain": _DOMAIN_TYPE,
    "ServiceSpec": [
        {"name": "name", "type": "string"},
        {"name": "modelCid", "type": "string"},
        {"name": "scheme", "type": "string"},
        {"name": "paramsHash", "type": "bytes32"},
        {"name": "replicas", "type": "uint32"},
        {"name": "redundancy", "type": "uint32"},
        {"name": "minAvailabilityPpm", "type": "uint32"},
        {"name": "resources", "type": "Resources"},
        {"name": "owner", "type": "address"},
        {"name": "version", "type": "uint64"},
    ],
    "Resources": [{"name": "needsGpu", "type": "bool"}, {"name": "minMemoryMb", "type": "uint64"}],
}
_REMOVAL_TYPES = {
    "EIP712Domain": _DOMAIN_TYPE,
    "RemoveService": [
        {"name": "serviceId", "type": "bytes32"},
        {"name": "owner", "type": "address"},
        {"name": "version", "type": "uint64"},
    ],
}

# Set while a spec re-checks itself through msgspec (see ServiceSpec.__post_init__).
_rechecking = threading.local()


def _recheck(obj: Any) -> None:
    """Run msgspec's decode-time checks (types, ranges, patterns) on a directly built struct.

    A struct built by calling its class skips the ``msgspec.Meta`` constraints that decoding
    applies; converting its builtins back applies them, so both ways in are checked alike.
    """
    if getattr(_rechecking, "on", False):
        return
    _rechecking.on = True
    try:
        msgspec.convert(msgspec.to_builtins(obj), type(obj), strict=True)
    except msgspec.ValidationError as exc:
        raise ParameterError(f"invalid {type(obj).__name__}: {exc}") from None
    finally:
        _rechecking.on = False


class Resources(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a node must offer to hold a replica.

    Attributes:
        needs_gpu: the node must advertise a GPU (``Capabilities.gpu``).
        min_memory_mb: the node must advertise at least this much memory (MiB).
    """

    needs_gpu: bool = False
    min_memory_mb: Annotated[int, msgspec.Meta(ge=0, le=1 << 40)] = 0

    def __post_init__(self) -> None:
        _recheck(self)


class ServiceSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A private-inference service as its owner describes it (checked however it is built).

    Attributes:
        name: the service's name within its owner's services (lower case, ``[a-z0-9._-]``, <= 63).
        model_cid: the model's R1FS file CID (canonical base32, a manifest CID).
        scheme: ``ckks``, ``paillier``, ``masked``, ``replicated`` or ``plain``. A ``replicated``
            service (3-party replicated sharing, served through a gateway) has exactly 3 replicas
            and redundancy 1: its replicas are the session's three parties (party ``i`` on the
            ``i``-th replica in the placed order, sorted by address), and the two copies of each
            output share held by two parties are what its client compares instead of re-running.
        params: the scheme's public parameters (<= 64 keys; values are scalars or lists of at
            most 1024 scalars; no key naming a secret, private key, seed, ``sk``, password,
            passphrase, mnemonic or token: a spec is public).
        replicas: nodes that hold the service (distinct nodes), 1..256.
        redundancy: replicas each request runs on, their outputs compared; 1..``replicas``.
        min_availability: a node less available than this (share of recent heartbeat slots,
            0..1, at most six decimals) holds no replica.
        resources: what a node must offer (:class:`Resources`).
        owner: the 0x address whose key signs the spec.
        version: increases with every new spec of the service (>= 1).

    Raises:
        ParameterError: a field out of range, a CID that is not a canonical R1FS file CID,
            ``redundancy > replicas``, a non-finite float or a parameter key naming a secret.
    """

    name: Annotated[str, msgspec.Meta(pattern=r"\A[a-z0-9][a-z0-9._-]{0,62}\Z")]
    model_cid: Annotated[str, msgspec.Meta(min_length=8, max_length=200)]
    scheme: Literal["ckks", "paillier", "masked", "replicated", "plain"]
    owner: _Address
    params: Annotated[dict[_ParamKey, _ParamValue], msgspec.Meta(max_length=64)] = msgspec.field(default_factory=dict)
    replicas: Annotated[int, msgspec.Meta(ge=1, le=256)] = 1
    redundancy: Annotated[int, msgspec.Meta(ge=1, le=256)] = 1
    min_availability: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0
    resources: Resources = msgspec.field(default_factory=Resources)
    version: Annotated[int, msgspec.Meta(ge=1, le=_U63)] = 1

    def __post_init__(self) -> None:
        _recheck(self)
        try:
            canonical, is_manifest, _ = parse_cid(self.model_cid)
        except SerializationError as exc:
            raise ParameterError(f"model_cid: {exc}") from None
        if canonical != self.model_cid or not is_manifest:
            raise ParameterError(f"model_cid {self.model_cid[:80]!r} is not an R1FS file CID in canonical form ({canonical})")
        if self.redundancy > self.replicas:
            raise ParameterError(f"redundancy {self.redundancy} exceeds replicas {self.replicas}")
        if self.scheme == "replicated" and (self.replicas != 3 or self.redundancy != 1):
            raise ParameterError("a replicated service has exactly 3 replicas (its three parties) and redundancy 1, "
                                 f"got replicas {self.replicas} and redundancy {self.redundancy}")
        if round(self.min_availability * _PPM) / _PPM != self.min_availability:
            raise ParameterError("min_availability has more than six decimals")
        for key, value in self.params.items():
            if _SECRET_KEY_RE.search(key):
                raise ParameterError(f"params[{key!r}] names a secret; a service spec holds public parameters only")
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, float) and not math.isfinite(v):
                    raise ParameterError(f"params[{key!r}] holds a non-finite number")
        if self.owner != self.owner.lower() and self.owner != _checksum(self.owner):
            raise ParameterError(f"owner {self.owner} is mixed case with a wrong checksum")

    @property
    def service_id(self) -> str:
        """The service's stable id (see :func:`service_id_of`)."""
        return service_id_of(self.owner, self.name)

    @property
    def revision(self) -> str:
        """What a replica runs (model, scheme, parameters): a change of it is rolled out replica by replica."""
        body = msgspec.json.encode([self.model_cid, self.scheme, self.params], order="sorted")
        return keccak256(b"EDIL/service-revision/v1" + body).hex()

    def params_hash(self) -> bytes:
        """keccak256 of the parameters' canonical JSON (sorted keys): what the signature binds."""
        return keccak256(msgspec.json.encode(self.params, order="sorted"))

    def typed_message(self) -> dict[str, Any]:
        """The EIP-712 ``ServiceSpec`` message (see the module docstring)."""
        from eth_utils import to_checksum_address

        return {
            "name": self.name,
            "modelCid": self.model_cid,
            "scheme": self.scheme,
            "paramsHash": self.params_hash(),
            "replicas": self.replicas,
            "redundancy": self.redundancy,
            "minAvailabilityPpm": round(self.min_availability * _PPM),
            "resources": {"needsGpu": self.resources.needs_gpu, "minMemoryMb": self.resources.min_memory_mb},
            "owner": to_checksum_address(self.owner),
            "version": self.version,
        }


def _checksum(address: str) -> str:
    """EIP-55 mixed-case form of a 0x address (eth_utils' version costs ~0.3 ms; this one ~20 us)."""
    hexpart = address[2:].lower()
    digest = keccak256(hexpart.encode()).hex()
    return "0x" + "".join(c.upper() if int(d, 16) >= 8 else c for c, d in zip(hexpart, digest[:40], strict=True))


def service_id_of(owner: str, name: str) -> str:
    """A service's stable id: hex of ``keccak256("EDIL/service/v1" || owner (20 bytes) || name)``.

    The owner is part of the id, so two owners' services never share one, and a new version
    of a service (same owner and name) keeps it.
    """
    if not isinstance(owner, str) or re.fullmatch(_ADDRESS_RE, owner) is None:
        raise ParameterError(f"owner {str(owner)[:60]!r} is not a 0x address")
    if not isinstance(name, str):
        raise ParameterError("a service name is a str")
    return keccak256(_SERVICE_TAG + bytes.fromhex(owner[2:]) + name.encode()).hex()


def _check_service_id(service_id: Any) -> str:
    if not isinstance(service_id, str) or re.fullmatch(r"[0-9a-f]{64}", service_id) is None:
        raise ParameterError(f"{str(service_id)[:80]!r} is not a service id (64 lower-case hex digits)")
    return service_id


def _check_chain_id(chain_id: Any) -> int:
    if isinstance(chain_id, bool) or not isinstance(chain_id, int) or not 1 <= chain_id <= _U63:
        raise ParameterError(f"chain_id must be an int in [1, 2^63), got {chain_id!r}")
    return chain_id


def _full_message(types: dict[str, Any], primary: str, chain_id: int, message: dict[str, Any]) -> dict[str, Any]:
    return {
        "types": types,
        "primaryType": primary,
        "domain": {"name": _DOMAIN_NAME, "version": _DOMAIN_VERSION, "chainId": chain_id},
        "message": message,
    }


def _sign(full: dict[str, Any], key: bytes) -> str:
    from eth_account import Account
    from eth_account.messages import encode_typed_data

    if not isinstance(key, bytes | bytearray) or len(key) != 32:
        raise ParameterError("a signing key is 32 bytes (a secp256k1 private key)")
    return "0x" + bytes(Account.sign_message(encode_typed_data(full_message=full), private_key=bytes(key)).signature).hex()


def _canonical_spelling(signature: str) -> str:
    """``signature`` in lower-case hex with a recovery byte of 0/1 written as 27/28 (else unchanged).

    Both spellings carry the same signature; keeping one makes a signed record's bytes unique.
    """
    if len(signature) != 132:
        return signature  # the struct's pattern refuses it
    v = signature[-2:].lower()
    return (signature[:-2] + {"00": "1b", "01": "1c"}.get(v, v)).lower()


def _check_canonical(signature: str) -> None:
    """Refuse a signature that is not in its one canonical form (EIP-2 low s, v of 27 or 28).

    ``(r, n - s)`` with the other ``v`` recovers the same signer: without this check anyone
    could make a second valid signature of a spec.

    Raises:
        VerificationError: high s, r or s out of range, or another recovery byte.
    """
    raw = bytes.fromhex(signature[2:])
    r, s, v = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:64], "big"), raw[64]
    if not (1 <= r < _SECP256K1_N and 1 <= s <= _SECP256K1_N // 2 and v in (27, 28)):
        raise VerificationError("the signature is not canonical (EIP-2: 1 <= r < n, 1 <= s <= n/2, v of 27 or 28)")


def _recover(full: dict[str, Any], signature: str) -> str:
    """The signer's address (lower case); any failure to recover is a :class:`VerificationError`."""
    from eth_account import Account
    from eth_account.messages import encode_typed_data

    try:
        _check_canonical(signature)
    except ValueError as exc:  # not hex (a struct built past its pattern): fail closed
        raise VerificationError(f"the signature does not recover a signer: {exc}") from None
    try:
        return str(Account.recover_message(encode_typed_data(full_message=full), signature=bytes.fromhex(signature[2:]))).lower()
    except Exception as exc:  # noqa: BLE001 - eth_keys/eth_account raise several types for bad signatures: fail closed
        raise VerificationError(f"the signature does not recover a signer: {exc}") from None


def _key_address(key: bytes) -> str:
    from eth_account import Account

    if not isinstance(key, bytes | bytearray) or len(key) != 32:
        raise ParameterError("a signing key is 32 bytes (a secp256k1 private key)")
    return str(Account.from_key(bytes(key)).address).lower()


def _decode(data: Any, kind: type[Any], what: str) -> Any:
    if isinstance(data, str):
        try:
            data = data.encode()
        except UnicodeEncodeError:  # a lone surrogate: not JSON text
            raise SerializationError(f"a {what} is UTF-8 JSON text") from None
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) > _MAX_JSON_BYTES:
        raise SerializationError(f"a {what} is JSON bytes of at most {_MAX_JSON_BYTES} bytes")
    # Decoding applies the field constraints itself: the structs skip their own re-check meanwhile.
    before = getattr(_rechecking, "on", False)
    _rechecking.on = True
    try:
        return msgspec.json.decode(bytes(data), type=kind, strict=True)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise SerializationError(f"malformed {what}: {exc}") from None
    finally:
        _rechecking.on = before


class SignedServiceSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A :class:`ServiceSpec` and its owner's EIP-712 signature for chain ``chain_id``.

    Example:
        >>> signed = SignedServiceSpec.sign(spec, owner_key, chain_id=1)   # doctest: +SKIP
        >>> signed.verify() is signed.spec                                  # doctest: +SKIP
        True
    """

    spec: ServiceSpec
    chain_id: Annotated[int, msgspec.Meta(ge=1, le=_U63)]
    signature: Annotated[str, msgspec.Meta(pattern=r"\A0x[0-9a-fA-F]{130}\Z")]
    format: str = SERVICE_FORMAT

    def __post_init__(self) -> None:
        _recheck(self)
        if self.format != SERVICE_FORMAT:
            raise ParameterError(f"format {self.format!r}, expected {SERVICE_FORMAT!r}")
        msgspec.structs.force_setattr(self, "signature", _canonical_spelling(self.signature))

    @classmethod
    def sign(cls, spec: ServiceSpec, key: bytes, *, chain_id: int) -> SignedServiceSpec:
        """Sign ``spec`` with ``key``, which must be the key of ``spec.owner``.

        Raises:
            AuthorizationError: ``key`` is not the owner's.
            ParameterError: not a spec, a malformed key or chain id.
        """
        if not isinstance(spec, ServiceSpec):
            raise ParameterError("sign takes a ServiceSpec")
        chain_id = _check_chain_id(chain_id)
        if _key_address(key) != spec.owner.lower():
            raise AuthorizationError(f"the key is {_key_address(key)}'s, not the spec owner {spec.owner}'s")
        return cls(spec=spec, chain_id=chain_id, signature=_sign(_full_message(_TYPES, "ServiceSpec", chain_id, spec.typed_message()), key))

    def signer(self) -> str:
        """The address (lower case) the signature recovers. Raises :class:`VerificationError`."""
        return _recover(_full_message(_TYPES, "ServiceSpec", self.chain_id, self.spec.typed_message()), self.signature)

    def verify(self, *, chain_id: int | None = None) -> ServiceSpec:
        """The spec, if its owner signed exactly it (for ``chain_id`` when given).

        Raises:
            VerificationError: the signature does not recover the owner (another signer, a
                changed field), is not canonical (high ``s``), or was made for another chain.
        """
        if chain_id is not None and self.chain_id != chain_id:
            raise VerificationError(f"the spec is signed for chain {self.chain_id}, not {chain_id}")
        signer = self.signer()
        if signer != self.spec.owner.lower():
            raise VerificationError(f"the spec is signed by {signer}, not by its owner {self.spec.owner}")
        return self.spec

    def to_json(self) -> bytes:
        """The JSON record (``format`` ``edil-service/1``), the inverse of :meth:`from_json`."""
        return msgspec.json.encode(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> SignedServiceSpec:
        """Decode untrusted JSON strictly (the signature is checked by :meth:`verify`, not here).

        Raises:
            SerializationError: not a signed service spec record (size, types, ranges, format).
        """
        try:
            out: SignedServiceSpec = _decode(data, cls, "signed service spec")
        except ParameterError as exc:  # raised directly by a nested __post_init__ re-check
            raise SerializationError(f"malformed signed service spec: {exc}") from None
        return out


class SignedRemoval(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The owner's signed order to remove service ``service_id``, as its version ``version``.

    The version must be above the service's current one, like a new spec's, so an old removal
    cannot be replayed after the service is deployed again.
    """

    service_id: Annotated[str, msgspec.Meta(pattern=r"\A[0-9a-f]{64}\Z")]
    owner: _Address
    version: Annotated[int, msgspec.Meta(ge=1, le=_U63)]
    chain_id: Annotated[int, msgspec.Meta(ge=1, le=_U63)]
    signature: Annotated[str, msgspec.Meta(pattern=r"\A0x[0-9a-fA-F]{130}\Z")]
    format: str = _REMOVAL_FORMAT

    def __post_init__(self) -> None:
        _recheck(self)
        if self.format != _REMOVAL_FORMAT:
            raise ParameterError(f"format {self.format!r}, expected {_REMOVAL_FORMAT!r}")
        msgspec.structs.force_setattr(self, "signature", _canonical_spelling(self.signature))

    def _message(self) -> dict[str, Any]:
        from eth_utils import to_checksum_address

        msg = {"serviceId": bytes.fromhex(self.service_id), "owner": to_checksum_address(self.owner), "version": self.version}
        return _full_message(_REMOVAL_TYPES, "RemoveService", self.chain_id, msg)

    @classmethod
    def sign(cls, service_id: str, *, owner: str, version: int, key: bytes, chain_id: int) -> SignedRemoval:
        """Sign the removal of ``service_id`` as its version ``version`` with the owner's ``key``.

        Raises:
            AuthorizationError: ``key`` is not ``owner``'s.
        """
        if _key_address(key) != str(owner).lower():
            raise AuthorizationError(f"the key is {_key_address(key)}'s, not the service owner {owner}'s")
        unsigned = cls(service_id=service_id, owner=owner, version=version, chain_id=_check_chain_id(chain_id), signature="0x" + "00" * 65)
        return msgspec.structs.replace(unsigned, signature=_sign(unsigned._message(), key))

    def verify(self, *, chain_id: int | None = None) -> str:
        """The owner (lower case), if they signed this removal. Raises :class:`VerificationError`."""
        if chain_id is not None and self.chain_id != chain_id:
            raise VerificationError(f"the removal is signed for chain {self.chain_id}, not {chain_id}")
        signer = _recover(self._message(), self.signature)
        if signer != self.owner.lower():
            raise VerificationError(f"the removal is signed by {signer}, not by the owner {self.owner}")
        return signer

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> SignedRemoval:
        """Decode untrusted JSON strictly. Raises :class:`SerializationError`."""
        try:
            out: SignedRemoval = _decode(data, cls, "signed service removal")
        except ParameterError as exc:
            raise SerializationError(f"malformed signed service removal: {exc}") from None
        return out


@dataclass(frozen=True)
class ServiceState:
    """A service as the journal holds it.

    Attributes:
        service_id: the stable id (:func:`service_id_of`).
        spec: the current spec; ``signed`` is it with the owner's signature.
        replicas: the nodes holding a replica (lower-case 0x addresses, sorted).
        replica_versions: the spec version each replica was placed under, in ``replicas`` order.
        state: ``removed``; else ``pending`` (no replica placed), ``degraded`` (fewer than
            ``spec.replicas``) or ``running``.
        version: the service's current version (a removal has its own).
        updating: some replica still runs an earlier model or parameters (a rollout is under way).
    """

    service_id: str
    spec: ServiceSpec
    replicas: tuple[str, ...]
    state: str
    version: int
    signed: SignedServiceSpec
    replica_versions: tuple[int, ...] = ()
    updating: bool = False


@dataclass(frozen=True)
class PlacementChange:
    """One replica move made by :meth:`Reconciler.reconcile` (journaled as an event).

    Attributes:
        action: ``place`` (the node now holds a replica of ``version``) or ``evict``.
        reason: why, e.g. ``scale up to 4``, ``node gone``, ``revoked``, ``availability 0.40 < 0.9``,
            ``rollout to version 3``.
    """

    service_id: str
    action: str
    node: str
    version: int
    reason: str


class Reconciler:
    """Keeps the journal's services placed on admitted, available nodes that meet their resources.

    Args:
        journal: where services, placements and every change live.
        registry: dAuth view; a node it does not admit holds no replica.
        availability: a node's availability in [0, 1], either ``availability(address)`` or an
            object with ``recent(address, *, now_ms)`` (a :class:`~edil.runtime.HeartbeatMonitor`);
            ``None``: every node counts as fully available. A view that raises counts as 0.
        nodes: ``nodes()`` returns the live nodes' cards (``address`` and ``capabilities``, e.g.
            ``Presence.cards.values()``), used when :meth:`reconcile` is given none.
        chain_id: refuse specs and removals signed for another chain, and leave a journaled
            service signed for another chain (another tool may have journaled it) unserved: it
            is not listed, :meth:`get` refuses it, and :meth:`reconcile` places none of its
            replicas and evicts those it has. ``None`` accepts the chain of the first spec of
            each service, and every later one must match it.
        clock: seconds since the Unix epoch (event times, the availability view's clock).

    Example:
        >>> rec = Reconciler(Journal(":memory:"), StaticRegistry([card.address]))   # doctest: +SKIP
        >>> sid = rec.deploy(SignedServiceSpec.sign(spec, owner_key, chain_id=1))   # doctest: +SKIP
        >>> rec.reconcile(nodes=[card])                                            # doctest: +SKIP
    """

    def __init__(
        self,
        journal: Journal,
        registry: Registry,
        *,
        availability: Callable[[str], float] | Any | None = None,
        nodes: Callable[[], Iterable[Any]] | None = None,
        chain_id: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.journal, self.registry = journal, registry
        self.availability, self.nodes = availability, nodes
        self.chain_id = None if chain_id is None else _check_chain_id(chain_id)
        self.clock = clock
        self._lock = threading.Lock()
        # Journaled spec bytes -> decoded spec: get() serves every gateway request, and decoding
        # and checking a spec costs far more than the journal read.
        self._decoded: dict[bytes, SignedServiceSpec] = {}

    def _signed(self, data: bytes) -> SignedServiceSpec:
        hit = self._decoded.get(data)
        if hit is None:
            hit = SignedServiceSpec.from_json(data)
            if len(self._decoded) >= 4096:
                self._decoded.clear()
            self._decoded[data] = hit
        return hit

    # --- reading -------------------------------------------------------------------------------
    def _state(self, rec: ServiceRecord) -> ServiceState:
        signed = self._signed(rec.spec)
        spec = signed.spec
        placed = sorted(rec.placements)
        n = len(placed)
        if rec.removed:
            state = "removed"
        else:
            state = "pending" if n == 0 else "degraded" if n < spec.replicas else "running"
        revision = spec.revision
        return ServiceState(
            service_id=rec.service_id, spec=spec, replicas=tuple(p[0] for p in placed), state=state, version=rec.version,
            signed=signed, replica_versions=tuple(p[1] for p in placed), updating=any(p[2] != revision for p in placed),
        )

    def _foreign(self, signed: SignedServiceSpec) -> bool:
        """Whether ``signed`` is for another chain than the one this reconciler is pinned to."""
        return self.chain_id is not None and signed.chain_id != self.chain_id

    def get(self, service_id: str) -> ServiceState | None:
        """The service ``service_id``, or ``None`` if it is unknown.

        Raises:
            VerificationError: the reconciler is pinned to a chain (``chain_id``) and the
                service's spec is signed for another one.
        """
        rec = self.journal.service(str(service_id))
        if rec is None:
            return None
        state = self._state(rec)
        if self._foreign(state.signed):
            raise VerificationError(
                f"service {rec.service_id} is signed for chain {state.signed.chain_id}, but this deployment is chain {self.chain_id}: not served"
            )
        return state

    def events(self, service_id: str | None = None) -> list[tuple[int, str, str, str | None, int, str]]:
        """The journaled changes (:meth:`Journal.service_events`)."""
        return self.journal.service_events(service_id)

    # --- owner requests ------------------------------------------------------------------------
    def _now_ms(self, now: float | None = None) -> int:
        return int((self.clock() if now is None else now) * 1000)

    def _check_chain(self, chain_id: int, rec: ServiceRecord | None) -> None:
        if self.chain_id is not None and chain_id != self.chain_id:
            raise VerificationError(f"signed for chain {chain_id}, but this deployment is chain {self.chain_id}")
        if rec is not None:
            stored = self._signed(rec.spec).chain_id
            if stored != chain_id:
                raise VerificationError(f"signed for chain {chain_id}, but service {rec.service_id} lives on chain {stored}")

    def deploy(self, signed: SignedServiceSpec | bytes | str) -> str:
        """Journal a new service, or a new version of one; returns its service id.

        Args:
            signed: the owner-signed spec (or its JSON, decoded strictly).

        Raises:
            SerializationError: JSON that is not a signed spec.
            VerificationError: not signed by the spec's owner (or for another chain).
            ReplayError: the service already has this version or a later one.
        """
        if not isinstance(signed, SignedServiceSpec):
            signed = SignedServiceSpec.from_json(signed)
        spec = signed.verify()
        sid = spec.service_id
        rec = self.journal.service(sid)
        self._check_chain(signed.chain_id, rec)
        if rec is not None and rec.version >= spec.version:
            raise ReplayError(f"service {sid} is at version {rec.version}; a new spec needs a higher version than {spec.version}")
        reason = f"{'deploy' if rec is None else 'update'} by {spec.owner.lower()}"
        if not self.journal.put_service(
            sid, owner=spec.owner.lower(), name=spec.name, version=spec.version, spec=signed.to_json(), at_ms=self._now_ms(), reason=reason
        ):
            raise ReplayError(f"service {sid} moved to version {spec.version} or later meanwhile")
        return sid

    def _current(self, service_id: str) -> tuple[ServiceRecord, SignedServiceSpec]:
        rec = self.journal.service(_check_service_id(service_id))
        if rec is None:
            raise ParameterError(f"no service {service_id}")
        return rec, self._signed(rec.spec)

    def scale(self, service_id: str, replicas: int, *, signed_by: bytes) -> ServiceState:
        """Set a service's replicas: a new spec version, signed here with the owner's key.

        A scale keeps the model and parameters, so no replica is restarted.

        Raises:
            AuthorizationError: ``signed_by`` is not the owner's key.
            ParameterError: unknown or removed service, or ``replicas`` out of range (or below
                the redundancy).
        """
        rec, signed = self._current(service_id)
        if rec.removed:
            raise ParameterError(f"service {service_id} is removed; deploy it again with a new spec")
        if isinstance(replicas, bool) or not isinstance(replicas, int):
            raise ParameterError(f"replicas must be an int, got {replicas!r}")
        fields = msgspec.structs.asdict(signed.spec)
        fields.update(replicas=replicas, version=rec.version + 1)
        spec = ServiceSpec(**fields)  # built anew, so every check (e.g. redundancy <= replicas) runs
        self.deploy(SignedServiceSpec.sign(spec, signed_by, chain_id=signed.chain_id))
        state = self.get(service_id)
        assert state is not None
        return state

    def remove(self, service_id: str, *, signed_by: bytes | None = None, removal: SignedRemoval | None = None) -> ServiceState:
        """Remove a service: its replicas are evicted at the next :meth:`reconcile`.

        Give the owner's key (``signed_by``, a removal is signed here) or an owner-signed
        :class:`SignedRemoval` (``removal``), not both.

        Raises:
            AuthorizationError: ``signed_by`` is not the owner's key.
            VerificationError: ``removal`` is not signed by the owner, or names another service.
            ReplayError: ``removal``'s version is not above the service's.
            ParameterError: unknown service, or neither or both of ``signed_by`` and ``removal``.
        """
        rec, signed = self._current(service_id)
        if rec.removed:
            raise ParameterError(f"service {service_id} is already removed")
        if (signed_by is None) == (removal is None):
            raise ParameterError("give the owner's key (signed_by) or a signed removal, one of them")
        if removal is None:
            assert signed_by is not None
            removal = SignedRemoval.sign(service_id, owner=rec.owner, version=rec.version + 1, key=signed_by, chain_id=signed.chain_id)
        if removal.service_id != service_id or removal.owner.lower() != rec.owner:
            raise VerificationError(f"the removal is for service {removal.service_id} of {removal.owner}, not {service_id} of {rec.owner}")
        removal.verify()
        self._check_chain(removal.chain_id, rec)
        if removal.version <= rec.version:
            raise ReplayError(f"service {service_id} is at version {rec.version}; a removal needs a higher version than {removal.version}")
        if not self.journal.put_service(
            service_id, owner=rec.owner, name=rec.name, version=removal.version, spec=rec.spec, removed=True,
            at_ms=self._now_ms(), reason=f"removed by {rec.owner}",
        ):
            raise ReplayError(f"service {service_id} moved to version {removal.version} or later meanwhile")
        state = self.get(service_id)
        assert state is not None
        return state

    # --- placement -----------------------------------------------------------------------------
    def _availability_of(self, address: str, now_ms: int) -> float:
        view = self.availability
        if view is None:
            return 1.0
        try:
            value = view.recent(address, now_ms=now_ms) if hasattr(view, "recent") else view(address)
            value = float(value)
        except Exception:  # noqa: BLE001 - a broken availability view must not place replicas: count it as 0
            return 0.0
        return value if math.isfinite(value) else 0.0

    def reconcile(self, *, nodes: Iterable[Any] | None = None, now: float | None = None) -> list[PlacementChange]:
        """Move replicas so every service is placed as its spec asks; returns the changes made.

        For each service, in order: evict the replicas of removed services and of nodes that are
        gone (not in ``nodes``), revoked, below the service's ``min_availability`` or short of
        its resources; evict extra replicas (older revision first, then the least available);
        place missing ones on eligible nodes that hold none of its replicas (least loaded
        first, then most available); then, only if the service is whole and nothing else
        moved, replace one replica that runs an older model or parameters (on a free eligible
        node when there is one, else on its own node), so a rollout takes one reconcile call per
        replica and never leaves fewer than ``replicas - 1`` serving. A degraded service is not
        rolled until it is whole again (or scaled to what the nodes can hold).

        Args:
            nodes: the live nodes' cards (objects with ``address`` and ``capabilities``); default
                the constructor's ``nodes()``.
            now: seconds since the Unix epoch (default: the clock).

        Returns:
            The changes, in the order they were journaled.

        Raises:
            ChainError: the registry could not be read; nothing is changed.
            ParameterError: no node view (neither ``nodes`` nor the constructor's).
        """
        if nodes is None:
            if self.nodes is None:
                raise ParameterError("reconcile needs the live nodes: pass nodes=, or nodes= to the Reconciler")
            nodes = self.nodes()
        now_ms = self._now_ms(now)
        cards: dict[str, Any] = {}
        for card in nodes:
            cards[str(card.address).lower()] = card
        with self._lock:
            records = self.journal.services()
            placed_nodes = {p[0] for r in records for p in r.placements}
            # Every admission question first: an unreadable registry raises before anything moves.
            admitted = {a: bool(self.registry.is_admitted(a)) for a in sorted(set(cards) | placed_nodes)}
            # The view gets each address as the card spells it (a HeartbeatMonitor keys by checksum address).
            avail = {a: self._availability_of(str(cards[a].address), now_ms) for a in sorted(cards)}
            load: Counter[str] = Counter(p[0] for r in records if not r.removed for p in r.placements)
            changes: list[PlacementChange] = []
            for rec in sorted(records, key=lambda r: r.service_id):
                changes += self._reconcile_one(rec, cards, admitted, avail, load, now_ms)
            return changes

    def _reconcile_one(
        self, rec: ServiceRecord, cards: dict[str, Any], admitted: dict[str, bool], avail: dict[str, float],
        load: Counter[str], now_ms: int,
    ) -> list[PlacementChange]:
        try:
            signed = self._signed(rec.spec)
        except EdilError:  # a journal row this version cannot read: leave it as it is
            return []
        spec = signed.spec
        sid, revision = rec.service_id, spec.revision
        moves: list[tuple[str, str, int, str, str]] = []
        placed = {node: (ver, rev) for node, ver, rev in rec.placements}

        def evict(node: str, reason: str) -> None:
            ver, rev = placed.pop(node)
            moves.append(("evict", node, ver, rev, reason))
            load[node] -= 1

        def place(node: str, reason: str) -> None:
            placed[node] = (spec.version, revision)
            moves.append(("place", node, spec.version, revision, reason))
            load[node] += 1

        def unfit(node: str) -> str | None:
            card = cards.get(node)
            if card is None:
                return "node gone"
            if not admitted.get(node, False):
                return "revoked"
            if avail[node] < spec.min_availability:
                return f"availability {avail[node]:.2f} < {spec.min_availability:g}"
            caps = card.capabilities
            if spec.resources.needs_gpu and not caps.gpu:
                return "no GPU"
            if caps.memory_bytes < spec.resources.min_memory_mb << 20:
                return f"memory {caps.memory_bytes >> 20} MiB < {spec.resources.min_memory_mb} MiB"
            return None

        if rec.removed or self._foreign(signed):  # fail closed: another chain's spec runs nowhere here
            gone = "service removed" if rec.removed else f"signed for chain {signed.chain_id}, not {self.chain_id}"
            for node in sorted(placed):
                evict(node, gone)
        else:
            for node in sorted(placed):
                why = unfit(node)
                if why is not None:
                    evict(node, why)
            extra = len(placed) - spec.replicas
            if extra > 0:
                order = sorted(placed, key=lambda n: (placed[n][1] == revision, avail.get(n, 0.0), n))
                for node in order[:extra]:
                    evict(node, f"scale down to {spec.replicas}")
            free = [n for n in cards if n not in placed and unfit(n) is None]
            free.sort(key=lambda n: (load[n], -avail[n], n))
            missing = spec.replicas - len(placed)
            evicted = bool(moves)
            for node in free[: max(missing, 0)]:
                why = "initial placement" if not rec.placements else "replace an evicted replica" if evicted else f"scale up to {spec.replicas}"
                place(node, why)
            old = sorted(n for n, (_, rev) in placed.items() if rev != revision)
            if not moves and old and len(placed) >= spec.replicas:
                # The service is whole and nothing else moved: replace one replica of an older revision.
                # (A degraded one waits: replacing a replica would leave fewer than replicas - 1 serving.)
                target = old[0]
                spare = [n for n in free if n not in placed]
                evict(target, f"rollout to version {spec.version}")
                place(spare[0] if spare else target, f"rollout to version {spec.version}")
        if not moves:
            return []
        if not self.journal.move_replicas(sid, expected_version=rec.version, changes=moves, at_ms=now_ms):
            return []  # a new spec arrived meanwhile: the next call places for it
        return [PlacementChange(sid, action, node, ver, reason) for action, node, ver, _rev, reason in moves]

    # Defined last: inside the class body, later annotations would otherwise see this method as ``list``.
    def list(self) -> builtins.list[ServiceState]:
        """Every service, removed ones too, in the order they were first deployed (on a pinned
        reconciler, only those signed for its ``chain_id``)."""
        states = [self._state(r) for r in self.journal.services()]
        return [s for s in states if not self._foreign(s.signed)]
