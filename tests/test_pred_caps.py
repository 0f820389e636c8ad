"""Tests for PredCapsLayer: selection, competition, feedback, boosting, decoder."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from capskeras.layers import PredCapsLayer
from capskeras.testing import assert_keras_round_trip
from capskeras.testing import assert_saved_model_round_trip

C, D = 5, 3


def _x(shape=(3, 9, 9, 2), seed=0):
    return np.random.default_rng(seed).uniform(size=shape).astype("float32")


def _np(tensor):
    return ops.convert_to_numpy(tensor)


def _capsule_norms(outputs, dim=D):
    outputs = _np(outputs).astype("float32")
    return np.linalg.norm(outputs.reshape(outputs.shape[:3] + (-1, dim)), axis=-1)


def _layer(**kwargs):
    args = dict(capsules=C, capsule_dim=D, kernel_size=3, strides=2, k=2)
    args.update(kwargs)
    return PredCapsLayer(**args)


def _reference(layer, x, feedback=None, k=None):
    """The layer's selection and scaling, written directly in NumPy."""
    if not layer.built:
        layer.build(x.shape)
    z = _np(layer.drive(x)).astype("float64")
    groups = z.reshape(z.shape[:3] + (layer.groups, layer.group_dim))
    norms = np.sqrt((groups**2).sum(-1) + 1e-12)
    scores = norms
    if feedback is not None:
        p = feedback.reshape(groups.shape).astype("float64")
        largest = np.sqrt((p**2).sum(-1) + 1e-12).max(-1, keepdims=True)
        scores = norms + layer.feedback_weight * (groups * p).sum(-1) / largest
    target = layer.k / layer.groups
    log_boost = layer.boost_strength * (target - _np(layer.win_frequency)) / target
    if layer.lifetime == "standardize":  # training: the batch's statistics
        scores = (scores - scores.mean((0, 1, 2))) / np.sqrt(scores.var((0, 1, 2)) + 1e-12)
        scores = scores + log_boost
    else:
        scores = scores * np.exp(log_boost)
    k = k or layer.k
    order = np.argsort(-scores, axis=-1, kind="stable")[..., :k]
    mask = np.zeros(scores.shape)
    np.put_along_axis(mask, order, 1.0, axis=-1)
    outputs = groups * (mask / (mask * norms).sum(-1, keepdims=True))[..., None]
    return outputs.reshape(z.shape), mask


