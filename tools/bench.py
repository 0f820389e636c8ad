"""Throughput, memory and FLOPs of one experiment's model on this machine.

    python tools/bench.py --model=enc_deep_bp_dec_class --batch_size=100

`--model` names a benchmark registered in `BENCHMARKS`, or an experiment of
the trainer: a flagfile `flags/<model>.cfg`. The model is built and compiled
exactly as the trainer builds it (`capskeras.training.train.build_model`)
and stepped on a synthetic batch of the right shape: images uniform in
[0, 1] and integer labels, made into the model's `(inputs, targets)` by its
`make_example`. Any trainer flag
given on the command line (`--batch_size`, `--jit_compile`, `--precision`,
`--pad_to`, ...) overrides the experiment's flagfile; `--model` here is the
benchmark's name, not the trainer's `--model`.

After `--warmup_steps` untimed steps, each of `--repeats` repeats times
`--steps` calls of the compiled train step (`model.train_on_batch`) and of
the compiled predict step (`model.predict_on_batch`), taking turns; the
reported throughputs are medians over the repeats.

Two comma-separated names (`--model=capsnet_mnist,capsnet_conv_stack`)
build both models and time their steps in turns within every repeat; the
JSON object then holds each model's figures under `models` and the first
model's throughputs over the second's as `train_ratio` and `infer_ratio`.

Prints one JSON object on stdout and nothing else (logs go to stderr):
throughputs, peak resident memory, parameter count, forward FLOPs per image
counted by TensorFlow's graph profiler, this machine's float32 matmul peak
measured in the same run, and the FLOP rates achieved. A training step is
counted as 3x the forward FLOPs (forward, plus about 2x for the backward
pass: `train_flops_per_image`, `achieved_train_gflops`); frozen encoders
skip their backward pass, so for them this overstates the work done, and
`train_flops_per_image_counted` / `achieved_train_gflops_counted` give the
profiler's count of the loss-and-gradients graph instead.
"""

# oneDNN on (unless TF_ENABLE_ONEDNN_OPTS is set) before anything imports TensorFlow.
from capskeras import onednn

onednn.enable()

import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.python.framework import ops as tf_ops  # noqa: E402
from tensorflow.python.profiler import model_analyzer  # noqa: E402
from tensorflow.python.profiler import option_builder  # noqa: E402

from capskeras.layers import CapsuleDense  # noqa: E402
from capskeras.layers import CapsuleLength  # noqa: E402
from capskeras.losses import MarginLoss  # noqa: E402
from capskeras.models.capsnet import capsule_encoder  # noqa: E402
from capskeras.training import flags as trainer_flags  # noqa: E402
from capskeras.training.config import TrainConfig  # noqa: E402
from capskeras.training.train import build_model  # noqa: E402
from capskeras.training.train import image_shape_of  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
FLAGS_DIR = REPO / "flags"

# A training step costs this many forward passes (forward + backward).
TRAIN_FLOPS_FACTOR = 3
TRAIN_FLOPS_ASSUMPTION = (
    "train FLOPs = 3 x forward FLOPs per image (backward ~ 2 x forward); "
    "frozen encoders skip their backward pass, so for them this overstates the work: "
    "see train_flops_per_image_counted"
)

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


@dataclasses.dataclass
class Workload:
    """A compiled model and the batches it is stepped on.

    Attributes:
        model: a compiled `keras.Model`.
        image_shape: `(H, W, C)` of its input images.
        make_example: `make_example(images, labels) -> (inputs, targets)`,
            the pair `train_on_batch` takes.
        num_classes: number of classes of the synthetic labels.
        description: where the model comes from, for the report.
    """

    model: keras.Model
    image_shape: tuple
    make_example: object
    num_classes: int = 10
    description: str = ""


