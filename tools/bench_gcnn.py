"""GroupConv2D against Conv2D, and P4CNN against Z2CNN: throughput ratios, one process.

Self-contained (separate from tools/bench.py). Each comparison pairs a
group model with a plain one, builds a traced inference step
(`model(x, training=False)`) and a traced training step (forward, the mean
square of the outputs as loss, backward, an SGD update) for each, and
times them in interleaved repeats (group, plain, group, plain, ...), so
drifts in machine load hit both alike. The ratio is group throughput over
plain throughput (median step times): 1.0 means as fast. Each pair also
reports both models' forward FLOPs per image (`forward_flops`) and the
ratio per FLOP, the throughput ratio times the group model's extra work:
P4CNN does about 4x Z2CNN's arithmetic per layer (40 maps to 20), so its
throughput ratio against Z2CNN says little about the layers' efficiency.

Pairs:
- `lifting`: GroupConv2D(filters, 3, lifting=True) on images vs
  Conv2D(filters * G, 3): the same number of output maps.
- `group`: GroupConv2D(filters, 3, lifting=False) on `channels * G` maps vs
  Conv2D(filters * G, 3) on the same input.
- `p4cnn_vs_z2cnn`: the two rotated-MNIST models (P4CNN has 40 maps a
  layer to Z2CNN's 20, about the same parameters).
- `p4cnn_vs_folded`: P4CNN against its `serving_model()` copy (plain
  convolutions, the same maps): the cost of expanding the filter bank.

    python tools/bench_gcnn.py --batch_size=64 --repeats=5 --steps=5
"""

import json
import statistics
import sys
import time

from absl import app
from absl import flags
import keras
import numpy as np
import tensorflow as tf

from capskeras import cli
from capskeras.benchmarking.flops import forward_flops
from capskeras.benchmarking.machine import machine_facts
from capskeras.layers import GroupConv2D
from capskeras.models import build_p4cnn
from capskeras.models import build_z2cnn

PAIRS = ("lifting", "group", "p4cnn_vs_z2cnn", "p4cnn_vs_folded")
ORDERS = {"p4": 4, "p4m": 8}
FLAGS = flags.FLAGS
SETTINGS = ("pairs", "group", "batch_size", "size", "channels", "filters", "repeats", "steps",
            "json")


def _single(layer, input_shape):
    model = keras.Sequential([keras.Input(input_shape), layer])
    return model


def build_pair(name, group="p4", size=28, channels=10, filters=10, seed=0):
    """`(group_model, plain_model, input_shape)` for the pair `name`."""
    order = ORDERS[group]
    if name == "lifting":
        shape = (size, size, 1)
        return (_single(GroupConv2D(filters, 3, group=group, lifting=True), shape),
                _single(keras.layers.Conv2D(filters * order, 3), shape), shape)
    if name == "group":
        shape = (size, size, channels * order)
        return (_single(GroupConv2D(filters, 3, group=group, lifting=False), shape),
                _single(keras.layers.Conv2D(filters * order, 3), shape), shape)
    if name == "p4cnn_vs_z2cnn":
        return build_p4cnn(seed=seed, group=group), build_z2cnn(seed=seed), (28, 28, 1)
    if name == "p4cnn_vs_folded":
        model = build_p4cnn(seed=seed, group=group)
        return model, model.serving_model(), (28, 28, 1)
    raise ValueError(f"Received: pair={name!r}; expected one of {PAIRS}")


def _steps(model):
    optimizer = keras.optimizers.SGD(1e-3)
    optimizer.build(model.trainable_variables)

    @tf.function(jit_compile=False)
    def infer(x):
        return model(x, training=False)

    @tf.function(jit_compile=False)
    def train(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(tf.cast(model(x, training=True), tf.float32)))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        return loss

    return {"inference": infer, "train": train}


def _time(step, x, steps):
    start = time.perf_counter()
    for _ in range(steps):
        out = step(x)
    keras.ops.convert_to_numpy(out)
    return (time.perf_counter() - start) / steps


