"""Tests for the capsule layers: PrimaryCapsules, CapsuleDense, CapsuleLength,
CapsuleMask."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from capskeras.layers.capsule_dense import CapsuleDense
from capskeras.layers.capsule_length import CapsuleLength
from capskeras.layers.capsule_mask import CapsuleMask
from capskeras.layers.primary_capsules import PrimaryCapsules
from capskeras.losses import MarginLoss, ReconstructionLoss

IMAGE_SHAPE = (8, 8, 1)
NUM_CLASSES = 3


def _np_squash(s):
    sq = np.sum(s**2, axis=-1, keepdims=True)
    return sq / (1 + sq) * s / np.sqrt(sq + 1e-7)


def _np_routing(x, kernel, iterations):
    """Procedure 1 of Sabour et al. (2017), written directly in NumPy."""
    u_hat = np.einsum("bid,ijde->bije", x, kernel)
    b = np.zeros(u_hat.shape[:3])
    for r in range(iterations):
        c = np.exp(b) / np.exp(b).sum(axis=2, keepdims=True)
        v = _np_squash(np.einsum("bij,bije->bje", c, u_hat))
        if r < iterations - 1:
            b = b + np.einsum("bije,bje->bij", u_hat, v)
    return v, c


def _random_capsules(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _build_model(routing_iterations=2, with_labels=True):
    """image (+ labels) -> [capsule lengths, reconstruction]."""
    images = keras.Input(IMAGE_SHAPE, name="images")
    primary = PrimaryCapsules(capsule_types=2, capsule_dim=4, kernel_size=3, strides=2)(images)
    digits = CapsuleDense(NUM_CLASSES, 4, routing_iterations=routing_iterations)(primary)
    lengths = CapsuleLength(name="lengths")(digits)
    inputs = [images]
    if with_labels:
        labels = keras.Input((), dtype="int32", name="labels")
        inputs.append(labels)
        masked = CapsuleMask()(digits, mask_labels=labels)
    else:
        masked = CapsuleMask()(digits)
    hidden = keras.layers.Dense(int(np.prod(IMAGE_SHAPE)), activation="sigmoid")(masked)
    recon = keras.layers.Reshape(IMAGE_SHAPE, name="reconstruction")(hidden)
    return keras.Model(inputs if with_labels else images, [lengths, recon])


@pytest.fixture
def mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


# ---------------------------------------------------------------- PrimaryCapsules


def test_primary_capsules_flatten_order_and_squash():
    layer = PrimaryCapsules(capsule_types=3, capsule_dim=2, kernel_size=2)
    x = _random_capsules((2, 4, 5, 1))
    out = ops.convert_to_numpy(layer(x))
    conv = ops.convert_to_numpy(layer.conv(x))  # (2, 3, 4, 6)
    _, height, width, _ = conv.shape
    expected = np.zeros((2, height * width * 3, 2), dtype="float32")
    for h in range(height):
        for w in range(width):
            for t in range(3):
                expected[:, (h * width + w) * 3 + t] = conv[:, h, w, t * 2 : t * 2 + 2]
    np.testing.assert_allclose(out, _np_squash(expected), rtol=1e-5, atol=1e-6)
    assert np.all(np.linalg.norm(out, axis=-1) < 1.0)


def test_primary_capsules_output_shape():
    layer = PrimaryCapsules(capsule_types=2, capsule_dim=4, kernel_size=3, strides=2, padding="same")
    x = np.zeros((2, 7, 9, 3), dtype="float32")
    out = layer(x)
    assert tuple(out.shape) == layer.compute_output_shape(x.shape) == (2, 4 * 5 * 2, 4)
    assert layer.compute_output_shape((None, None, None, 3)) == (None, None, 4)


def test_primary_capsules_validation():
    with pytest.raises(ValueError, match="capsule_types=0"):
        PrimaryCapsules(capsule_types=0, capsule_dim=8, kernel_size=3)
    with pytest.raises(ValueError, match="capsule_dim=2.5"):
        PrimaryCapsules(capsule_types=2, capsule_dim=2.5, kernel_size=3)
    with pytest.raises(ValueError, match="padding='causal'"):
        PrimaryCapsules(capsule_types=2, capsule_dim=2, kernel_size=3, padding="causal")
    with pytest.raises(ValueError, match=r"input_shape=\(2, 8, 8\)"):
        PrimaryCapsules(2, 2, 3)(np.zeros((2, 8, 8), dtype="float32"))


# ---------------------------------------------------------------- CapsuleDense


@pytest.mark.parametrize("xla", [True, False], ids=["xla", "plain"])
@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("iterations", [1, 2, 3])
def test_capsule_dense_matches_reference_routing(iterations, training, xla):
    layer = CapsuleDense(NUM_CLASSES, 5, routing_iterations=iterations,
                         routing_jit_compile=xla)
    x = 0.5 * _random_capsules((2, 6, 4))
    out, couplings = layer(x, training=training, return_couplings=True)
    kernel = ops.convert_to_numpy(layer.kernel)
    assert kernel.shape == (6, NUM_CLASSES, 4, 5)
    expected_v, expected_c = _np_routing(x.astype("float64"), kernel.astype("float64"), iterations)
    np.testing.assert_allclose(ops.convert_to_numpy(out), expected_v, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(couplings), expected_c, rtol=1e-4, atol=1e-6)


def test_couplings_sum_to_one_over_outputs():
    layer = CapsuleDense(4, 3, routing_iterations=3)
    _, couplings = layer(_random_capsules((2, 5, 6)), return_couplings=True)
    couplings = ops.convert_to_numpy(couplings)
    assert couplings.shape == (2, 5, 4)
    np.testing.assert_allclose(couplings.sum(axis=-1), 1.0, rtol=1e-5)
    # Routing has moved away from the uniform start.
    assert not np.allclose(couplings, 0.25, atol=1e-3)


def test_one_and_three_iterations_differ():
    x = _random_capsules((2, 6, 4))
    layer3 = CapsuleDense(NUM_CLASSES, 5, routing_iterations=3)
    layer1 = CapsuleDense(NUM_CLASSES, 5, routing_iterations=1)
    layer3.build(x.shape)
    layer1.build(x.shape)
    layer1.set_weights(layer3.get_weights())
    out3 = ops.convert_to_numpy(layer3(x))
    out1 = ops.convert_to_numpy(layer1(x))
    assert not np.allclose(out1, out3, atol=1e-4)


def test_gradient_flows_through_routing_iterations():
    # The couplings depend on the input only through the agreement updates;
    # a stop_gradient anywhere in the loop would make this gradient zero.
    layer = CapsuleDense(NUM_CLASSES, 5, routing_iterations=3)
    x = tf.constant(_random_capsules((2, 6, 4)))
    probe = tf.constant(_random_capsules((2, 6, NUM_CLASSES), seed=1))
    with tf.GradientTape() as tape:
        tape.watch(x)
        _, couplings = layer(x, return_couplings=True)
        total = tf.reduce_sum(couplings * probe)
    grad = tape.gradient(total, x).numpy()
    assert np.all(np.isfinite(grad))
    assert np.abs(grad).max() > 1e-6


def test_xla_and_plain_routing_give_the_same_gradients():
    x = tf.constant(_random_capsules((3, 6, 4)))
    probe = tf.constant(_random_capsules((3, NUM_CLASSES, 5), seed=1))
    plain = CapsuleDense(NUM_CLASSES, 5, routing_iterations=3, routing_jit_compile=False)
    plain.build(x.shape)
    compiled = CapsuleDense(NUM_CLASSES, 5, routing_iterations=3, routing_jit_compile=True)
    compiled.build(x.shape)
    compiled.set_weights(plain.get_weights())
    results = []
    for layer in (plain, compiled):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = layer(x, training=True)
            total = tf.reduce_sum(out * probe)
        grads = tape.gradient(total, [x, layer.kernel])
        results.append([out.numpy()] + [g.numpy() for g in grads])
    for plain, compiled in zip(*results):
        np.testing.assert_allclose(compiled, plain, rtol=1e-4, atol=1e-6)
    assert np.abs(results[0][2]).max() > 1e-6


def test_capsule_dense_output_shape():
    layer = CapsuleDense(7, 3)
    x = _random_capsules((2, 5, 4))
    assert tuple(layer(x).shape) == layer.compute_output_shape(x.shape) == (2, 7, 3)
    symbolic, couplings = layer(keras.Input((5, 4)), return_couplings=True)
    assert symbolic.shape == (None, 7, 3)
    assert couplings.shape == (None, 5, 7)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"routing_iterations": 0}, "routing_iterations=0"),
        ({"routing_iterations": 2.0}, "routing_iterations=2.0"),
        ({"routing_iterations": True}, "routing_iterations=True"),
        ({"num_capsules": 0}, "num_capsules=0"),
        ({"capsule_dim": -1}, "capsule_dim=-1"),
    ],
)
def test_capsule_dense_validation(kwargs, message):
    args = {"num_capsules": 2, "capsule_dim": 2, **kwargs}
    with pytest.raises(ValueError, match=message) as info:
        CapsuleDense(**args)
    assert "expected an int >= 1" in str(info.value)


def test_capsule_dense_wrong_rank():
    with pytest.raises(ValueError, match=r"input_shape=\(2, 4\)"):
        CapsuleDense(2, 2)(np.zeros((2, 4), dtype="float32"))


def test_finite_gradients_for_zero_input():
    primary = PrimaryCapsules(capsule_types=2, capsule_dim=4, kernel_size=3, strides=2)
    dense = CapsuleDense(NUM_CLASSES, 4, routing_iterations=3)
    lengths = CapsuleLength()
    x = tf.zeros((2,) + IMAGE_SHAPE)
    primary.build(x.shape)
    dense.build(primary.compute_output_shape(x.shape))
    weights = primary.trainable_variables + dense.trainable_variables
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = dense(primary(x))
        loss = tf.reduce_sum(lengths(y)) + tf.reduce_sum(y)
    grads = tape.gradient(loss, [x] + weights)
    assert np.all(np.isfinite(y.numpy()))
    assert len(grads) == 1 + 3  # input, conv kernel, conv bias, W
    for grad in grads:
        assert grad is not None
        assert np.all(np.isfinite(ops.convert_to_numpy(grad)))


# ---------------------------------------------------------------- CapsuleLength


def test_capsule_length():
    caps = np.zeros((2, 3, 2), dtype="float32")
    caps[0, 2] = [3.0, 4.0]
    layer = CapsuleLength()
    out = ops.convert_to_numpy(layer(caps))
    assert out.shape == layer.compute_output_shape(caps.shape) == (2, 3)
    assert out[0, 2] == pytest.approx(5.0)
    assert out[1, 1] == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(ValueError, match=r"input_shape=\(2, 3\)"):
        layer.compute_output_shape((2, 3))


# ---------------------------------------------------------------- CapsuleMask


def _mask_capsules():
    # Sample 0: lengths [1, 3, 2]; sample 1: lengths [2, 1, 0.5].
    return np.array(
        [[[1.0, 0.0], [0.0, 3.0], [2.0, 0.0]], [[0.0, 2.0], [1.0, 0.0], [0.3, 0.4]]],
        dtype="float32",
    )


def _keep(caps, indices):
    out = np.zeros_like(caps)
    for b, n in enumerate(indices):
        out[b, n] = caps[b, n]
    return out.reshape(len(caps), -1)


def test_capsule_mask_by_label_and_by_length():
    caps = _mask_capsules()
    layer = CapsuleMask()
    labels = np.array([0, 2])  # not the longest capsules (1 and 0)
    by_label = ops.convert_to_numpy(layer(caps, mask_labels=labels))
    by_length = ops.convert_to_numpy(layer(caps))
    np.testing.assert_array_equal(by_label, _keep(caps, [0, 2]))
    np.testing.assert_array_equal(by_length, _keep(caps, [1, 0]))
    assert by_label.shape == layer.compute_output_shape(caps.shape) == (2, 6)


@pytest.mark.parametrize(
    "labels",
    [np.array([[0], [2]]), np.eye(3, dtype="float32")[[0, 2]], np.array([0.0, 2.0], "float32")],
)
def test_capsule_mask_label_formats(labels):
    caps = _mask_capsules()
    out = ops.convert_to_numpy(CapsuleMask()(caps, mask_labels=labels))
    np.testing.assert_array_equal(out, _keep(caps, [0, 2]))


def test_capsule_mask_bad_labels():
    with pytest.raises(ValueError, match=r"mask_labels.shape=\(2, 5\)"):
        CapsuleMask()(_mask_capsules(), mask_labels=np.zeros((2, 5)))


# ---------------------------------------------------------------- Serialization


@pytest.mark.parametrize(
    "layer",
    [
        PrimaryCapsules(capsule_types=2, capsule_dim=4, kernel_size=(3, 2), strides=2, padding="same"),
        CapsuleDense(3, 5, routing_iterations=2, kernel_initializer="random_normal"),
        CapsuleDense(3, 5, routing_jit_compile=False),
        CapsuleLength(epsilon=1e-6),
        CapsuleMask(),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_config_round_trip(layer):
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(restored) is type(layer)
    assert restored.get_config() == layer.get_config()


def test_capsule_dense_config_from_before_routing_jit_compile_loads_as_auto():
    """`.keras` files written before the argument existed load with its default."""
    config = CapsuleDense(3, 5).get_config()
    assert config.pop("routing_jit_compile") == "auto"
    assert CapsuleDense.from_config(config).routing_jit_compile == "auto"


@pytest.mark.parametrize("value", ["xla", None, 1, "true"])
def test_capsule_dense_rejects_other_routing_jit_compile(value):
    with pytest.raises(ValueError, match=rf"Received: routing_jit_compile={value!r}; expected"):
        CapsuleDense(3, 5, routing_jit_compile=value)


def test_compiled_inference_on_one_image_and_on_batches_of_unknown_size():
    """A batch of one routes whole; a traced unknown batch size picks at run time."""
    layer = CapsuleDense(NUM_CLASSES, 5, routing_iterations=3, routing_jit_compile=True)
    x = 0.5 * _random_capsules((3, 6, 4))
    layer.build(x.shape)
    kernel = ops.convert_to_numpy(layer.kernel).astype("float64")
    dynamic = tf.function(lambda capsules: layer(capsules, return_couplings=True),
                          input_signature=[tf.TensorSpec((None, 6, 4), tf.float32)])
    for batch in (x[:1], x):
        expected_v, expected_c = _np_routing(batch.astype("float64"), kernel, 3)
        for out, couplings in (layer(batch, return_couplings=True), dynamic(batch)):
            np.testing.assert_allclose(ops.convert_to_numpy(out), expected_v, rtol=1e-4,
                                       atol=1e-6)
            np.testing.assert_allclose(ops.convert_to_numpy(couplings), expected_c,
                                       rtol=1e-4, atol=1e-6)


def test_keras_save_load_round_trip(tmp_path):
    model = _build_model(routing_iterations=3, with_labels=True)
    images = np.random.default_rng(0).uniform(size=(2,) + IMAGE_SHAPE).astype("float32")
    labels = np.array([1, 2], dtype="int32")
    expected = model.predict([images, labels], verbose=0)
    path = tmp_path / "capsnet.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    assert restored.layers[2].get_config() == model.layers[2].get_config()
    actual = restored.predict([images, labels], verbose=0)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-7)


def test_saved_model_export(tmp_path):
    model = _build_model(routing_iterations=3, with_labels=False)
    images = np.random.default_rng(1).uniform(size=(2,) + IMAGE_SHAPE).astype("float32")
    expected = model(images)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serve",
        fn=model.call,
        input_signature=[tf.TensorSpec(shape=(None,) + IMAGE_SHAPE, dtype=tf.float32)],
    )
    path = str(tmp_path / "saved_model")
    archive.write_out(path, verbose=False)
    reloaded = tf.saved_model.load(path)
    actual = reloaded.serve(tf.constant(images))
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a.numpy(), ops.convert_to_numpy(e), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- Training, XLA, precision


def test_jit_compiled_train_step_updates_weights():
    keras.utils.set_random_seed(0)
    model = _build_model(routing_iterations=3, with_labels=True)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=[MarginLoss(), ReconstructionLoss()],
        jit_compile=True,
    )
    images = np.random.default_rng(2).uniform(size=(4,) + IMAGE_SHAPE).astype("float32")
    labels = np.array([0, 1, 2, 1], dtype="int32")
    before = [w.copy() for w in model.get_weights()]
    logs = model.train_on_batch([images, labels], [labels, images], return_dict=True)
    assert np.isfinite(logs["loss"])
    after = model.get_weights()
    routing_kernel = model.layers[2].kernel
    index = [id(w) for w in model.weights].index(id(routing_kernel))
    assert not np.allclose(before[index], after[index])


def test_mixed_precision(mixed_precision):
    x = np.random.default_rng(3).uniform(size=(2,) + IMAGE_SHAPE).astype("float32")
    primary = PrimaryCapsules(capsule_types=2, capsule_dim=4, kernel_size=3, strides=2)
    dense = CapsuleDense(NUM_CLASSES, 4, routing_iterations=3)
    caps = primary(x)
    out, couplings = dense(caps, return_couplings=True)
    lengths = CapsuleLength()(out)
    masked = CapsuleMask()(out)
    assert caps.dtype == out.dtype == lengths.dtype == masked.dtype == tf.float16
    assert couplings.dtype == tf.float32  # routing in float32
    assert dense.kernel.dtype == "float32"
    for t in (caps, out, couplings, lengths):
        assert np.all(np.isfinite(ops.convert_to_numpy(t)))

    # Same weights in float32 give the same result up to float16 precision.
    reference = CapsuleDense(NUM_CLASSES, 4, routing_iterations=3, dtype="float32")
    reference.build(caps.shape)
    reference.set_weights(dense.get_weights())
    expected = reference(ops.cast(caps, "float32"))
    np.testing.assert_allclose(
        ops.convert_to_numpy(out).astype("float32"), ops.convert_to_numpy(expected), atol=2e-3
    )


def test_layers_registered():
    for cls in (PrimaryCapsules, CapsuleDense, CapsuleLength, CapsuleMask):
        assert keras.saving.get_registered_object(f"capskeras>{cls.__name__}") is cls
