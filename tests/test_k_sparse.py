"""Tests for the KSparse layer (Makhzani and Frey's k-sparse activation)."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from capskeras.layers import KSparse
from capskeras.testing import assert_keras_round_trip
from capskeras.testing import assert_saved_model_round_trip

X = np.array(
    [
        [0.1, 0.9, 0.5, 0.3, -0.2, 0.7],
        [4.0, -1.0, 2.0, 3.0, 0.0, 1.0],
        [-3.0, -1.0, -2.0, -5.0, -4.0, -6.0],
    ],
    dtype="float32",
)
# The top 2 of each row, by hand.
TOP_2 = np.array(
    [
        [0.0, 0.9, 0.0, 0.0, 0.0, 0.7],
        [4.0, 0.0, 0.0, 3.0, 0.0, 0.0],
        [0.0, -1.0, -2.0, 0.0, 0.0, 0.0],
    ],
    dtype="float32",
)
# The top 3 of each row, by hand.
TOP_3 = np.array(
    [
        [0.0, 0.9, 0.5, 0.0, 0.0, 0.7],
        [4.0, 0.0, 2.0, 3.0, 0.0, 0.0],
        [-3.0, -1.0, -2.0, 0.0, 0.0, 0.0],
    ],
    dtype="float32",
)


def _numpy(tensor):
    return keras.ops.convert_to_numpy(tensor)


def test_keeps_exactly_the_top_k_per_sample():
    layer = KSparse(k=2)
    np.testing.assert_array_equal(_numpy(layer(X, training=True)), TOP_2)
    assert np.count_nonzero(_numpy(layer(X, training=True)), axis=1).tolist() == [2, 2, 2]


def test_docstring_example():
    layer = KSparse(k=2)
    out = _numpy(layer(np.array([[0.1, 0.9, 0.5, 0.3]], "float32"), training=True))
    np.testing.assert_allclose(out, [[0.0, 0.9, 0.5, 0.0]])


def test_top_k_is_over_all_non_batch_axes():
    x = np.array(
        [[[1.0, 5.0], [3.0, 2.0]], [[9.0, 0.5], [0.25, 8.0]]], dtype="float32"
    )  # [2, 2, 2]
    out = _numpy(KSparse(k=2)(x, training=True))
    assert out.shape == x.shape
    np.testing.assert_array_equal(
        out, [[[0.0, 5.0], [3.0, 0.0]], [[9.0, 0.0], [0.0, 8.0]]]
    )


def test_random_inputs_match_numpy_top_k():
    x = np.random.default_rng(0).normal(size=(5, 4, 3, 2)).astype("float32")
    k = 7
    out = _numpy(KSparse(k=k)(x, training=True)).reshape(5, -1)
    flat = x.reshape(5, -1)
    expected = np.zeros_like(flat)
    top = np.argsort(-flat, axis=1)[:, :k]
    np.put_along_axis(expected, top, np.take_along_axis(flat, top, axis=1), axis=1)
    np.testing.assert_array_equal(out, expected)


def test_gradient_flows_only_through_kept_units():
    layer = KSparse(k=2)
    x = tf.constant(X)
    weights = tf.constant(np.random.default_rng(1).normal(size=X.shape).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x, training=True) * weights)
    gradient = tape.gradient(loss, x).numpy()
    kept = TOP_2 != 0
    # Identity gradient for kept units, zero for dropped ones.
    np.testing.assert_allclose(gradient[kept], weights.numpy()[kept])
    np.testing.assert_array_equal(gradient[~kept], 0.0)


def test_inference_keeps_alpha_times_k():
    layer = KSparse(k=2, alpha=1.5)
    np.testing.assert_array_equal(_numpy(layer(X, training=True)), TOP_2)
    np.testing.assert_array_equal(_numpy(layer(X, training=False)), TOP_3)
    # Without a training argument a layer call is inference.
    np.testing.assert_array_equal(_numpy(layer(X)), TOP_3)


def test_inference_k_is_capped_at_the_number_of_units():
    layer = KSparse(k=4, alpha=3.0)  # 12 > 6 units: keep all.
    np.testing.assert_array_equal(_numpy(layer(X, training=False)), X)


def test_assigning_current_k_changes_k_without_rebuilding_or_retracing():
    layer = KSparse(k=3)
    layer.build(X.shape)
    forward = tf.function(lambda x: layer(x, training=True))
    np.testing.assert_array_equal(forward(X).numpy(), TOP_3)
    variable = layer.current_k
    layer.current_k.assign(2)
    np.testing.assert_array_equal(forward(X).numpy(), TOP_2)
    assert layer.current_k is variable
    assert forward.experimental_get_tracing_count() == 1
    # k is state, not a trainable weight.
    assert layer.trainable_weights == []
    assert layer.non_trainable_weights == [layer.current_k]


@pytest.mark.parametrize("k", [0, -1, 1.5, True, "3", None])
def test_bad_k_raises_value_error_naming_it(k):
    with pytest.raises(ValueError, match=f"k={k!r}"):
        KSparse(k=k)


@pytest.mark.parametrize("alpha", [0.5, 0.0, -2.0, float("nan")])
def test_bad_alpha_raises_value_error_naming_it(alpha):
    with pytest.raises(ValueError, match=f"alpha={alpha!r}"):
        KSparse(k=2, alpha=alpha)


def test_k_larger_than_the_units_raises_at_build():
    with pytest.raises(ValueError, match=r"k=7.*6 units"):
        KSparse(k=7)(X)
    with pytest.raises(ValueError, match="k=7"):
        KSparse(k=7).build((None, 2, 3))
    KSparse(k=6).build((None, 2, 3))  # k == units is fine.


def test_undefined_non_batch_dimension_raises():
    with pytest.raises(ValueError, match="fully defined"):
        KSparse(k=2).build((None, None, 4))


def test_config_round_trip():
    layer = KSparse(k=3, alpha=2.0, name="sparse")
    config = layer.get_config()
    assert config["k"] == 3 and config["alpha"] == 2.0
    clone = KSparse.from_config(config)
    assert (clone.k, clone.alpha, clone.name) == (3, 2.0, "sparse")
    assert keras.saving.get_registered_name(KSparse) == "capskeras>KSparse"


def _ksparse_model():
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, name="dense"),
            KSparse(k=3, alpha=1.5, name="ksparse"),
        ]
    )


def test_keras_round_trip_keeps_the_scheduled_k(tmp_path):
    model = _ksparse_model()
    model.get_layer("ksparse").current_k.assign(2)
    expected = _numpy(model(X, training=True))
    # Checked directly first, so a failure below is the shared helper's.
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    layer = reloaded.get_layer("ksparse")
    assert isinstance(layer, KSparse)
    assert (layer.k, layer.alpha) == (3, 1.5)
    assert int(layer.current_k.numpy()) == 2
    np.testing.assert_array_equal(_numpy(reloaded(X, training=True)), expected)
    assert json.loads(json.dumps(reloaded.get_config())) == json.loads(
        json.dumps(model.get_config())
    )

    assert_keras_round_trip(model, X)


def test_saved_model_round_trip():
    model = _ksparse_model()
    assert_saved_model_round_trip(model, X)
    assert_saved_model_round_trip(KSparse(k=2, alpha=1.5), X)


def test_trains_under_jit_compile():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6)).astype("float32")
    y = rng.normal(size=(16, 4)).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(16, activation="relu"),
            KSparse(k=4, name="ksparse"),
            keras.layers.Dense(4),
        ]
    )
    model.compile("adam", "mse", jit_compile=True)
    before = [w.numpy().copy() for w in model.trainable_weights]
    first = model.train_on_batch(x, y)
    second = model.train_on_batch(x, y)
    assert np.isfinite(first) and np.isfinite(second)
    assert any(
        not np.array_equal(w.numpy(), b) for w, b in zip(model.trainable_weights, before)
    )
    # The schedule's assignment is honoured inside the compiled step too.
    model.get_layer("ksparse").current_k.assign(1)
    assert np.isfinite(model.train_on_batch(x, y))
    hidden = keras.Model(model.inputs[0], model.get_layer("ksparse").output)
    assert np.count_nonzero(_numpy(hidden(x, training=True)), axis=1).max() <= 1


def test_mixed_precision_outputs_float16():
    try:
        keras.config.set_dtype_policy("mixed_float16")
        layer = KSparse(k=2)
        out = layer(X, training=True)
        assert keras.backend.standardize_dtype(out.dtype) == "float16"
        np.testing.assert_allclose(_numpy(out).astype("float32"), TOP_2, rtol=1e-3)
        assert keras.backend.standardize_dtype(layer.current_k.dtype) == "int32"
        out = layer(X, training=False)
        assert keras.backend.standardize_dtype(out.dtype) == "float16"
    finally:
        keras.config.set_dtype_policy("float32")
