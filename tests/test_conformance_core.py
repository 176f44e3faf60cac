"""The conformance suite run for the reference and the masked schemes."""

from __future__ import annotations

import jax

import edil
from tests.conformance import ModelPathConformance, SchemeConformance


class TestPlainConformance(SchemeConformance):
    atol = 1e-12
    poly_atol = 1e-12
    max_disagreement = 0.0

    def make_scheme(self) -> edil.Scheme:
        return edil.Plain()


class TestMasked2Conformance(SchemeConformance):
    # 16 fractional bits: each truncation errs by < 2^-16; encoding rounds by 2^-17.
    atol = 1e-4
    poly_atol = 2e-3
    max_disagreement = 0.005

    def make_scheme(self) -> edil.Scheme:
        return edil.Masked(2, key=jax.random.key(7))


class TestMasked3Conformance(TestMasked2Conformance):
    def make_scheme(self) -> edil.Scheme:
        return edil.Masked(3, key=jax.random.key(11))


class TestMaskedInProcessModels(ModelPathConformance):
    """The in-process simulator (all parties stacked, one XLA program)."""

    def predict(self, model, x, *, private_weights):
        return edil.encode_model(model, edil.Masked(3, key=jax.random.key(3)), private_weights=private_weights).predict(x)


class TestReplicatedConformance(TestMasked2Conformance):
    # The same fixed point as Masked (16 fractional bits, truncation within one ulp); a
    # truncation fails with probability <= (|x| + 1) / 2^64 (edil._replicated), far below
    # max_disagreement for these workloads.
    def make_scheme(self) -> edil.Scheme:
        return edil.Replicated(seed=b"conformance-replicated-seed-0001")


class TestReplicatedInProcessModels(ModelPathConformance):
    """The replicated simulator (three parties side by side, one XLA program, no dealer)."""

    def predict(self, model, x, *, private_weights):
        return edil.encode_model(model, edil.Replicated(seed=b"model-paths-replicated-seed-0003"),
                                 private_weights=private_weights).predict(x)
