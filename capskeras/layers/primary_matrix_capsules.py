"""PrimaryMatrixCapsules: pose matrices and activations from a feature map."""

import keras
from keras import ops

from capskeras.checks import check_positive_int
from capskeras.layers.em_routing import POSE_SHAPE
from capskeras.layers.em_routing import POSE_SIZE


@keras.saving.register_keras_serializable(package="capskeras")
class PrimaryMatrixCapsules(keras.layers.Layer):
    """Primary matrix capsules: a 4x4 pose and an activation per type and position.

    Two 1x1 convolutions of the feature map: one to `capsule_types * 16`
    pose values (linear), one to `capsule_types` activations (sigmoid).
    Within a position, pose channel `t * 16 + 4 * r + c` is entry `(r, c)`
    of type `t`'s pose matrix.

    Args:
        capsule_types: Positive int, capsule types `B` per position.
        kernel_initializer: Initializer for both 1x1 kernels.
        **kwargs: Base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: A 4D `channels_last` feature map.

    Input shape:
        `(batch, height, width, channels)`.

    Output shape:
        A tuple `(poses, activations)`: `(batch, height, width,
        capsule_types, 4, 4)` and `(batch, height, width, capsule_types)`.

    Example:

    ```python
    features = keras.Input((12, 12, 64))
    poses, activations = PrimaryMatrixCapsules(8)(features)
    # poses.shape == (None, 12, 12, 8, 4, 4); activations.shape == (None, 12, 12, 8)
    ```

    Reference:
        Hinton, Sabour and Frosst, "Matrix capsules with EM routing",
        ICLR 2018, section 3. https://openreview.net/forum?id=HJWLfGWRb
    """

    def __init__(self, capsule_types, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        check_positive_int("capsule_types", capsule_types)
        self.capsule_types = capsule_types
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def _check_input_shape(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                "PrimaryMatrixCapsules expects a 4D channels_last input (batch, height, "
                f"width, channels) with known channels. Received: input_shape={tuple(input_shape)}"
            )

    def build(self, input_shape):
        self._check_input_shape(input_shape)
        channels = input_shape[-1]
        self.pose_kernel = self.add_weight(
            name="pose_kernel", shape=(channels, self.capsule_types * POSE_SIZE),
            initializer=self.kernel_initializer)
        self.pose_bias = self.add_weight(
            name="pose_bias", shape=(self.capsule_types * POSE_SIZE,), initializer="zeros")
        self.activation_kernel = self.add_weight(
            name="activation_kernel", shape=(channels, self.capsule_types),
            initializer=self.kernel_initializer)
        self.activation_bias = self.add_weight(
            name="activation_bias", shape=(self.capsule_types,), initializer="zeros")

    def call(self, inputs):
        # A 1x1 convolution is a matmul over the channels.
        poses = ops.matmul(inputs, self.pose_kernel) + self.pose_bias
        shape = ops.shape(poses)
        poses = ops.reshape(poses, (shape[0], shape[1], shape[2], self.capsule_types)
                            + POSE_SHAPE)
        activations = ops.sigmoid(ops.matmul(inputs, self.activation_kernel)
                                  + self.activation_bias)
        return poses, activations

    def compute_output_shape(self, input_shape):
        self._check_input_shape(input_shape)
        grid = tuple(input_shape[:3]) + (self.capsule_types,)
        return grid + POSE_SHAPE, grid

    def get_config(self):
        config = super().get_config()
        config.update({
            "capsule_types": self.capsule_types,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        })
        return config
