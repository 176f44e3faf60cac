"""EDIL: private, verifiable AI compute on untrusted edge nodes."""

from edil import models
from edil._ckks import CKKS, CKKSTensor
from edil._errors import (
    AuthorizationError,
    ChainError,
    EdilError,
    EncodingError,
    OverflowRangeError,
    ParameterError,
    ReplayError,
    RuntimeTaskError,
    SchemeMismatchError,
    SerializationError,
    ShapeError,
    UnsupportedOperationError,
    VerificationError,
)
from edil._fixed import FixedPoint
from edil._masked import Masked, Share, SharedTensor
from edil._paillier import Paillier, PaillierTensor
from edil._plain import Plain, PlainTensor
from edil._replicated import Replicated, ReplicatedTensor
from edil._scheme import Encoded, Scheme, SchemeStats
from edil.models import encode_model

__version__ = "0.1.0"

__all__ = [
    "AuthorizationError",
    "CKKS",
    "CKKSTensor",
    "ChainError",
    "EdilError",
    "Encoded",
    "EncodingError",
    "FixedPoint",
    "Masked",
    "OverflowRangeError",
    "Paillier",
    "PaillierTensor",
    "ParameterError",
    "Plain",
    "PlainTensor",
    "Replicated",
    "ReplicatedTensor",
    "ReplayError",
    "RuntimeTaskError",
    "Scheme",
    "SchemeMismatchError",
    "SchemeStats",
    "SerializationError",
    "ShapeError",
    "Share",
    "SharedTensor",
    "UnsupportedOperationError",
    "VerificationError",
    "__version__",
    "encode_model",
    "models",
]