@pytest.mark.parametrize("lifetime", ["boost", "standardize"])
def test_exactly_k_capsules_win_and_their_norms_sum_to_one(lifetime):
    layer = _layer(k=2, inference_k=3, lifetime=lifetime)
    x = _x()
    for training, k in ((True, 2), (False, 3)):
        norms = _capsule_norms(layer(x, training=training))
        assert norms.shape == (3, 5, 5, C)
        np.testing.assert_array_equal((norms > 0).sum(-1), k)
        np.testing.assert_allclose(norms.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("lifetime", ["boost", "standardize"])
def test_matches_numpy_reference_with_and_without_feedback(lifetime):
    layer = _layer(k=2, boost_strength=0.0, lifetime=lifetime)
    x = _x()
    feedback = np.random.default_rng(1).normal(size=(3, 5, 5, C * D)).astype("float32")
    expected, mask_plain = _reference(layer, x)
    np.testing.assert_allclose(_np(layer(x, training=True)), expected, rtol=1e-5, atol=1e-6)
    expected, mask_feedback = _reference(layer, x, feedback)
    actual = _np(layer(x, feedback=feedback, training=True))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
    # The feedback changed which capsules won somewhere, and only the selection.
    assert (mask_plain != mask_feedback).any()


def test_feedback_confirming_a_loser_makes_it_win():
    layer = _layer(k=1, boost_strength=0.0)
    x = _x()
    layer.build(x.shape)
    z = _np(layer.drive(x)).reshape(3, 5, 5, C, D)
    norms = np.linalg.norm(z, axis=-1)
    runner_up = np.argsort(-norms, axis=-1)[..., 1]
    # Predict exactly the runner-up's drive, scaled up: its score doubles.
    feedback = np.zeros_like(z)
    np.put_along_axis(
        feedback, runner_up[..., None, None],
        10 * np.take_along_axis(z, runner_up[..., None, None], axis=-2), axis=-2,
    )
    first, second = -np.sort(-norms, axis=-1)[..., :2].transpose(3, 0, 1, 2)
    should_switch = 2 * second > first
    assert should_switch.any()
    winners = _capsule_norms(layer(x, feedback=feedback.reshape(3, 5, 5, -1))).argmax(-1)
    np.testing.assert_array_equal(winners[should_switch], runner_up[should_switch])


def test_boosting_lets_a_starved_capsule_win_and_frequencies_track_wins():
    layer = _layer(k=1, frequency_decay=0.5)
    x = _x()
    plain = _capsule_norms(layer(x)).argmax(-1)
    rarest = np.bincount(plain.ravel(), minlength=C).argmin()
    frequency = np.full(C, 0.25, "float32")
    frequency[rarest] = 0.0  # never won: boost e^3 against e^0.75 for the rest
    layer.win_frequency.assign(frequency)
    boosted = _capsule_norms(layer(x)).argmax(-1)
    assert (boosted == rarest).mean() > (plain == rarest).mean()
    # Inference leaves the statistics alone; training moves them halfway.
    np.testing.assert_array_equal(_np(layer.win_frequency), frequency)
    wins = _capsule_norms(layer(x, training=True)) > 0
    np.testing.assert_allclose(
        _np(layer.win_frequency), 0.5 * frequency + 0.5 * wins.mean((0, 1, 2)), rtol=1e-6
    )
    layer(x, training=True, update_frequency=False)
    np.testing.assert_allclose(
        _np(layer.win_frequency), 0.5 * frequency + 0.5 * wins.mean((0, 1, 2)), rtol=1e-6
    )


def test_standardized_ranks_let_every_capsule_win_where_the_input_drives_it_most():
    # A capsule whose drive is the largest on every input (its kernel matches
    # what all inputs share; here a large bias) wins every position when
    # ranked by its drive, even at unit kernel norm and with fair boosts:
    # what a trained PredCaps top layer did at inference.
    x = _x((8, 9, 9, 2))
    selections = {}
    for lifetime in ("boost", "standardize"):
        layer = _layer(k=1, boost_strength=0.0, lifetime=lifetime)
        layer.build(x.shape)
        bias = layer.bias.numpy()
        bias[:D] = 5.0
        layer.bias.assign(bias)
        before = _capsule_norms(layer(x)) > 0  # inference, before any training step
        trained = _capsule_norms(layer(x, training=True)) > 0
        selections[lifetime] = before, trained, _capsule_norms(layer(x)) > 0
    # Before any training step the statistics are the identity (mean 0, variance 1).
    np.testing.assert_array_equal(selections["standardize"][0], selections["boost"][0])
    for mask in selections["boost"]:
        assert mask[..., 0].all()
    _, trained, inference = selections["standardize"]
    # Ranked against its own distribution over the inputs, the capsule wins
    # about its share, and every capsule wins somewhere in the batch.
    assert trained[..., 0].mean() < 2 / C, trained[..., 0].mean()
    assert trained.any(axis=(0, 1, 2)).all()
    # After one step the debiased moving statistics are that batch's, so
    # inference on the same inputs selects the same capsules.
    np.testing.assert_array_equal(inference, trained)


def test_standardized_moving_statistics_are_debiased_averages_of_the_last_passes():
    layer = _layer(k=2, lifetime="standardize", statistics_decay=0.5)
    batches = [_x(seed=seed) for seed in (3, 4)]
    stats = []
    for x in batches:
        layer(x, training=True, update_frequency=False)  # an earlier pass: not counted
        layer(x, training=True)
        z = _np(layer.drive(x)).reshape(3, 5, 5, C, D)
        scores = np.sqrt((z.astype("float64") ** 2).sum(-1) + 1e-12)
        stats.append((scores.mean((0, 1, 2)), scores.var((0, 1, 2))))
    weight = _np(layer.score_weight)
    np.testing.assert_allclose(weight, 0.75, rtol=1e-6)
    for moving, (first, second) in zip(
        (layer.score_mean, layer.score_variance), zip(*stats)
    ):
        np.testing.assert_allclose(
            _np(moving) / weight, (0.25 * first + 0.5 * second) / 0.75, rtol=1e-4
        )


@pytest.mark.parametrize("selection,k", [("capsule", 2), ("unit", 4)])
def test_selection_compares_inputs_not_the_size_of_a_capsules_weights(selection, k):
    # Local learning grows the kernels of the capsules that win (a unit-total
    # output is blind to their scale, and Adam's steps across a kernel only
    # lengthen it); ranked by raw drive norms, the grown capsules then won
    # every position at inference, whatever the input.
    x = _x()
    layers = {}
    for normalize in (True, False):
        layer = _layer(k=k, selection=selection, boost_strength=0.0, normalize_kernel=normalize)
        layer.build(x.shape)
        plain = _np(layer(x)) != 0
        kernel = layer.kernel.numpy()
        kernel[..., :D] *= 10.0  # the first capsule's (or first units') kernel, ten times longer
        layer.kernel.assign(kernel)
        layers[normalize] = (plain, _np(layer(x)) != 0)
    plain, grown = layers[True]
    np.testing.assert_array_equal(grown, plain)
    # Without the kernel normalization the grown capsule (units) takes over the
    # selection: the check is not vacuous.
    plain, grown = layers[False]
    assert grown[..., :D].mean() > max(plain[..., :D].mean(), 0.8)


def test_normalized_kernel_drive_is_the_convolution_with_unit_capsule_kernels():
    layer = _layer(k=2)
    x = _x()
    layer.build(x.shape)
    kernel = layer.kernel.numpy().reshape(-1, C, D)
    unit = (kernel / np.linalg.norm(kernel, axis=(0, 2), keepdims=True)).reshape(
        layer.kernel.shape)
    expected = _np(ops.conv(x, unit, strides=2, padding="same")) + layer.bias.numpy()
    np.testing.assert_allclose(_np(layer.drive(x)), expected, rtol=1e-5, atol=1e-6)


def test_unit_selection_keeps_k_units_with_unit_total():
    layer = _layer(selection="unit", k=4)
    out = _np(layer(_x(), training=True))
    assert layer.win_frequency.shape == (C * D,)
    np.testing.assert_array_equal((out != 0).sum(-1), 4)
    np.testing.assert_allclose(np.abs(out).sum(-1), 1.0, rtol=1e-5)
    # Units of one capsule are not selected together.
    active = (np.abs(out.reshape(-1, C, D)) > 0).sum(-1)
    assert (active % D != 0).any()


def test_layer_norm_standardizes_the_drive_before_masking():
    layer = _layer(normalization="layer_norm", k=2)
    x = _x()
    out = _np(layer(x, training=True))
    z = _np(layer.drive(x)).astype("float64")
    standardized = (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + 1e-3)
    norms = _capsule_norms(out)
    np.testing.assert_array_equal((norms > 0).sum(-1), 2)
    mask = np.repeat(norms > 0, D, axis=-1)
    np.testing.assert_allclose(out, standardized * mask, rtol=1e-4, atol=1e-5)
    assert not np.allclose(norms.sum(-1), 1.0)


@pytest.mark.parametrize(
    "size, kernel, stride, padding",
    [(28, 6, 3, "same"), (10, 5, 2, "same"), (5, 5, 5, "same"), (9, 3, 2, "valid"),
     (10, 3, 2, "valid"), (7, 2, 3, "same")],
)
def test_decoder_is_the_adjoint_geometry_of_the_convolution(size, kernel, stride, padding):
    # The raw kernel, so that the decoder can be given the drive's own kernel.
    layer = PredCapsLayer(2, 2, kernel, stride, k=1, padding=padding, normalize_kernel=False)
    x = _x((2, size, size, 3))
    layer.build(x.shape)
    layer.decoder_kernel.assign(layer.kernel)
    y = np.random.default_rng(2).normal(size=layer.compute_output_shape(x.shape)).astype("float32")
    drive = _np(layer.drive(x)) - _np(layer.bias)
    decoded = _np(layer.decode(y)) - _np(layer.decoder_bias)
    assert decoded.shape == x.shape
    # <conv(x), y> == <x, conv^T(y)> exactly when the crop is right.
    np.testing.assert_allclose((drive * y).sum(), (x * decoded).sum(), rtol=1e-4)


def test_local_loss_holds_its_target_constant():
    layer = _layer()
    x = tf.constant(_x())
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        outputs = layer(tf.stop_gradient(x), training=True)
        loss = layer.reconstruction_loss(x, outputs)
    # The target x gets no gradient; the layer's four weights all do.
    assert tape.gradient(loss, x) is None
    for weight in (layer.kernel, layer.bias, layer.decoder_kernel, layer.decoder_bias):
        assert np.abs(tape.gradient(loss, weight).numpy()).max() > 0, weight.path


def test_output_shape_and_symbolic_call_with_feedback():
    layer = _layer()
    x = _x((2, 9, 7, 2))
    assert tuple(layer(x).shape) == layer.compute_output_shape(x.shape) == (2, 5, 4, C * D)
    out = layer(keras.Input((9, 7, 2)), feedback=keras.Input((5, 4, C * D)))
    assert out.shape == (None, 5, 4, C * D)
    assert layer.compute_output_shape((None, 9, 7, 2)) == (None, 5, 4, C * D)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"capsules": 0}, "capsules=0"),
        ({"capsule_dim": 1.5}, "capsule_dim=1.5"),
        ({"k": 0}, "k=0"),
        ({"k": 6}, "k=6"),
        ({"inference_k": 7}, "inference_k=7"),
        ({"kernel_size": 0}, "kernel_size="),
        ({"padding": "causal"}, "padding='causal'"),
        ({"feedback_weight": 1.5}, "feedback_weight=1.5"),
        ({"normalization": "batch"}, "normalization='batch'"),
        ({"selection": "group"}, "selection='group'"),
        ({"boost_strength": -1.0}, "boost_strength=-1.0"),
        ({"frequency_decay": 1.0}, "frequency_decay=1.0"),
        ({"lifetime": "batch"}, "lifetime='batch'"),
        ({"statistics_decay": 1.0}, "statistics_decay=1.0"),
    ],
)
def test_bad_arguments_raise_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        _layer(**kwargs)


