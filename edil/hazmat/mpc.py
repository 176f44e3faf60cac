"""The ``Masked`` protocol's party programs and dealer, for code that runs one party elsewhere.

Hazardous: these are raw protocol steps over Z_2^64. A party program here is what a node of
``edil.runtime`` runs and what an auditor replays; the in-process :class:`edil.Masked` drives
the very same steps on stacked shares. Misuse (reusing dealer material, giving one holder two
shares of one sharing) silently destroys privacy; use :class:`edil.Masked` or the runtime's
``Scheduler.run_masked`` unless you are building such a driver.

Example:
    >>> import numpy as np
    >>> from edil.hazmat import mpc
    >>> items = mpc.plan([("poly", (0, 32768, 65536))], [], batch=1, in_features=2, f=16)  # x/2 + x^2
    >>> [kind for kind, _ in items]
    ['square', 'trunc']
"""

from edil._mpc import (
    ADD,
    U64,
    XOR,
    Layer,
    Party,
    PartyDealer,
    Tagged,
    add_bits,
    and_,
    argmax,
    combine,
    deal,
    deal_all,
    exp,
    host_party,
    kinds_of,
    ltz,
    material_shapes,
    max_,
    model,
    plan,
    reciprocal,
    relu,
    run_party,
    schedule,
    select,
    sigmoid,
    softmax,
    tanh,
    to_arith,
    to_binary,
    tournament,
    zero_sharing,
)

__all__ = [
    "ADD",
    "Layer",
    "Party",
    "PartyDealer",
    "Tagged",
    "U64",
    "XOR",
    "add_bits",
    "and_",
    "argmax",
    "combine",
    "deal",
    "deal_all",
    "exp",
    "host_party",
    "kinds_of",
    "ltz",
    "material_shapes",
    "max_",
    "model",
    "plan",
    "reciprocal",
    "relu",
    "run_party",
    "schedule",
    "select",
    "sigmoid",
    "softmax",
    "tanh",
    "to_arith",
    "to_binary",
    "tournament",
    "zero_sharing",
]