def compare(name, batch_size=64, repeats=5, steps=5, **pair_kwargs):
    """Median step seconds of both models and the group/plain throughput ratios."""
    group_model, plain_model, shape = build_pair(name, **pair_kwargs)
    x = tf.constant(np.random.default_rng(0).uniform(size=(batch_size,) + shape), tf.float32)
    steps_of = {"group": _steps(group_model), "plain": _steps(plain_model)}
    flops = {kind: forward_flops(model, x[:1]).total
             for kind, model in (("group", group_model), ("plain", plain_model))}
    result = {"pair": name, "batch_size": batch_size, "input_shape": list(shape),
              "group_output_maps": int(group_model.layers[-1].compute_output_shape(
                  (None,) + shape)[-1]) if name in ("lifting", "group") else None,
              "group_forward_flops": flops["group"], "plain_forward_flops": flops["plain"],
              "flop_ratio": flops["group"] / flops["plain"]}
    for mode in ("inference", "train"):
        times = {"group": [], "plain": []}
        for kind in times:  # warm up: trace and first run
            _time(steps_of[kind][mode], x, 1)
        for _ in range(repeats):
            for kind in times:
                times[kind].append(_time(steps_of[kind][mode], x, steps))
        group_s, plain_s = statistics.median(times["group"]), statistics.median(times["plain"])
        result[mode] = {"group_ms": 1e3 * group_s, "plain_ms": 1e3 * plain_s,
                        "ratio": plain_s / group_s,
                        "ratio_per_flop": plain_s / group_s * result["flop_ratio"]}
    return result


def define_flags(flag_values):
    """Defines the tool's flags on `flag_values`."""
    common = dict(flag_values=flag_values)
    flags.DEFINE_list("pairs", list(PAIRS), f"Comparisons to run, any of {', '.join(PAIRS)}.",
                      **common)
    flags.DEFINE_enum("group", "p4", sorted(ORDERS), "The group of the group layers.", **common)
    flags.DEFINE_integer("batch_size", 64, "Images per step.", lower_bound=1, **common)
    flags.DEFINE_integer("size", 28, "Side of the layer inputs.", lower_bound=3, **common)
    flags.DEFINE_integer("channels", 10, "Group layer input channels.", lower_bound=1, **common)
    flags.DEFINE_integer("filters", 10, "Filters of the layers compared.", lower_bound=1,
                         **common)
    flags.DEFINE_integer("repeats", 5, "Interleaved timed repeats; figures are their medians.",
                         lower_bound=1, **common)
    flags.DEFINE_integer("steps", 5, "Steps per timed repeat.", lower_bound=1, **common)
    flags.DEFINE_string("json", None, "Also write the results to this file.", **common)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Received unexpected arguments {argv[1:]}; expected flags only")
    unknown = [name for name in FLAGS.pairs if name not in PAIRS]
    if unknown or not FLAGS.pairs:
        print(f"bench_gcnn.py: error: Received: pairs={','.join(FLAGS.pairs)}; expected one or "
              f"more of {', '.join(PAIRS)}", file=sys.stderr)
        sys.exit(2)
    args = {name: FLAGS[name].value for name in SETTINGS}
    tf.get_logger().setLevel("ERROR")  # one trace per model and step is intended
    facts = machine_facts()
    print(f"{facts['device']}; vector extensions {','.join(facts['cpu_vector_extensions'])}; "
          f"oneDNN {'on' if facts['onednn_enabled'] else 'off'}; load "
          f"{facts['load_average_1min']}; TensorFlow {facts['tensorflow_version']}; batch "
          f"{FLAGS.batch_size}, {FLAGS.repeats} interleaved repeats of {FLAGS.steps} steps, "
          "medians")
    print("| pair | forward MFLOP group / plain | inference ms group / plain | ratio | "
          "per FLOP | train ms group / plain | ratio | per FLOP |")
    print("|---|---|---|---:|---:|---|---:|---:|")
    results = []
    for name in FLAGS.pairs:
        layer_kwargs = {"size": FLAGS.size, "channels": FLAGS.channels, "filters": FLAGS.filters}
        result = compare(name, FLAGS.batch_size, FLAGS.repeats, FLAGS.steps, group=FLAGS.group,
                         **(layer_kwargs if name in ("lifting", "group") else {}))
        results.append(result)
        cells = [f"{result['group_forward_flops'] / 1e6:.2f} / "
                 f"{result['plain_forward_flops'] / 1e6:.2f}"]
        for mode in ("inference", "train"):
            timing = result[mode]
            cells += [f"{timing['group_ms']:.2f} / {timing['plain_ms']:.2f}",
                      f"{timing['ratio']:.2f}", f"{timing['ratio_per_flop']:.2f}"]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    if FLAGS.json:
        with open(FLAGS.json, "w") as handle:
            json.dump({"machine": facts, "args": args, "results": results}, handle, indent=2)


if __name__ == "__main__":
    cli.run_command("bench_gcnn.py", define_flags, main)