def test_undefined_spatial_dimensions_raise():
    with pytest.raises(ValueError, match="H, W and channels known"):
        _layer().build((None, None, 8, 1))


def _model(lifetime="boost"):
    return keras.Sequential(
        [keras.Input((9, 9, 2)),
         _layer(k=2, inference_k=3, lifetime=lifetime, name="pred_caps"),
         keras.layers.Flatten()]
    )


def test_config_and_keras_round_trip():
    layer = _layer(normalization="layer_norm", selection="unit", k=4, name="pc")
    clone = PredCapsLayer.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert keras.saving.get_registered_name(PredCapsLayer) == "capskeras>PredCapsLayer"
    model = _model()
    model.get_layer("pred_caps").win_frequency.assign(np.linspace(0, 1, C).astype("float32"))
    reloaded = assert_keras_round_trip(model, _x())
    np.testing.assert_array_equal(
        _np(reloaded.get_layer("pred_caps").win_frequency), np.linspace(0, 1, C)
    )
    # The standardized ranks' statistics are saved with the model.
    model = _model(lifetime="standardize")
    model(_x(), training=True)
    layer = model.get_layer("pred_caps")
    assert layer.get_config()["lifetime"] == "standardize"
    reloaded = assert_keras_round_trip(model, _x(seed=5)).get_layer("pred_caps")
    for name in ("score_mean", "score_variance", "score_weight"):
        np.testing.assert_array_equal(_np(getattr(reloaded, name)), _np(getattr(layer, name)))


