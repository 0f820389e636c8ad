"""CapsuleLength: the length of each capsule vector."""

import keras

from capskeras import ops as capsule_ops


@keras.saving.register_keras_serializable(package="capskeras")
class CapsuleLength(keras.layers.Layer):
    """Lengths of capsule vectors, read as class or entity probabilities.

    Computes `safe_norm` over the capsule dimension, so the value and the
    gradient are finite for all-zero capsules (the length is then
    `sqrt(epsilon)`, not exactly 0).

    Args:
        epsilon: Small positive float added under the square root.
            Defaults to `1e-7`.
        **kwargs: Base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Capsules, a 3D tensor.

    Input shape:
        `(batch, num_capsules, capsule_dim)`.

    Output shape:
        `(batch, num_capsules)`.

    Example:

    ```python
    digits = keras.Input((10, 16))
    probabilities = CapsuleLength()(digits)  # (None, 10)
    ```

    Reference:
        Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules",
        NeurIPS 2017. https://arxiv.org/abs/1710.09829
    """

    def __init__(self, epsilon=1e-7, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(epsilon, (int, float)) or epsilon <= 0:
            raise ValueError(
                f"Received: epsilon={epsilon!r}; expected a float > 0"
            )
        self.epsilon = float(epsilon)

    def _check_input_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(
                "CapsuleLength expects a 3D input (batch, num_capsules, "
                f"capsule_dim). Received: input_shape={tuple(input_shape)}"
            )

    def build(self, input_shape):
        self._check_input_shape(input_shape)

    def call(self, inputs):
        return capsule_ops.capsule_lengths(inputs, epsilon=self.epsilon)

    def compute_output_shape(self, input_shape):
        self._check_input_shape(input_shape)
        return tuple(input_shape[:2])

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon})
        return config
