"""``edil.client``: private inference through an EDIL gateway; keys stay with the client.

::

    import edil.client
    client = edil.client.connect("http://127.0.0.1:8080")
    client.services()                       # what the gateway serves
    y = client.predict("lr", x)             # encrypt here, compute on a node, decrypt here

:meth:`Client.predict` builds (once per service, then reuses) a scheme from the service's public
parameters (CKKS or Paillier), encrypts the batch, posts the ciphertexts with the scheme's
*public* context (never a secret key) to ``POST /v1/services/{id}:predict``, and decrypts the
ciphertexts that come back. Pass ``scheme=`` to use keys of your own.

Errors: the gateway names an EDIL error class for every refusal (one line of JSON); the client
raises that class (:class:`~edil.SerializationError`, :class:`~edil.ShapeError`,
:class:`~edil.SchemeMismatchError`, :class:`~edil.ParameterError`,
:class:`~edil.UnsupportedOperationError`, ...), and :class:`GatewayError` (with ``status``) for
the rest: an unknown service (404), a body over the bound (413), no replica (503), a deadline
(504), a gateway that cannot be reached (``status`` 0).
"""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from edil._errors import (
    AuthorizationError,
    EdilError,
    EncodingError,
    OverflowRangeError,
    ParameterError,
    RuntimeTaskError,
    SchemeMismatchError,
    SerializationError,
    ShapeError,
    UnsupportedOperationError,
    VerificationError,
)

__all__ = ["MAX_CONTEXT_BYTES", "MAX_INPUT_BYTES", "Client", "GatewayError", "connect"]

#: Bounds on a predict request's public context and serialized input (the gateway enforces them).
MAX_CONTEXT_BYTES = 64 << 20
MAX_INPUT_BYTES = 256 << 20
_MSGPACK = "application/msgpack"
#: Smallest Paillier modulus the client generates from a gateway's parameters (~112-bit security):
#: the gateway must not be able to make the client's keys weak. Smaller keys only with ``scheme=``.
_MIN_PAILLIER_KEY_BITS = 2048


class GatewayError(EdilError):
    """The gateway refused or failed a request for a reason that is not a scheme error.

    Attributes:
        status: the HTTP status (0: no answer, e.g. the gateway cannot be reached).
    """

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


_ERRORS: dict[str, type[EdilError]] = {
    cls.__name__: cls
    for cls in (
        AuthorizationError, EncodingError, OverflowRangeError, ParameterError, RuntimeTaskError, SchemeMismatchError,
        SerializationError, ShapeError, UnsupportedOperationError, VerificationError,
    )
}


class _Reply(msgspec.Struct):
    output: bytes
    job_id: str
    node: str
    attempts: int


def _scheme_for(info: dict[str, Any]) -> Any:
    from edil import CKKS, Paillier

    name, params = info.get("scheme"), info.get("params") or {}
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise SerializationError(f"the gateway's parameters for service {info.get('id')!r} are not an object")
    if name == "paillier" and not (isinstance(bits := params.get("key_bits", 2048), int) and bits >= _MIN_PAILLIER_KEY_BITS):
        raise ParameterError(
            f"the gateway asks for {bits!r}-bit Paillier keys, below {_MIN_PAILLIER_KEY_BITS}; pass scheme= to use keys of your own"
        )
    if name in ("ckks", "paillier"):
        try:
            return (CKKS if name == "ckks" else Paillier)(**params)
        except EdilError:
            raise
        except (TypeError, ValueError) as exc:  # unknown or ill-typed parameters from the gateway
            raise ParameterError(f"the gateway's {name} parameters are not usable: {exc}") from None
    raise UnsupportedOperationError(f"service {info.get('id')!r} runs {name!r}; this client encrypts for ckks and paillier services")


