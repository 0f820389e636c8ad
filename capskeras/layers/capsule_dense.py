"""CapsuleDense: fully connected capsules with dynamic routing by agreement."""

import keras
from keras import ops

from capskeras import ops as capsule_ops
from capskeras.checks import check_positive_int



@keras.saving.register_keras_serializable(package="capskeras")
class CapsuleDense(keras.layers.Layer):
    """Fully connected capsule layer with routing by agreement.

    Every input capsule `i` predicts every output capsule `j` through its own
    matrix: `u_hat[j|i] = u_i W_ij`. Routing then iterates
    `routing_iterations` times, starting from logits `b_ij = 0`:

    1. `c_ij = softmax_j(b_ij)` (coupling coefficients, summing to 1 over the
       output capsules),
    2. `s_j = sum_i c_ij u_hat[j|i]` and `v_j = squash(s_j)`,
    3. `b_ij += u_hat[j|i] . v_j` (skipped after the last iteration).

    The routing loop is a Python `for` loop (unrolled in the graph, so the
    layer compiles with `jit_compile=True` and exports as a SavedModel), and
    gradients flow through every iteration. The predictions `u_hat` are
    computed in the compute dtype; routing logits, couplings and agreement
    are computed in `float32` even under mixed precision, and the output is
    cast back to the compute dtype.

    Args:
        num_capsules: Positive int, number of output capsules.
        capsule_dim: Positive int, dimension of each output capsule.
        routing_iterations: Positive int, number of routing iterations.
            Defaults to `3` as in the paper. `1` means uniform couplings.
        kernel_initializer: Initializer for the transformation matrices `W`.
            Defaults to `"random_normal"` (stddev 0.05). Glorot scaling
            counts every input/output pair of the 4D kernel as fan-in, which
            makes the predictions so small that squash's near-zero gradient
            stalls the first epochs of CapsNet training.
        kernel_regularizer: Optional regularizer for `W`.
        kernel_constraint: Optional constraint for `W`.
        **kwargs: Base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Input capsules, a 3D tensor.
        return_couplings: Python bool. If `True`, also return the coupling
            coefficients `c` used in the last routing iteration, in `float32`.
            Defaults to `False`.

    Input shape:
        `(batch, input_capsules, input_dim)`; `input_capsules` and
        `input_dim` must be known.

    Output shape:
        `(batch, num_capsules, capsule_dim)`. With `return_couplings=True`, a
        tuple of that and couplings of shape
        `(batch, input_capsules, num_capsules)`.

    Weights:
        `kernel` of shape `(input_capsules, num_capsules, input_dim,
        capsule_dim)`: a separate matrix per input/output capsule pair.

    Example:

    ```python
    primary = keras.Input((1152, 8))
    digits = CapsuleDense(num_capsules=10, capsule_dim=16)(primary)
    # digits.shape == (None, 10, 16)
    ```

    Reference:
        Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules",
        NeurIPS 2017, Procedure 1. https://arxiv.org/abs/1710.09829
    """

    def __init__(
        self,
        num_capsules,
        capsule_dim,
        routing_iterations=3,
        kernel_initializer="random_normal",
        kernel_regularizer=None,
        kernel_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("num_capsules", num_capsules)
        check_positive_int("capsule_dim", capsule_dim)
        check_positive_int("routing_iterations", routing_iterations)
        self.num_capsules = num_capsules
        self.capsule_dim = capsule_dim
        self.routing_iterations = routing_iterations
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)

    def _check_input_shape(self, input_shape):
        if len(input_shape) != 3 or None in tuple(input_shape)[1:]:
            raise ValueError(
                "CapsuleDense expects a 3D input (batch, input_capsules, "
                "input_dim) with known input_capsules and input_dim. "
                f"Received: input_shape={tuple(input_shape)}"
            )

    def build(self, input_shape):
        self._check_input_shape(input_shape)
        _, input_capsules, input_dim = input_shape
        self.input_spec = keras.layers.InputSpec(
            ndim=3, axes={1: input_capsules, 2: input_dim}
        )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(input_capsules, self.num_capsules, input_dim, self.capsule_dim),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )

    def call(self, inputs, return_couplings=False):
        input_capsules, num_capsules = self.kernel.shape[0], self.num_capsules
        input_dim, capsule_dim = self.kernel.shape[2], self.capsule_dim
        batch = ops.shape(inputs)[0]
        # All predictions in one batched matmul over the input capsules i:
        # [i, batch, d] @ [i, d, (j e)] -> [i, batch, (j e)], then laid out
        # as [batch, out j, in i, dim e], so that the routing sums below are
        # batched matrix-vector products over (batch, j): no transposes or
        # broadcast temporaries of u_hat's size inside the loop. (An einsum
        # "bid,ijde->bjie" lowers to the same matmul plus transposes of
        # both operands and of u_hat, and is slower on CPU.)
        kernel = ops.reshape(
            ops.transpose(self.kernel, (0, 2, 1, 3)),
            (input_capsules, input_dim, num_capsules * capsule_dim),
        )
        u_hat = ops.matmul(ops.transpose(inputs, (1, 0, 2)), kernel)
        u_hat = ops.reshape(u_hat, (input_capsules, batch, num_capsules, capsule_dim))
        u_hat = ops.transpose(u_hat, (1, 2, 0, 3))
        if self.compute_dtype != "float32":
            u_hat = ops.cast(u_hat, "float32")

        # The first iteration has b = 0, hence uniform couplings 1/N_out:
        # skip the softmax and the zero logits.
        logits = None
        couplings = None
        for iteration in range(self.routing_iterations):
            if logits is None:
                s = ops.sum(u_hat, axis=2) / float(num_capsules)
            else:
                couplings = ops.softmax(logits, axis=1)  # over outputs j
                # s_j = sum_i c_ij u_hat[j|i]: [b, j, 1, i] @ [b, j, i, e].
                s = ops.squeeze(
                    ops.matmul(ops.expand_dims(couplings, 2), u_hat), axis=2
                )
            v = capsule_ops.squash(s)
            if iteration < self.routing_iterations - 1:
                # u_hat[j|i] . v_j: [b, j, i, e] @ [b, j, e, 1].
                agreement = ops.squeeze(
                    ops.matmul(u_hat, ops.expand_dims(v, -1)), axis=-1
                )
                logits = agreement if logits is None else logits + agreement

        outputs = v if self.compute_dtype == "float32" else ops.cast(v, self.compute_dtype)
        if not return_couplings:
            return outputs
        if couplings is None:
            couplings = ops.ones_like(u_hat[..., 0]) / float(num_capsules)
        return outputs, ops.transpose(couplings, (0, 2, 1))

    def compute_output_shape(self, input_shape):
        self._check_input_shape(input_shape)
        return (input_shape[0], self.num_capsules, self.capsule_dim)

    def compute_output_spec(self, inputs, return_couplings=False):
        shape = self.compute_output_shape(inputs.shape)
        outputs = keras.KerasTensor(shape, dtype=self.compute_dtype)
        if not return_couplings:
            return outputs
        couplings = keras.KerasTensor(
            (inputs.shape[0], inputs.shape[1], self.num_capsules),
            dtype="float32",
        )
        return outputs, couplings

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_capsules": self.num_capsules,
                "capsule_dim": self.capsule_dim,
                "routing_iterations": self.routing_iterations,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "kernel_regularizer": keras.regularizers.serialize(
                    self.kernel_regularizer
                ),
                "kernel_constraint": keras.constraints.serialize(
                    self.kernel_constraint
                ),
            }
        )
        return config
