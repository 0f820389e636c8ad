"""Matrix capsules with EM routing: layers, routing, spread loss and EmCapsNet."""

import itertools

import hypothesis
import hypothesis.strategies as st
import keras
import numpy as np
import pytest
import tensorflow as tf

from capskeras import losses
from capskeras.export import export_saved_model
from capskeras.layers import ClassMatrixCapsules
from capskeras.layers import ConvMatrixCapsules
from capskeras.layers import PrimaryMatrixCapsules
from capskeras.layers import em_routing
from capskeras.models.em_capsnet import EmCapsNet
from capskeras.testing.round_trips import assert_keras_round_trip
from capskeras.testing.round_trips import saved_model_xla_functions

TINY = {"conv_channels": 4, "primary_types": 2, "conv1_types": 3, "conv2_types": 2}


def tiny_stack(image_shape=(11, 11, 3), iterations=2, jit="auto"):
    """Conv -> primary -> conv capsules 3x3/2 -> 2x2/1 -> 4 class capsules."""
    images = keras.Input(image_shape)
    features = keras.layers.Conv2D(4, 3, activation="relu")(images)
    capsules = PrimaryMatrixCapsules(3)(features)
    capsules = ConvMatrixCapsules(3, 3, strides=2, routing_iterations=iterations,
                                  routing_jit_compile=jit)(capsules)
    capsules = ConvMatrixCapsules(2, 2, routing_iterations=iterations,
                                  routing_jit_compile=jit)(capsules)
    outputs = ClassMatrixCapsules(4, routing_iterations=iterations,
                                  routing_jit_compile=jit)(capsules)
    return keras.Model(images, list(outputs))  # A list survives reloading as one.


def random_capsules(rng, shape, scale=1.0):
    poses = (scale * rng.standard_normal(shape + (4, 4))).astype("float32")
    activations = rng.uniform(size=shape).astype("float32")
    return poses, activations


def test_layer_output_shapes_match_compute_output_shape():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((2, 9, 7, 5)).astype("float32")
    primary = PrimaryMatrixCapsules(3)
    poses, activations = primary(features)
    assert poses.shape == (2, 9, 7, 3, 4, 4) and activations.shape == (2, 9, 7, 3)
    assert primary.compute_output_shape(features.shape) == ((2, 9, 7, 3, 4, 4), (2, 9, 7, 3))
    assert np.all((activations > 0) & (activations < 1))

    conv = ConvMatrixCapsules(4, 3, strides=2)
    out_poses, out_activations = conv((poses, activations))
    assert out_poses.shape == (2, 4, 3, 4, 4, 4) and out_activations.shape == (2, 4, 3, 4)
    assert conv.compute_output_shape((poses.shape, activations.shape)) == (
        (2, 4, 3, 4, 4, 4), (2, 4, 3, 4))
    assert conv.kernel.shape == (3 * 3 * 3, 4, 4, 4)

    classes = ClassMatrixCapsules(5)
    class_poses, scores = classes((out_poses, out_activations))
    assert class_poses.shape == (2, 5, 4, 4) and scores.shape == (2, 5)
    assert np.all((np.asarray(scores) > 0) & (np.asarray(scores) < 1))


