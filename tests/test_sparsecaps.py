"""Tests for RankMask and SparseCaps (Sparse Unsupervised Capsules)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from capskeras import export
from capskeras.data import load_mnist
from capskeras.layers import RankMask
from capskeras.models.sparsecaps import SparseCaps
from capskeras.testing import assert_keras_round_trip

J, TYPES, POSITIONS = 16, 4, 3


def _couplings(seed=0, batch=5):
    logits = np.random.default_rng(seed).normal(size=(batch, POSITIONS * TYPES, J))
    return (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype("float32")


def _np_weights(couplings, boost):
    scores = couplings.reshape(len(couplings), POSITIONS, TYPES, J).max(2).sum(1) * boost
    ranks = np.argsort(np.argsort(-scores, axis=1, kind="stable"), axis=1)
    weights = np.exp(-12.0 * ranks / (J - 1))
    return np.where(weights < 0.01, 0.0, weights), ranks


def test_weights_follow_the_rank_formula():
    layer = RankMask(input_types=TYPES)
    capsules = np.random.default_rng(1).normal(size=(5, J, 3)).astype("float32")
    couplings = _couplings()
    out = keras.ops.convert_to_numpy(layer(capsules, couplings))
    weights, ranks = _np_weights(couplings, np.ones(J))
    np.testing.assert_allclose(out, capsules * weights[..., None], rtol=1e-5)
    # exp(-12 r / 15) >= 0.01 for ranks 0..5: six capsules reach the decoder.
    np.testing.assert_array_equal((weights > 0).sum(1), 6)
    layer.boost.assign(np.linspace(1.0, 3.0, J).astype("float32"))
    weights, _ = _np_weights(couplings, np.linspace(1.0, 3.0, J))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(capsules, couplings)), capsules * weights[..., None],
        rtol=1e-5)


def test_no_gradient_through_the_ranking():
    layer = RankMask(input_types=TYPES)
    capsules = tf.constant(np.random.default_rng(1).normal(size=(5, J, 3)).astype("float32"))
    couplings = tf.constant(_couplings())
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([capsules, couplings])
        total = tf.reduce_sum(layer(capsules, couplings, training=True))
    assert tape.gradient(total, couplings) is None
    weights, _ = _np_weights(couplings.numpy(), np.ones(J))
    np.testing.assert_allclose(tape.gradient(total, capsules).numpy(),
                               np.broadcast_to(weights[..., None], (5, J, 3)), rtol=1e-5)


def test_boosting_every_fifty_steps():
    layer = RankMask(input_types=TYPES)
    capsules = np.ones((4, J, 2), "float32")
    couplings = np.full((4, POSITIONS * TYPES, J), 0.01, "float32")
    couplings[..., 3] = 0.9  # capsule 3 always ranks first
    for _ in range(99):
        layer(capsules, couplings, training=True)
    frequency = keras.ops.convert_to_numpy(layer.frequency)
    np.testing.assert_allclose(frequency[3], 1 - 0.99**99 * (1 - 1 / J), rtol=1e-4)
    # At step 50 the others' frequency (0.0625 * 0.99^50 = 0.038) was still >= 3%.
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.boost), 1.0)
    layer(capsules, couplings, training=True)  # step 100: the others fell below 3%
    boost = keras.ops.convert_to_numpy(layer.boost)
    assert boost[3] == 1.0  # above 12%, but never below 1
    np.testing.assert_allclose(np.delete(boost, 3), 1.1, rtol=1e-6)
    assert int(layer.steps.numpy()) == 100
    layer(capsules, couplings, training=False)
    assert int(layer.steps.numpy()) == 100


@pytest.mark.parametrize(
    "kwargs, message",
    [({"input_types": 0}, "input_types=0"), ({"input_types": 2, "sharpness": 0}, "sharpness=0"),
     ({"input_types": 2, "boost_interval": 0}, "boost_interval=0"),
     ({"input_types": 2, "frequency_decay": 1.0}, "frequency_decay=1.0")],
)
def test_rank_mask_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RankMask(**kwargs)


def test_rank_mask_config_round_trip():
    layer = RankMask(input_types=8, sharpness=6.0, boost_interval=10, name="rank")
    assert RankMask.from_config(layer.get_config()).get_config() == layer.get_config()


@pytest.fixture(scope="module")
def digits():
    images, _ = next(iter(load_mnist("train", batch_size=64, num_examples=64)))
    return images.numpy()


@pytest.fixture(scope="module")
def trained(digits):
    keras.utils.set_random_seed(0)
    model = SparseCaps(name="sparsecaps")
    model.build((None, 28, 28, 1))
    model.compile(keras.optimizers.Adam(1e-3), model.default_loss(),
                  metrics=model.default_metrics())
    history = model.fit(digits, digits, batch_size=32, epochs=2, verbose=0).history
    return model, history


def test_trains_without_labels_on_the_summed_squared_error(trained, digits):
    model, history = trained
    # The loss is the per-image sum of squared errors: 784 times the pixel MSE.
    np.testing.assert_allclose(history["loss"][-1], 784 * history["mse"][-1], rtol=0.05)
    assert history["loss"][-1] < history["loss"][0]
    assert int(model.rank_mask.steps.numpy()) == 4


def test_serving_contract_and_code(trained, digits):
    model, _ = trained
    outputs = model.serving_outputs(digits[:3])
    assert set(outputs) == {"encoding", "reconstruction"}
    assert outputs["encoding"].shape == (3, 256)
    assert outputs["reconstruction"].shape == (3, 28, 28, 1)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model.encoder()(digits[:3])),
        keras.ops.convert_to_numpy(outputs["encoding"]), atol=1e-6)
    assert model.make_example(digits, None) == (digits, digits)


def test_keras_round_trip_and_export(trained, digits, tmp_path):
    model, _ = trained
    reloaded = assert_keras_round_trip(model, digits[:2], atol=1e-5)
    np.testing.assert_array_equal(reloaded.rank_mask.steps.numpy(), model.rank_mask.steps.numpy())
    path = export.export_saved_model(model, str(tmp_path / "export"), (28, 28, 1))
    serve = tf.saved_model.load(path).signatures["serving_default"]
    served = serve(images=tf.constant(digits[:2]))
    np.testing.assert_allclose(served["encoding"].numpy(),
                               model.serving_outputs(digits[:2])["encoding"], atol=1e-5)