def study_workload(config):
    """The `Workload` of a trainer configuration, built as the trainer builds it."""
    model = build_model(config)
    head = getattr(model, "head", None)
    names = ("model", "encoder", "head") if config.model == "study" else ("model",)
    parts = [f"{name}={getattr(config, name)}" for name in names]
    return Workload(
        model=model,
        image_shape=tuple(image_shape_of(config)),
        make_example=model.make_example,
        num_classes=getattr(head, "num_classes", 10),
        description=", ".join(parts),
    )


# Benchmarks that are not trainer experiments, consulted before `flags/`:
# `name: builder`, where `builder(config) -> Workload` and `config` is the
# `TrainConfig` of the trainer's defaults and the trainer flags given on
# the command line (batch size, jit_compile, precision, seed...).
def capsnet_conv_stack(config):
    """CapsNet's two convolutions alone, the floor of CapsNet's cost.

    Exactly CapsNet's conv1 (256 9x9, ReLU) and primary-capsule convolution
    (256 9x9, stride 2) on the same images, trained on a loss that costs
    next to nothing: global average pooling, a 10-way dense layer and
    cross-entropy on the labels. Adam and the trainer's learning rate and
    `jit_compile`, as CapsNet's trainer compiles it. `capsnet_mnist`'s
    throughput over this one's is the share of CapsNet's time left to the
    convolutions.
    """
    image_shape = tuple(image_shape_of(config))
    model = keras.Sequential(
        [
            keras.Input(image_shape),
            keras.layers.Conv2D(256, 9, activation="relu", name="conv1"),
            keras.layers.Conv2D(256, 9, strides=2, name="primary_conv"),
            keras.layers.GlobalAveragePooling2D(name="pool"),
            keras.layers.Dense(10, name="logits"),
        ],
        name="capsnet_conv_stack",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=config.jit_compile,
    )
    return Workload(
        model=model,
        image_shape=image_shape,
        make_example=lambda images, labels: (images, labels),
        num_classes=10,
        description="CapsNet's conv1 and primary-capsule conv, pooled to a 10-way softmax",
    )


def capsnet_routing(config):
    """CapsNet's digit-capsule layer alone: routing by agreement, timed apart.

    Exactly CapsNet's `digit_capsules` (10 capsules of 16D routed from its
    primary capsules, `--routing_iterations` iterations) on inputs of the
    primary capsules' shape (`[1152, 8]` at 28x28), uniform in [0, 1],
    trained on the margin loss of the capsule lengths with Adam. Where
    `capsnet_conv_stack` is CapsNet without its capsules, this is its
    capsules without the convolutions.
    """
    primary = capsule_encoder(image_shape_of(config)).get_layer("primary_capsules")
    capsules_shape = tuple(primary.output.shape[1:])
    model = keras.Sequential(
        [
            keras.Input(capsules_shape),
            CapsuleDense(10, 16, routing_iterations=config.routing_iterations,
                         name="digit_capsules"),
            CapsuleLength(name="lengths"),
        ],
        name="capsnet_routing",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=MarginLoss(),
        jit_compile=config.jit_compile,
    )
    return Workload(
        model=model,
        image_shape=capsules_shape,
        make_example=lambda capsules, labels: (capsules, labels),
        num_classes=10,
        description="CapsNet's digit capsules alone, on inputs of its primary capsules' shape",
    )


BENCHMARKS = {"capsnet_conv_stack": capsnet_conv_stack, "capsnet_routing": capsnet_routing}


def experiment_names():
    """Names of the trainer's experiments: the flagfiles in `flags/`."""
    return sorted(path.stem for path in FLAGS_DIR.glob("*.cfg"))


def accepted_names():
    """Every accepted `--model`: registered benchmarks, then experiments."""
    return sorted(BENCHMARKS) + [name for name in experiment_names() if name not in BENCHMARKS]


def resolve(name, overrides=()):
    """The `(config, builder)` that `--model=name` benchmarks.

    Args:
        name: a key of `BENCHMARKS` or the name of a flagfile in `flags/`.
        overrides: `--flag=value` trainer flags applied after the flagfile.

    Raises:
        ValueError: `name` is neither, naming it and the accepted names.
    """
    if name in BENCHMARKS:
        return trainer_flags.config_from_arguments(overrides), BENCHMARKS[name]
    if name in experiment_names():
        path = str(FLAGS_DIR / f"{name}.cfg")
        return trainer_flags.config_from_flagfile(path, overrides), study_workload
    raise ValueError(f"Received: model={name!r}; expected one of {accepted_names()}")


