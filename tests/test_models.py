"""Tests for the study's encoders, heads, registry, StudyModel and Autoencoder."""

import json
import os

import keras
import numpy as np
import pytest

from capskeras.data import load_mnist
from capskeras.layers import KSparse
from capskeras.layers import StopGradient
from capskeras.models import Autoencoder
from capskeras.models import ClassificationHead
from capskeras.models import ENCODERS
from capskeras.models import HEADS
from capskeras.models import ReconstructionHead
from capskeras.models import StudyModel
from capskeras.models import build_study_model
from capskeras.models import register_encoder
from capskeras.models import encoders
from capskeras.testing import assert_keras_round_trip
from capskeras.testing import assert_weights_unchanged_by_fit

ENCODER_NAMES = ("untrained", "deep_bp", "ksparse")
HEAD_NAMES = ("class", "recon")

RNG = np.random.default_rng(0)
IMAGES = RNG.uniform(size=(8, 28, 28, 1)).astype("float32")
LABELS = RNG.integers(0, 10, size=(8,)).astype("int32")


def _numpy(tensor):
    return keras.ops.convert_to_numpy(tensor)


def _compiled(model):
    model.compile(
        keras.optimizers.Adam(1e-2),
        model.head.default_loss(),
        metrics=model.head.default_metrics(),
    )
    return model


def _targets(head):
    return IMAGES if head == "recon" else LABELS


def _snapshot(variables):
    return [np.array(v.numpy()) for v in variables]


# --- encoders -------------------------------------------------------------


@pytest.mark.parametrize("ksparse_k", [None, encoders.DEFAULT_KSPARSE_K])
def test_encoder_geometry(ksparse_k):
    encoder = encoders.conv_encoder(ksparse_k=ksparse_k, seed=0)
    probe = keras.Model(
        encoder.inputs[0],
        [encoder.get_layer(name).output for name in ("conv_1", "conv_2", "conv_3", "code")],
    )
    conv_1, conv_2, conv_3, code = probe(IMAGES[:2])
    assert tuple(conv_1.shape) == (2, 10, 10, 64)
    assert tuple(conv_2.shape) == (2, 5, 5, 256)
    assert tuple(conv_3.shape) == (2, 1, 1, 256)
    assert tuple(code.shape) == (2, 256)
    assert encoder.output_shape == (None, 256)
    kernels = [encoder.get_layer(f"conv_{i}").kernel.shape for i in (1, 2, 3)]
    assert [tuple(k) for k in kernels] == [(6, 6, 1, 64), (5, 5, 64, 256), (5, 5, 256, 256)]
    assert [encoder.get_layer(f"conv_{i}").strides for i in (1, 2, 3)] == [
        (3, 3), (2, 2), (5, 5)
    ]


def test_ksparse_encoder_codes_are_k_sparse():
    encoder = encoders.conv_encoder(ksparse_k=(640, 320, 32), seed=0)
    assert [layer.k for layer in encoder.layers if isinstance(layer, KSparse)] == [640, 320, 32]
    code = _numpy(encoder(IMAGES[:3], training=True))
    assert (np.count_nonzero(code, axis=1) <= 32).all()
    assert (np.count_nonzero(code, axis=1) > 0).all()


def test_encoder_seed_makes_weights_reproducible():
    first = encoders.conv_encoder(seed=3)
    second = encoders.conv_encoder(seed=3)
    other = encoders.conv_encoder(seed=4)
    np.testing.assert_array_equal(_numpy(first(IMAGES[:2])), _numpy(second(IMAGES[:2])))
    assert not np.array_equal(_numpy(first(IMAGES[:2])), _numpy(other(IMAGES[:2])))


def test_ksparse_k_of_the_wrong_length_raises():
    with pytest.raises(ValueError, match=r"ksparse_k=\[640, 320\]"):
        encoders.conv_encoder(ksparse_k=(640, 320))


