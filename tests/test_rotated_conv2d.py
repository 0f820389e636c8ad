"""Tests for RotatedConv2D (K rotations by interpolated filters) and its equivariance measure."""

import keras
import numpy as np
import pytest

from capskeras.layers import GroupBatchNormalization
from capskeras.layers import GroupConv2D
from capskeras.layers import GroupPooling
from capskeras.layers import RotatedConv2D
from capskeras.layers.rotated_conv2d import rotation_matrix
from capskeras.testing import assert_keras_round_trip
from capskeras.testing import assert_saved_model_round_trip
from capskeras.testing import equivariance

RNG = np.random.default_rng(0)


def _disc_images(batch=3, size=25):
    """Smooth blobs, zero outside the disc inscribed in the image: what a turn keeps."""
    centre = (size - 1) / 2.0
    rows, cols = np.meshgrid(np.arange(size) - centre, np.arange(size) - centre, indexing="ij")
    images = np.zeros((batch, size, size, 1), "float32")
    for b in range(batch):
        for cy, cx, sigma in zip(*RNG.uniform((-7, -7, 1.5), (7, 7, 3.0), (6, 3)).T):
            images[b, :, :, 0] += np.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / (2 * sigma**2))
    return images * equivariance.inscribed_disc(size, size, margin=0.5)[..., None]


@pytest.mark.parametrize("size", [3, 4, 5, 7])
def test_quarter_turn_of_a_filter_is_rot90_inside_the_disc(size):
    disc = rotation_matrix(size, 0.0)
    assert np.array_equal(disc, np.diag(np.diag(disc)))  # no turn: the disc mask only
    bank = (disc @ RNG.normal(size=size * size)).reshape(size, size)
    turned = (rotation_matrix(size, 90.0) @ bank.reshape(-1)).reshape(size, size)
    np.testing.assert_allclose(turned, np.rot90(bank), atol=1e-12)
    # Bilinear weights: each pixel of the disc takes at most its source's whole value.
    assert rotation_matrix(size, 30.0).sum(axis=1).max() <= 1.0 + 1e-12


def test_four_rotations_of_3x3_filters_are_the_p4_convolution():
    x = RNG.normal(size=(2, 9, 9, 2)).astype("float32")
    rotated = RotatedConv2D(3, 3, rotations=4, bias_initializer="random_normal")
    exact = GroupConv2D(3, 3, group="p4", bias_initializer="random_normal")
    rotated.build(x.shape)
    exact.build(x.shape)
    exact.set_weights(rotated.get_weights())
    np.testing.assert_allclose(rotated(x), exact(x), atol=1e-5)
    lifted = rotated(x)
    rotated_group = RotatedConv2D(2, 3, rotations=4, lifting=False)
    exact_group = GroupConv2D(2, 3, group="p4", lifting=False)
    rotated_group.build(lifted.shape)
    exact_group.build(lifted.shape)
    exact_group.set_weights(rotated_group.get_weights())
    np.testing.assert_allclose(rotated_group(lifted), exact_group(lifted), atol=1e-5)


def test_four_rotations_are_exactly_equivariant_with_5x5_filters():
    model = keras.Sequential([RotatedConv2D(3, 5, rotations=4),
                              RotatedConv2D(2, 5, rotations=4, lifting=False)])
    x = RNG.normal(size=(2, 13, 13, 1)).astype("float32")
    equivariance.assert_group_equivariant(model, x, "p4", input_kind="plane", atol=1e-4)
    assert equivariance.rotation_equivariance_error(model, x, 4, margin=0) < 1e-6


