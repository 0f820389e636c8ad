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
        if self._fused_kernels_apply(flat):
            return ops.cast(self._fused_call(flat, training), self.compute_dtype)
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

    def _fused_kernels_apply(self, inputs):
        """Whether TensorFlow's fused batch-normalization kernels can run this call."""
        return (keras.backend.backend() == "tensorflow" and len(inputs.shape) == 4
                and self.epsilon >= FUSED_MIN_EPSILON)

    def _fused_call(self, inputs, training):
        """The layer on TensorFlow's fused kernels: `[B, H, W, C * G]` float32 in and out.

        Inference is one `FusedBatchNormV3` with the statistics, scale and
        offset repeated over the group copies. Training takes each map's
        batch statistics from one fused kernel, pools them over each
        channel's copies (the variance of the pooled maps is the mean of
        their variances plus the variance of their means), normalizes with
        one fused kernel in inference mode, and differentiates through the
        pooled statistics in closed form (`_fused_group_normalization`).
        """
        import tensorflow as tf  # Only on the TensorFlow backend.

        order = self.group_order
        gamma = (tf.cast(self.gamma, tf.float32) if self.scale
                 else tf.ones((self.channels,), tf.float32))
        beta = (tf.cast(self.beta, tf.float32) if self.center
                else tf.zeros((self.channels,), tf.float32))
        if not training:
            outputs, *_ = tf.raw_ops.FusedBatchNormV3(
                x=inputs, scale=group_algebra.per_group_copy(gamma, order),
                offset=group_algebra.per_group_copy(beta, order),
                mean=group_algebra.per_group_copy(tf.convert_to_tensor(self.moving_mean), order),
                variance=group_algebra.per_group_copy(
                    tf.convert_to_tensor(self.moving_variance), order),
                epsilon=self.epsilon, is_training=False)
            return outputs
        outputs, mean, variance = _fused_group_normalization(
            inputs, gamma, beta, order, self.epsilon)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return outputs

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


# The smallest epsilon TensorFlow's fused batch-normalization kernels take.
FUSED_MIN_EPSILON = 1.001e-5


def _fused_group_normalization(inputs, gamma, beta, order, epsilon):
    """`(outputs, mean [C], variance [C])` of training-mode group batch normalization.

    TensorFlow only. `inputs` `[B, H, W, C * G]` float32, `gamma`, `beta`
    `[C]` float32. The backward pass is the batch-normalization gradient
    with statistics pooled over the `G` copies: with `n` values per channel,
    `x_hat = (x - mean) r`, `r = (variance + epsilon)^(-1/2)`,
    `dx = gamma r (dy - sum(dy) / n - x_hat sum(dy x_hat) / n)`, its first
    term from the fused gradient kernel in inference mode, which also
    returns the per-map sums `sum(dy)` and `sum(dy x_hat)`.
    """
    import tensorflow as tf  # Only on the TensorFlow backend.

    maps = inputs.shape[-1]
    channels = maps // order

    def over_group(per_map):
        return tf.reduce_mean(tf.reshape(per_map, (channels, order)), axis=-1)

    def copies(per_channel):
        return group_algebra.per_group_copy(per_channel, order)

    @tf.custom_gradient
    def normalize(x, gamma, beta):
        # Per-map batch statistics from one fused kernel (its output is unused).
        _, map_mean, map_variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=tf.ones((maps,), tf.float32), offset=tf.zeros((maps,), tf.float32),
            mean=tf.zeros((0,), tf.float32), variance=tf.zeros((0,), tf.float32),
            epsilon=epsilon, is_training=True)
        per_map = tf.cast(tf.size(x) // maps, tf.float32)
        # The kernel returns the unbiased variance; the layer uses the batch's own.
        map_variance = map_variance * (per_map - 1.0) / tf.maximum(per_map, 1.0)
        mean = over_group(map_mean)
        variance = over_group(map_variance + tf.square(map_mean - copies(mean)))
        scale, offset = copies(gamma), copies(beta)
        mean_copies, variance_copies = copies(mean), copies(variance)
        outputs, _, _, _, _, reserve = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=scale, offset=offset, mean=mean_copies, variance=variance_copies,
            epsilon=epsilon, is_training=False)

        def grad(d_outputs, d_mean, d_variance):
            del d_mean, d_variance  # The statistics feed only the moving averages.
            dx, d_scale, d_offset, _, _ = tf.raw_ops.FusedBatchNormGradV3(
                y_backprop=d_outputs, x=x, scale=scale, reserve_space_1=mean_copies,
                reserve_space_2=variance_copies, reserve_space_3=reserve, epsilon=epsilon,
                is_training=False)
            d_gamma = over_group(d_scale) * order
            d_beta = over_group(d_offset) * order
            count = per_map * order
            inverse_std = tf.math.rsqrt(variance + epsilon)
            # dx += slope * x + intercept, per channel, as one fused affine kernel.
            slope = -gamma * tf.square(inverse_std) * d_gamma / count
            intercept = -gamma * inverse_std * d_beta / count - slope * mean
            correction, *_ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=copies(slope), offset=copies(intercept),
                mean=tf.zeros((maps,), tf.float32),
                variance=tf.fill((maps,), 1.0 - epsilon), epsilon=epsilon, is_training=False)
            return dx + correction, d_gamma, d_beta

        return (outputs, tf.stop_gradient(mean), tf.stop_gradient(variance)), grad

    return normalize(inputs, gamma, beta)