class Client:
    """A gateway client (see the module docstring).

    Args:
        url: the gateway's base URL (``http://host:port``).
        timeout_s: bound on each HTTP call.
        http: an ``httpx.Client`` to use (e.g. with event hooks); default: a new one.

    Attributes:
        last: the last predict reply's ``job_id``, ``node`` and ``attempts``.
    """

    def __init__(self, url: str, *, timeout_s: float = 120.0, http: Any = None) -> None:
        import httpx

        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ParameterError(f"the gateway URL must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self._own = http is None
        self.http = httpx.Client(timeout=timeout_s) if http is None else http
        self._schemes: dict[str, Any] = {}
        self._info: dict[str, dict[str, Any]] = {}
        self._contexts: list[tuple[Any, bytes]] = []
        self.last: dict[str, Any] = {}

    # --- HTTP ---------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            resp = self.http.request(method, self.url + path, **kwargs)
        except httpx.HTTPError as exc:
            raise GatewayError(f"cannot reach the gateway at {self.url}: {type(exc).__name__}: {exc}") from None
        if resp.status_code >= 400:
            raise self._error(resp)
        return resp

    @staticmethod
    def _error(resp: Any) -> EdilError:
        try:
            body = msgspec.json.decode(resp.content)
            name, message = str(body.get("error", "")), str(body.get("message", ""))
        except (msgspec.DecodeError, AttributeError):
            name, message = "", resp.text[:200]
        cls = _ERRORS.get(name)
        if cls is not None:
            return cls(message)
        return GatewayError(f"gateway answered {resp.status_code}: {message}", status=resp.status_code)

    def _json(self, path: str) -> dict[str, Any]:
        try:
            out = msgspec.json.decode(self._request("GET", path).content)
        except msgspec.DecodeError as exc:
            raise SerializationError(f"the gateway's answer to {path} is not JSON: {exc}") from None
        if not isinstance(out, dict):
            raise SerializationError(f"the gateway's answer to {path} is not a JSON object")
        return out

    # --- API ----------------------------------------------------------------------------------
    def services(self) -> list[dict[str, Any]]:
        """The services the gateway serves (id, name, scheme, state, replicas)."""
        services = self._json("/v1/services").get("services")
        if not isinstance(services, list) or not all(isinstance(s, dict) for s in services):
            raise SerializationError("the gateway's service list is not a list of objects")
        return services

    def service(self, service_id: str) -> dict[str, Any]:
        """One service's public information: scheme, params, in/out features, replicas."""
        info = dict(self._json(f"/v1/services/{_path(service_id)}"))
        self._info[service_id] = info
        return info

    def ready(self) -> bool:
        """Whether the gateway is ready (``/readyz``)."""
        try:
            return bool(self._request("GET", "/readyz").status_code == 200)
        except GatewayError:
            return False

    def scheme(self, service_id: str) -> Any:
        """The client's scheme for a service, made once from its public parameters (it holds the keys)."""
        s = self._schemes.get(service_id)
        if s is None:
            info = self._info.get(service_id) or self.service(service_id)
            s = self._schemes[service_id] = _scheme_for(info)
        return s

    def predict(self, service_id: str, x: Any, *, scheme: Any = None, key: bytes | None = None,
                nodes: Any = None) -> np.ndarray:
        """Encrypt (or share) ``x`` locally, run the service on it, decrypt (or reconstruct) the result locally.

        A ``replicated`` service takes a replicated sharing of ``x``, each party's pair sealed to
        that party's session key, signed by its node (see :mod:`edil._client_replicated`).

        Args:
            service_id: the service.
            x: a ``(batch, in_features)`` array.
            scheme: a CKKS or Paillier instance with the secret key to use (default: one made
                from the service's parameters on first use and kept for this client).
            key: replicated services: the request's secret randomness (its sharing, its ephemeral
                key and its id; >= 16 bytes; default: 32 fresh random bytes).
            nodes: replicated services: the node addresses trusted as the service's parties
                (e.g. from the chain registry); default: the parties the gateway lists.

        Returns:
            The decrypted model output, a float64 array ``(batch, out_features)``.

        Raises:
            GatewayError: unknown service (404), no replica (503), deadline (504), unreachable.
            SchemeMismatchError, ShapeError, SerializationError, ParameterError,
            UnsupportedOperationError: the gateway refused the request (or its scheme).
            VerificationError: replicated services: a session key not signed by a trusted node, a
                sealed output that does not open, or output shares whose copies disagree (named).
        """
        if scheme is None and (self._info.get(service_id) or self.service(service_id)).get("scheme") == "replicated":
            import os

            from edil._client_replicated import predict_replicated

            info = self.service(service_id)  # fresh: its parties move when a replica is re-placed
            return predict_replicated(self, service_id, info, x, key=os.urandom(32) if key is None else key, nodes=nodes)
        s = self.scheme(service_id) if scheme is None else scheme
        if not getattr(s, "is_private", False):
            raise UnsupportedOperationError("the client's scheme must hold the secret key (it decrypts the result)")
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 2:
            raise ShapeError(f"predict takes a (batch, in_features) array, got shape {arr.shape}")
        body = {"scheme": s.name, "context": self._context(s), "input": s.serialize(s.encode(arr))}
        resp = self._request(
            "POST", f"/v1/services/{_path(service_id)}:predict", content=msgspec.msgpack.encode(body),
            headers={"content-type": _MSGPACK, "accept": _MSGPACK},
        )
        try:
            reply = msgspec.msgpack.decode(resp.content, type=_Reply)
        except msgspec.DecodeError as exc:
            raise SerializationError(f"bad predict reply: {exc}") from None
        self.last = {"job_id": reply.job_id, "node": reply.node, "attempts": reply.attempts}
        return np.asarray(s.decode(s.deserialize(reply.output)), dtype=np.float64)

    def _context(self, s: Any) -> bytes:
        """The scheme's public context, serialized once per scheme instance (it is the same every time)."""
        for held, data in self._contexts:
            if held is s:
                return data
        data = s.public_context_bytes()
        self._contexts = [(s, data), *self._contexts[:7]]
        return data

    def close(self) -> None:
        if self._own:
            self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _path(service_id: str) -> str:
    from urllib.parse import quote

    if not isinstance(service_id, str) or not service_id:
        raise ParameterError("service_id must be a non-empty string")
    return quote(service_id, safe="")


def connect(url: str, **kwargs: Any) -> Client:
    """A :class:`Client` for the gateway at ``url`` (see :class:`Client` for the options)."""
    return Client(url, **kwargs)
