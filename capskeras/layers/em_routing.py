"""EM routing between matrix capsules (Hinton, Sabour and Frosst 2018).

`ConvMatrixCapsules` and `ClassMatrixCapsules` share what is here: the
routing functions, and `EmRoutingLayer`, their common (non-public) base
layer holding the routing settings and weights. The votes, the
largest tensor of a layer, are written once (one batched matmul per child
slot) and only read afterwards, laid out `[batch, positions P, parent
types C, children I, 16]`: the `I` children of each parent are
contiguous, so the M-step is a batched vector-matrix product over the
votes and the E-step a batched matrix-vector product.

Choices the paper leaves open, and why:

- Cost scaling: `sum_i r_ij` is divided by the mean amount of data a
  parent receives when every child splits itself evenly among its parents
  (`children / parents` of the layer). Without it the cost of a parent
  with many children (class capsules: hundreds) and one with few
  (convolutional capsules: K*K*B) differ by orders of magnitude and the
  activations of one kind saturate (Gritzman 2019, pitfall 2).
- Variance floor: `sigma^2 = max(E[V^2] - mu^2, 0) + variance_floor`, so a
  parent with one child, or whose children agree exactly, has a finite
  `log sigma` and finite gradients (pitfall 1). The default, `1e-6`, sits
  below the spread of the votes: at `1e-4` the floor dominated the
  variance of MNIST poses at initialisation and the class activations
  differed across classes by a seventh as much.
- Inverse temperature: `lambda_t = inverse_temperature * t / T` for
  iteration `t` of `T`: the first iterations decide softly, the last one
  at the full temperature. `beta_a` is learned in units of the logit
  (the paper's `beta_a` times `lambda`): with `lambda = 0.01` the paper's
  form would make it learn a hundred times slower than every other weight.
- Every ratio divides by its denominator plus `EPSILON`, every log takes a
  log-sigmoid or a floored variance, and every softmax subtracts its
  maximum, so no finite input, however large, small or degenerate, yields
  NaN. A NaN or inf pose makes the outputs of its sample that it reaches
  NaN.
- Scale: the squares of votes beyond ~1e19 overflow float32, so the
  child poses of a sample whose largest pose entry exceeds 1 are divided
  by it (`scale_poses`) and routing runs in those units: the means are
  multiplied back, every `log sigma` gains `log scale`, and the variance
  floor is divided by `scale^2`, so the result is the same up to
  rounding. The floor is held at `1e-12` in the scaled units (it is
  lower for poses beyond 1e3 with the default floor): a spread of `1e-6`
  of the largest pose, below what float32's `E[V^2] - mu^2` resolves, and
  a `1 / sigma^2` whose gradients stay finite.
- `E[V^2] - mu^2` instead of `E[(V - mu)^2]`: the squared votes are
  computed once and both steps stay reductions over stored tensors, which
  keeps the gradient's saved tensors to the votes and their squares
  instead of one vote-sized difference per iteration.

All routing runs in float32 whatever the compute dtype.

Reference:
    Hinton, Sabour and Frosst, "Matrix capsules with EM routing", ICLR 2018,
    Procedure 1. https://openreview.net/forum?id=HJWLfGWRb
    Gritzman, "Avoiding Implementation Pitfalls of Matrix Capsules with EM
    Routing by Hinton et al.", 2019. https://arxiv.org/abs/1907.00652
"""

import math

import keras
import numpy as np
from keras import ops

from capskeras import xla
from capskeras.checks import check_positive_float
from capskeras.checks import check_positive_int


POSE_SHAPE = (4, 4)
POSE_SIZE = 16
EPSILON = 1e-7
# The smallest variance in scaled units (see "Scale" above).
SCALED_VARIANCE_FLOOR = 1e-12
# Half of log(2 pi), the Gaussian's normalising constant per pose entry.
HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)