@pytest.mark.parametrize("lifetime", ["boost", "standardize"])
def test_saved_model_round_trip(lifetime):
    model = _model(lifetime)
    model(_x(), training=True)
    assert_saved_model_round_trip(model, _x(seed=5))


@pytest.mark.parametrize(
    "kwargs",
    [{"lifetime": "boost"}, {"lifetime": "standardize"}, {"normalization": "layer_norm"},
     {"selection": "unit", "k": 4}],
)
def test_selection_under_xla_matches_the_plain_kernels(kwargs):
    x, feedback = _x(), _x((3, 5, 5, C * D), seed=3) - 0.5
    plain, compiled = (_layer(selection_jit_compile=jit, **kwargs) for jit in (False, True))
    plain.build(x.shape)
    compiled.build(x.shape)
    compiled.set_weights(plain.get_weights())
    for training in (True, False):  # training moves the lifetime statistics first
        ours, theirs = (tf.function(lambda v, p, layer=layer: layer(
            v, feedback=p, training=training))(x, feedback) for layer in (compiled, plain))
        np.testing.assert_allclose(_np(ours), _np(theirs), rtol=1e-5, atol=1e-6)
        for ours, theirs in zip(compiled.weights, plain.weights, strict=True):
            np.testing.assert_allclose(_np(ours), _np(theirs), rtol=1e-6)
    with pytest.raises(ValueError, match="selection_jit_compile='yes'"):
        _layer(selection_jit_compile="yes")


@pytest.mark.parametrize("lifetime", ["boost", "standardize"])
def test_trains_under_jit_compile(lifetime):
    model = _model(lifetime)
    model.add(keras.layers.Dense(2))
    model.compile("adam", "mse", jit_compile=True)
    before = _np(model.get_layer("pred_caps").win_frequency).copy()
    kernel = _np(model.get_layer("pred_caps").kernel).copy()
    model.fit(_x(), np.ones((3, 2), "float32"), epochs=2, verbose=0)
    assert not np.array_equal(_np(model.get_layer("pred_caps").kernel), kernel)
    assert not np.array_equal(_np(model.get_layer("pred_caps").win_frequency), before)
    if lifetime == "standardize":
        assert _np(model.get_layer("pred_caps").score_weight) > 0


@pytest.mark.parametrize("lifetime", ["boost", "standardize"])
def test_mixed_precision_outputs_float16(lifetime):
    try:
        keras.config.set_dtype_policy("mixed_float16")
        layer = _layer(lifetime=lifetime)
        out = layer(_x(), feedback=np.ones((3, 5, 5, C * D), "float16"), training=True)
        assert keras.backend.standardize_dtype(out.dtype) == "float16"
        assert keras.backend.standardize_dtype(layer.win_frequency.dtype) == "float32"
        norms = _capsule_norms(out)
        np.testing.assert_array_equal((norms > 0).sum(-1), 2)
        np.testing.assert_allclose(norms.sum(-1), 1.0, rtol=2e-3)
        assert layer.decode(out).shape == (3, 9, 9, 2)
    finally:
        keras.config.set_dtype_policy("float32")
