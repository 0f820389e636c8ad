"""Tests for capskeras.ops: safe_norm, squash, capsule_lengths."""

import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from capskeras import ops as capsule_ops


def test_safe_norm_matches_euclidean_norm():
    x = np.array([[3.0, 4.0], [1.0, 0.0]], dtype="float32")
    norms = ops.convert_to_numpy(capsule_ops.safe_norm(x))
    np.testing.assert_allclose(norms, [5.0, 1.0], rtol=1e-6)


def test_safe_norm_keepdims_and_axis():
    x = np.ones((2, 3, 4), dtype="float32")
    assert tuple(capsule_ops.safe_norm(x, axis=1, keepdims=True).shape) == (2, 1, 4)
    np.testing.assert_allclose(
        ops.convert_to_numpy(capsule_ops.safe_norm(x, axis=1)), np.sqrt(3.0), rtol=1e-6
    )


@pytest.mark.parametrize("fn", [capsule_ops.safe_norm, capsule_ops.squash])
def test_value_and_gradient_finite_at_zero(fn):
    x = tf.zeros((2, 4))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
        total = tf.reduce_sum(y)
    grad = tape.gradient(total, x)
    assert np.all(np.isfinite(y.numpy()))
    assert np.all(np.isfinite(grad.numpy()))
    # At the zero vector both functions are flat.
    np.testing.assert_allclose(grad.numpy(), 0.0, atol=1e-6)


def test_safe_norm_zero_value_is_sqrt_epsilon():
    norm = ops.convert_to_numpy(capsule_ops.safe_norm(np.zeros(3, "float32"), epsilon=1e-6))
    np.testing.assert_allclose(norm, 1e-3, rtol=1e-4)


def test_squash_hand_computed():
    v = ops.convert_to_numpy(capsule_ops.squash(np.array([3.0, 4.0], "float32")))
    np.testing.assert_allclose(v, 25.0 / 26.0 * np.array([0.6, 0.8]), rtol=1e-6)


def test_squash_length_and_direction():
    s = np.array([[[0.1, 0.0, 0.0], [0.0, 0.0, 10.0]]], dtype="float32")
    v = ops.convert_to_numpy(capsule_ops.squash(s))
    lengths = np.linalg.norm(v, axis=-1)
    np.testing.assert_allclose(lengths, [[0.01 / 1.01, 100.0 / 101.0]], rtol=1e-5)
    np.testing.assert_allclose(v / lengths[..., None], s / np.linalg.norm(s, axis=-1)[..., None], rtol=1e-5)


def test_squash_axis():
    s = np.array([[3.0, 0.0], [4.0, 0.0]], dtype="float32")  # vectors along axis 0
    v = ops.convert_to_numpy(capsule_ops.squash(s, axis=0))
    np.testing.assert_allclose(v[:, 0], 25.0 / 26.0 * np.array([0.6, 0.8]), rtol=1e-6)
    np.testing.assert_allclose(v[:, 1], 0.0, atol=1e-7)


def test_squash_half_precision_keeps_dtype_and_does_not_overflow():
    # |s|^2 = 90000 overflows float16 (max 65504) if summed in float16.
    s = tf.constant([[300.0, 0.0]], dtype=tf.float16)
    v = capsule_ops.squash(s)
    assert v.dtype == tf.float16
    np.testing.assert_allclose(v.numpy().astype("float32"), [[1.0, 0.0]], atol=1e-3)
    n = capsule_ops.safe_norm(s)
    assert n.dtype == tf.float16
    assert np.isfinite(n.numpy()).all()


def test_capsule_lengths_shape_and_values():
    caps = np.zeros((2, 3, 4), dtype="float32")
    caps[0, 1] = [0.0, 3.0, 4.0, 0.0]
    lengths = ops.convert_to_numpy(capsule_ops.capsule_lengths(caps))
    assert lengths.shape == (2, 3)
    assert lengths[0, 1] == pytest.approx(5.0, rel=1e-6)
    assert lengths[1, 0] == pytest.approx(0.0, abs=1e-3)


def test_longest_capsule_index():
    caps = np.zeros((2, 3, 4), dtype="float32")
    caps[0, 0] = [0.5, 0.5, 0.5, 0.5]
    caps[0, 2] = [0.0, 0.0, -1.5, 0.0]
    caps[1, 1] = [0.0, 3.0, 4.0, 0.0]
    caps[1, 2] = [4.9, 0.0, 0.0, 0.0]
    np.testing.assert_array_equal(ops.convert_to_numpy(capsule_ops.longest_capsule(caps)), [2, 1])
