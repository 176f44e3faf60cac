"""A convolutional network on digits 8x8: convolution lowered to one dense layer (im2col), run
under Plain, Masked (2 and 3 parties) and CKKS and compared with the plaintext reference."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import edil
from edil import CKKS, Masked, Plain, models
from edil._ckks import required_depth
from tests import _workloads as wl

# Logits of the square-activation CNN reach ~60 in magnitude. Masked truncates to 16 fractional
# bits after each product (< 2^-16 each, amplified by the layers that follow): ~1e-3 seen.
# CKKS at precision_bits=30: ~3e-4 seen. Both bounds leave an order of magnitude of room.
MASKED_ATOL = 1e-2
CKKS_ATOL = 1e-2


def direct_conv(images: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """Cross-correlation by explicit loops over output pixels: ``(batch, oh, ow, cout)``."""
    kh, kw, _, cout = kernel.shape
    x = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    oh = (x.shape[1] - kh) // stride + 1
    ow = (x.shape[2] - kw) // stride + 1
    out = np.zeros((images.shape[0], oh, ow, cout))
    for r in range(oh):
        for c in range(ow):
            patch = x[:, r * stride : r * stride + kh, c * stride : c * stride + kw, :]
            for o in range(cout):
                out[:, r, c, o] = np.sum(patch * kernel[:, :, :, o], axis=(1, 2, 3)) + bias[o]
    return out


def numpy_cnn(model: models.Sequential, x: np.ndarray) -> np.ndarray:
    """The square-activation CNN written out with im2col: conv, square, dense."""
    conv, poly, head = model.layers
    assert isinstance(poly, models.Polynomial) and poly.coeffs == (0.0, 0.0, 1.0)
    kernel = conv_kernel(model)
    z = models.im2col(x, (8, 8), (3, 3)) @ kernel.reshape(9, -1) + conv.bias[: kernel.shape[-1]]
    return (z**2).reshape(len(x), -1) @ head.weight + head.bias


def conv_kernel(model: models.Sequential) -> np.ndarray:
    """The 3x3 kernel of a stride-1 CNN, read from the first output position's columns."""
    conv = model.layers[0]
    channels = conv.out_features // 36
    top_left = [r * 8 + c for r in range(3) for c in range(3)]
    return conv.weight[top_left, :channels].reshape(3, 3, 1, channels)


# --- lowering ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("in_shape", "kernel_shape", "stride", "padding"),
    [
        ((8, 8, 1), (3, 3, 1, 4), 1, 0),
        ((8, 8, 1), (3, 3, 1, 8), 2, 0),
        ((8, 8, 1), (3, 3, 1, 2), 1, 1),
        ((7, 6, 2), (3, 2, 2, 3), 2, 1),
        ((5, 5, 3), (5, 5, 3, 2), 1, 0),
    ],
)
def test_conv_as_dense_equals_im2col_and_a_direct_loop(in_shape, kernel_shape, stride, padding) -> None:
    rng = np.random.default_rng(0)
    h, w, cin = in_shape
    images = rng.normal(size=(6, h, w, cin))
    x = images.reshape(6, -1)
    kernel = rng.normal(size=kernel_shape)
    bias = rng.normal(size=kernel_shape[-1])
    dense = models.conv2d_as_dense(kernel, bias, in_shape, stride=stride, padding=padding)

    direct = direct_conv(images, kernel, bias, stride, padding)
    oh, ow = models.conv2d_output_shape(in_shape, kernel_shape[:2], stride, padding)
    assert direct.shape[1:3] == (oh, ow)
    assert dense.weight.shape == (h * w * cin, oh * ow * kernel_shape[-1])

    cols = models.im2col(x, in_shape, kernel_shape[:2], stride, padding)
    assert cols.shape == (6, oh * ow, int(np.prod(kernel_shape[:3])))
    via_im2col = cols @ kernel.reshape(-1, kernel_shape[-1]) + bias
    np.testing.assert_allclose(via_im2col.reshape(6, oh, ow, -1), direct, atol=1e-12)
    np.testing.assert_allclose((x @ dense.weight + dense.bias).reshape(direct.shape), direct, atol=1e-12)
    # the image layout is accepted as well as the flat one
    np.testing.assert_array_equal(models.im2col(images, in_shape, kernel_shape[:2], stride, padding), cols)


