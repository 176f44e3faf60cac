"""Raw primitives. You probably want the top-level :mod:`edil` recipes instead.

Everything under ``edil.hazmat`` is sharp: ring arithmetic that wraps modulo 2^64 by design,
secret-sharing internals, fixed-point encodings with no range checks of their own beyond what
they document. Misuse does not raise; it returns wrong numbers. The schemes in :mod:`edil`
compose these primitives safely.
"""

from edil.hazmat import ring, ring32

__all__ = ["ring", "ring32"]
