"""The ``Replicated`` protocol's party programs and keys, for code that runs one party elsewhere.

Hazardous: raw protocol steps of 2-out-of-3 replicated sharing over Z_2^64 (see
:class:`edil.Replicated` for the protocol, its threat model and its costs). A node of
``edil.runtime`` runs one party with :func:`host_party` and :func:`model`, on its own pair of
components and its own two pairwise streams. Misuse (a stream drawn twice, one party given two
pairs of one sharing, pairwise keys leaving the pair) silently destroys privacy; use
:class:`edil.Replicated` or the runtime's ``Scheduler.run_replicated`` unless you are building
such a driver.

Example:
    >>> from edil.hazmat import replicated
    >>> a = replicated.party_private_key(bytes(32), 0)
    >>> b = replicated.party_private_key(bytes(32), 1)
    >>> pa, pb = (k.public_key().public_bytes_raw() for k in (a, b))
    >>> replicated.pair_key(a, pb, 0, pa, pb) == replicated.pair_key(b, pa, 0, pa, pb)
    True
"""

from edil._replicated import (
    Bits,
    Cost,
    KeyStream,
    Layer,
    Party,
    argmax,
    dabit,
    host_party,
    ltz,
    max_,
    model,
    pair_key,
    party_private_key,
    relu,
    run_parties,
    select,
)
from edil._sealed_shares import open_pair, pair_from_bytes, pair_to_bytes, seal_pair, session_key_digest, session_key_signer

__all__ = [
    "Bits",
    "Cost",
    "KeyStream",
    "Layer",
    "Party",
    "argmax",
    "dabit",
    "host_party",
    "ltz",
    "max_",
    "model",
    "open_pair",
    "pair_from_bytes",
    "pair_key",
    "pair_to_bytes",
    "party_private_key",
    "relu",
    "run_parties",
    "seal_pair",
    "select",
    "session_key_digest",
    "session_key_signer",
]
