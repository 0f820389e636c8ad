"""GroupPooling: max or mean over the group axis of group feature maps."""

import keras
from keras import ops

from capskeras.layers import group_algebra

MODES = ("max", "mean")


@keras.saving.register_keras_serializable(package="capskeras")
class GroupPooling(keras.layers.Layer):
    """Pools each channel over its group copies, leaving invariant maps.

    Takes group feature maps in the layout of `GroupConv2D` (channel
    `c * G + g` is channel `c` at group element `g`) and returns one map per
    channel: the max or the mean over its `G` copies. Since a rotation or
    mirror of the input only permutes the copies (and moves the planes), the
    result transforms like an ordinary image: pooled spatially afterwards,
    it is invariant.

    Args:
        group: `"p4"` (G = 4), `"p4m"` (G = 8) or `"c<K>"` (G = K, the
            rotations of `RotatedConv2D`).
        mode: `"max"` or `"mean"`.
        **kwargs: Base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `[B, ..., C * G]` group feature maps.

    Input shape:
        `(batch, ..., C * G)`, usually `(batch, H, W, C * G)`.

    Output shape:
        `(batch, ..., C)`.

    Example:

    >>> x = keras.ops.reshape(keras.ops.arange(8.0), (1, 1, 1, 8))
    >>> keras.ops.convert_to_numpy(GroupPooling("p4", "max")(x)).tolist()
    [[[[3.0, 7.0]]]]

    Reference:
        Cohen and Welling, "Group Equivariant Convolutional Networks",
        ICML 2016 (section 6.3, pooling over rotations).
    """

    def __init__(self, group="p4", mode="max", **kwargs):
        super().__init__(**kwargs)
        self.group = group
        self.group_order = group_algebra.group_order(group)
        if mode not in MODES:
            raise ValueError(f"Received: mode={mode!r}; expected one of {MODES}")
        self.mode = mode

    def build(self, input_shape):
        group_algebra.check_group_channels(input_shape, self.group)

    def call(self, inputs):
        shape = ops.shape(inputs)
        channels = inputs.shape[-1]
        grouped = ops.reshape(
            inputs,
            tuple(shape[:-1]) + (channels // self.group_order, self.group_order),
        )
        if self.mode == "max":
            return ops.max(grouped, axis=-1)
        return ops.mean(grouped, axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (input_shape[-1] // self.group_order,)

    def get_config(self):
        config = super().get_config()
        config.update({"group": self.group, "mode": self.mode})
        return config
