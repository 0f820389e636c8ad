"""Tests for the PredCaps encoder, its local learning and its use under the study's heads."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from capskeras import export
from capskeras.data import load_mnist
from capskeras.models import ClassificationHead
from capskeras.models import ReconstructionHead
from capskeras.models import StudyModel
from capskeras.models.predcaps import PredCapsEncoder
from capskeras.models.predcaps import PredCapsPretrainer
from capskeras.models.predcaps import predcaps_encoder
from capskeras.models.predcaps import pretrain_predcaps
from capskeras.testing import assert_keras_round_trip
from capskeras.testing import assert_weights_unchanged_by_fit

K = (2, 2, 4)


@pytest.fixture(scope="module")
def mnist():
    images, labels = next(iter(load_mnist("train", batch_size=640, num_examples=640)))
    return images.numpy(), labels.numpy()


def _capsule_norms(outputs, dim):
    outputs = keras.ops.convert_to_numpy(outputs)
    return np.linalg.norm(outputs.reshape(outputs.shape[:3] + (-1, dim)), axis=-1)


def test_code_shape_and_geometry(mnist):
    encoder = predcaps_encoder(seed=0)
    assert encoder(mnist[0][:2]).shape == (2, 256)
    assert encoder.compute_output_shape((None, 28, 28, 1)) == (None, 256)
    _, outputs = encoder.passes(mnist[0][:2])
    assert [tuple(y.shape[1:]) for y in outputs] == [(10, 10, 64), (5, 5, 256), (1, 1, 256)]


def test_exactly_k_capsules_per_position_with_unit_total_norms(mnist):
    encoder = predcaps_encoder(seed=0, k=K)
    for training in (True, False):
        _, outputs = encoder.passes(mnist[0][:4], training=training)
        for layer, k, y in zip(encoder.pred_caps_layers, K, outputs):
            norms = _capsule_norms(y, layer.capsule_dim)
            np.testing.assert_array_equal((norms > 0).sum(-1), k)
            np.testing.assert_allclose(norms.sum(-1), 1.0, rtol=1e-5)


def test_more_winners_at_inference_when_asked(mnist):
    encoder = predcaps_encoder(seed=0, k=K, inference_k=(3, 4, 16))
    for training, ks in ((True, K), (False, (3, 4, 16))):
        _, outputs = encoder.passes(mnist[0][:4], training=training)
        for layer, k, y in zip(encoder.pred_caps_layers, ks, outputs):
            norms = _capsule_norms(y, layer.capsule_dim)
            np.testing.assert_array_equal((norms > 0).sum(-1), k)
            np.testing.assert_allclose(norms.sum(-1), 1.0, rtol=1e-5)
    assert PredCapsEncoder.from_config(encoder.get_config()).inference_k == (3, 4, 16)
    units = predcaps_encoder(seed=0, k=K, inference_k=(3, 4, 16), selection="unit")
    assert [layer.inference_k for layer in units.pred_caps_layers] == [3 * 4, 4 * 16, 16 * 16]
    with pytest.raises(ValueError, match=r"inference_k=\[2, 2\]"):
        PredCapsEncoder(inference_k=(2, 2))
    with pytest.raises(ValueError, match="inference_k=17"):
        PredCapsEncoder(inference_k=(2, 2, 17))


def test_unit_selection_keeps_as_many_units_as_capsule_selection():
    encoder = predcaps_encoder(seed=0, k=K, selection="unit")
    assert [layer.k for layer in encoder.pred_caps_layers] == [2 * 4, 2 * 16, 4 * 16]
    assert all(layer.selection == "unit" for layer in encoder.pred_caps_layers)


def test_no_gradient_crosses_layers(mnist):
    encoder = predcaps_encoder(seed=0, feedback_iterations=1)
    pretrainer = PredCapsPretrainer(encoder)
    layers = encoder.pred_caps_layers
    with tf.GradientTape(persistent=True) as tape:
        losses, _ = pretrainer.local_losses(tf.constant(mnist[0][:4]), training=True)
    for index, loss in enumerate(losses):
        for other, layer in enumerate(layers):
            for weight in layer.trainable_weights:
                gradient = tape.gradient(loss, weight)
                if other == index:
                    assert np.abs(gradient.numpy()).max() > 0, (index, weight.path)
                else:
                    # Neither from below (the input) nor from above (the feedback).
                    assert gradient is None or not np.any(gradient.numpy()), (index, weight.path)


def test_one_step_updates_every_layer_and_learns(mnist):
    keras.utils.set_random_seed(0)
    encoder = predcaps_encoder(seed=0)
    before = [layer.get_weights() for layer in encoder.pred_caps_layers]
    history = pretrain_predcaps(
        encoder, tf.data.Dataset.from_tensor_slices(mnist[0][:256]).batch(32), epochs=2, verbose=0,
        learning_rate=1e-2, jit_compile=False,
    ).history
    for layer, weights in zip(encoder.pred_caps_layers, before):
        for new, old in zip(layer.get_weights()[:4], weights[:4]):
            assert not np.array_equal(new, old), layer.name
    for index in (1, 2, 3):
        assert f"layer_{index}_loss" in history
    # The first layer's reconstruction of the digits improves within two short epochs.
    assert history["layer_1_loss"][-1] < 0.7 * history["layer_1_loss"][0], history


@pytest.mark.parametrize(
    "lifetime, boost_strength",
    [("boost", 3.0), ("boost", 0.0), ("standardize", 0.0), (None, 3.0)],
    ids=["boosted", "unboosted", "standardized", "default"],
)
def test_every_capsule_wins_over_an_epoch_with_lifetime_sparsity(
    mnist, lifetime, boost_strength
):
    keras.utils.set_random_seed(0)
    # Raw kernels: normalized ones would undo the starvation by kernel scale below.
    encoder = PredCapsEncoder(
        k=K, boost_strength=boost_strength, frequency_decay=0.8, normalize_kernel=False,
        lifetime=lifetime, seed=0,
    )
    encoder.build((None, 28, 28, 1))
    first = encoder.pred_caps_layers[0]
    # Starve the last capsule of the first layer (ties go to the first ones):
    # a tenth of the drive of the others.
    kernel, bias = first.kernel.numpy(), first.bias.numpy()
    kernel[..., -4:] *= 0.1
    bias[-4:] *= 0.1
    first.bias.assign(bias)
    first.kernel.assign(kernel)
    pretrainer = PredCapsPretrainer(encoder)
    pretrainer.compile(keras.optimizers.Adam(1e-3), jit_compile=False)
    wins = [np.zeros(layer.capsules) for layer in encoder.pred_caps_layers]
    for batch in np.split(mnist[0][:320], 10):
        pretrainer.train_on_batch(batch)
        _, outputs = encoder.passes(batch, training=False)
        for layer, count, y in zip(encoder.pred_caps_layers, wins, outputs):
            count += (_capsule_norms(y, layer.capsule_dim) > 0).sum(axis=(0, 1, 2))
    if boost_strength or lifetime == "standardize":
        # Standardized ranks need no boost: a capsule is ranked against its
        # own scores, whatever their scale.
        for layer, count in zip(encoder.pred_caps_layers, wins):
            assert (count > 0).all(), (layer.name, count)
    else:
        # Without boosting the starved capsule never wins: the check above is not vacuous.
        assert wins[0][-1] == 0, wins[0]


def test_feedback_iterations_change_the_selection(mnist):
    images = mnist[0][:8]
    selections = []
    for rounds in (0, 1, 2):
        encoder = predcaps_encoder(seed=0, feedback_iterations=rounds)
        _, outputs = encoder.passes(images, training=False)
        selections.append([
            _capsule_norms(y, layer.capsule_dim) > 0
            for layer, y in zip(encoder.pred_caps_layers, outputs)
        ])
    # The lower layers receive feedback: their winners change somewhere.
    for layer_index in (0, 1):
        assert (selections[0][layer_index] != selections[1][layer_index]).any()
    assert any((a != b).any() for a, b in zip(selections[1], selections[2]))


def test_feedback_rounds_at_inference_when_asked(mnist):
    images = mnist[0][:8]
    encoder = predcaps_encoder(seed=0, feedback_iterations=1, inference_feedback_iterations=0)
    with_round = predcaps_encoder(seed=0, feedback_iterations=1)
    without_round = predcaps_encoder(seed=0, feedback_iterations=0)
    # Inference is the one upward pass; training keeps its rounds. (Inference first:
    # a training pass moves the lifetime statistics of its encoder.)
    for training, same_as in ((False, without_round), (True, with_round)):
        _, ours = encoder.passes(images, training=training)
        _, theirs = same_as.passes(images, training=training)
        for y, expected in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(y),
                                          keras.ops.convert_to_numpy(expected))
    restored = PredCapsEncoder.from_config(encoder.get_config())
    assert restored.inference_feedback_iterations == 0
    with pytest.raises(ValueError, match="inference_feedback_iterations=-1"):
        PredCapsEncoder(inference_feedback_iterations=-1)


def test_feedback_iterations_validation():
    with pytest.raises(ValueError, match="feedback_iterations=-1"):
        PredCapsEncoder(feedback_iterations=-1)
    with pytest.raises(ValueError, match=r"k=\[1, 2\]"):
        PredCapsEncoder(k=(1, 2))
    with pytest.raises(ValueError, match=r"lifetime=\['boost', 'boost'\]"):
        PredCapsEncoder(lifetime=("boost", "boost"))


def test_the_top_layer_ranks_standardized_scores():
    encoder = PredCapsEncoder(seed=0)
    assert [layer.lifetime for layer in encoder.pred_caps_layers] == [
        "boost", "boost", "standardize"]
    assert [layer.lifetime for layer in PredCapsEncoder(lifetime="standardize").pred_caps_layers
            ] == ["standardize"] * 3
    config = encoder.get_config()
    assert PredCapsEncoder.from_config(config).lifetime == encoder.lifetime


def _study(head):
    head_layer = (ClassificationHead(10, name="class_head") if head == "class"
                  else ReconstructionHead((28, 28, 1), name="recon_head"))
    model = StudyModel(predcaps_encoder(seed=0), head_layer, freeze_encoder=True,
                       name=f"enc_predcaps_dec_{head}")
    model.build((None, 28, 28, 1))
    model.compile(keras.optimizers.Adam(1e-2), model.default_loss(),
                  metrics=model.default_metrics())
    return model


def test_frozen_under_the_heads_the_encoder_never_changes(mnist):
    images, labels = mnist[0][:16], mnist[1][:16]
    for head, targets in (("class", labels), ("recon", images)):
        model = _study(head)
        assert_weights_unchanged_by_fit(model, model.encoder.weights, images, targets, epochs=1)


def test_study_model_keras_round_trip_and_export(mnist, tmp_path):
    model = _study("class")
    model.encoder.pred_caps_layers[1].win_frequency.assign(np.linspace(0.0, 0.2, 16))
    assert_keras_round_trip(model, mnist[0][:2])
    path = export.export_saved_model(model, str(tmp_path / "export"), (28, 28, 1))
    serve = tf.saved_model.load(path).signatures["serving_default"]
    outputs = serve(images=tf.constant(mnist[0][:3]))
    expected = model.serving_outputs(mnist[0][:3])
    assert set(outputs) == {"encoding", "probabilities", "class_ids"}
    np.testing.assert_allclose(outputs["encoding"].numpy(), expected["encoding"], atol=1e-5)
    np.testing.assert_array_equal(outputs["class_ids"].numpy(), expected["class_ids"])


def test_pretrainer_follows_the_model_contract(mnist):
    pretrainer = PredCapsPretrainer(predcaps_encoder(seed=0))
    pretrainer.compile(keras.optimizers.Adam(1e-3), pretrainer.default_loss(),
                       metrics=pretrainer.default_metrics())
    x, y = pretrainer.make_example(mnist[0][:32], mnist[1][:32])
    logs = pretrainer.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    assert {"loss", "image_mse", "layer_1_loss", "layer_2_loss", "layer_3_loss"} <= set(logs)
    np.testing.assert_allclose(
        logs["loss"][0], sum(logs[f"layer_{i}_loss"][0] for i in (1, 2, 3)), rtol=1e-5)
    outputs = pretrainer.serving_outputs(mnist[0][:2])
    assert outputs["encoding"].shape == (2, 256)
    assert outputs["reconstruction"].shape == (2, 28, 28, 1)


def test_pretrainer_keras_round_trip(mnist):
    assert_keras_round_trip(PredCapsPretrainer(predcaps_encoder(seed=0)), mnist[0][:2])


def test_mixed_precision_code():
    try:
        keras.config.set_dtype_policy("mixed_float16")
        encoder = predcaps_encoder(seed=0)
        code = encoder(np.random.default_rng(0).uniform(size=(2, 28, 28, 1)).astype("float32"))
        assert keras.backend.standardize_dtype(code.dtype) == "float16"
        norms = np.linalg.norm(keras.ops.convert_to_numpy(code).astype("float32").reshape(2, 16, 16), axis=-1)
        np.testing.assert_allclose(norms.sum(-1), 1.0, rtol=5e-3)
    finally:
        keras.config.set_dtype_policy("float32")