def em_routing(votes, child_activations, beta_u, beta_a, iterations, normalize,
               uniform_routing, parent_mass, inverse_temperature=0.01, variance_floor=1e-6,
               pose_scale=1.0):
    """EM routing: parents' poses and activations from their children's votes.

    Args:
        votes: `[batch, P, C, I, 16]` float32, the vote `V_ij` of child `i`
            for parent `j` (type `c` at position `p`).
        child_activations: `[batch, P, I]` float32, `a_i` of the children
            as each position sees them.
        beta_u: `[C]`, the cost of a pose entry's spread, per parent type.
        beta_a: `[C]`, the activation threshold per parent type, in units
            of the final logit: `a_j = sigmoid(lambda_t (beta_a / lambda -
            cost_j))`, the paper's `beta_a` times `lambda`.
        iterations: Python int >= 1.
        normalize: `logits [batch, P, C, I] -> R`, the same shape, a
            softmax over all the parents of each child.
        uniform_routing: the start, `R` uniform over each child's parents
            (`normalize` of zeros), broadcastable to `[batch, P, C, I]`. A
            constant of the layer's geometry: computed by `normalize`
            inside an XLA cluster, the compiler would fold it for minutes.
        parent_mass: Python float, children / parents of the layer (see
            the module docstring).
        inverse_temperature: Python float, `lambda` of the last iteration.
        variance_floor: Python float added to every variance.
        pose_scale: `[batch, 1, 1]` float32 or 1, what the children's poses
            were divided by (`scale_poses`); the votes are in those units.

    Returns:
        `(poses, activations)`: `mu_j`, `[batch, P, C, 16]`, and `a_j`,
        `[batch, P, C]`, both float32.
    """
    squared_votes = ops.square(votes)
    # The floor in the votes' units; log sigma in the poses' units.
    pose_scale = ops.expand_dims(ops.convert_to_tensor(pose_scale, "float32"), -1)
    floor = ops.maximum(variance_floor * ops.square(1.0 / pose_scale), SCALED_VARIANCE_FLOOR)
    log_scale = ops.log(pose_scale)
    routing = uniform_routing
    child_activations = ops.expand_dims(child_activations, 2)  # [b, P, 1, I]
    for iteration in range(1, iterations + 1):
        # M-step.
        assigned = routing * child_activations  # r_ij, [b, P, C, I]
        total = ops.sum(assigned, axis=-1)  # [b, P, C]
        weights = ops.expand_dims(assigned / (ops.expand_dims(total, -1) + EPSILON), 3)
        mean = ops.squeeze(ops.matmul(weights, votes), 3)  # [b, P, C, 16]
        mean_square = ops.squeeze(ops.matmul(weights, squared_votes), 3)
        variance = ops.relu(mean_square - ops.square(mean)) + floor
        log_sigma = 0.5 * ops.log(variance) + log_scale
        cost = (ops.sum(log_sigma, axis=-1) + POSE_SIZE * beta_u) * (total / parent_mass)
        # lambda_t (beta_a / lambda - cost): beta_a is learned in logit
        # units, so Adam moves it as fast as any other weight.
        progress = iteration / iterations
        activation_logits = progress * (beta_a - inverse_temperature * cost)  # [b, P, C]
        if iteration == iterations:
            return mean * pose_scale, ops.sigmoid(activation_logits)
        # E-step: log N(V_ij; mu_j, sigma_j), the square expanded as
        # sum_h (V^2 - 2 V mu + mu^2) / (2 sigma^2).
        inverse_variance = 0.5 / variance
        quadratic = (_matvec(squared_votes, inverse_variance)
                     - _matvec(votes, 2.0 * mean * inverse_variance))
        log_density = -quadratic - ops.expand_dims(
            ops.sum(ops.square(mean) * inverse_variance + log_sigma, axis=-1)
            + POSE_SIZE * HALF_LOG_TWO_PI, -1)
        routing = normalize(ops.expand_dims(ops.log_sigmoid(activation_logits), -1)
                            + log_density)


