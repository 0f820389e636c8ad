"""CapsuleDense: fully connected capsules with dynamic routing by agreement."""

import keras
from keras import ops

from capskeras import ops as capsule_ops
from capskeras import xla
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

    On the TensorFlow backend the routing can run as one XLA cluster
    (`capskeras.xla.compiled`), compiled once per batch size, while the rest
    of the model keeps TensorFlow's kernels: `routing_jit_compile` chooses
    where. The results are the same up to float rounding.

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
        routing_jit_compile: `"auto"`, `True` or `False`: where the routing
            runs as an XLA cluster on the TensorFlow backend (elsewhere it
            never does). `"auto"` (the default) compiles it inside the train,
            test and predict steps Keras traces for `fit`, `evaluate`,
            `predict` and the `*_on_batch` methods, where it is fastest, and
            uses the plain kernels everywhere else: eagerly, in your own
            `tf.function`s and in every SavedModel export
            (`capskeras.export`, `model.export()`, `tf.saved_model.save`),
            which TensorFlow Serving then runs without extra flags. `True`
            compiles it in every trace, for custom training loops (its
            SavedModels then need an XLA-enabled server); `False` never
            does. Keras's own `compile(jit_compile=True)` compiles the whole
            step, routing included, whatever this says.
        **kwargs: Base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: Input capsules, a 3D tensor.
        training: Python bool. Training computes the predictions with a
            matmul, whose gradient is cheap; compiled inference with a fused
            loop, and on CPU routes the two halves of a batch of two or more
            as independent XLA clusters, which TensorFlow runs side by side.
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
        routing_jit_compile="auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("num_capsules", num_capsules)
        check_positive_int("capsule_dim", capsule_dim)
        check_positive_int("routing_iterations", routing_iterations)
        xla.check_jit_compile_setting(routing_jit_compile, "routing_jit_compile")
        self.routing_jit_compile = routing_jit_compile
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

    def call(self, inputs, training=None, return_couplings=False):
        kernel = self.kernel.value  # In the compute dtype (autocast).
        if not xla.compiles_now(self.routing_jit_compile):
            outputs, couplings = route_by_agreement(
                inputs, kernel, self.routing_iterations, return_couplings
            )
        elif training:
            outputs, couplings = _compiled_training_routing(
                inputs, kernel, self.routing_iterations, return_couplings
            )
        else:
            outputs, couplings = _compiled_inference_routing(
                inputs, kernel, self.routing_iterations, return_couplings
            )
        outputs = ops.cast(outputs, self.compute_dtype)
        if not return_couplings:
            return outputs
        return outputs, couplings

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
                "routing_jit_compile": self.routing_jit_compile,
            }
        )
        return config


def route_by_agreement(inputs, kernel, routing_iterations, return_couplings=False,
                       fused_predictions=False):
    """Routing by agreement (Procedure 1 of Sabour et al., 2017).

    Args:
        inputs: input capsules `u`, `[batch, input_capsules, input_dim]`.
        kernel: the matrices `W`, `[input_capsules, num_capsules, input_dim,
            capsule_dim]`, in the dtype of `inputs`.
        routing_iterations: Python int >= 1.
        return_couplings: Python bool; whether to also compute the coupling
            coefficients of the last iteration.
        fused_predictions: Python bool; how `_predictions` computes u_hat.
            Only for code that XLA compiles and does not differentiate.

    Returns:
        `(outputs, couplings)`: the output capsules `v`, `[batch,
        num_capsules, capsule_dim]` in `float32`, and the couplings `c`,
        `[batch, input_capsules, num_capsules]` in `float32`, or `None`
        when `return_couplings` is `False`.
    """
    input_capsules, num_capsules, input_dim, capsule_dim = kernel.shape
    # Iteration 1: the logits are 0, so the couplings are uniform and
    # s_j = 1/N_out sum_i W_ij u_i is one matmul over all (i, d) at once;
    # it needs no predictions u_hat.
    s = ops.matmul(
        ops.reshape(inputs, (-1, input_capsules * input_dim)),
        ops.reshape(
            ops.transpose(kernel, (0, 2, 1, 3)),
            (input_capsules * input_dim, num_capsules * capsule_dim),
        ),
    )
    s = ops.reshape(ops.cast(s, "float32"), (-1, num_capsules, capsule_dim))
    outputs = capsule_ops.squash(s / float(num_capsules))
    couplings = None
    if routing_iterations > 1:
        u_hat = _predictions(inputs, kernel, fused_predictions)
        # The agreement u_hat[j|i] . v_j is linear in v_j, so the logits
        # after t iterations, sum over t of u_hat . v_t, are u_hat . (sum v_t):
        # one product per iteration and no running logits.
        summed_outputs = outputs
        for _ in range(1, routing_iterations):
            logits = ops.squeeze(  # [b, j, i, e] @ [b, j, e, 1]
                ops.matmul(u_hat, ops.expand_dims(summed_outputs, -1)), axis=-1
            )
            couplings = _softmax_over_outputs(logits)
            s = ops.squeeze(  # [b, j, 1, i] @ [b, j, i, e]
                ops.matmul(ops.expand_dims(couplings, 2), u_hat), axis=2
            )
            outputs = capsule_ops.squash(s)
            summed_outputs = summed_outputs + outputs
    if not return_couplings:
        return outputs, None
    if couplings is None:
        couplings = ops.ones((ops.shape(inputs)[0], num_capsules, input_capsules)) / float(
            num_capsules
        )
    return outputs, ops.transpose(couplings, (0, 2, 1))