def synthetic_batch(workload, batch_size, seed=0):
    """The model's `(inputs, targets)` for images uniform in [0, 1] and random labels."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 1.0, (batch_size,) + workload.image_shape).astype("float32")
    labels = rng.integers(0, workload.num_classes, (batch_size,)).astype("int32")
    return workload.make_example(tf.convert_to_tensor(images), tf.convert_to_tensor(labels))


def time_steps(steps_by_name, steps, repeats, warmup_steps):
    """Times `steps` calls of each step function per repeat, after warm-up calls.

    The functions take turns call by call (A, B, A, B, ...), so a load that
    comes and goes on a shared machine slows them alike.

    Args:
        steps_by_name: dict mapping names to functions of no arguments.
        steps: calls per function and repeat.
        repeats: timed repeats.
        warmup_steps: untimed calls of each function first.

    Returns:
        A dict mapping each name to `(seconds, cores_busy)`: the wall-clock
        seconds of its repeats (the sum of its `steps` calls in each), and
        this process's CPU time over that wall time (about the core count
        when nothing else competes for the CPU).
    """
    for step in steps_by_name.values():
        for _ in range(warmup_steps):
            step()
    seconds = {name: [] for name in steps_by_name}
    cpu_seconds = dict.fromkeys(steps_by_name, 0.0)
    for _ in range(repeats):
        repeat_seconds = dict.fromkeys(steps_by_name, 0.0)
        for _ in range(steps):
            for name, step in steps_by_name.items():
                cpu_started, started = time.process_time(), time.perf_counter()
                step()
                repeat_seconds[name] += time.perf_counter() - started
                cpu_seconds[name] += time.process_time() - cpu_started
        for name in steps_by_name:
            seconds[name].append(repeat_seconds[name])
    return {
        name: (seconds[name], cpu_seconds[name] / sum(seconds[name]))
        for name in steps_by_name
    }


def einsum_flops(equation, input_shapes):
    """FLOPs of an `Einsum`: 2 x the product of the sizes of all distinct indices.

    TensorFlow's profiler registers no FLOPs statistic for `Einsum`. Every
    combination of index values costs one multiply-add, so a contraction
    `"bid,ijde->bjie"` costs `2 * B * I * D * J * E`. An ellipsis stands
    for the broadcast of the dimensions it covers in each operand.

    Args:
        equation: the einsum equation, e.g. `"bid,ijde->bjie"`.
        input_shapes: one fully known shape (sequence of ints) per operand.

    Returns:
        The FLOPs, an int; `None` if a shape is not fully known.

    Example:

    >>> einsum_flops("ij,jk->ik", [(2, 3), (3, 4)])
    48
    """
    inputs = equation.replace(" ", "").split("->")[0].split(",")
    if len(inputs) != len(input_shapes):
        raise ValueError(
            f"Received: equation={equation!r} with {len(input_shapes)} operands; "
            f"expected {len(inputs)}"
        )
    sizes, ellipsis_shapes = {}, []
    for labels, shape in zip(inputs, input_shapes):
        if shape is None or any(dim is None for dim in shape):
            return None
        shape = [int(dim) for dim in shape]
        if "..." in labels:
            before, after = labels.split("...")
            ellipsis_shapes.append(shape[len(before):len(shape) - len(after)])
            shape = shape[:len(before)] + shape[len(shape) - len(after):]
            labels = before + after
        for label, dim in zip(labels, shape):
            sizes[label] = max(sizes.get(label, 1), dim)
    flops = 2 * math.prod(sizes.values())
    if ellipsis_shapes:
        flops *= math.prod(np.broadcast_shapes(*[tuple(s) for s in ellipsis_shapes]))
    return int(flops)


def _einsum_op_flops(op):
    shapes = [tensor.shape.as_list() if tensor.shape.rank is not None else None
              for tensor in op.inputs]
    return einsum_flops(op.get_attr("equation").decode(), shapes)


def graph_flops(graph):
    """FLOPs of `graph` counted by TensorFlow's profiler, and what it misses.

    Returns:
        `(flops, uncounted_ops, uncounted_elements)`: the profiler's
        `float_operation()` total plus `einsum_flops` of every `Einsum`
        (which the profiler does not count); the sorted op types in the graph that do
        arithmetic but have no registered FLOPs statistic (or no static
        shape), so are missing from the total; and the number of elements
        those ops output, a rough size of what is missing (about one FLOP
        per element; more for sorts).
    """
    options = (
        option_builder.ProfileOptionBuilder(
            option_builder.ProfileOptionBuilder.float_operation()
        )
        .with_empty_output()
        .build()
    )
    flops = model_analyzer.profile(graph, options=options).total_float_ops
    uncounted, elements = set(), 0
    for op in graph.get_operations():
        if op.type in NO_ARITHMETIC_OPS:
            continue
        if op.type == "Einsum":  # No registered statistic: counted here.
            counted = _einsum_op_flops(op)
            flops += counted or 0
        else:
            try:
                counted = tf_ops.get_stats_for_node_def(graph, op.node_def, "flops").value
            except ValueError:  # Registered, but the shapes are not static.
                counted = None
        if counted is None:
            uncounted.add(op.type)
            elements += sum(output.shape.num_elements() or 0 for output in op.outputs)
    return int(flops), sorted(uncounted), int(elements)


def _specs_at_batch_1(tensors):
    return tf.nest.map_structure(
        lambda t: tf.TensorSpec((1,) + tuple(t.shape[1:]), t.dtype), tensors
    )


def forward_flops(model, inputs):
    """`graph_flops` of one example's forward pass in inference mode.

    Traces `model(inputs, training=False)` as a `tf.function` at batch 1;
    `inputs` is a batch that gives the structure, shapes and dtypes. The
    trace is not a Keras step, so layers compiling parts of themselves
    "auto" write the plain kernels: the profiler does not look inside XLA
    clusters, and the plain kernels do the same arithmetic.
    """
    forward = tf.function(lambda x: model(x, training=False))
    concrete = forward.get_concrete_function(_specs_at_batch_1(inputs))
    return graph_flops(concrete.graph)


def train_flops(model, inputs, targets):
    """`graph_flops` of one example's loss and gradients, as a train step computes them.

    Traces the forward pass in training mode, the compiled loss
    (`model.compute_loss`) and the gradients of the trainable weights at
    batch 1; frozen encoders behind a stop-gradient get no backward pass.
    Not included: the optimizer's update (a few FLOPs per weight per step,
    not per example). Included: an input gradient of the first layer that
    nothing uses (pruned when the step runs). Traced without XLA clusters,
    as `forward_flops` is.
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