def recomputed(routing, chunk_size=None):
    """`routing` whose backward pass recomputes it instead of keeping its intermediates.

    The routing of a sample depends on that sample alone, so the batch is
    routed in chunks of `chunk_size` samples (the last one padded with zero
    samples), one after another (a `tf.while_loop`), each under
    `tf.recompute_grad`: the forward pass keeps
    only the chunk's inputs, and the backward pass routes each chunk again
    and differentiates it. The votes, their squares and every EM iteration's
    statistics then live for one chunk at a time, in the forward and the
    backward pass, for the price of one more forward routing. The results
    and gradients are those of `routing`, up to rounding; chunked results
    have an unknown static batch size (the caller reshapes them).

    TensorFlow only: on other backends `routing` is returned unchanged.

    Args:
        routing: `routing(poses, activations, kernel, beta_u, beta_a, *static)`
            returning `(poses, activations)`, as `conv_routing` and
            `class_routing`; `static` are Python values.
        chunk_size: samples per chunk, or None for the whole batch at once.

    Returns:
        A function with `routing`'s signature and results.
    """
    if keras.backend.backend() != "tensorflow":
        return routing
    import tensorflow as tf  # Only on the TensorFlow backend.

    def run(poses, activations, kernel, beta_u, beta_a, *static):
        @tf.recompute_grad
        def chunk_routing(chunk_poses, chunk_activations, chunk_kernel, chunk_beta_u,
                          chunk_beta_a):
            return routing(chunk_poses, chunk_activations, chunk_kernel, chunk_beta_u,
                           chunk_beta_a, *static)

        weights = (kernel, beta_u, beta_a)
        if chunk_size is None:
            return tuple(chunk_routing(poses, activations, *weights))
        # The batch padded with zero samples to whole chunks, chunk-major:
        # every chunk has one static shape (one XLA compilation, XLA-safe
        # slicing), and the padding's results are dropped.
        batch = tf.shape(poses)[0]
        chunks = (batch + chunk_size - 1) // chunk_size

        def in_chunks(tensor):
            padded = tf.pad(tensor, [[0, chunks * chunk_size - batch]]
                            + [[0, 0]] * (len(tensor.shape) - 1))
            return tf.reshape(padded, (-1, chunk_size) + tuple(tensor.shape[1:]))

        chunked_poses, chunked_activations = in_chunks(poses), in_chunks(activations)

        def body(index, out_poses, out_activations):
            chunk_poses, chunk_activations = chunk_routing(
                chunked_poses[index], chunked_activations[index], *weights)
            return (index + 1, out_poses.write(index, chunk_poses),
                    out_activations.write(index, chunk_activations))

        outputs = (tf.TensorArray(tf.float32, size=chunks), tf.TensorArray(tf.float32, size=chunks))
        _, out_poses, out_activations = tf.while_loop(
            lambda index, *_: index < chunks, body, (tf.constant(0), *outputs),
            parallel_iterations=1, maximum_iterations=chunks)

        def unchunked(array):
            stacked = array.stack()
            return tf.reshape(stacked, tf.concat([[-1], tf.shape(stacked)[2:]], 0))[:batch]

        return unchunked(out_poses), unchunked(out_activations)

    return run


def scale_poses(poses):
    """`(poses / scale, scale)`: each sample's poses divided by its largest entry, if above 1.

    Args:
        poses: `[batch, ...]` float32.

    Returns:
        The scaled poses, and `scale = max(max |poses|, 1)` per sample,
        shaped `[batch, 1, 1]`, a constant for the gradient (dividing by a
        constant leaves the routing's gradient exact).
    """
    axes = tuple(range(1, len(poses.shape)))
    scale = ops.maximum(ops.stop_gradient(ops.max(ops.abs(poses), axis=axes)), 1.0)
    inverse = ops.reshape(1.0 / scale, (-1,) + (1,) * len(axes))
    return poses * inverse, ops.reshape(scale, (-1, 1, 1))


def _matvec(matrices, vectors):
    """`[b, P, C, I, h] @ [b, P, C, h]` -> `[b, P, C, I]`."""
    return ops.squeeze(ops.matmul(matrices, ops.expand_dims(vectors, -1)), -1)


def softmax_over_types(logits):
    """Softmax over axis 2 (parent types): for children with one position of parents."""
    shifted = logits - ops.stop_gradient(ops.max(logits, axis=2, keepdims=True))
    exponentials = ops.exp(shifted)
    return exponentials / ops.sum(exponentials, axis=2, keepdims=True)


def matrix_votes(poses, transforms):
    """Votes `V = M W` of children for parent types, one matmul per child slot.

    Args:
        poses: `[I, batch, P, 4, 4]`, the children's pose matrices `M`,
            child slot first.
        transforms: `[I, C, 4, 4]`, one `W` per child slot and parent type.

    Returns:
        `[batch, P, C, I, 16]`: `V[b, p, c, i, 4 r + k] = sum_j M[i, b, p, r, j]
        W[i, c, j, k]`.
    """
    slots, parent_types = transforms.shape[0], transforms.shape[1]
    shape = ops.shape(poses)
    votes = ops.matmul(  # [I, (b P 4), 4] @ [I, 4, (C 4)]
        ops.reshape(poses, (slots, -1, POSE_SHAPE[1])),
        ops.reshape(ops.transpose(transforms, (0, 2, 1, 3)),
                    (slots, POSE_SHAPE[0], parent_types * POSE_SHAPE[1])),
    )
    votes = ops.reshape(votes, (slots, shape[1], shape[2], POSE_SHAPE[0], parent_types,
                                POSE_SHAPE[1]))
    votes = ops.transpose(votes, (1, 2, 4, 0, 3, 5))
    return ops.reshape(votes, (shape[1], shape[2], parent_types, slots, POSE_SIZE))


