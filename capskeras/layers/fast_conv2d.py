"""FastConv2D: Keras's Conv2D computed in the formulations CPUs run fastest."""

import keras

from capskeras import convolution


@keras.saving.register_keras_serializable(package="capskeras")
class FastConv2D(keras.layers.Conv2D):
    """A `keras.layers.Conv2D` whose convolution runs through `capskeras.convolution`.

    Same weights, outputs and gradients as `Conv2D` (to float rounding);
    only the kernels that compute them differ:

    - a kernel that covers the whole unpadded input (an output of one
      position) runs as one matmul;
    - `filter_gradient="forward_conv"` computes the kernel's gradient as a
      forward convolution over the batch, 3x faster for CapsNet's primary
      capsules on CPU; `"native"` (the default) keeps TensorFlow's.

    Takes `Conv2D`'s arguments, `channels_last` only, without dilation or
    groups.

    Args:
        filter_gradient: `"native"` or `"forward_conv"`; see
            `capskeras.convolution`.
        *args, **kwargs: `keras.layers.Conv2D`'s arguments.

    Example:

    >>> conv = FastConv2D(256, 9, strides=2, filter_gradient="forward_conv")
    >>> conv(keras.ops.zeros((2, 20, 20, 8))).shape
    (2, 6, 6, 256)
    """

    def __init__(self, *args, filter_gradient="native", **kwargs):
        super().__init__(*args, **kwargs)
        convolution.check_filter_gradient(filter_gradient)
        unsupported = {
            "data_format": (self.data_format, "channels_last"),
            "dilation_rate": (self.dilation_rate, (1, 1)),
            "groups": (self.groups, 1),
        }
        for name, (value, supported) in unsupported.items():
            if value != supported:
                raise ValueError(
                    f"Received: {name}={value!r}; FastConv2D supports only "
                    f"{name}={supported!r} (use keras.layers.Conv2D otherwise)"
                )
        self.filter_gradient = filter_gradient

    def convolution_op(self, inputs, kernel):
        return convolution.conv2d(
            inputs, kernel, self.strides, self.padding, self.filter_gradient
        )

    def get_config(self):
        config = super().get_config()
        config["filter_gradient"] = self.filter_gradient
        return config