def matmul_peak_gflops(sizes=(1024, 2048), repeats=5, warmup=2):
    """This machine's float32 matmul rate: the best over `sizes` of 2 n^3 / median time.

    Returns:
        `(gflops, n)`: the best rate and the size that reached it.
    """
    best, best_size = 0.0, None
    rng = np.random.default_rng(0)
    for n in sizes:
        a = tf.constant(rng.uniform(-1, 1, (n, n)).astype("float32"))
        b = tf.constant(rng.uniform(-1, 1, (n, n)).astype("float32"))

        def step():
            # Reading one element back waits for the product, also on a GPU.
            tf.linalg.matmul(a, b)[0, 0].numpy()

        seconds = statistics.median(time_steps({"matmul": step}, 1, repeats, warmup)["matmul"][0])
        gflops = 2 * n**3 / seconds / 1e9
        logging.info("float32 matmul %dx%d: %.1f GFLOP/s", n, n, gflops)
        if gflops > best:
            best, best_size = gflops, n
    return best, best_size


def device_description():
    """The device the model runs on, in words."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        count = f" (x{len(gpus)})" if len(gpus) > 1 else ""
        return f"GPU: {details.get('device_name', gpus[0].name)}{count}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU: {cpu}, {os.cpu_count()} cores"


def peak_rss_mib():
    """Peak resident memory of this process in MiB (`ru_maxrss` is KiB on Linux)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.platform == "darwin":  # Bytes on macOS.
        kib /= 1024
    return round(kib / 1024, 1)


