"""Throughput, FLOPs and the matmul peak of one or more models on this machine.

    python tools/bench.py --benchmarks=enc_deep_bp_dec_recon --batch_size=128
    python tools/bench.py --benchmarks=capsnet_mnist,capsnet_conv_stack --batch_size=100

`--benchmarks` names registered benchmarks
(`capskeras.benchmarking.BENCHMARKS`: `capsnet_conv_stack`,
`capsnet_routing`, `em_capsnet_small`, `em_capsnet_large`,
`em_capsnet_large_recompute`) or trainer experiments (`flags/<name>.cfg`, built and
compiled exactly as the trainer builds them). `--batch_size`,
`--learning_rate`, `--jit_compile`, `--precision` and `--seed` override an
experiment's flagfile. `--precision` takes a list of Keras dtype policies
(`auto`: the one `capskeras-train --precision=auto` picks here):

    python tools/bench.py --benchmarks=capsnet_mnist --precision=float32,mixed_bfloat16

times every benchmark under each, names them `<benchmark>:<policy>` and adds
`precision_ratios`: each policy's throughputs over the first's, per
benchmark. Every model is stepped on a synthetic batch (images
uniform in [0, 1], random labels): after `--warmup_steps` untimed steps,
each of `--repeats` repeats times `--steps` train steps
(`model.train_on_batch`) and predict steps (`model.predict_on_batch`) of
every model, all taking turns; throughputs are medians over the repeats.
With two or more names, `ratios` gives each model's throughputs over the
first's, which stay fair on a shared machine when absolute figures do not.

Prints one JSON object on stdout and nothing else (logs go to stderr), see
`capskeras.benchmarking.benchmark`: per model, throughputs, parameters,
forward FLOPs per image counted from the traced graph, training FLOPs (3x
forward, and as counted), the GFLOP/s achieved and their fraction of this
machine's float32 matmul peak measured in the same run; and the device,
CPU, its vector extensions, whether oneDNN was on, and the load average.
"""

# oneDNN on (unless TF_ENABLE_ONEDNN_OPTS is set) before anything imports TensorFlow.
from capskeras import onednn

onednn.enable()

import json  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from capskeras import benchmarking  # noqa: E402
from capskeras import cli  # noqa: E402

FLAGS = flags.FLAGS
FLAGS_DIR = pathlib.Path(__file__).resolve().parents[1] / "flags"


def define_flags(flag_values):
    """Defines the tool's flags on `flag_values`; `--benchmarks` is required."""
    flags.DEFINE_list(
        "benchmarks", None,
        "Comma-separated benchmarks: registered names or experiments (flagfiles in flags/).",
        flag_values=flag_values)
    flags.DEFINE_integer("batch_size", None, "Images per step; default: the experiment's, or 100.",
                         lower_bound=1, flag_values=flag_values)
    flags.DEFINE_float("learning_rate", None, "Adam's learning rate; default: the experiment's.",
                       flag_values=flag_values)
    flags.DEFINE_boolean("jit_compile", None, "Compile whole steps with XLA; default: the "
                         "experiment's, or False.", flag_values=flag_values)
    flags.DEFINE_list("precision", None,
                      "Keras dtype policies (float32, mixed_float16, mixed_bfloat16, auto), each "
                      "timed; default: the experiment's, or float32.", flag_values=flag_values)
    flags.DEFINE_integer("seed", None,
                         "Seeds weights and batches; default: the experiment's, or 0.",
                         flag_values=flag_values)
    flags.DEFINE_integer("repeats", 5, "Timed repeats; throughputs are their medians.",
                         lower_bound=1, flag_values=flag_values)
    flags.DEFINE_integer("steps", 10, "Train and predict steps per timed repeat.", lower_bound=1,
                         flag_values=flag_values)
    flags.DEFINE_integer("warmup_steps", 3, "Untimed steps first (tracing, XLA compilation).",
                         lower_bound=0, flag_values=flag_values)
    flags.DEFINE_multi_integer("matmul_sizes", [1024, 2048],
                               "Square float32 matmul sizes tried for the peak; the best counts.",
                               flag_values=flag_values)
    flags.DEFINE_string("output", None, "Also write the JSON result to this file.",
                        flag_values=flag_values)
    flags.mark_flag_as_required("benchmarks", flag_values=flag_values)


def experiment_names():
    """Names of the trainer's experiments: the flagfiles in `flags/`."""
    return sorted(path.stem for path in FLAGS_DIR.glob("*.cfg"))


def accepted_names():
    """Every accepted name: registered benchmarks, then experiments."""
    return sorted(benchmarking.BENCHMARKS) + [
        name for name in experiment_names() if name not in benchmarking.BENCHMARKS]


def workload(name, settings):
    """The `Workload` that `name` benchmarks; ValueError naming it if unknown."""
    if name in benchmarking.BENCHMARKS:
        return benchmarking.registered_workload(name, settings)
    if name in experiment_names():
        return benchmarking.experiment_workload(FLAGS_DIR / f"{name}.cfg", settings)
    raise ValueError(f"Received: benchmarks={name!r}; expected names from {accepted_names()}")


def precisions(requested):
    """The policies to time: `[None]` (each experiment's own) or `requested`, `auto` resolved."""
    from capskeras.precision import auto_precision
    from capskeras.training.config import PRECISIONS

    if not requested:
        return [None]
    policies = []
    for name in requested:
        if name not in PRECISIONS:
            raise ValueError(
                f"Received: precision={name!r}; expected a list of {list(PRECISIONS)}")
        policies.append(auto_precision()[0] if name == "auto" else name)
    return list(dict.fromkeys(policies))


def precision_ratios(models, names, policies):
    """Per benchmark, each later policy's throughputs over the first policy's."""
    ratios = {"of": f"each policy / {policies[0]}; medians over repeats"}
    for name in names:
        first = models[f"{name}:{policies[0]}"]
        ratios[name] = {
            policy: {kind: round(models[f"{name}:{policy}"][kind] / first[kind], 3)
                     for kind in ("train_images_per_s", "infer_images_per_s")}
            for policy in policies[1:]
        }
    return ratios


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Received unexpected arguments {argv[1:]}; expected flags only")
    # stdout carries the JSON alone: anything else printed goes to stderr.
    sys.stdout.flush()
    json_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    names = list(dict.fromkeys(name.strip() for name in FLAGS.benchmarks if name.strip()))
    try:
        policies = precisions(FLAGS.precision)
        workloads = {}
        for name in names:  # Each benchmark's policies side by side.
            for policy in policies:
                settings = benchmarking.BenchmarkOverrides(
                    batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate,
                    jit_compile=FLAGS.jit_compile, precision=policy, seed=FLAGS.seed,
                )
                key = name if len(policies) == 1 else f"{name}:{policy}"
                workloads[key] = workload(name, settings)
        result = benchmarking.benchmark(
            workloads, FLAGS.repeats, FLAGS.steps, FLAGS.warmup_steps,
            tuple(FLAGS.matmul_sizes), seed=settings.resolved("seed", 0),
        )
    except ValueError as error:
        print(f"bench.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    if len(policies) > 1:
        result["precision_ratios"] = precision_ratios(result["models"], names, policies)
    line = json.dumps(result)
    if FLAGS.output:
        with open(FLAGS.output, "w") as f:
            f.write(line + "\n")
    json_out.write(line + "\n")
    json_out.flush()


if __name__ == "__main__":
    cli.run_command("bench.py", define_flags, main)