def cast_finite(values, dtype):
    """`values` cast to `dtype`, clipped to its finite range so half precision saturates.

    Routing runs in float32; a pose beyond float16's 65504 would otherwise
    leave a mixed-precision layer as inf.
    """
    if keras.backend.standardize_dtype(dtype) in ("float16", "bfloat16"):
        largest = float(np.finfo(np.float16).max) if dtype == "float16" else 3.0e38
        values = ops.clip(values, -largest, largest)
    return ops.cast(values, dtype)


def window_count(size, kernel_size, strides):
    """Parents along one axis of a valid convolution: `(size - K) // s + 1`."""
    return (size - kernel_size) // strides + 1


def window_cells(grid_size, kernel_size, strides):
    """`[H' * W' * K * K]` int32 numpy: the grid cell `y * W + x` of every window slot.

    Ordered by window row, window column, then kernel offset `kh * K + kw`.
    Gathering a `[H * W, ...]` grid at these indices extracts every valid
    window; a segment reduction over them folds window values back onto
    the grid.
    """
    height, width = grid_size
    rows = window_count(height, kernel_size, strides)
    cols = window_count(width, kernel_size, strides)
    row = np.arange(rows)[:, None, None, None] * strides + np.arange(kernel_size)[:, None]
    col = np.arange(cols)[None, :, None, None] * strides + np.arange(kernel_size)
    cells = np.broadcast_to(row * width + col, (rows, cols, kernel_size, kernel_size))
    return cells.reshape(-1).astype(np.int32)


def extract_windows(grid, kernel_size, strides):
    """Every valid `K x K` window of a grid, positions and offsets first.

    Args:
        grid: `[batch, H, W, ...]`.

    Returns:
        `[H' * W' * K * K, batch, ...]`, ordered as `window_cells`.
    """
    height, width = grid.shape[1], grid.shape[2]
    cells = grid_first(grid)
    return ops.take(cells, window_cells((height, width), kernel_size, strides), axis=0)


def grid_first(grid):
    """`[batch, H, W, ...]` -> `[H * W, batch, ...]`."""
    axes = list(range(grid.ndim))
    grid = ops.transpose(grid, [1, 2, 0] + axes[3:])
    return ops.reshape(grid, (-1,) + tuple(ops.shape(grid)[2:]))


def window_uniform_routing(grid_size, kernel_size, strides, input_types, parent_types):
    """`[H' * W', C, K * K * B]` numpy: 1 / (parents of each child), by window and slot.

    A child's parents are the `parent_types` types at each window holding it.
    The array repeats itself over the `C` types on purpose: handed a
    broadcast instead, XLA folds the first M-step over the types and copies
    the votes and their squares into a layout for it, two more vote-sized
    buffers (0.26 GiB less peak memory for the paper's model at batch 32).
    """
    height, width = grid_size
    cells = window_cells(grid_size, kernel_size, strides)
    windows_per_cell = np.bincount(cells, minlength=height * width).astype(np.float32)
    per_slot = windows_per_cell[cells].reshape(-1, 1, kernel_size * kernel_size, 1)
    shape = (per_slot.shape[0], parent_types, kernel_size * kernel_size, input_types)
    per_child = np.broadcast_to(per_slot * parent_types, shape)
    return (1.0 / per_child).reshape(shape[0], parent_types, -1)


def window_softmax(grid_size, kernel_size, strides):
    """`normalize` for `em_routing` over convolutional parents.

    A child at one grid cell is seen by every window that contains it; its
    routing weights are a softmax over all parent types at all those
    windows' positions, not within one window. The per-child maxima and
    sums are segment reductions over the windows' slots (`window_cells`),
    read back per slot with a gather.

    Returns:
        `logits [batch, H' * W', C, K * K * B] -> R`, the same shape.
    """
    height, width = grid_size
    cells = window_cells(grid_size, kernel_size, strides)
    slots = kernel_size * kernel_size

    def per_child(values, reduce):
        # [b, P, K*K, B] -> each child's value over all its slots, same layout.
        batch, positions, _, types = ops.shape(values)
        slot_first = ops.reshape(ops.transpose(values, (1, 2, 0, 3)), (-1, batch, types))
        per_cell = reduce(slot_first, cells, num_segments=height * width)
        per_slot = ops.reshape(ops.take(per_cell, cells, axis=0),
                               (positions, slots, batch, types))
        return ops.transpose(per_slot, (2, 0, 1, 3))

    def normalize(logits):
        shape = ops.shape(logits)
        logits = ops.reshape(logits, (shape[0], shape[1], shape[2], slots, -1))
        # The softmax is shift-invariant, so the shift needs no gradient.
        largest = per_child(ops.stop_gradient(ops.max(logits, axis=2)), ops.segment_max)
        exponentials = ops.exp(logits - ops.expand_dims(largest, 2))
        totals = per_child(ops.sum(exponentials, axis=2), ops.segment_sum)
        return ops.reshape(exponentials / ops.expand_dims(totals, 2), shape)

    return normalize


