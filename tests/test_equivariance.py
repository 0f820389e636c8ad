"""Exact p4 / p4m equivariance of the group layers (capskeras.testing.equivariance)."""

import keras
import numpy as np
import pytest

from capskeras.layers import GroupBatchNormalization
from capskeras.layers import GroupConv2D
from capskeras.layers import GroupPooling
from capskeras.testing import assert_equivariant
from capskeras.testing import assert_group_equivariant
from capskeras.testing import equivariance

RNG = np.random.default_rng(1)
ORDERS = {"p4": 4, "p4m": 8}
ROTATIONS = (1, 2, 3)
REFLECTIONS = (4, 5, 6, 7)  # mirror, then 0..3 quarter turns


def _inputs(group, lifting, size=9, channels=2):
    width = channels if lifting else channels * ORDERS[group]
    return RNG.normal(size=(2, size, size, width)).astype("float32")


def _layer(group, lifting, kernel_size, use_bias, **kwargs):
    return GroupConv2D(3, kernel_size, group=group, lifting=lifting, use_bias=use_bias,
                       bias_initializer="random_normal", **kwargs)


def test_p4_rotation_rotates_planes_and_rolls_the_group_axis():
    """The definition, spelled out without the helper: rot90 and np.roll by one."""
    layer = _layer("p4", lifting=False, kernel_size=3, use_bias=True)
    x = _inputs("p4", lifting=False)
    y = keras.ops.convert_to_numpy(layer(x)).reshape(2, 7, 7, 3, 4)
    x_grouped = x.reshape(2, 9, 9, 2, 4)
    x_turned = np.roll(np.rot90(x_grouped, 1, axes=(1, 2)), 1, axis=-1).reshape(x.shape)
    y_turned = keras.ops.convert_to_numpy(layer(x_turned)).reshape(2, 7, 7, 3, 4)
    expected = np.roll(np.rot90(y, 1, axes=(1, 2)), 1, axis=-1)
    np.testing.assert_allclose(y_turned, expected, atol=1e-5)
    # The helper agrees with the spelled-out transform.
    np.testing.assert_array_equal(equivariance.rotate90(x), x_turned)


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("kernel_size", [3, 4])
@pytest.mark.parametrize("lifting", [True, False])
def test_p4_rotations(lifting, kernel_size, use_bias):
    layer = _layer("p4", lifting, kernel_size, use_bias)
    x = _inputs("p4", lifting)
    assert_group_equivariant(layer, x, "p4", "plane" if lifting else "group", "group",
                             elements=ROTATIONS)


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("kernel_size", [3, 4])
@pytest.mark.parametrize("lifting", [True, False])
def test_p4m_reflections_and_rotations(lifting, kernel_size, use_bias):
    layer = _layer("p4m", lifting, kernel_size, use_bias)
    x = _inputs("p4m", lifting, size=8)
    assert_group_equivariant(layer, x, "p4m", "plane" if lifting else "group", "group",
                             elements=REFLECTIONS + ROTATIONS)


@pytest.mark.parametrize(
    "size, kernel_size, strides, padding",
    [(9, 3, 1, "same"), (9, 3, 2, "valid"), (9, 3, 2, "same"), (10, 4, 2, "valid"),
     (11, 4, 3, "same")],
)
def test_symmetric_geometries_are_exact(size, kernel_size, strides, padding):
    layer = _layer("p4m", False, kernel_size, True, strides=strides, padding=padding)
    assert_group_equivariant(layer, _inputs("p4m", False, size=size), "p4m")


@pytest.mark.parametrize(
    "size, kernel_size, strides, padding",
    [(10, 3, 2, "valid"), (10, 3, 2, "same"), (9, 4, 2, "valid"), (12, 5, 2, "same")],
)
def test_asymmetric_geometries_are_refused(size, kernel_size, strides, padding):
    layer = _layer("p4", True, kernel_size, True, strides=strides, padding=padding)
    with pytest.raises(ValueError, match=f"size {size}; the sampling grid is not symmetric"):
        layer(_inputs("p4", True, size=size))


def test_same_padding_with_an_even_kernel_is_refused_at_construction():
    with pytest.raises(ValueError, match="padding='same' on spatial axis 0 of any size"):
        GroupConv2D(3, 4, padding="same")


def test_plain_convolution_fails_the_check():
    """The check is not vacuous: an ordinary convolution is not rotation-equivariant."""
    conv = keras.layers.Conv2D(3, 3)
    with pytest.raises(AssertionError):
        assert_group_equivariant(conv, _inputs("p4", True), "p4", "plane", "plane")


@pytest.mark.parametrize("group", ["p4", "p4m"])
def test_batch_norm_pooling_and_spatial_max_pooling(group):
    x = _inputs(group, lifting=False, size=8)
    norm = GroupBatchNormalization(group)
    norm(x, training=True)  # non-trivial moving statistics
    for training in (True, False):
        assert_group_equivariant(lambda t: norm(t, training=training), x, group)
    # MaxPooling2D keeps the layout; 2x2 at stride 2 is exact on even sizes.
    assert_group_equivariant(keras.layers.MaxPooling2D(2), x, group)
    for mode in ("max", "mean"):
        assert_group_equivariant(GroupPooling(group, mode), x, group, "group", "plane")


def test_a_group_network_is_invariant_after_pooling():
    """lift -> BN -> ReLU -> group conv -> pool -> group conv -> group + spatial max."""
    model = keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            GroupConv2D(4, 3, group="p4m", lifting=True, bias_initializer="random_normal"),
            GroupBatchNormalization("p4m"),
            keras.layers.ReLU(),
            GroupConv2D(4, 3, group="p4m", lifting=False),
            keras.layers.MaxPooling2D(2),
            GroupConv2D(5, 3, group="p4m", lifting=False),
            GroupPooling("p4m"),
            keras.layers.GlobalMaxPooling2D(),
        ]
    )
    x = RNG.uniform(size=(3, 12, 12, 1)).astype("float32")
    deviations = assert_group_equivariant(model, x, "p4m", "plane", "invariant", atol=2e-5)
    assert max(deviations.values()) < 2e-5
    assert_equivariant(model, x, lambda t: t, lambda t: t)  # identity, deterministic