@pytest.mark.parametrize("make, message", [
    (lambda: ConvMatrixCapsules(0, 3), "capsule_types=0"),
    (lambda: ConvMatrixCapsules(4, 3, routing_iterations=0), "routing_iterations=0"),
    (lambda: ConvMatrixCapsules(4, 3, variance_floor=0.0), "variance_floor=0.0"),
    (lambda: ClassMatrixCapsules(5, inverse_temperature=-1), "inverse_temperature=-1"),
    (lambda: ClassMatrixCapsules(5, routing_jit_compile="yes"), "routing_jit_compile='yes'"),
    (lambda: ClassMatrixCapsules(5, coordinate_addition=1), "coordinate_addition=1"),
    (lambda: PrimaryMatrixCapsules(0), "capsule_types=0"),
])
def test_bad_arguments_name_the_value(make, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        make()


def test_bad_inputs_are_refused_with_their_shapes():
    poses = keras.Input((4, 4, 2, 4, 4))
    activations = keras.Input((4, 4, 2))
    with pytest.raises(ValueError, match="kernel_size=5 for a 4x4 capsule grid"):
        ConvMatrixCapsules(3, 5)((poses, activations))
    with pytest.raises(ValueError, match="expects a tuple \\(poses, activations\\)"):
        ClassMatrixCapsules(3)(keras.Input((4, 4, 2, 16)))


def brute_force_parent_counts(height, width, kernel_size, strides):
    counts = np.zeros((height, width))
    rows = (height - kernel_size) // strides + 1
    cols = (width - kernel_size) // strides + 1
    for r, c in itertools.product(range(rows), range(cols)):
        counts[r * strides:r * strides + kernel_size, c * strides:c * strides + kernel_size] += 1
    return counts


@pytest.mark.parametrize("height, width, kernel_size, strides",
                         [(7, 6, 3, 2), (5, 5, 3, 1), (6, 6, 2, 2), (4, 5, 1, 1), (8, 8, 3, 3)])
def test_routing_weights_sum_to_one_over_every_parent_of_a_child(height, width, kernel_size,
                                                                 strides):
    rng = np.random.default_rng(1)
    batch, types, parent_types = 2, 3, 4
    rows = (height - kernel_size) // strides + 1
    cols = (width - kernel_size) // strides + 1
    slots = kernel_size * kernel_size
    logits = 5.0 * rng.standard_normal((batch, rows * cols, parent_types, slots * types))
    normalize = em_routing.window_softmax((height, width), kernel_size, strides)
    routing = np.asarray(normalize(tf.constant(logits, tf.float32)))
    # Sum each child's weights over parent types and every window holding it.
    per_window = routing.sum(axis=2).reshape(batch, rows, cols, slots, types)
    totals = np.zeros((batch, height, width, types))
    for (r, c), slot in itertools.product(itertools.product(range(rows), range(cols)),
                                          range(slots)):
        kh, kw = divmod(slot, kernel_size)
        totals[:, r * strides + kh, c * strides + kw] += per_window[:, r, c, slot]
    counts = brute_force_parent_counts(height, width, kernel_size, strides)
    covered = counts > 0
    np.testing.assert_allclose(totals[:, covered], 1.0, rtol=1e-5)
    # The start is uniform over each child's parents: 1 / (windows * types),
    # as normalising zeros gives.
    uniform = np.broadcast_to(
        em_routing.window_uniform_routing((height, width), kernel_size, strides, types,
                                          parent_types), logits.shape)
    np.testing.assert_allclose(uniform, np.asarray(normalize(tf.zeros(logits.shape))),
                               rtol=1e-6)
    uniform = uniform.reshape(batch, rows, cols, parent_types, slots, types)
    for (r, c), slot in itertools.product(itertools.product(range(rows), range(cols)),
                                          range(slots)):
        kh, kw = divmod(slot, kernel_size)
        expected = 1.0 / (counts[r * strides + kh, c * strides + kw] * parent_types)
        np.testing.assert_allclose(uniform[:, r, c, :, slot], expected, rtol=1e-6)


def test_windows_are_the_grids_valid_windows():
    grid = np.arange(2 * 7 * 6).reshape(2, 7, 6).astype("float32")
    windows = np.asarray(em_routing.extract_windows(tf.constant(grid), 3, 2))
    assert windows.shape == (3 * 2 * 9, 2)
    windows = windows.reshape(3, 2, 3, 3, 2)
    np.testing.assert_array_equal(windows[1, 0, :, :, 1], grid[1, 2:5, 0:3])
    np.testing.assert_array_equal(windows[2, 1, :, :, 0], grid[0, 4:7, 2:5])
    counts = np.bincount(em_routing.window_cells((7, 6), 3, 2), minlength=42)
    np.testing.assert_array_equal(counts.reshape(7, 6), brute_force_parent_counts(7, 6, 3, 2))


def test_agreeing_votes_give_their_pose_and_a_high_activation():
    rng = np.random.default_rng(2)
    vote = rng.standard_normal(16).astype("float32")
    agreeing = np.broadcast_to(vote, (1, 1, 2, 6, 16)).copy()
    agreeing[0, 0, 1] = rng.standard_normal((6, 16))  # Parent type 1 gets scattered votes.
    poses, activations = em_routing.em_routing(
        tf.constant(agreeing), tf.ones((1, 1, 6)), tf.zeros(2), tf.zeros(2), 3,
        em_routing.softmax_over_types, 0.5, 6 / 2, inverse_temperature=0.01)
    # Every child ends up with the parent that explains it: its vote exactly.
    np.testing.assert_allclose(np.asarray(poses)[0, 0, 0], vote, rtol=1e-5, atol=1e-5)
    activations = np.asarray(activations)[0, 0]
    assert activations[0] > activations[1]


def test_coordinate_addition_moves_the_class_poses_translation_column_only():
    rng = np.random.default_rng(3)
    poses, activations = random_capsules(rng, (2, 3, 3, 2))
    with_offsets = ClassMatrixCapsules(4, routing_iterations=1)
    with_offsets((poses, activations))
    without = ClassMatrixCapsules(4, routing_iterations=1, coordinate_addition=False)
    without((poses, activations))
    without.set_weights(with_offsets.get_weights())
    difference = (np.asarray(with_offsets((poses, activations))[0])
                  - np.asarray(without((poses, activations))[0]))
    # One iteration: uniform routing, so the mean moves by the weighted mean
    # offset, inside (0, 1), at entries (0, 3) and (1, 3) only.
    assert np.all((difference[:, :, 0, 3] > 0) & (difference[:, :, 0, 3] < 1))
    assert np.all((difference[:, :, 1, 3] > 0) & (difference[:, :, 1, 3] < 1))
    difference[:, :, 0:2, 3] = 0.0
    np.testing.assert_allclose(difference, 0.0, atol=1e-5)


def test_compiled_and_plain_routing_agree():
    rng = np.random.default_rng(4)
    images = rng.uniform(size=(3, 11, 11, 3)).astype("float32")
    plain = tiny_stack(jit=False)
    compiled = tiny_stack(jit=True)
    compiled.set_weights(plain.get_weights())
    for expected, actual in zip(plain(images), compiled(images)):
        np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=1e-4,
                                   atol=1e-5)