def _predictions(inputs, kernel, fused):
    """All predictions `u_hat[b, j, i, e] = sum_d u[b, i, d] W[i, j, d, e]`.

    They are laid out as `[batch, out j, in i, dim e]`, so that the routing
    sums are batched matrix-vector products over `(batch, j)`, and returned
    in `float32`.

    Args:
        inputs: `[batch, input_capsules, input_dim]`.
        kernel: `[input_capsules, num_capsules, input_dim, capsule_dim]`.
        fused: Python bool. `True` writes u_hat as one product-and-sum over
            `d`, which XLA compiles to a single loop writing u_hat in place:
            2.6x faster on CPU than the matmul and transpose, but plain
            kernels would materialise a `[b, j, i, d, e]` temporary, and
            XLA compiles its gradient poorly. `False` uses one batched
            matmul over the input capsules `i`, `[i, b, d] @ [i, d, (j e)]`,
            and a transpose.
    """
    input_capsules, num_capsules, input_dim, capsule_dim = kernel.shape
    if fused:
        # [b, 1, i, d, 1] * [1, j, i, d, e], summed over d.
        u_hat = ops.sum(
            ops.expand_dims(ops.expand_dims(inputs, 1), -1)
            * ops.expand_dims(ops.transpose(kernel, (1, 0, 2, 3)), 0),
            axis=3,
        )
        return ops.cast(u_hat, "float32")
    kernel = ops.reshape(
        ops.transpose(kernel, (0, 2, 1, 3)),
        (input_capsules, input_dim, num_capsules * capsule_dim),
    )
    u_hat = ops.matmul(ops.transpose(inputs, (1, 0, 2)), kernel)
    u_hat = ops.reshape(u_hat, (input_capsules, -1, num_capsules, capsule_dim))
    return ops.cast(ops.transpose(u_hat, (1, 2, 0, 3)), "float32")


def _softmax_over_outputs(logits):
    """Softmax over axis 1 of `[batch, num_capsules, input_capsules]` logits.

    Written out rather than `ops.softmax(logits, axis=1)`, which on
    TensorFlow transposes the logits to put the axis last and back: twice as
    slow for CapsNet's 1,152 x 10 logits per image.
    """
    exponentials = ops.exp(logits - ops.max(logits, axis=1, keepdims=True))
    return exponentials / ops.sum(exponentials, axis=1, keepdims=True)


def _route_with_fused_predictions(inputs, kernel, routing_iterations, return_couplings=False):
    return route_by_agreement(
        inputs, kernel, routing_iterations, return_couplings, fused_predictions=True
    )


# Training differentiates the routing, so its predictions come from the
# matmul; inference writes them with the fused loop.
_compiled_training_routing = xla.compiled(route_by_agreement)
_compiled_fused_routing = xla.compiled(_route_with_fused_predictions)


def _compiled_inference_routing(inputs, kernel, routing_iterations, return_couplings):
    """Compiled inference routing; on CPU, the batch halves as two clusters.

    XLA runs a cluster's fused loops on one CPU thread; two independent
    clusters, one per half batch, run side by side (22.3 ms against 26.8
    for CapsNet's routing at batch 100 on 2 AMD EPYC cores). Not on a GPU,
    where they would be two launches, and never on a batch of one.
    """
    if not xla.runs_on_cpu():
        return _compiled_fused_routing(inputs, kernel, routing_iterations, return_couplings)
    batch = inputs.shape[0]

    def whole():
        return _compiled_fused_routing(inputs, kernel, routing_iterations, return_couplings)

    def halves():
        half = ops.shape(inputs)[0] // 2
        parts = [
            _compiled_fused_routing(part, kernel, routing_iterations, return_couplings)
            for part in (inputs[:half], inputs[half:])
        ]
        outputs = ops.concatenate([part_outputs for part_outputs, _ in parts], axis=0)
        if not return_couplings:
            return outputs, None
        return outputs, ops.concatenate([part_couplings for _, part_couplings in parts], axis=0)

    if batch is not None:
        return halves() if batch >= 2 else whole()
    if not return_couplings:
        return ops.cond(ops.shape(inputs)[0] >= 2, lambda: halves()[0], lambda: whole()[0]), None
    return ops.cond(ops.shape(inputs)[0] >= 2, halves, whole)