@dataclasses.dataclass
class _Prepared:
    """One benchmarked model, built and stepped on its synthetic batch."""

    name: str
    config: TrainConfig
    workload: Workload
    inputs: object
    targets: object
    flops: tuple = ()
    train_flops: tuple = ()


def _prepare(name, overrides):
    """Builds `--model=name` under its dtype policy and counts its FLOPs."""
    config, builder = resolve(name, overrides)
    config.validate()
    keras.utils.set_random_seed(config.seed)
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config.precision)
    try:
        workload = builder(config)
        inputs, targets = synthetic_batch(workload, config.batch_size, config.seed)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    return _Prepared(name, config, workload, inputs, targets)


def _count_flops(prepared):
    keras.config.set_dtype_policy(prepared.config.precision)
    model = prepared.workload.model
    prepared.flops = forward_flops(model, prepared.inputs)
    prepared.train_flops = train_flops(model, prepared.inputs, prepared.targets)


def _model_report(prepared, timings, steps, repeats):
    """The per-model part of the report: throughputs, FLOPs and their rates."""
    config, workload, model = prepared.config, prepared.workload, prepared.workload.model
    flops, uncounted, uncounted_elements = prepared.flops
    counted_train_flops, train_uncounted, _ = prepared.train_flops
    (train_seconds, train_cores), (infer_seconds, infer_cores) = timings
    images_per_repeat = config.batch_size * steps
    train_rates = [images_per_repeat / s for s in train_seconds]
    infer_rates = [images_per_repeat / s for s in infer_seconds]
    train_rate = statistics.median(train_rates)
    infer_rate = statistics.median(infer_rates)
    return {
        "model": prepared.name,
        "batch_size": config.batch_size,
        "train_images_per_s": round(train_rate, 1),
        "infer_images_per_s": round(infer_rate, 1),
        "params": int(model.count_params()),
        "forward_flops_per_image": flops,
        "flops_uncounted_ops": uncounted,
        "flops_uncounted_output_elements": uncounted_elements,
        "train_flops_per_image": TRAIN_FLOPS_FACTOR * flops,
        "train_flops_assumption": TRAIN_FLOPS_ASSUMPTION,
        "train_flops_per_image_counted": counted_train_flops,
        "train_flops_uncounted_ops": train_uncounted,
        "achieved_train_gflops": round(TRAIN_FLOPS_FACTOR * flops * train_rate / 1e9, 2),
        "achieved_infer_gflops": round(flops * infer_rate / 1e9, 2),
        "achieved_train_gflops_counted": round(counted_train_flops * train_rate / 1e9, 2),
        "train_images_per_s_repeats": [round(r, 1) for r in train_rates],
        "infer_images_per_s_repeats": [round(r, 1) for r in infer_rates],
        "train_cpu_cores_busy": round(train_cores, 2),
        "infer_cpu_cores_busy": round(infer_cores, 2),
        "workload": workload.description,
        "jit_compile": bool(config.jit_compile),
        "precision": config.precision,
    }


def _machine_report(peak, peak_size, repeats, steps, warmup_steps):
    onednn_status = onednn.status()
    return {
        "peak_rss_mib": peak_rss_mib(),
        "matmul_peak_gflops": round(peak, 1),
        "matmul_peak_size": peak_size,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "repeats": repeats,
        "steps": steps,
        "warmup_steps": warmup_steps,
        "device": device_description(),
        "cpu": onednn_status["cpu"],
        "cpu_vector_extensions": onednn_status["vector_extensions"],
        "onednn_enabled": onednn_status["enabled"],
        "onednn_variable": onednn_status["variable"],
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
    }