def test_stack_round_trips_through_keras_saving():
    images = np.random.default_rng(5).uniform(size=(2, 11, 11, 3)).astype("float32")
    assert_keras_round_trip(tiny_stack(), images, atol=1e-5)


def finite_outputs_and_gradients(layer, inputs):
    with tf.GradientTape() as tape:
        poses, activations = layer(inputs)
        loss = tf.reduce_sum(tf.cast(poses, tf.float32)) + tf.reduce_sum(
            tf.cast(activations, tf.float32))
    gradients = tape.gradient(loss, layer.trainable_variables)
    values = [poses, activations] + gradients
    return all(bool(np.all(np.isfinite(np.asarray(tf.cast(v, tf.float32))))) for v in values)


INPUT_KINDS = ("random", "zeros", "huge", "tiny_activations")


def make_inputs(kind, shape, seed):
    rng = np.random.default_rng(seed)
    poses, activations = random_capsules(rng, shape)
    if kind == "zeros":
        poses, activations = np.zeros_like(poses), np.zeros_like(activations)
    elif kind == "huge":
        poses = poses * 1e4
    elif kind == "tiny_activations":
        activations = activations * 1e-30
    return tf.constant(poses), tf.constant(activations)


@hypothesis.settings(max_examples=12, deadline=None, derandomize=True)
@hypothesis.given(iterations=st.integers(1, 5), kind=st.sampled_from(INPUT_KINDS),
                  layer_kind=st.sampled_from(("conv", "single_child", "class")),
                  mixed=st.booleans(), seed=st.integers(0, 2**16))
def test_em_routing_never_produces_nan_or_inf(iterations, kind, layer_kind, mixed, seed):
    """Outputs and gradients stay finite for 1-5 iterations on degenerate inputs."""
    dtype = "mixed_float16" if mixed else "float32"
    if layer_kind == "conv":
        layer, shape = ConvMatrixCapsules(3, 3, strides=2, routing_iterations=iterations,
                                          dtype=dtype), (2, 5, 5, 2)
    elif layer_kind == "single_child":
        # A 1x1 kernel over one input type: every parent has exactly one child.
        layer, shape = ConvMatrixCapsules(2, 1, routing_iterations=iterations,
                                          dtype=dtype), (2, 3, 3, 1)
    else:
        layer, shape = ClassMatrixCapsules(3, routing_iterations=iterations,
                                           dtype=dtype), (2, 2, 2, 2)
    assert finite_outputs_and_gradients(layer, make_inputs(kind, shape, seed))


def test_spread_loss_known_values_and_margin_schedule():
    np.testing.assert_allclose(
        losses.spread_loss(np.array([0, 2]), np.array([[0.9, 0.5, 0.1], [0.2, 0.2, 0.3]]), 0.5),
        [0.1 ** 2, 2 * 0.4 ** 2], rtol=1e-6)
    one_hot = losses.spread_loss(np.eye(3)[[0, 2]], np.array([[0.9, 0.5, 0.1], [0.2, 0.2, 0.3]]),
                                 0.5)
    np.testing.assert_allclose(one_hot, [0.01, 0.32], rtol=1e-6)
    schedule = losses.SpreadMarginSchedule(steps=100)
    assert [round(float(schedule(step)), 4) for step in (0, 50, 100, 1000)] == [
        0.2, 0.55, 0.9, 0.9]
    with pytest.raises(ValueError, match="steps=0"):
        losses.SpreadMarginSchedule(steps=0)
    loss = losses.SpreadLoss(margin=0.3)
    assert losses.SpreadLoss.from_config(loss.get_config()).margin == 0.3


def tiny_model(margin_steps=10):
    # Plain kernels: XLA would compile each step's routing for longer than it runs here.
    model = EmCapsNet((20, 20, 1), 3, **TINY, routing_iterations=2, margin_steps=margin_steps,
                      routing_jit_compile=False)
    model.build((None, 20, 20, 1))
    return model


