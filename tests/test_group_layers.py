"""Tests for the group layers: GroupConv2D, GroupPooling, GroupBatchNormalization."""

import keras
import numpy as np
import pytest

from capskeras.layers import GroupBatchNormalization
from capskeras.layers import GroupConv2D
from capskeras.layers import GroupPooling
from capskeras.layers import group_algebra
from capskeras.testing import assert_keras_round_trip
from capskeras.testing import assert_saved_model_round_trip

RNG = np.random.default_rng(0)


def _images(channels=2, size=9, batch=2):
    return RNG.normal(size=(batch, size, size, channels)).astype("float32")


def _group_model(group="p4", kernel_size=3, use_bias=True):
    """lift -> group BN -> ReLU -> group conv -> max-pool -> group pooling."""
    return keras.Sequential(
        [
            keras.Input((10, 10, 2)),
            GroupConv2D(3, kernel_size, group=group, lifting=True, use_bias=use_bias,
                        bias_initializer="random_normal"),
            GroupBatchNormalization(group),
            keras.layers.ReLU(),
            GroupConv2D(2, kernel_size, group=group, lifting=False, use_bias=use_bias,
                        bias_initializer="random_normal"),
            keras.layers.MaxPooling2D(2),
            GroupPooling(group, "max"),
        ]
    )


@pytest.mark.parametrize("group, order", [("p4", 4), ("p4m", 8)])
def test_shapes_and_weights(group, order):
    lifted = GroupConv2D(5, 3, group=group, lifting=True)
    y = lifted(_images(channels=2))
    assert y.shape == (2, 7, 7, 5 * order)
    assert lifted.kernel.shape == (3, 3, 2, 5)
    assert lifted.bias.shape == (5,)
    layer = GroupConv2D(4, (2, 2), group=group, lifting=False, strides=1, use_bias=False)
    z = layer(y)
    assert z.shape == (2, 6, 6, 4 * order)
    assert layer.compute_output_shape(y.shape) == z.shape
    assert layer.kernel.shape == (2, 2, 5, order, 4)
    assert layer.bias is None
    assert len(layer.trainable_weights) == 1


def test_expanded_kernel_copies_are_rotations_of_the_bank():
    layer = GroupConv2D(2, 3, group="p4", lifting=True)
    layer.build((None, 5, 5, 1))
    bank = keras.ops.convert_to_numpy(layer.kernel)
    kernel = keras.ops.convert_to_numpy(layer.expanded_kernel())
    assert kernel.shape == (3, 3, 1, 8)
    for c in range(2):
        for g in range(4):
            # Channel c * G + g is filter c turned g quarter turns.
            np.testing.assert_array_equal(kernel[..., c * 4 + g], np.rot90(bank[..., c], g))


def test_one_bias_per_channel_shared_by_its_copies():
    layer = GroupConv2D(3, 1, group="p4m", lifting=True, kernel_initializer="zeros",
                        bias_initializer="random_normal")
    y = keras.ops.convert_to_numpy(layer(np.zeros((1, 3, 3, 1), "float32")))
    bias = keras.ops.convert_to_numpy(layer.bias)
    np.testing.assert_array_equal(y[0, 0, 0], np.repeat(bias, 8))


@pytest.mark.parametrize("lifting", [True, False])
@pytest.mark.parametrize("group", ["p4", "p4m"])
def test_to_conv2d_gives_the_same_outputs(group, lifting):
    order = group_algebra.GROUP_ORDERS[group]
    x = _images(channels=2 if lifting else 2 * order)
    layer = GroupConv2D(3, 3, group=group, lifting=lifting, strides=2, padding="same",
                        activation="relu", bias_initializer="random_normal")
    expected = keras.ops.convert_to_numpy(layer(x))
    conv = layer.to_conv2d()
    assert type(conv) is keras.layers.Conv2D
    assert conv.filters == 3 * order and conv.strides == (2, 2)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(conv(x)), expected, atol=1e-6)


def test_group_pooling_modes():
    x = np.arange(16, dtype="float32").reshape(1, 1, 2, 8)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(GroupPooling("p4", "max")(x)), [[[[3, 7], [11, 15]]]]
    )
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(GroupPooling("p4m", "mean")(x)), [[[[3.5], [11.5]]]]
    )