def _time_models(prepared_models, steps, repeats, warmup_steps):
    """`time_steps` of every model's train and predict steps, all taking turns."""
    step_functions = {}
    for prepared in prepared_models:
        model, inputs, targets = prepared.workload.model, prepared.inputs, prepared.targets
        step_functions[(prepared.name, "train")] = (
            lambda m=model, x=inputs, y=targets: m.train_on_batch(x, y)
        )
        step_functions[(prepared.name, "infer")] = lambda m=model, x=inputs: m.predict_on_batch(x)
    timings = time_steps(step_functions, steps, repeats, warmup_steps)
    return {
        prepared.name: (timings[(prepared.name, "train")], timings[(prepared.name, "infer")])
        for prepared in prepared_models
    }


def benchmark(name, overrides=(), repeats=5, steps=10, warmup_steps=3,
              matmul_sizes=(1024, 2048)):
    """Benchmarks `--model=name`; returns the report dict that `main` prints.

    Args:
        name: see `resolve`.
        overrides: `--flag=value` trainer flags applied after the flagfile.
        repeats: timed repeats; throughputs are their medians.
        steps: steps per repeat.
        warmup_steps: untimed steps before the first repeat (tracing, compiling).
        matmul_sizes: square matmul sizes tried for the peak.

    Example:

    >>> report = benchmark("enc_deep_bp_dec_class", ["--batch_size=32"], repeats=1)
    >>> report["train_images_per_s"] > 0
    True
    """
    previous_policy = keras.config.dtype_policy()
    try:
        prepared = _prepare(name, overrides)
        timings = _time_models([prepared], steps, repeats, warmup_steps)
        _count_flops(prepared)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    peak, peak_size = matmul_peak_gflops(matmul_sizes)
    report = _model_report(prepared, timings[name], steps, repeats)
    report.update(_machine_report(peak, peak_size, repeats, steps, warmup_steps))
    return report


def benchmark_pair(names, overrides=(), repeats=5, steps=10, warmup_steps=3,
                   matmul_sizes=(1024, 2048)):
    """Benchmarks two models side by side in one process; returns one report.

    Both are built first, then their train and predict steps take turns
    within every repeat (A train, A predict, B train, B predict), so a load
    that comes and goes on a shared machine slows both alike and the ratios
    are fair even when the absolute figures are not.

    Args:
        names: two names, see `resolve`; e.g.
            `("capsnet_mnist", "capsnet_conv_stack")`.
        others: as `benchmark`.

    Returns:
        `{"models": {name: per-model report}, "train_ratio", "infer_ratio",
        ...}`: the per-model reports carry `benchmark`'s per-model keys;
        `train_ratio` and `infer_ratio` are the first model's median
        throughput over the second's; `peak_rss_mib` is the peak of this
        process, which held both models (benchmark one model alone for its
        own peak).
    """
    names = list(names)
    if len(names) != 2 or names[0] == names[1]:
        raise ValueError(f"Received: model={','.join(names)}; expected one name or two different names")
    previous_policy = keras.config.dtype_policy()
    try:
        prepared_models = [_prepare(name, overrides) for name in names]
        timings = _time_models(prepared_models, steps, repeats, warmup_steps)
        for prepared in prepared_models:
            _count_flops(prepared)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    peak, peak_size = matmul_peak_gflops(matmul_sizes)
    reports = {
        prepared.name: _model_report(prepared, timings[prepared.name], steps, repeats)
        for prepared in prepared_models
    }
    first, second = (reports[name] for name in names)

    def ratio(key):
        return round(first[key] / second[key], 3)

    def repeat_ratios(key):
        return [round(a / b, 3) for a, b in zip(first[key + "_repeats"], second[key + "_repeats"])]

    result = {
        "model": ",".join(names),
        "train_ratio": ratio("train_images_per_s"),
        "infer_ratio": ratio("infer_images_per_s"),
        "ratio_of": f"{names[0]} / {names[1]}, medians over repeats",
        "train_ratio_repeats": repeat_ratios("train_images_per_s"),
        "infer_ratio_repeats": repeat_ratios("infer_images_per_s"),
        "models": reports,
    }
    result.update(_machine_report(peak, peak_size, repeats, steps, warmup_steps))
    result["peak_rss_note"] = "peak of this process, which held both models"
    return result


