"""PredCaps' speed against the deep-BP study model, in one process, interleaved.

    python tools/predcaps_speed.py --batch_size=128 --repeats=5 --steps=10

Measures, on the same batch of MNIST digits and the study geometry:

- training: one step of the study task's PredCaps pretraining stage
  (local learning, `--feedback_iterations`, default 1) against one training step of the
  deep-BP study model `enc_deep_bp_dec_recon` (encoder and head trained
  end to end by backprop);
- inference: the frozen PredCaps encoder under the class head against the
  deep-BP encoder under the class head (`predict_on_batch`); the PredCaps
  encoder both with its feedback rounds and as one upward pass
  (`inference_feedback_iterations=0`, `*_one_pass`).

Each repeat times `--steps` steps of every model in turn after a warm-up,
so load on a shared machine falls on all of them alike; the figure is the
median over repeats in images/s, with the ratios PredCaps / deep BP. Steps
run as Keras compiles them by default here (no XLA), as the trainer does
unless `--jit_compile` is given. Prints one JSON object.
"""

import json
import platform
import resource
import statistics
import subprocess
import time

from absl import app
from absl import flags
import keras
import numpy as np

from capskeras import cli
from capskeras import tasks
from capskeras.data import load_mnist

FLAGS = flags.FLAGS


def _cpu():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return platform.processor()
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    vector = [f for f in ("avx2", "fma", "avx512f") if f in flags]
    return f"{fields.get('Model name', '').strip()} ({', '.join(vector)}), " \
           f"{fields.get('CPU(s)', '').strip()} CPUs"


def define_flags(flag_values):
    """Defines the tool's flags on `flag_values`."""
    common = dict(flag_values=flag_values)
    flags.DEFINE_integer("batch_size", 128, "Images per step.", lower_bound=1, **common)
    flags.DEFINE_integer("repeats", 5, "Timed repeats; figures are their medians.",
                         lower_bound=1, **common)
    flags.DEFINE_integer("steps", 10, "Steps of each model per timed repeat.", lower_bound=1,
                         **common)
    flags.DEFINE_integer("feedback_iterations", 1, "PredCaps' down-and-up rounds.",
                         lower_bound=0, **common)
    flags.DEFINE_boolean("jit_compile", False, "Compile the steps with XLA.", **common)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Received unexpected arguments {argv[1:]}; expected flags only")
    images, labels = next(iter(load_mnist("train", batch_size=FLAGS.batch_size)))
    images, labels = images.numpy(), labels.numpy()

    predcaps = {"encoder": "predcaps", "feedback_iterations": FLAGS.feedback_iterations}
    study = tasks.get_task("study")
    stage, = study(study.Settings(**predcaps), seed=0).pretraining()
    pretrainer = stage.build_model()
    pretrainer.compile(keras.optimizers.Adam(1e-3), jit_compile=FLAGS.jit_compile)
    deep_bp = tasks.build_model("study", encoder="deep_bp", head="recon")
    deep_bp.compile(keras.optimizers.Adam(1e-3), deep_bp.default_loss(),
                    jit_compile=FLAGS.jit_compile)
    predcaps_class, predcaps_one_pass = (
        tasks.build_model("study", head="class", predcaps_inference_feedback=rounds, **predcaps)
        for rounds in (-1, 0))
    for model in (predcaps_class, predcaps_one_pass):
        model.compile(jit_compile=FLAGS.jit_compile)
    deep_bp_class = tasks.build_model("study", encoder="deep_bp", head="class")
    deep_bp_class.compile(jit_compile=FLAGS.jit_compile)

    steps = {
        "train/predcaps_pretrain": lambda: pretrainer.train_on_batch(images),
        "train/enc_deep_bp_dec_recon": lambda: deep_bp.train_on_batch(images, images),
        "infer/enc_predcaps_dec_class": lambda: predcaps_class.predict_on_batch(images),
        "infer/enc_predcaps_dec_class_one_pass": lambda: predcaps_one_pass.predict_on_batch(images),
        "infer/enc_deep_bp_dec_class": lambda: deep_bp_class.predict_on_batch(images),
    }
    for step in steps.values():  # trace and warm up
        step()
        step()
    rates = {name: [] for name in steps}
    for _ in range(FLAGS.repeats):
        for name, step in steps.items():
            started = time.perf_counter()
            for _ in range(FLAGS.steps):
                step()
            rates[name].append(FLAGS.batch_size * FLAGS.steps / (time.perf_counter() - started))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(json.dumps({
        "cpu": _cpu(), "batch_size": FLAGS.batch_size, "steps": FLAGS.steps,
        "repeats": FLAGS.repeats, "feedback_iterations": FLAGS.feedback_iterations,
        "jit_compile": FLAGS.jit_compile,
        "images_per_second": {name: round(value, 1) for name, value in medians.items()},
        "all_repeats": {name: [round(v, 1) for v in values] for name, values in rates.items()},
        "train_ratio_predcaps_over_deep_bp": round(
            medians["train/predcaps_pretrain"] / medians["train/enc_deep_bp_dec_recon"], 3),
        "infer_ratio_predcaps_over_deep_bp": round(
            medians["infer/enc_predcaps_dec_class"] / medians["infer/enc_deep_bp_dec_class"], 3),
        "infer_ratio_predcaps_one_pass_over_deep_bp": round(
            medians["infer/enc_predcaps_dec_class_one_pass"]
            / medians["infer/enc_deep_bp_dec_class"], 3),
        "process_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }, indent=2))


if __name__ == "__main__":
    cli.run_command("predcaps_speed.py", define_flags, main)