@pytest.mark.parametrize("rotations", [8, 16])
def test_equivariance_error_is_measured_small_against_a_plain_convolution(rotations):
    x = _disc_images()
    init = keras.initializers.GlorotUniform(seed=1)
    model = keras.Sequential([
        RotatedConv2D(4, 5, rotations=rotations, kernel_initializer=init),
        keras.layers.ReLU(),
        RotatedConv2D(3, 5, rotations=rotations, lifting=False, kernel_initializer=init),
    ])
    plain = keras.Sequential([keras.layers.Conv2D(4 * rotations, 5, kernel_initializer=init),
                              keras.layers.ReLU(),
                              keras.layers.Conv2D(3 * rotations, 5, kernel_initializer=init)])
    for steps in (1, 3):
        error = equivariance.rotation_equivariance_error(model, x, rotations, steps, margin=8)
        baseline = equivariance.rotation_equivariance_error(plain, x, rotations, steps, margin=8)
        # Interpolating noise-like 5x5 filters costs tens of percent; an
        # ordinary convolution's outputs do not follow the turn at all.
        assert error < 0.45 and baseline > 1.0, (steps, error, baseline)
    # Copies a quarter turn apart are exact rot90s of each other.
    assert equivariance.rotation_equivariance_error(model, x, rotations, rotations // 4) < 1e-5
    pooled = keras.Sequential([model, GroupPooling(f"c{rotations}", "max"),
                               keras.layers.GlobalMaxPooling2D()])
    assert equivariance.rotation_equivariance_error(
        pooled, x, rotations, output_kind="invariant") < 0.2


def test_layout_shapes_and_group_layers_that_follow():
    x = RNG.normal(size=(2, 9, 9, 2)).astype("float32")
    layer = RotatedConv2D(3, 5, rotations=6)
    y = layer(x)
    assert y.shape == (2, 5, 5, 18)
    assert layer.kernel.shape == (5, 5, 2, 3) and layer.bias.shape == (3,)
    assert layer.compute_output_shape(x.shape) == y.shape
    group_layer = RotatedConv2D(2, 3, rotations=6, lifting=False)
    z = group_layer(y)
    assert z.shape == (2, 3, 3, 12) and group_layer.kernel.shape == (3, 3, 3, 6, 2)
    assert GroupBatchNormalization("c6")(z, training=True).shape == z.shape
    assert GroupPooling("c6", "mean")(z).shape == (2, 3, 3, 2)


def test_folds_into_a_plain_convolution():
    x = RNG.normal(size=(2, 9, 9, 16)).astype("float32")
    layer = RotatedConv2D(3, 5, rotations=8, lifting=False, activation="relu",
                          bias_initializer="random_normal")
    expected = layer(x)
    conv = layer.to_conv2d()
    assert isinstance(conv, keras.layers.Conv2D) and conv.filters == 24
    np.testing.assert_allclose(conv(x), expected, atol=1e-5)


def test_round_trips():
    model = keras.Sequential([keras.Input((11, 11, 1)), RotatedConv2D(2, 5, rotations=8),
                              GroupBatchNormalization("c8"),
                              RotatedConv2D(2, 3, rotations=8, lifting=False),
                              GroupPooling("c8")])
    x = RNG.normal(size=(2, 11, 11, 1)).astype("float32")
    assert_keras_round_trip(model, x)
    assert_saved_model_round_trip(model, x)
    config = model.layers[0].get_config()
    assert config["rotations"] == 8 and "group" not in config


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="rotations=0"):
        RotatedConv2D(2, 3, rotations=0)
    with pytest.raises(ValueError, match=r"group='c8'.*RotatedConv2D\(rotations=K\)"):
        GroupConv2D(2, 3, group="c8")
    with pytest.raises(ValueError, match="group='c0'"):
        GroupPooling("c0")
    with pytest.raises(ValueError, match="divisible by 8"):
        RotatedConv2D(2, 3, rotations=8, lifting=False)(np.zeros((1, 5, 5, 12), "float32"))


def test_mixed_float16_and_jit_compile():
    import tensorflow as tf

    x = RNG.normal(size=(2, 11, 11, 1)).astype("float32")

    def stack():
        return keras.Sequential([keras.Input((11, 11, 1)), RotatedConv2D(2, 5, rotations=8),
                                 RotatedConv2D(2, 3, rotations=8, lifting=False)])

    reference = stack()
    expected = keras.ops.convert_to_numpy(reference(x))
    compiled = tf.function(lambda images: reference(images), jit_compile=True)
    np.testing.assert_allclose(compiled(x).numpy(), expected, atol=1e-5)
    keras.config.set_dtype_policy("mixed_float16")
    model = stack()
    model.set_weights(reference.get_weights())
    y = model(x)
    assert y.dtype == "float16"
    assert all(weight.dtype == "float32" for weight in model.weights)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(y), expected, atol=5e-2, rtol=5e-2)