def test_group_batch_norm_statistics_per_channel_over_batch_space_and_group():
    x = RNG.normal(size=(4, 5, 5, 3, 4)).astype("float32")
    x = x * np.array([1.0, 3.0, 0.5])[:, None] + np.array([2.0, -1.0, 0.0])[:, None]
    # Each copy of a channel gets its own offset: only pooled statistics remove it.
    x = (x + np.arange(4.0)).reshape(4, 5, 5, 12).astype("float32")
    layer = GroupBatchNormalization("p4", momentum=0.0, epsilon=1e-6)
    y = keras.ops.convert_to_numpy(layer(x, training=True)).reshape(4, 5, 5, 3, 4)
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2, 4)), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=(0, 1, 2, 4)), 1.0, atol=1e-4)
    assert abs(y[..., 0].mean() - y[..., 3].mean()) > 0.5  # copies not normalized apart
    grouped = x.reshape(4, 5, 5, 3, 4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_mean),
                               grouped.mean(axis=(0, 1, 2, 4)), rtol=1e-5)
    # Inference uses the moving statistics; the folded layer agrees.
    inferred = keras.ops.convert_to_numpy(layer(x, training=False))
    np.testing.assert_allclose(inferred, y.reshape(x.shape), atol=1e-4)
    folded = layer.to_batch_normalization()
    assert type(folded) is keras.layers.BatchNormalization
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(folded(x, training=False)), inferred, atol=1e-5
    )


@pytest.mark.parametrize("group", ["p4", "p4m"])
def test_keras_round_trip_and_saved_model(group):
    model = _group_model(group)
    x = _images(size=10)
    model(x, training=True)  # move the moving statistics off their initial values
    reloaded = assert_keras_round_trip(model, x)
    assert [type(layer).__name__ for layer in reloaded.layers][:2] == [
        "GroupConv2D", "GroupBatchNormalization"
    ]
    assert_saved_model_round_trip(model, x)


def test_configs_round_trip():
    for layer in (
        GroupConv2D(4, (3, 3), group="p4m", lifting=False, strides=2, padding="same",
                    activation="relu", use_bias=False, kernel_regularizer="l2"),
        GroupPooling("p4m", "mean"),
        GroupBatchNormalization("p4m", momentum=0.9, epsilon=1e-5, center=False),
    ):
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()


def test_mixed_float16():
    x = _images(size=10)
    reference = _group_model()
    expected = keras.ops.convert_to_numpy(reference(x, training=False))
    keras.config.set_dtype_policy("mixed_float16")
    model = _group_model()
    model.set_weights(reference.get_weights())
    y = model(x, training=True)
    assert y.dtype == "float16"
    for layer in model.layers:
        for weight in layer.weights:
            assert weight.dtype == "float32", weight.path
    actual = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(actual, expected, atol=5e-2, rtol=5e-2)
    assert model.layers[0].to_conv2d().compute_dtype == "float16"


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="group='p6'"):
        GroupConv2D(4, 3, group="p6")
    with pytest.raises(ValueError, match="filters=0"):
        GroupConv2D(0, 3)
    with pytest.raises(ValueError, match="lifting='yes'"):
        GroupConv2D(4, 3, lifting="yes")
    with pytest.raises(ValueError, match=r"kernel_size=\(3, 2\); expected a square"):
        GroupConv2D(4, (3, 2))
    with pytest.raises(ValueError, match="mode='sum'"):
        GroupPooling("p4", "sum")
    with pytest.raises(ValueError, match="divisible by 4"):
        GroupConv2D(4, 3, lifting=False)(np.zeros((1, 5, 5, 6), "float32"))
    with pytest.raises(ValueError, match="size 2 on spatial axis 0; expected at least kernel_size=3"):
        GroupConv2D(4, 3)(np.zeros((1, 2, 2, 1), "float32"))
    with pytest.raises(ValueError, match="divisible by 8"):
        GroupPooling("p4m")(np.zeros((1, 5, 5, 4), "float32"))


def test_frozen_group_batch_norm_runs_in_inference_mode():
    layer = GroupBatchNormalization("p4")
    x = _images(channels=8)
    layer.trainable = False
    y = layer(x, training=True)
    # The initial moving statistics (mean 0, variance 1) normalize, and stay.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(y), x / np.sqrt(1 + 1e-3), rtol=1e-5)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.moving_mean), 0.0)


def test_traces_under_jit_compile():
    import tensorflow as tf

    model = _group_model("p4m")
    x = _images(size=10)
    expected = keras.ops.convert_to_numpy(model(x, training=False))

    @tf.function(jit_compile=True)
    def infer(images):
        return model(images, training=False)

    np.testing.assert_allclose(infer(x).numpy(), expected, atol=1e-5)
