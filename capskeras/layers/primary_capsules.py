"""PrimaryCapsules: a convolution whose channels are grouped into capsules."""

import keras
from keras import ops

from capskeras import ops as capsule_ops
from capskeras.checks import check_positive_int
from capskeras.layers.fast_conv2d import FastConv2D


@keras.saving.register_keras_serializable(package="capskeras")
class PrimaryCapsules(keras.layers.Layer):
    """Convolutional primary capsules (the PrimaryCaps layer of CapsNet).

    A `Conv2D` with `capsule_types * capsule_dim` filters, whose output is
    regrouped into `N = H' * W' * capsule_types` capsules of `capsule_dim`
    dimensions and squashed.

    Flatten order: capsules are ordered row-major over `(H', W')` and then
    by capsule type, i.e. capsule `n = (h * W' + w) * capsule_types + t`.
    Within a position the conv channels are grouped type-major: channel
    `t * capsule_dim + d` is dimension `d` of capsule type `t`.

    Args:
        capsule_types: Positive int, number of capsule types (channels of
            capsules) per position; 32 in the paper.
        capsule_dim: Positive int, dimension of each capsule; 8 in the paper.
        kernel_size: Int or tuple of 2 ints, the convolution window.
        strides: Int or tuple of 2 ints. Defaults to `1`.
        padding: `"valid"` or `"same"`. Defaults to `"valid"`.
        kernel_initializer: Initializer for the conv kernel.
        bias_initializer: Initializer for the conv bias.
        kernel_regularizer: Optional regularizer for the conv kernel.
        bias_regularizer: Optional regularizer for the conv bias.
        kernel_constraint: Optional constraint for the conv kernel.
        bias_constraint: Optional constraint for the conv bias.
        filter_gradient: `"forward_conv"` (default) or `"native"`, how the
            conv kernel's gradient is computed (`FastConv2D`); the same
            values to float rounding. The default trained CapsNet 1.5x
            faster on a 2-core AMD EPYC (AVX2, oneDNN on).
        **kwargs: Base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: A 4D `channels_last` image tensor.

    Input shape:
        `(batch, height, width, channels)`.

    Output shape:
        `(batch, H' * W' * capsule_types, capsule_dim)`, where `H'`, `W'` are
        the conv output height and width.

    Example:

    ```python
    x = keras.Input((20, 20, 256))
    caps = PrimaryCapsules(capsule_types=32, capsule_dim=8,
                           kernel_size=9, strides=2)(x)  # (None, 1152, 8)
    ```

    Reference:
        Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules",
        NeurIPS 2017. https://arxiv.org/abs/1710.09829
    """

    def __init__(
        self,
        capsule_types,
        capsule_dim,
        kernel_size,
        strides=1,
        padding="valid",
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        filter_gradient="forward_conv",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("capsule_types", capsule_types)
        check_positive_int("capsule_dim", capsule_dim)
        if padding not in ("valid", "same"):
            raise ValueError(
                f"Received: padding={padding!r}; expected 'valid' or 'same'"
            )
        self.capsule_types = capsule_types
        self.capsule_dim = capsule_dim
        # The sublayer shares this layer's dtype policy, so it follows the
        # saved policy on reload instead of the global one.
        self.conv = FastConv2D(
            filters=capsule_types * capsule_dim,
            kernel_size=kernel_size,
            strides=strides,
            padding=padding,
            data_format="channels_last",
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            kernel_regularizer=kernel_regularizer,
            bias_regularizer=bias_regularizer,
            kernel_constraint=kernel_constraint,
            bias_constraint=bias_constraint,
            filter_gradient=filter_gradient,
            dtype=self.dtype_policy,
            name="conv",
        )

    def _check_input_shape(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                "PrimaryCapsules expects a 4D channels_last input "
                f"(batch, height, width, channels). Received: "
                f"input_shape={tuple(input_shape)}"
            )

    def build(self, input_shape):
        self._check_input_shape(input_shape)
        self.conv.build(input_shape)

    def call(self, inputs):
        x = self.conv(inputs)
        batch = ops.shape(x)[0]
        capsules = ops.reshape(x, (batch, -1, self.capsule_dim))
        return capsule_ops.squash(capsules)

    def compute_output_shape(self, input_shape):
        self._check_input_shape(input_shape)
        batch, height, width, _ = self.conv.compute_output_shape(input_shape)
        if height is None or width is None:
            num_capsules = None
        else:
            num_capsules = height * width * self.capsule_types
        return (batch, num_capsules, self.capsule_dim)

    def get_config(self):
        config = super().get_config()
        conv_config = self.conv.get_config()
        config.update(
            {
                "capsule_types": self.capsule_types,
                "capsule_dim": self.capsule_dim,
                "kernel_size": conv_config["kernel_size"],
                "strides": conv_config["strides"],
                "padding": conv_config["padding"],
                "kernel_initializer": conv_config["kernel_initializer"],
                "bias_initializer": conv_config["bias_initializer"],
                "kernel_regularizer": conv_config["kernel_regularizer"],
                "bias_regularizer": conv_config["bias_regularizer"],
                "kernel_constraint": conv_config["kernel_constraint"],
                "bias_constraint": conv_config["bias_constraint"],
                "filter_gradient": conv_config["filter_gradient"],
            }
        )
        return config
