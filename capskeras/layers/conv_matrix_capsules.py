"""ConvMatrixCapsules: convolutional matrix capsules routed by EM."""

import keras
from keras import ops

from capskeras import xla
from capskeras.checks import check_positive_int
from capskeras.layers import em_routing
from capskeras.layers.em_routing import POSE_SHAPE


@keras.saving.register_keras_serializable(package="capskeras")
class ConvMatrixCapsules(em_routing.EmRoutingLayer):
    """Convolutional matrix capsules with EM routing.

    Every parent (type `c` at output position `p`) receives the votes
    `V_ij = M_i W_ij` of the `K * K * B` children in its window, with one
    4x4 `W` per (kernel offset, input type, output type), shared over
    positions. EM routing (`capskeras.layers.em_routing`, which documents
    its constants) then fits a Gaussian per parent: its mean is the
    parent's pose, its fit the parent's activation. A child's routing
    weights are normalised over every parent that receives it, all types
    at all positions whose window contains it, so overlapping parents
    compete for their shared children. Padding is `"valid"`.

    Args:
        capsule_types: Positive int, output capsule types `C` per position.
        kernel_size: Positive int `K`, the square window.
        strides: Positive int `s`. Defaults to `1`.
        routing_iterations: Positive int, EM iterations. Defaults to `3`.
        inverse_temperature: Positive float, `lambda` of the last
            iteration; iteration `t` of `T` uses `lambda * t / T`.
            Defaults to `0.01`: the cost sums 16 log-spreads weighted by
            the data assigned, tens in magnitude, which a larger `lambda`
            drives into the logistic's flat tails at initialisation.
        variance_floor: Positive float added to every parent's variance.
            Defaults to `1e-6`, below the spread of the votes of MNIST's
            poses at initialisation (std 0.005 to 0.03), which a floor of
            `1e-4` would swamp, leaving the activations blind to agreement.
        kernel_initializer: Initializer for the transforms `W`. Defaults to
            a truncated normal of stddev 0.5, which keeps the votes of
            unit-scale poses at unit scale (each vote entry sums 4 products).
        routing_jit_compile: `"auto"`, `True` or `False`, as in
            `CapsuleDense`: where votes and routing run as one XLA cluster.
            `"auto"` compiles inside Keras's `fit`, `evaluate` and
            `predict` steps only, so exports hold plain kernels.
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
        inputs: a tuple `(poses, activations)`, as `PrimaryMatrixCapsules`
            returns.

    Input shape:
        `(batch, H, W, B, 4, 4)` and `(batch, H, W, B)`, `H`, `W`, `B` known.

    Output shape:
        A tuple `(poses, activations)`: `(batch, H', W', C, 4, 4)` and
        `(batch, H', W', C)` with `H' = (H - K) // s + 1`.

    Weights:
        `kernel` `(K * K * B, C, 4, 4)`, kernel offset-major then input type;
        `beta_u` and `beta_a` `(C,)`.

    Example:

    ```python
    poses = keras.Input((12, 12, 8, 4, 4))
    activations = keras.Input((12, 12, 8))
    out_poses, out_activations = ConvMatrixCapsules(16, 3, strides=2)(
        (poses, activations))
    # out_poses.shape == (None, 5, 5, 16, 4, 4)
    ```

    Reference:
        Hinton, Sabour and Frosst, "Matrix capsules with EM routing",
        ICLR 2018. https://openreview.net/forum?id=HJWLfGWRb
    """

    def __init__(self, capsule_types, kernel_size, strides=1, routing_iterations=3,
                 inverse_temperature=0.01, variance_floor=1e-6,
                 kernel_initializer=None, routing_jit_compile="auto", recompute_routing=False,
                 routing_chunk_size=None, **kwargs):
        super().__init__(routing_iterations, inverse_temperature, variance_floor,
                         kernel_initializer, routing_jit_compile, recompute_routing,
                         routing_chunk_size, **kwargs)
        check_positive_int("capsule_types", capsule_types)
        check_positive_int("kernel_size", kernel_size)
        check_positive_int("strides", strides)
        self.capsule_types = capsule_types
        self.kernel_size = kernel_size
        self.strides = strides

    def _check_input_shape(self, input_shape):
        poses_shape, activations_shape = em_routing.capsule_input_shapes(
            input_shape, "ConvMatrixCapsules")
        height, width = poses_shape[1], poses_shape[2]
        if min(height, width) < self.kernel_size:
            raise ValueError(
                f"Received: kernel_size={self.kernel_size} for a {height}x{width} capsule grid; "
                "expected a kernel no larger than the grid"
            )
        return poses_shape, activations_shape

    def build(self, input_shape):
        poses_shape, _ = self._check_input_shape(input_shape)
        self.add_routing_weights(self.kernel_size * self.kernel_size * poses_shape[3],
                                 self.capsule_types)

    def call(self, inputs):
        return self.route(conv_routing, _compiled_conv_routing, inputs, self.kernel_size,
                          self.strides)

    def compute_output_shape(self, input_shape):
        poses_shape, _ = self._check_input_shape(input_shape)
        rows = em_routing.window_count(poses_shape[1], self.kernel_size, self.strides)
        cols = em_routing.window_count(poses_shape[2], self.kernel_size, self.strides)
        grid = (poses_shape[0], rows, cols, self.capsule_types)
        return grid + POSE_SHAPE, grid

    def get_config(self):
        config = super().get_config()
        config.update({
            "capsule_types": self.capsule_types,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
        })
        return config


def conv_routing(poses, activations, kernel, beta_u, beta_a, kernel_size, strides,
                 iterations, inverse_temperature, variance_floor):
    """Votes of every window and EM routing over them; see `ConvMatrixCapsules`."""
    height, width, input_types = poses.shape[1], poses.shape[2], poses.shape[3]
    poses, pose_scale = em_routing.scale_poses(poses)
    rows = em_routing.window_count(height, kernel_size, strides)
    cols = em_routing.window_count(width, kernel_size, strides)
    children = kernel_size * kernel_size * input_types
    # [P * K*K, b, B, ...] -> child slot (kernel offset, input type) first.
    window_poses = em_routing.extract_windows(poses, kernel_size, strides)
    window_poses = ops.reshape(
        ops.transpose(ops.reshape(window_poses, (rows * cols, kernel_size * kernel_size, -1,
                                                 input_types) + POSE_SHAPE),
                      (1, 3, 2, 0, 4, 5)),
        (children, -1, rows * cols) + POSE_SHAPE)
    votes = em_routing.matrix_votes(window_poses, kernel)
    window_activations = ops.reshape(
        ops.transpose(em_routing.extract_windows(activations, kernel_size, strides), (1, 0, 2)),
        (-1, rows * cols, children))
    # Children covered by some window, shared out among all parents.
    covered = ((rows - 1) * strides + kernel_size) * ((cols - 1) * strides + kernel_size)
    parent_mass = covered * input_types / (rows * cols * kernel.shape[1])
    out_poses, out_activations = em_routing.em_routing(
        votes, window_activations, beta_u, beta_a,
        iterations, em_routing.window_softmax((height, width), kernel_size, strides),
        ops.convert_to_tensor(em_routing.window_uniform_routing(
            (height, width), kernel_size, strides, input_types, kernel.shape[1])),
        parent_mass, inverse_temperature, variance_floor, pose_scale)
    parent_types = kernel.shape[1]
    return (ops.reshape(out_poses, (-1, rows, cols, parent_types) + POSE_SHAPE),
            ops.reshape(out_activations, (-1, rows, cols, parent_types)))


_compiled_conv_routing = xla.compiled(conv_routing)