def test_conv_matrix_is_the_scattered_kernel() -> None:
    kernel = np.arange(1.0, 1.0 + 3 * 3 * 1 * 2).reshape(3, 3, 1, 2)
    dense = models.conv2d_as_dense(kernel, [0.5, -0.5], (8, 8))
    # every output column sees exactly the 9 taps of its channel, once each
    assert np.all(np.count_nonzero(dense.weight, axis=0) == 9)
    assert sorted(dense.weight[:, 0][dense.weight[:, 0] != 0]) == sorted(kernel[..., 0].ravel())
    # output layout: (row, column, channel); bias repeats per position
    np.testing.assert_array_equal(dense.bias, np.tile([0.5, -0.5], 36))
    col = 2 * (1 * 6 + 2) + 1  # output pixel (1, 2), channel 1: top-left tap is input (1, 2)
    assert dense.weight[1 * 8 + 2, col] == kernel[0, 0, 0, 1]
    assert dense.weight[3 * 8 + 4, col] == kernel[2, 2, 0, 1]


def test_bad_convolution_shapes_raise_shape_error() -> None:
    k = np.ones((3, 3, 1, 4))
    cases = [
        lambda: models.conv2d_as_dense(np.ones((5, 5, 1, 2)), np.ones(2), (4, 4)),  # kernel larger than input
        lambda: models.conv2d_as_dense(np.ones((3, 3, 4)), np.ones(4), (8, 8)),  # not (kh, kw, cin, cout)
        lambda: models.conv2d_as_dense(np.ones((3, 3, 2, 4)), np.ones(4), (8, 8)),  # channels differ
        lambda: models.conv2d_as_dense(k, np.ones(3), (8, 8)),  # bias per channel
        lambda: models.conv2d_as_dense(k, np.ones(4), (64,)),  # not an image shape
        lambda: models.conv2d_as_dense(k, np.ones(4), (8, 0)),
        lambda: models.conv2d_as_dense(k, np.ones(4), "88"),
        lambda: models.im2col(np.ones((2, 63)), (8, 8), (3, 3)),
        lambda: models.im2col(np.ones((2, 8, 8, 2)), (8, 8), (3, 3)),
        lambda: models.im2col(np.ones(64), (8, 8), (3, 3)),
        lambda: models.conv2d_output_shape((8, 8), (9, 3)),
    ]
    for make in cases:
        with pytest.raises(edil.ShapeError):
            make()
    with pytest.raises(edil.ShapeError, match="does not fit"):
        models.conv2d_as_dense(np.ones((5, 5, 1, 2)), np.ones(2), (4, 4))
    # a kernel that fits only with padding
    assert models.conv2d_as_dense(np.ones((5, 5, 1, 2)), np.ones(2), (4, 4), padding=1).out_features == 2 * 2 * 2
    for bad in ({"stride": 0}, {"stride": 1.5}, {"padding": -1}):
        with pytest.raises(ValueError):
            models.conv2d_as_dense(k, np.ones(4), (8, 8), **bad)
    with pytest.raises(edil.EncodingError):
        models.conv2d_as_dense(np.full((3, 3, 1, 1), np.nan), np.ones(1), (8, 8))


# --- the trained network ------------------------------------------------------------------------
def test_cnn_trains_to_high_accuracy_and_is_a_convolution() -> None:
    _, _, x_te, y_te = wl.digits_split()
    model = wl.cnn_digits()
    assert [type(la).__name__ for la in model.layers] == ["Dense", "Polynomial", "Dense"]
    assert model.kind == "multiclass" and model.classes == tuple(range(10))
    assert float(np.mean(model.predict(x_te) == y_te)) >= 0.95
    # the first layer is exactly the lowering of its own 3x3 kernel (weight sharing intact)
    conv = model.layers[0]
    again = models.conv2d_as_dense(conv_kernel(model), conv.bias[:8], (8, 8))
    np.testing.assert_array_equal(again.weight, conv.weight)
    np.testing.assert_array_equal(again.bias, conv.bias)
    # depth and work follow from the dense form: 64 -> 6*6*8 -> 10
    assert model.work_units(4) == 4 * (64 * 288 + 288 * 2 + 288 * 10)
    assert required_depth(model) == model.mult_depth == 1 + 1 + 1  # a square costs one CKKS level