def test_em_capsnet_training_lowers_the_loss_and_moves_the_margin():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(6)
    images = rng.uniform(size=(48, 20, 20, 1)).astype("float32")
    labels = np.arange(48) % 3
    images[labels == 1, :10] += 1.0  # Three classes a network can tell apart.
    images[labels == 2, :, :10] += 1.0
    model = tiny_model(margin_steps=100)
    # At 0.01, float round-off alone (a reordered sum) decided whether seed 0 trained.
    model.compile(keras.optimizers.Adam(0.003), model.default_loss(),
                  metrics=model.default_metrics())
    data = model.make_example(images, labels)

    def loss_at_final_margin():
        model.margin.assign(0.9)
        return model.evaluate(*data, verbose=0, return_dict=True)["loss"]

    before = loss_at_final_margin()
    model.fit(*data, batch_size=8, epochs=9, verbose=0)
    # The last of the 54 steps set the margin from its step count, 53.
    assert float(model.margin.numpy()) == pytest.approx(0.2 + 0.7 * 53 / 100, abs=1e-6)
    after = loss_at_final_margin()
    assert after < 0.7 * before, (before, after)


def test_em_capsnet_exports_the_serving_contract(tmp_path):
    # Seeded: some random kernels put a routing decision on a knife edge, where
    # the graph's and eager's float rounding tip it apart.
    keras.utils.set_random_seed(0)
    model = tiny_model()
    images = np.random.default_rng(7).uniform(size=(3, 20, 20, 1)).astype("float32")
    path = export_saved_model(model, str(tmp_path / "export"), (20, 20, 1))
    assert saved_model_xla_functions(path) == []
    served = tf.saved_model.load(path).signatures["serving_default"](tf.constant(images))
    expected = model.serving_outputs(images)
    assert served["encoding"].shape == (3, 3 * 17)
    np.testing.assert_allclose(served["probabilities"].numpy().sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(served["class_ids"].numpy(),
                                  np.asarray(expected["class_ids"]))
    np.testing.assert_allclose(served["class_activations"].numpy(),
                               np.asarray(expected["class_activations"]), rtol=1e-4, atol=1e-6)


def routing_gradients(layer_kind, jit, recompute=False, chunk_size=None):
    """Outputs and gradients (inputs and weights) of a tiny layer under a recompute setting."""
    options = {"routing_iterations": 2, "routing_jit_compile": jit,
               "recompute_routing": recompute, "routing_chunk_size": chunk_size}
    if layer_kind == "conv":
        layer, shape = ConvMatrixCapsules(2, 2, **options), (3, 3, 3, 2)
    else:
        layer, shape = ClassMatrixCapsules(3, **options), (3, 2, 2, 2)
    poses, activations = (tf.constant(v) for v in random_capsules(np.random.default_rng(7),
                                                                  shape))
    layer.build((poses.shape, activations.shape))
    layer.set_weights([np.random.default_rng(8 + i).normal(size=w.shape).astype("float32")
                       for i, w in enumerate(layer.get_weights())])

    @tf.function(autograph=False)
    def step(poses, activations):
        with tf.GradientTape() as tape:
            tape.watch([poses, activations])
            out_poses, out_activations = layer((poses, activations))
            # Unequal weights per output entry, so every gradient path counts.
            loss = (tf.reduce_sum(tf.sin(out_poses)) + tf.reduce_sum(
                tf.range(1.0, 1.0 + tf.cast(tf.size(out_activations), tf.float32))
                * tf.reshape(out_activations, [-1])))
        gradients = tape.gradient(loss, [poses, activations] + layer.trainable_variables)
        return [out_poses, out_activations] + gradients

    return [np.asarray(value) for value in step(poses, activations)]


@pytest.mark.parametrize("layer_kind,jit,chunk_size",
                         [("conv", False, None), ("conv", True, 2), ("class", False, 1)])
def test_recomputed_routing_gives_the_same_outputs_and_gradients(layer_kind, jit, chunk_size):
    expected = routing_gradients(layer_kind, jit)
    actual = routing_gradients(layer_kind, jit, recompute=True, chunk_size=chunk_size)
    assert len(actual) == 7
    for got, want in zip(actual, expected):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_recompute_settings_serialize_and_are_checked():
    layer = ConvMatrixCapsules(2, 2, recompute_routing=True, routing_chunk_size=4)
    restored = ConvMatrixCapsules.from_config(layer.get_config())
    assert (restored.recompute_routing, restored.routing_chunk_size) == (True, 4)
    with pytest.raises(ValueError, match="recompute_routing='yes'"):
        ClassMatrixCapsules(3, recompute_routing="yes")
    with pytest.raises(ValueError, match="routing_chunk_size=0"):
        ConvMatrixCapsules(2, 2, routing_chunk_size=0)
