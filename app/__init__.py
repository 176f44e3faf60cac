"""edil.app: the application layer on top of the library: the ``edil`` command line and the demos.

Layering (checked by ``tests/test_layers.py``)::

    edil.app  ->  edil.runtime  ->  edil.proofs  ->  edil

``edil`` (schemes, models, federated learning) imports none of the others; ``edil.proofs``
imports only ``edil``; ``edil.runtime`` imports ``edil`` and ``edil.proofs``; this package may
import all three. No package imports another package's private (``_``-prefixed) modules.

Entry points: ``edil <command>`` (console script) or ``python -m edil.app <command>``; the
demo steps are plain functions returning summary rows:

- :func:`run_demo`: every step of ``edil demo`` (``make demo``).
- :func:`run_he_demo`: the homomorphic workloads (CKKS, Paillier).
- :func:`run_federated_demo`: federated training in process and through the runtime.
- :func:`run_runtime_demo`: the edge runtime with a chain, oracles and an epoch close.
"""

from ._demo import format_table, run_demo
from ._federated_demo import run_federated_demo
from ._he_demo import breast_cancer_logreg, digits_mlp, run_he_demo
from ._runtime_demo import open_chain, run_runtime_demo
from .cli import main

__all__ = [
    "breast_cancer_logreg",
    "digits_mlp",
    "format_table",
    "main",
    "open_chain",
    "run_demo",
    "run_federated_demo",
    "run_he_demo",
    "run_runtime_demo",
]

