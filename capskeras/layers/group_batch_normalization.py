"""GroupBatchNormalization: batch normalization sharing statistics over the group."""

import keras
from keras import ops

from capskeras.layers import group_algebra


@keras.saving.register_keras_serializable(package="capskeras")
class GroupBatchNormalization(keras.layers.Layer):
    """Batch normalization of group feature maps, one set of statistics per channel.

    Takes group feature maps in the layout of `GroupConv2D` (channel
    `c * G + g` is channel `c` at group element `g`). The mean and variance
    of channel `c` are taken over the batch, the spatial axes and all `G`
    group copies, and one scale and one offset per channel are shared by
    the copies, so the layer commutes with the group's action (an ordinary
    `BatchNormalization` over `C * G` channels would not).

    In training the batch statistics normalize and update the moving ones
    (`moving = momentum * moving + (1 - momentum) * batch`); in inference
    the moving statistics normalize, as they do whenever the layer is frozen
    (`trainable=False`), like `BatchNormalization`. Statistics are computed in float32
    under mixed precision. `to_batch_normalization()` folds the layer into
    an ordinary `BatchNormalization` over `C * G` channels with each
    channel's statistics repeated, for serving.

    Args:
        group: `"p4"` (G = 4), `"p4m"` (G = 8) or `"c<K>"` (G = K, the
            rotations of `RotatedConv2D`).
        momentum: float in [0, 1), momentum of the moving statistics.
        epsilon: float > 0 added to the variance.
        center: bool, learn the offset `beta`.
        scale: bool, learn the scale `gamma`.
        beta_initializer, gamma_initializer: initializers of the offset and
            scale.
        moving_mean_initializer, moving_variance_initializer: initializers
            of the moving statistics.
        beta_regularizer, gamma_regularizer: optional regularizers.
        **kwargs: Base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `[B, ..., C * G]` group feature maps.
        training: Python bool, normalize with the batch statistics and
            update the moving ones.

    Input shape:
        `(batch, ..., C * G)`.

    Output shape:
        Same as the input.

    Example:

    >>> x = keras.random.normal((4, 6, 6, 12), seed=0)
    >>> GroupBatchNormalization("p4")(x, training=True).shape
    (4, 6, 6, 12)

    Reference:
        Cohen and Welling, "Group Equivariant Convolutional Networks",
        ICML 2016 (section 6.4, batch normalization on the group); Ioffe and
        Szegedy, "Batch Normalization", ICML 2015.
    """

    def __init__(
        self,
        group="p4",
        momentum=0.99,
        epsilon=1e-3,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        moving_mean_initializer="zeros",
        moving_variance_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.group = group
        self.group_order = group_algebra.group_order(group)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Received: momentum={momentum!r}; expected a float in [0, 1)")
        if not epsilon > 0.0:
            raise ValueError(f"Received: epsilon={epsilon!r}; expected a float > 0")
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        self.beta_initializer = keras.initializers.get(beta_initializer)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.moving_mean_initializer = keras.initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = keras.initializers.get(moving_variance_initializer)
        self.beta_regularizer = keras.regularizers.get(beta_regularizer)
        self.gamma_regularizer = keras.regularizers.get(gamma_regularizer)
        self.supports_masking = False

    def build(self, input_shape):
        self.channels = group_algebra.check_group_channels(input_shape, self.group)
        self._input_rank = len(input_shape)
        shape = (self.channels,)
        self.gamma = None
        self.beta = None
        if self.scale:
            self.gamma = self.add_weight(
                name="gamma", shape=shape, initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer,
            )
        if self.center:
            self.beta = self.add_weight(
                name="beta", shape=shape, initializer=self.beta_initializer,
                regularizer=self.beta_regularizer,
            )
        self.moving_mean = self.add_weight(
            name="moving_mean", shape=shape, initializer=self.moving_mean_initializer,
            trainable=False, autocast=False,
        )
        self.moving_variance = self.add_weight(
            name="moving_variance", shape=shape,
            initializer=self.moving_variance_initializer, trainable=False, autocast=False,
        )

    def call(self, inputs, training=False):
        # As keras.layers.BatchNormalization: a frozen layer runs in inference mode.
        training = bool(training) and self.trainable
        flat = ops.cast(inputs, "float32")
        if training:
            # Reductions over every axis but the last, then over the group
            # copies of each channel on the small [C * G] result: the same
            # memory pattern as an ordinary batch normalization, which runs
            # far faster than one reduction over a [..., C, G] view.
            axes = tuple(range(len(flat.shape) - 1))
            mean = self._over_group(ops.mean(flat, axis=axes))
            deviations = flat - group_algebra.per_group_copy(ops.stop_gradient(mean),
                                                             self.group_order)
            variance = self._over_group(ops.mean(ops.square(deviations), axis=axes))
            self.moving_mean.assign(
                self.moving_mean * self.momentum + mean * (1.0 - self.momentum)
            )
            self.moving_variance.assign(
                self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
            )
        else:
            mean = ops.convert_to_tensor(self.moving_mean)
            variance = ops.convert_to_tensor(self.moving_variance)
        multiplier = ops.rsqrt(variance + self.epsilon)
        if self.scale:
            multiplier = multiplier * ops.cast(self.gamma, "float32")
        offset = -mean * multiplier
        if self.center:
            offset = offset + ops.cast(self.beta, "float32")
        outputs = (flat * group_algebra.per_group_copy(multiplier, self.group_order)
                   + group_algebra.per_group_copy(offset, self.group_order))
        return ops.cast(outputs, self.compute_dtype)

    def _over_group(self, per_map):
        """Averages `[C * G]` values over each channel's `G` copies: `[C]`."""
        return ops.mean(ops.reshape(per_map, (self.channels, self.group_order)), axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def to_batch_normalization(self, name=None):
        """An ordinary `BatchNormalization` over `C * G` channels with the same inference."""
        if not self.built:
            raise ValueError(f"Layer {self.name!r} is not built; call it on inputs first")
        norm = keras.layers.BatchNormalization(
            momentum=self.momentum, epsilon=self.epsilon, center=self.center,
            scale=self.scale, dtype=self.dtype_policy, name=name or self.name,
        )
        norm.build((None,) * (self._input_rank - 1) + (self.channels * self.group_order,))
        values = {
            "gamma": self.gamma, "beta": self.beta,
            "moving_mean": self.moving_mean, "moving_variance": self.moving_variance,
        }
        for variable in norm.weights:
            key = variable.path.split("/")[-1]
            variable.assign(ops.repeat(ops.convert_to_tensor(values[key]), self.group_order))
        return norm

    def plain_equivalent(self):
        """`to_batch_normalization()`: the plain layer `StudyModel.serving_model` exports."""
        return self.to_batch_normalization()

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "group": self.group,
                "momentum": self.momentum,
                "epsilon": self.epsilon,
                "center": self.center,
                "scale": self.scale,
                "beta_initializer": keras.initializers.serialize(self.beta_initializer),
                "gamma_initializer": keras.initializers.serialize(self.gamma_initializer),
                "moving_mean_initializer": keras.initializers.serialize(
                    self.moving_mean_initializer),
                "moving_variance_initializer": keras.initializers.serialize(
                    self.moving_variance_initializer),
                "beta_regularizer": keras.regularizers.serialize(self.beta_regularizer),
                "gamma_regularizer": keras.regularizers.serialize(self.gamma_regularizer),
            }
        )
        return config
