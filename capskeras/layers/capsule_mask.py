"""CapsuleMask: keep one capsule (labelled or longest), flatten for a decoder."""

import keras
from keras import ops

from capskeras import ops as capsule_ops


@keras.saving.register_keras_serializable(package="capskeras")
class CapsuleMask(keras.layers.Layer):
    """Zeroes all capsules but one and flattens them: the decoder input.

    With `mask_labels` (training), the capsule of the true class is kept;
    without (inference), the longest capsule is kept. The output is the
    masked capsules flattened capsule-major, `out[:, n * D + d] =
    capsules[:, n, d]` (all `N * D` values, zeros outside the kept capsule),
    so the decoder sees both the pose and which class it belongs to.

    No gradient flows through the choice of capsule; gradients flow through
    the values of the kept capsule.

    Args:
        **kwargs: Base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        capsules: Capsules, a 3D tensor `(batch, N, D)`.
        mask_labels: Optional labels of the capsule to keep: integer class
            ids of shape `(batch,)` or `(batch, 1)`, or one-hot (or any
            scores, argmax is taken) of shape `(batch, N)`. If `None`, the
            longest capsule is kept.

    Input shape:
        `capsules`: `(batch, num_capsules, capsule_dim)`.

    Output shape:
        `(batch, num_capsules * capsule_dim)`.

    Example:

    ```python
    digits = keras.Input((10, 16))
    labels = keras.Input((), dtype="int32")
    decoder_input = CapsuleMask()(digits, mask_labels=labels)  # (None, 160)
    ```

    Reference:
        Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules",
        NeurIPS 2017, section 4.1. https://arxiv.org/abs/1710.09829
    """

    def _check_capsules_shape(self, capsules_shape):
        if len(capsules_shape) != 3 or None in tuple(capsules_shape)[1:]:
            raise ValueError(
                "CapsuleMask expects capsules of shape (batch, num_capsules, "
                "capsule_dim) with known num_capsules and capsule_dim. "
                f"Received: capsules_shape={tuple(capsules_shape)}"
            )

    def build(self, capsules_shape, mask_labels_shape=None):
        self._check_capsules_shape(capsules_shape)

    def _label_indices(self, mask_labels, num_capsules):
        shape = tuple(mask_labels.shape)
        if len(shape) == 1 or (
            len(shape) == 2 and shape[-1] == 1 and num_capsules != 1
        ):
            return ops.reshape(ops.cast(mask_labels, "int32"), (-1,))
        if len(shape) == 2 and shape[-1] == num_capsules:
            return ops.argmax(mask_labels, axis=-1)
        raise ValueError(
            "CapsuleMask expects mask_labels of shape (batch,), (batch, 1) "
            f"or (batch, {num_capsules}). Received: "
            f"mask_labels.shape={shape}"
        )

    def call(self, capsules, mask_labels=None):
        num_capsules, capsule_dim = capsules.shape[1], capsules.shape[2]
        if mask_labels is None:
            indices = capsule_ops.longest_capsule(capsules)
        else:
            indices = self._label_indices(mask_labels, num_capsules)
        mask = ops.one_hot(indices, num_capsules, dtype=capsules.dtype)
        masked = capsules * ops.expand_dims(mask, -1)
        batch = ops.shape(capsules)[0]
        return ops.reshape(masked, (batch, num_capsules * capsule_dim))

    def compute_output_shape(self, capsules_shape, mask_labels_shape=None):
        self._check_capsules_shape(capsules_shape)
        return (capsules_shape[0], capsules_shape[1] * capsules_shape[2])
