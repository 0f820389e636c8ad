"""Tests for FastConv2D and capskeras.convolution: Conv2D's values from faster kernels."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from capskeras import convolution
from capskeras.layers import FastConv2D
from capskeras.layers import PrimaryCapsules
from capskeras.testing import assert_keras_round_trip
from capskeras.testing import assert_saved_model_round_trip

RNG = np.random.default_rng(0)


def _outputs_and_gradients(layer, x):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * tf.sin(y))  # a gradient that differs per output
    return [y] + tape.gradient(loss, [x] + layer.trainable_weights)


def _assert_same_as_conv2d(fast, reference, x):
    for layer in (fast, reference):
        layer.build(x.shape)
    fast.set_weights(reference.get_weights())
    for actual, expected in zip(_outputs_and_gradients(fast, x),
                                _outputs_and_gradients(reference, x)):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize(
    "size, channels, filters, kernel, strides, padding",
    [
        (20, 8, 16, 9, 2, "valid"),   # CapsNet's primary capsules, narrowed
        (28, 1, 8, 6, 3, "same"),     # the study encoders' first layer
        (10, 4, 8, 5, 2, "same"),     # ... and second
        (11, 3, 5, 4, 3, "valid"),    # a stride that leaves input rows unread
        (9, 2, 3, (3, 2), (2, 1), "same"),
    ],
)
@pytest.mark.parametrize("filter_gradient", ["native", "forward_conv"])
def test_outputs_and_gradients_equal_conv2d(size, channels, filters, kernel, strides, padding,
                                            filter_gradient):
    x = RNG.normal(size=(3, size, size, channels)).astype("float32")
    _assert_same_as_conv2d(
        FastConv2D(filters, kernel, strides=strides, padding=padding,
                   filter_gradient=filter_gradient),
        keras.layers.Conv2D(filters, kernel, strides=strides, padding=padding), x)


@pytest.mark.parametrize("strides, padding", [(5, "same"), (1, "valid"), (7, "same")])
def test_a_kernel_over_the_whole_input_is_a_matmul_with_conv2ds_values(strides, padding):
    x = RNG.normal(size=(3, 5, 5, 6)).astype("float32")
    assert convolution.covers_whole_input(x.shape, (5, 5), (strides, strides), padding)
    _assert_same_as_conv2d(FastConv2D(7, 5, strides=strides, padding=padding),
                           keras.layers.Conv2D(7, 5, strides=strides, padding=padding), x)
    graph = tf.function(lambda images: convolution.conv2d(
        images, tf.zeros((5, 5, 6, 7)), (strides, strides), padding)).get_concrete_function(
            tf.TensorSpec((None, 5, 5, 6))).graph
    op_types = {op.type for op in graph.get_operations()}
    assert "MatMul" in op_types and "Conv2D" not in op_types


def test_whole_input_rule_refuses_padded_or_partial_cover():
    assert not convolution.covers_whole_input((None, 5, 5, 3), (5, 5), (1, 1), "same")  # pads
    assert not convolution.covers_whole_input((None, 6, 5, 3), (5, 5), (5, 5), "valid")


def test_forward_conv_filter_gradient_is_a_forward_convolution():
    x = tf.TensorSpec((None, 20, 20, 8))
    kernel = tf.zeros((9, 9, 8, 16))

    def filter_gradient(images):
        with tf.GradientTape() as tape:
            tape.watch(kernel)
            y = convolution.conv2d(images, kernel, (2, 2), "valid", "forward_conv")
        return tape.gradient(y, kernel)

    graph = tf.function(filter_gradient).get_concrete_function(x).graph
    op_types = {op.type for op in graph.get_operations()}
    assert "Conv2DBackpropFilter" not in op_types and "Conv2D" in op_types


def test_primary_capsules_default_to_forward_conv_and_match_the_native_gradient():
    x = RNG.normal(size=(2, 12, 12, 4)).astype("float32")
    fast = PrimaryCapsules(3, 4, 5, strides=2)
    native = PrimaryCapsules(3, 4, 5, strides=2, filter_gradient="native")
    assert fast.get_config()["filter_gradient"] == "forward_conv"
    _assert_same_as_conv2d(fast, native, x)


def test_round_trips_mixed_float16_and_jit_compile():
    x = RNG.normal(size=(2, 12, 12, 3)).astype("float32")

    def stack():
        return keras.Sequential([
            keras.Input((12, 12, 3)),
            FastConv2D(4, 4, strides=2, activation="relu", filter_gradient="forward_conv"),
            FastConv2D(5, 5),  # 5x5 on 5x5: the matmul
        ])

    model = stack()
    reloaded = assert_keras_round_trip(model, x)
    assert reloaded.layers[0].filter_gradient == "forward_conv"
    assert_saved_model_round_trip(model, x)
    expected = keras.ops.convert_to_numpy(model(x))

    @tf.function(jit_compile=True)
    def compiled_gradient(images):
        with tf.GradientTape() as tape:
            y = model(images)
            loss = tf.reduce_sum(y)
        return y, tape.gradient(loss, model.trainable_weights)

    y, gradients = compiled_gradient(x)
    np.testing.assert_allclose(y.numpy(), expected, atol=1e-5)
    assert all(gradient is not None for gradient in gradients)
    keras.config.set_dtype_policy("mixed_float16")
    half = stack()
    half.set_weights(model.get_weights())
    with tf.GradientTape() as tape:
        y = half(x)
        loss = tf.reduce_sum(tf.cast(y, "float32"))
    assert y.dtype == "float16"
    gradients = tape.gradient(loss, half.trainable_weights)
    assert all(g is not None and g.dtype == "float32" for g in gradients)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(y), expected, atol=5e-2, rtol=5e-2)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="filter_gradient='fast'.*'native', 'forward_conv'"):
        FastConv2D(2, 3, filter_gradient="fast")
    with pytest.raises(ValueError, match="dilation_rate=.*FastConv2D supports only"):
        FastConv2D(2, 3, dilation_rate=2)
    with pytest.raises(ValueError, match="data_format='channels_first'"):
        FastConv2D(2, 3, data_format="channels_first")
    with pytest.raises(ValueError, match="filter_gradient='fast'"):
        PrimaryCapsules(2, 2, 3, filter_gradient="fast")


@pytest.mark.parametrize("size, kernel, strides", [(1, 5, 5), (1, 4, 2), (3, 5, 2)])
def test_transposed_convolution_equals_keras_and_is_a_matmul_from_one_position(size, kernel,
                                                                               strides):
    x = RNG.normal(size=(2, size, size, 6)).astype("float32")
    weights = RNG.normal(size=(kernel, kernel, 3, 6)).astype("float32")
    expected = keras.ops.conv_transpose(x, weights, strides=strides, padding="valid")
    np.testing.assert_allclose(
        convolution.conv2d_transpose(x, weights, (strides, strides)), expected, atol=1e-5)
    graph = tf.function(lambda y: convolution.conv2d_transpose(
        y, weights, (strides, strides))).get_concrete_function(
            tf.TensorSpec((None, size, size, 6))).graph
    assert ("Conv2DBackpropInput" in {op.type for op in graph.get_operations()}) == (size > 1)


@pytest.mark.parametrize(
    "size, kernel, strides, padding",
    [(20, 9, (2, 2), "valid"), (7, 3, (2, 2), "same"), (11, 4, (3, 3), "valid"),
     (9, 5, (2, 3), "same"), (6, 2, (2, 2), "valid")],
)
def test_strided_as_stride_one_equals_the_strided_convolution(size, kernel, strides, padding):
    """JAX-on-CPU's formulation of strided convolutions: plain keras.ops, so checked here too."""
    rng = np.random.default_rng(size)
    inputs = rng.normal(size=(2, size, size + 1, 3)).astype("float32")
    weights = rng.normal(size=(kernel, kernel, 3, 4)).astype("float32")
    expected = keras.ops.conv(inputs, weights, strides=strides, padding=padding)
    actual = convolution.strided_as_stride_one(keras.ops.convert_to_tensor(inputs),
                                               keras.ops.convert_to_tensor(weights), strides,
                                               padding)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(actual),
                               keras.ops.convert_to_numpy(expected), rtol=1e-5, atol=1e-4)
