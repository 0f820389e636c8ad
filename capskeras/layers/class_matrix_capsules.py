"""ClassMatrixCapsules: one matrix capsule per class, routed by EM with coordinate addition."""

import keras
import numpy as np
from keras import ops

from capskeras import xla
from capskeras.checks import check_positive_int
from capskeras.layers import em_routing
from capskeras.layers.em_routing import POSE_SHAPE
from capskeras.layers.em_routing import POSE_SIZE


@keras.saving.register_keras_serializable(package="capskeras")
class ClassMatrixCapsules(em_routing.EmRoutingLayer):
    """Class capsules: every child capsule votes for every class, routed by EM.

    One 4x4 `W` per input type, shared over positions. With coordinate
    addition, the scaled coordinates of each child's position, `(row + 0.5)
    / H` and `(col + 0.5) / W` (the centre of its cell, in [0, 1]), are added
    to the first two entries of the vote's translation column (entries
    `(0, 3)` and `(1, 3)` of the 4x4 vote), so the class poses keep where
    their parts were. Each child's routing weights are a softmax over the
    classes. The class activations are the class scores.

    Args:
        num_classes: Positive int, one capsule per class.
        routing_iterations: Positive int, EM iterations. Defaults to `3`.
        coordinate_addition: Python bool. Defaults to `True`.
        inverse_temperature: Positive float, `lambda` of the last iteration
            (see `ConvMatrixCapsules`). Defaults to `0.01`.
        variance_floor: Positive float added to every variance. Defaults to
            `1e-6`.
        kernel_initializer: Initializer for the transforms `W`; a truncated
            normal of stddev 0.5 by default.
        routing_jit_compile: `"auto"`, `True` or `False`, as in
            `ConvMatrixCapsules`.
        recompute_routing: bool. If True, the backward pass routes again
            instead of keeping the votes and every EM iteration's
            statistics (`tf.recompute_grad`, TensorFlow only; other
            backends ignore it): far less memory for a large layer, one more
            forward routing of time. Defaults to `False`.
        routing_chunk_size: Positive int or None. With `recompute_routing`,
            route this many samples at a time, one chunk after another, so
            the routing's memory is that of one chunk; None routes the whole
            batch at once. Defaults to `None`.
        **kwargs: Base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: a tuple `(poses, activations)` of a capsule grid.

    Input shape:
        `(batch, H, W, B, 4, 4)` and `(batch, H, W, B)`, `H`, `W`, `B` known.

    Output shape:
        A tuple `(poses, activations)`: `(batch, num_classes, 4, 4)` and
        `(batch, num_classes)`, activations in (0, 1).

    Weights:
        `kernel` `(B, num_classes, 4, 4)`; `beta_u` and `beta_a`
        `(num_classes,)`.

    Example:

    ```python
    poses = keras.Input((3, 3, 16, 4, 4))
    activations = keras.Input((3, 3, 16))
    class_poses, scores = ClassMatrixCapsules(10)((poses, activations))
    # class_poses.shape == (None, 10, 4, 4); scores.shape == (None, 10)
    ```

    Reference:
        Hinton, Sabour and Frosst, "Matrix capsules with EM routing",
        ICLR 2018, section 3 (coordinate addition).
        https://openreview.net/forum?id=HJWLfGWRb
    """

    def __init__(self, num_classes, routing_iterations=3, coordinate_addition=True,
                 inverse_temperature=0.01, variance_floor=1e-6, kernel_initializer=None,
                 routing_jit_compile="auto", recompute_routing=False,
                 routing_chunk_size=None, **kwargs):
        super().__init__(routing_iterations, inverse_temperature, variance_floor,
                         kernel_initializer, routing_jit_compile, recompute_routing,
                         routing_chunk_size, **kwargs)
        check_positive_int("num_classes", num_classes)
        if not isinstance(coordinate_addition, bool):
            raise ValueError(
                f"Received: coordinate_addition={coordinate_addition!r}; expected True or False")
        self.num_classes = num_classes
        self.coordinate_addition = coordinate_addition

    def build(self, input_shape):
        poses_shape, _ = em_routing.capsule_input_shapes(input_shape, "ClassMatrixCapsules")
        self.add_routing_weights(poses_shape[3], self.num_classes)

    def call(self, inputs):
        return self.route(class_routing, _compiled_class_routing, inputs,
                          self.coordinate_addition)

    def compute_output_shape(self, input_shape):
        poses_shape, _ = em_routing.capsule_input_shapes(input_shape, "ClassMatrixCapsules")
        batch = poses_shape[0]
        return (batch, self.num_classes) + POSE_SHAPE, (batch, self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_classes": self.num_classes,
            "coordinate_addition": self.coordinate_addition,
        })
        return config


def class_routing(poses, activations, kernel, beta_u, beta_a, coordinate_addition,
                  iterations, inverse_temperature, variance_floor):
    """Votes of every child for every class and EM routing; see `ClassMatrixCapsules`."""
    height, width, input_types = poses.shape[1], poses.shape[2], poses.shape[3]
    num_classes = kernel.shape[1]
    poses, pose_scale = em_routing.scale_poses(poses)
    positions = height * width
    # Child slot = input type, one W each; the positions share it.
    poses = ops.reshape(ops.transpose(poses, (3, 0, 1, 2, 4, 5)),
                        (input_types, -1, positions) + POSE_SHAPE)
    votes = em_routing.matrix_votes(poses, kernel)  # [b, H*W, K, B, 16]
    if coordinate_addition:
        # In the scaled poses' units.
        votes = votes + ops.convert_to_tensor(_coordinate_offsets(height, width)) / ops.reshape(
            pose_scale, (-1, 1, 1, 1, 1))
    # Children are (position, type) pairs, all seen by the one parent position.
    children = positions * input_types
    votes = ops.reshape(ops.transpose(votes, (0, 2, 1, 3, 4)),
                        (-1, 1, num_classes, children, POSE_SIZE))
    child_activations = ops.reshape(activations, (-1, 1, children))
    out_poses, out_activations = em_routing.em_routing(
        votes, child_activations, beta_u, beta_a, iterations,
        em_routing.softmax_over_types, 1.0 / num_classes, children / num_classes,
        inverse_temperature, variance_floor, pose_scale)
    return (ops.reshape(out_poses, (-1, num_classes) + POSE_SHAPE),
            ops.reshape(out_activations, (-1, num_classes)))


def _coordinate_offsets(height, width):
    """`[1, H * W, 1, 1, 16]`: each position's scaled (row, col) at vote entries (0, 3), (1, 3)."""
    offsets = np.zeros((height, width, 4, 4), np.float32)
    offsets[..., 0, 3] = ((np.arange(height) + 0.5) / height)[:, None]
    offsets[..., 1, 3] = ((np.arange(width) + 0.5) / width)[None, :]
    return offsets.reshape(1, height * width, 1, 1, 16)


_compiled_class_routing = xla.compiled(class_routing)
