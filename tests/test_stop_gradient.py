"""Tests for the StopGradient layer."""

import json
import os

import keras
import numpy as np
import tensorflow as tf

from capskeras.layers import StopGradient
from capskeras.testing import assert_keras_round_trip
from capskeras.testing import assert_saved_model_round_trip

X = np.random.default_rng(0).normal(size=(3, 4, 2)).astype("float32")


def test_forward_is_identity():
    layer = StopGradient()
    out = keras.ops.convert_to_numpy(layer(X))
    np.testing.assert_array_equal(out, X)
    assert layer.compute_output_shape((None, 4, 2)) == (None, 4, 2)


def test_gradient_through_it_is_zero():
    x = tf.constant(X)
    with tf.GradientTape() as tape:
        tape.watch(x)
        # Only the second term reaches x.
        loss = tf.reduce_sum(3.0 * StopGradient()(x)) + tf.reduce_sum(x)
    np.testing.assert_array_equal(tape.gradient(loss, x).numpy(), np.ones_like(X))


def test_weights_below_it_receive_no_gradient():
    below = keras.layers.Dense(3, name="below")
    above = keras.layers.Dense(1, name="above")
    model = keras.Sequential([keras.Input((4, 2)), below, StopGradient(), above])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(X) ** 2)
    variables = below.trainable_weights + above.trainable_weights
    gradients = tape.gradient(
        loss,
        [w.value for w in variables],
        unconnected_gradients=tf.UnconnectedGradients.ZERO,
    )
    gradients = [g.numpy() for g in gradients]
    for gradient in gradients[: len(below.trainable_weights)]:
        assert not gradient.any()
    assert gradients[len(below.trainable_weights)].any()  # above's kernel


def _model():
    return keras.Sequential(
        [keras.Input((4, 2)), keras.layers.Dense(3), StopGradient(name="frozen")]
    )


def test_keras_round_trip(tmp_path):
    model = _model()
    expected = keras.ops.convert_to_numpy(model(X))
    # Checked directly first, so a failure below is the shared helper's.
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert isinstance(reloaded.get_layer("frozen"), StopGradient)
    assert json.loads(json.dumps(reloaded.get_config())) == json.loads(
        json.dumps(model.get_config())
    )
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(reloaded(X)), expected)
    assert keras.saving.get_registered_name(StopGradient) == "capskeras>StopGradient"

    assert_keras_round_trip(model, X)


def test_saved_model_round_trip():
    assert_saved_model_round_trip(_model(), X)