def capsule_input_shapes(input_shape, layer):
    """The `(poses, activations)` shapes of a matrix-capsule input, checked."""
    try:
        poses_shape, activations_shape = (tuple(shape) for shape in input_shape)
        valid = (len(poses_shape) == 6 and poses_shape[4:] == POSE_SHAPE
                 and activations_shape[1:] == poses_shape[1:4]
                 and None not in poses_shape[1:])
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(
            f"{layer} expects a tuple (poses, activations) of shapes (batch, H, W, B, 4, 4) "
            f"and (batch, H, W, B) with known H, W, B. Received: input_shape={input_shape}"
        )
    return poses_shape, activations_shape


class EmRoutingLayer(keras.layers.Layer):
    """What `ConvMatrixCapsules` and `ClassMatrixCapsules` share; not public.

    The routing settings and their checks, the weights `kernel`, `beta_u`
    and `beta_a` (kept float32, never autocast, so routing and its
    gradients stay float32 under mixed precision), and the call of a
    routing function, plain or compiled (`routing_jit_compile`).
    """

    def __init__(self, routing_iterations=3, inverse_temperature=0.01, variance_floor=1e-6,
                 kernel_initializer=None, routing_jit_compile="auto", recompute_routing=False,
                 routing_chunk_size=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(recompute_routing, bool):
            raise ValueError(
                f"Received: recompute_routing={recompute_routing!r}; expected True or False")
        if routing_chunk_size is not None:
            check_positive_int("routing_chunk_size", routing_chunk_size)
        self.recompute_routing = recompute_routing
        self.routing_chunk_size = routing_chunk_size
        check_positive_int("routing_iterations", routing_iterations)
        check_positive_float("inverse_temperature", inverse_temperature)
        check_positive_float("variance_floor", variance_floor)
        xla.check_jit_compile_setting(routing_jit_compile, "routing_jit_compile")
        self.routing_iterations = routing_iterations
        self.inverse_temperature = float(inverse_temperature)
        self.variance_floor = float(variance_floor)
        self.kernel_initializer = keras.initializers.get(
            kernel_initializer or keras.initializers.TruncatedNormal(stddev=0.5))
        self.routing_jit_compile = routing_jit_compile

    def add_routing_weights(self, slots, parent_types):
        """`kernel` `(slots, parent_types, 4, 4)` and `beta_u`, `beta_a` `(parent_types,)`."""
        self.kernel = self.add_weight(name="kernel", shape=(slots, parent_types) + POSE_SHAPE,
                                      initializer=self.kernel_initializer, autocast=False)
        self.beta_u = self.add_weight(name="beta_u", shape=(parent_types,),
                                      initializer="zeros", autocast=False)
        self.beta_a = self.add_weight(name="beta_a", shape=(parent_types,),
                                      initializer="zeros", autocast=False)

    def route(self, plain, compiled, inputs, *geometry):
        """`plain` or `compiled`(poses, activations, weights, *geometry, routing settings)."""
        poses, activations = inputs
        routing = compiled if xla.compiles_now(self.routing_jit_compile) else plain
        if self.recompute_routing:
            routing = recomputed(routing, self.routing_chunk_size)
        out_poses, out_activations = routing(
            ops.cast(poses, "float32"), ops.cast(activations, "float32"),
            self.kernel.value, self.beta_u.value, self.beta_a.value, *geometry,
            self.routing_iterations, self.inverse_temperature, self.variance_floor)
        poses_shape, activations_shape = self.compute_output_shape(
            (tuple(poses.shape), tuple(activations.shape)))
        # Chunked routing leaves the batch size unknown to the trace.
        out_poses = ops.reshape(out_poses, (-1,) + tuple(poses_shape[1:]))
        out_activations = ops.reshape(out_activations, (-1,) + tuple(activations_shape[1:]))
        return (cast_finite(out_poses, self.compute_dtype),
                ops.cast(out_activations, self.compute_dtype))

    def get_config(self):
        config = super().get_config()
        config.update({
            "routing_iterations": self.routing_iterations,
            "inverse_temperature": self.inverse_temperature,
            "variance_floor": self.variance_floor,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "routing_jit_compile": self.routing_jit_compile,
            "recompute_routing": self.recompute_routing,
            "routing_chunk_size": self.routing_chunk_size,
        })
        return config

