"""FLOPs of a traced graph, counted op by op with TensorFlow's statistics.

TensorFlow registers a FLOPs statistic for most arithmetic ops. Three of
them are wrong for what capskeras trains, and `op_flops` counts them itself:

- `Conv2DBackpropInput` and `Conv2DBackpropFilter` count the input's
  spatial size divided by the stride squared where the convolution's output
  size belongs, which equals it only for "same" padding. For CapsNet's
  "valid" 9x9 convolutions that is 784 positions for 400 (conv1) and 100
  for 36 (the primary capsules): their backward pass counted 2 to 2.8 times
  its work. Counted here as their forward convolution: 2 x the gradient's
  elements (the convolution's output) x the filter's spatial size x its
  input channels.
- `BatchMatMul` reads an attribute `transpose_a` that batched matmuls do
  not have (theirs is `adj_x`), so the gradients that multiply by an
  adjoint take the wrong contraction size: the gradient of CapsNet's
  routing sum `c [1 x I] @ u_hat [I x E]` with respect to `u_hat`, an outer
  product, counted 1,152 times its work. Counted here with `adj_x`.

And only ops that the graph's outputs depend on are counted: a
training step's graph also holds the first layer's input gradient, which
nothing uses and TensorFlow prunes when it runs.
"""

import collections
import dataclasses

import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops

# Op types that move or reinterpret data but do no arithmetic: TensorFlow
# registers no FLOPs statistic for them, and none is missing from the count.
NO_ARITHMETIC_OPS = frozenset(
    {
        "Assert", "AssignVariableOp", "BroadcastGradientArgs", "BroadcastTo", "Cast",
        "ConcatV2", "Const", "ExpandDims", "Fill", "GatherV2", "Identity", "IdentityN",
        "InvertPermutation", "NoOp", "OnesLike", "Pack", "Placeholder", "Range",
        "ReadVariableOp", "Reshape", "ReverseV2", "Shape", "ShapeN", "Size", "Slice",
        "Split", "Squeeze", "StopGradient", "StridedSlice", "Tile", "Transpose", "Unpack",
        "VarHandleOp", "ZerosLike",
    }
)

_CONV_BACKPROP_OPS = frozenset({"Conv2DBackpropInput", "Conv2DBackpropFilter"})
_BATCH_MATMUL_OPS = frozenset({"BatchMatMul", "BatchMatMulV2", "BatchMatMulV3"})


@dataclasses.dataclass
class FlopCount:
    """A graph's counted FLOPs.

    Attributes:
        total: FLOPs of every counted op.
        by_op_type: `{op type: FLOPs}`, largest first.
        uncounted_ops: sorted op types that do arithmetic but have no
            registered statistic (or no static shape): missing from `total`.
        uncounted_elements: the elements those ops output, a rough size of
            what is missing (about one FLOP per element).
    """

    total: int
    by_op_type: dict
    uncounted_ops: list
    uncounted_elements: int


def op_flops(graph, op):
    """FLOPs of one op of `graph`, or `None` where TensorFlow cannot count them."""
    if op.type in _CONV_BACKPROP_OPS:
        # Inputs: (input or its sizes, filter or its sizes, out_backprop);
        # the filter shape is the input's (backprop input) or the output's.
        filter_shape = (op.inputs[1] if op.type == "Conv2DBackpropInput" else op.outputs[0]).shape
        gradient_elements = op.inputs[2].shape.num_elements()
        if gradient_elements is None or not filter_shape.is_fully_defined():
            return None
        height, width, in_channels, _ = filter_shape.as_list()
        return 2 * gradient_elements * height * width * in_channels
    if op.type in _BATCH_MATMUL_OPS:
        a_shape, outputs = op.inputs[0].shape, op.outputs[0].shape.num_elements()
        if a_shape.rank is None or outputs is None:
            return None
        contraction = a_shape[-2] if op.get_attr("adj_x") else a_shape[-1]
        return None if contraction is None else 2 * int(contraction) * outputs
    try:
        return tf_ops.get_stats_for_node_def(graph, op.node_def, "flops").value
    except ValueError:  # Registered, but the shapes are not static.
        return None


def _live_ops(graph):
    """The ops that `graph`'s outputs depend on (all of them if it names none)."""
    outputs = [tensor.op for tensor in getattr(graph, "outputs", []) if tensor is not None]
    if not outputs:
        return set(graph.get_operations())
    live, pending = set(), list(outputs)
    while pending:
        op = pending.pop()
        if op in live:
            continue
        live.add(op)
        pending.extend(tensor.op for tensor in op.inputs)
        pending.extend(op.control_inputs)
    return live


def graph_flops(graph):
    """Counts the FLOPs of `graph`'s live ops; returns a `FlopCount`."""
    by_type, uncounted, elements = collections.Counter(), set(), 0
    live = _live_ops(graph)
    for op in graph.get_operations():
        if op not in live or op.type in NO_ARITHMETIC_OPS:
            continue
        counted = op_flops(graph, op)
        if counted is None:
            uncounted.add(op.type)
            elements += sum(output.shape.num_elements() or 0 for output in op.outputs)
        elif counted:
            by_type[op.type] += int(counted)
    return FlopCount(
        total=int(sum(by_type.values())),
        by_op_type=dict(by_type.most_common()),
        uncounted_ops=sorted(uncounted),
        uncounted_elements=int(elements),
    )


def _specs_at_batch_1(tensors):
    return tf.nest.map_structure(
        lambda t: tf.TensorSpec((1,) + tuple(t.shape[1:]), t.dtype), tensors
    )


def forward_flops(model, inputs):
    """`graph_flops` of one example's forward pass in inference mode.

    Traces `model(inputs, training=False)` as a `tf.function` at batch 1;
    `inputs` is a batch that gives the structure, shapes and dtypes. The
    trace is not one of Keras's steps, so `CapsuleDense` (routing compiled
    "auto") writes its plain kernels, whose arithmetic the count sees.
    """
    forward = tf.function(lambda x: model(x, training=False))
    return graph_flops(forward.get_concrete_function(_specs_at_batch_1(inputs)).graph)


def train_flops(model, inputs, targets):
    """`graph_flops` of one example's loss and gradients, as a train step computes them.

    Traces the forward pass in training mode, the compiled loss
    (`model.compute_loss`) and the gradients of the trainable weights at
    batch 1; frozen encoders behind a stop-gradient get no backward pass,
    and the first layer's unused input gradient is not counted. Not
    included: the optimizer's update (a few FLOPs per weight per step, not
    per example).
    """

    def step(x, y):
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, training=True)
        return tape.gradient(loss, model.trainable_variables)

    concrete = tf.function(step).get_concrete_function(
        _specs_at_batch_1(inputs), _specs_at_batch_1(targets)
    )
    return graph_flops(concrete.graph)