def test_relu_cnn_polynomial_replacement_costs_little() -> None:
    _, _, x_te, y_te = wl.digits_split()
    model = wl.cnn_digits("relu", degree=4)
    poly = model.approximations[0]
    assert poly.activation == "relu" and poly.degree == 4 and poly.interval is not None
    conv, _, head = model.layers
    exact = np.maximum(x_te @ conv.weight + conv.bias, 0.0) @ head.weight + head.bias
    float_acc = float(np.mean(exact.argmax(axis=1) == y_te))
    poly_acc = float(np.mean(model.predict(x_te) == y_te))
    assert float_acc >= 0.95
    assert abs(poly_acc - float_acc) <= 0.01


def test_training_is_deterministic_given_the_key() -> None:
    x_tr, y_tr, _, _ = wl.digits_split()
    a, b, c = (models.train_cnn(jax.random.key(k), x_tr[:200], y_tr[:200], in_shape=(8, 8), channels=4, steps=5) for k in (7, 7, 8))
    assert all(np.array_equal(la.weight, lb.weight) for la, lb in zip(a.layers[::2], b.layers[::2]))
    assert not np.array_equal(a.layers[0].weight, c.layers[0].weight)


def test_train_cnn_rejects_bad_input() -> None:
    x_tr, y_tr, _, _ = wl.digits_split()
    with pytest.raises(edil.ShapeError):
        models.train_cnn(jax.random.key(0), x_tr[:, :63], y_tr, in_shape=(8, 8), steps=1)
    with pytest.raises(edil.ShapeError):
        models.train_cnn(jax.random.key(0), x_tr, y_tr, in_shape=(2, 32), steps=1)
    with pytest.raises(edil.UnsupportedOperationError, match="softplus"):
        models.train_cnn(jax.random.key(0), x_tr, y_tr, in_shape=(8, 8), activation="softplus")
    with pytest.raises(ValueError, match="two classes"):
        models.train_cnn(jax.random.key(0), x_tr[:5], np.zeros(5), in_shape=(8, 8), steps=1)


# --- under each scheme -----------------------------------------------------------------------------
def test_cnn_under_plain_equals_the_numpy_reference() -> None:
    _, _, x_te, _ = wl.digits_split()
    model = wl.cnn_digits()
    ref = numpy_cnn(model, x_te)
    np.testing.assert_allclose(model.forward(x_te), ref, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(models.encode_model(model, Plain()).infer(x_te), ref, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("n", [2, 3])
def test_cnn_under_masked_agrees_with_plain(n: int) -> None:
    _, _, x_te, y_te = wl.digits_split()
    model = wl.cnn_digits()
    ref = model.forward(x_te)
    s = Masked(n, key=jax.random.key(n))
    got = models.encode_model(model, s).infer(x_te)  # the compiled whole-model program
    np.testing.assert_allclose(got, ref, atol=MASKED_ATOL)
    assert np.mean(got.argmax(axis=1) == ref.argmax(axis=1)) >= 0.99
    assert np.mean(model.labels(got) == y_te) >= 0.95
    assert s.stats.openings > 0


def test_cnn_under_masked_op_by_op_agrees_with_plain() -> None:
    _, _, x_te, _ = wl.digits_split()
    model = wl.cnn_digits()
    x = x_te[:64]
    s = Masked(2, key=jax.random.key(11))
    layered = s.decode(models.encode_model(model, s).run_layers(s.encode(x)))
    np.testing.assert_allclose(layered, model.forward(x), atol=MASKED_ATOL)


def test_cnn_under_ckks_agrees_with_plain() -> None:
    _, _, x_te, _ = wl.digits_split()
    model = wl.cnn_digits()
    x = x_te[:64]
    ref = model.forward(x)
    s = CKKS.for_model(model)
    assert s.depth == 3
    got = models.encode_model(model, s).infer(x)
    np.testing.assert_allclose(got, ref, atol=CKKS_ATOL)
    assert np.mean(got.argmax(axis=1) == ref.argmax(axis=1)) >= 0.99