# The benchmark's flags live in their own namespace with the trainer's, so
# that `--model` is the benchmark's name even though the trainer has a
# `--model` of its own; absl's own flags (--verbosity...) stay on FLAGS.
BENCH_FLAGS = flags.FlagValues()
OWN_FLAGS = ("model", "repeats", "steps", "warmup_steps", "matmul_sizes", "output")


def define_flags(flag_values=BENCH_FLAGS):
    """Defines the benchmark's flags, then every other trainer flag, on `flag_values`."""
    flags.DEFINE_string(
        "model", None,
        "Benchmark: a name in BENCHMARKS or an experiment, a flagfile name in flags/; "
        "two comma-separated names time both in turns and report their ratios.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "repeats", 5, "Timed repeats; throughputs are their medians.",
        lower_bound=1, flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "steps", 10, "Train and predict steps per timed repeat.",
        lower_bound=1, flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "warmup_steps", 3, "Untimed steps first (tracing, XLA compilation).",
        lower_bound=0, flag_values=flag_values,
    )
    flags.DEFINE_list(
        "matmul_sizes", ["1024", "2048"],
        "Square float32 matmul sizes tried for the machine's peak; the best counts.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "output", None, "Also write the JSON result to this file.", flag_values=flag_values
    )
    trainer_flags.define_flags(flag_values)  # Skips the names defined above.


define_flags()


def trainer_overrides(flag_values=BENCH_FLAGS):
    """The trainer flags given on the command line, as `--flag=value` strings."""
    return [
        flag_values[field.name].serialize()
        for field in dataclasses.fields(TrainConfig)
        if field.name not in OWN_FLAGS and flag_values[field.name].present
    ]


_HELP = {"-h", "-?", "-help", "--help", "--helpshort", "--helpfull"}


def parse_flags(argv):
    """`app.run`'s flags parser: the benchmark's and trainer's flags, then absl's."""
    if _HELP & set(argv[1:]):
        print(__doc__)
        print(BENCH_FLAGS.get_help())
        sys.exit(0)
    try:
        return trainer_flags.FLAGS(BENCH_FLAGS(argv, known_only=True))
    except flags.Error as error:
        sys.stderr.write(f"FATAL Flags parsing error: {error}\n")
        sys.stderr.write("Pass --help to see help on flags.\n")
        sys.exit(1)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Received unexpected arguments {argv[1:]}; expected flags only")
    # stdout carries the JSON alone: anything else printed goes to stderr.
    sys.stdout.flush()
    json_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    try:
        try:
            sizes = tuple(int(size) for size in BENCH_FLAGS.matmul_sizes)
        except ValueError:
            raise ValueError(
                f"Received: matmul_sizes={','.join(BENCH_FLAGS.matmul_sizes)}; "
                "expected comma-separated ints"
            ) from None
        names = [name.strip() for name in BENCH_FLAGS.model.split(",") if name.strip()]
        run = benchmark if len(names) == 1 else benchmark_pair
        result = run(
            names[0] if len(names) == 1 else names, trainer_overrides(), BENCH_FLAGS.repeats,
            BENCH_FLAGS.steps, BENCH_FLAGS.warmup_steps, sizes,
        )
    except ValueError as error:
        print(f"bench.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    line = json.dumps(result)
    if BENCH_FLAGS.output:
        with open(BENCH_FLAGS.output, "w") as f:
            f.write(line + "\n")
    json_out.write(line + "\n")
    json_out.flush()


if __name__ == "__main__":
    flags.mark_flag_as_required("model", flag_values=BENCH_FLAGS)
    app.run(main, flags_parser=parse_flags)