def test_mirror_decoder_maps_codes_back_to_images():
    for ksparse_k in (None, encoders.DEFAULT_KSPARSE_K):
        encoder = encoders.conv_encoder(ksparse_k=ksparse_k, seed=0)
        decoder = encoders.mirror_decoder(encoder)
        assert decoder.input_shape == (None, 256)
        assert decoder.output_shape == (None, 28, 28, 1)
        images = _numpy(decoder(encoder(IMAGES[:3])))
        assert images.shape == (3, 28, 28, 1)
        # It mirrors the encoder: transposed kernels and strides, reversed.
        deconvs = [decoder.get_layer(f"deconv_{i}") for i in (3, 2, 1)]
        assert [d.strides for d in deconvs] == [(5, 5), (2, 2), (3, 3)]
        assert [d.filters for d in deconvs] == [256, 64, 1]


def test_autoencoder_reconstructs_and_trains(tmp_path):
    encoder = encoders.conv_encoder(ksparse_k=encoders.DEFAULT_KSPARSE_K, seed=0)
    autoencoder = Autoencoder(encoder)
    assert _numpy(autoencoder(IMAGES[:2])).shape == (2, 28, 28, 1)
    autoencoder.compile(keras.optimizers.Adam(1e-2), "mse")
    before = _snapshot(encoder.trainable_weights)
    history = autoencoder.fit(IMAGES, IMAGES, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    # The encoder itself is trained (it is frozen only later, under heads).
    for variable, value in zip(encoder.trainable_weights, before):
        if variable.path.endswith("kernel"):
            assert not np.array_equal(variable.numpy(), value), variable.path
    path = os.path.join(tmp_path, "autoencoder.keras")
    autoencoder.save(path)
    reloaded = keras.saving.load_model(path)
    assert isinstance(reloaded, Autoencoder)
    np.testing.assert_allclose(
        _numpy(reloaded(IMAGES[:2])), _numpy(autoencoder(IMAGES[:2])), atol=1e-6
    )


# --- heads ----------------------------------------------------------------


def test_head_output_shapes():
    code = np.zeros((3, 256), "float32")
    recon = ReconstructionHead(image_shape=(28, 28, 1))
    assert tuple(recon(code).shape) == (3, 28, 28, 1)
    assert recon.compute_output_shape((None, 256)) == (None, 28, 28, 1)
    assert tuple(ReconstructionHead(image_shape=(40, 40, 1))(code).shape) == (3, 40, 40, 1)
    classify = ClassificationHead(num_classes=10)
    assert tuple(classify(code).shape) == (3, 10)
    assert classify.compute_output_shape((None, 256)) == (None, 10)
    assert tuple(ClassificationHead(num_classes=3)(code).shape) == (3, 3)
    pixels = _numpy(recon(RNG.normal(size=(3, 256)).astype("float32")))
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0


def test_head_hidden_units_and_targets():
    recon = ReconstructionHead()
    classify = ClassificationHead()
    recon.build((None, 256))
    classify.build((None, 256))
    assert [d.units for d in recon.dense_layers] == [512, 1024]
    assert [d.units for d in classify.dense_layers] == [1024, 512]
    assert (recon.target, classify.target) == ("images", "labels")


def test_classification_serving_outputs():
    model = build_study_model("untrained", "class", seed=0)
    outputs = {name: _numpy(value) for name, value in model.serving_outputs(IMAGES[:5]).items()}
    assert set(outputs) == {"encoding", "probabilities", "class_ids"}
    assert outputs["encoding"].shape == (5, 256)
    assert outputs["probabilities"].shape == (5, 10)
    assert outputs["class_ids"].shape == (5,)
    assert np.issubdtype(outputs["class_ids"].dtype, np.integer)
    np.testing.assert_allclose(outputs["probabilities"].sum(axis=-1), 1.0, rtol=1e-5)
    assert (outputs["probabilities"] >= 0).all()
    logits = _numpy(model(IMAGES[:5]))
    np.testing.assert_array_equal(outputs["class_ids"], logits.argmax(axis=-1))
    np.testing.assert_array_equal(outputs["class_ids"], outputs["probabilities"].argmax(axis=-1))
    np.testing.assert_allclose(
        outputs["encoding"], _numpy(model.encoder(IMAGES[:5])), atol=1e-6
    )


def test_reconstruction_serving_outputs():
    model = build_study_model("untrained", "recon", seed=0)
    outputs = model.serving_outputs(IMAGES[:2])
    assert set(outputs) == {"encoding", "reconstruction"}
    assert tuple(outputs["encoding"].shape) == (2, 256)
    np.testing.assert_allclose(
        _numpy(outputs["reconstruction"]), _numpy(model(IMAGES[:2])), atol=1e-6
    )


# --- registry and StudyModel ----------------------------------------------


@pytest.mark.parametrize("encoder", ENCODER_NAMES)
@pytest.mark.parametrize("head", HEAD_NAMES)
def test_study_model_output_shapes(encoder, head):
    model = build_study_model(encoder, head, seed=0)
    assert isinstance(model, StudyModel)
    assert model.built
    expected = (2, 28, 28, 1) if head == "recon" else (2, 10)
    assert tuple(model(IMAGES[:2]).shape) == expected
    assert model.compute_output_shape((2, 28, 28, 1)) == expected
    assert model.freeze_encoder is ENCODERS[encoder].frozen
    assert model.head.target == ("images" if head == "recon" else "labels")


def test_registry_names():
    assert set(ENCODERS) >= set(ENCODER_NAMES)
    assert set(HEADS) >= set(HEAD_NAMES)
    assert ENCODERS["untrained"].frozen and ENCODERS["ksparse"].frozen
    assert not ENCODERS["deep_bp"].frozen
    assert ENCODERS["ksparse"].pretraining is Autoencoder


def test_unknown_encoder_name_lists_the_accepted_ones():
    with pytest.raises(ValueError, match="encoder='capsnet_v9'") as info:
        build_study_model("capsnet_v9", "class")
    for name in ENCODER_NAMES:
        assert repr(name) in str(info.value)


def test_unknown_head_name_lists_the_accepted_ones():
    with pytest.raises(ValueError, match="head='segmentation'") as info:
        build_study_model("untrained", "segmentation")
    for name in HEAD_NAMES:
        assert repr(name) in str(info.value)


def test_unknown_encoder_option_raises():
    with pytest.raises(ValueError, match="ksparse_k"):
        build_study_model("untrained", "class", encoder_options={"ksparse_k": (1, 1, 1)})


def test_encoder_options_reach_the_builder():
    model = build_study_model(
        "ksparse", "class", encoder_options={"ksparse_k": (100, 50, 8), "ksparse_alpha": 2.0}
    )
    layers = [layer for layer in model.encoder.layers if isinstance(layer, KSparse)]
    assert [(layer.k, layer.alpha) for layer in layers] == [
        (100, 2.0), (50, 2.0), (8, 2.0)
    ]


def test_frozen_encoder_runs_in_inference_mode_when_training():
    model = build_study_model(
        "ksparse", "class", seed=0,
        encoder_options={"ksparse_k": (640, 320, 8), "ksparse_alpha": 2.0},
    )
    code = _numpy(model.encode(IMAGES[:3], training=True))
    # Inference k is alpha * k = 16 in the last layer, not the training 8.
    np.testing.assert_array_equal(code, _numpy(model.encoder(IMAGES[:3], training=False)))
    assert (np.count_nonzero(code, axis=1) > 8).any()


def test_register_encoder_adds_a_usable_encoder():
    name = "tiny_test_encoder"
    assert name not in ENCODERS
    built_with = {}

    def tiny(image_shape, seed=None, width=4):
        built_with.update(image_shape=image_shape, seed=seed, width=width)
        return keras.Sequential(
            [
                keras.Input(image_shape),
                keras.layers.Conv2D(width, 7, strides=7, name="conv"),
                keras.layers.Flatten(name="code"),
            ],
            name="tiny_encoder",
        )

    try:
        returned = register_encoder(name, frozen=True, options=("width",))(tiny)
        assert returned is tiny
        with pytest.raises(ValueError, match=name):
            register_encoder(name, frozen=False)(tiny)
        with pytest.raises(ValueError, match="unknown_encoder") as info:
            build_study_model("unknown_encoder", "class")
        assert repr(name) in str(info.value)

        model = build_study_model(name, "class", seed=5, encoder_options={"width": 2})
        assert built_with == {"image_shape": (28, 28, 1), "seed": 5, "width": 2}
        assert model.encoder.name == "tiny_encoder"
        assert model.encoder.output_shape == (None, 32)
        assert tuple(model(IMAGES[:3]).shape) == (3, 10)
        assert model.freeze_encoder and not model.encoder.trainable
    finally:
        ENCODERS.pop(name, None)
    assert name not in ENCODERS


# --- freezing under fit ---------------------------------------------------


@pytest.mark.parametrize("encoder", ["untrained", "ksparse"])
def test_frozen_encoder_weights_never_change_during_fit(encoder):
    model = _compiled(build_study_model(encoder, "class", seed=0))
    assert not model.encoder.trainable
    assert model.encoder.trainable_weights == []
    trainable_ids = {id(v) for v in model.trainable_weights}
    assert not trainable_ids & {id(v) for v in model.encoder.weights}
    head_before = _snapshot(model.head.trainable_weights)

    assert_weights_unchanged_by_fit(model, model.encoder.weights, IMAGES, LABELS)

    # Every weight of the head was trained.
    for variable, value in zip(model.head.trainable_weights, head_before):
        assert not np.array_equal(variable.numpy(), value), variable.path


def test_frozen_encoder_weights_never_change_under_the_recon_head():
    model = _compiled(build_study_model("untrained", "recon", seed=0))
    assert_weights_unchanged_by_fit(model, model.encoder.weights, IMAGES, IMAGES, epochs=1)


def test_deep_bp_encoder_is_trained_end_to_end():
    model = _compiled(build_study_model("deep_bp", "class", seed=0))
    assert model.encoder.trainable
    before = _snapshot(model.encoder.trainable_weights)
    kernels_before = [b for v, b in zip(model.encoder.trainable_weights, before)
                      if v.path.endswith("kernel")]
    assert len(kernels_before) == 3
    model.fit(IMAGES, LABELS, epochs=2, batch_size=4, verbose=0)
    for variable, value in zip(model.encoder.trainable_weights, before):
        if variable.path.endswith("kernel"):
            assert not np.array_equal(variable.numpy(), value), variable.path


# --- serialization --------------------------------------------------------


@pytest.mark.parametrize("encoder", ENCODER_NAMES)
@pytest.mark.parametrize("head", HEAD_NAMES)
def test_study_model_keras_round_trip(encoder, head, tmp_path):
    model = build_study_model(encoder, head, seed=0)
    expected = _numpy(model(IMAGES[:2], training=False))
    # Checked directly first, so a failure below is the shared helper's.
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert type(reloaded) is StudyModel
    assert reloaded.name == f"enc_{encoder}_dec_{head}"
    assert reloaded.freeze_encoder is model.freeze_encoder
    assert reloaded.encoder.trainable is model.encoder.trainable
    assert isinstance(reloaded.stop_gradient, StopGradient)
    assert type(reloaded.head) is type(model.head)
    assert json.loads(json.dumps(reloaded.get_config())) == json.loads(
        json.dumps(model.get_config())
    )
    np.testing.assert_allclose(_numpy(reloaded(IMAGES[:2])), expected, atol=1e-6)
    assert len(reloaded.trainable_weights) == len(model.trainable_weights)

    assert_keras_round_trip(model, IMAGES[:2])


def test_ksparse_autoencoder_learns_to_reconstruct_mnist():
    # A decoder that collapses to black stays at the mean of x^2 (about 0.11).
    images = np.concatenate(
        [batch.numpy() for batch, _ in load_mnist("train", batch_size=1024, num_examples=2048)]
    )
    keras.utils.set_random_seed(0)
    autoencoder = Autoencoder(encoders.conv_encoder(ksparse_k=encoders.DEFAULT_KSPARSE_K))
    autoencoder.compile(keras.optimizers.Adam(1e-3), "mse")
    losses = autoencoder.fit(images, images, batch_size=64, epochs=2, verbose=0).history["loss"]
    collapsed = float(np.mean(images**2))
    assert losses[-1] < 0.7 * collapsed, (losses, collapsed)
