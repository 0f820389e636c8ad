"""Accuracy parity of mixed_bfloat16 against float32: short runs per model family.

    python tools/precision_parity.py --families=capsnet,study,em,p4cnn \
        --train_examples=3000 --epochs=1 --seeds=0,1 --output=runs/precision_parity/parity.json

For each family (its experiment's flagfile, below) and seed, trains the
model with the trainer (`capskeras.training.train`) once per precision in
`--precisions`, with `--epochs`, `--train_examples` and `--eval_examples`
overriding the flagfile, no validation split and no export, each run in its
own directory under `--work_dir` (cleared first). It prints a Markdown table
and writes it beside the JSON (`--output`, `.md`): per family the test
accuracy under each precision (the mean over the seeds), the difference of
each precision from the first against the spread between seeds (the largest
minus the smallest accuracy of the first precision), and the training
throughput, images per second over the whole `fit` (tracing and the epoch's
checkpoint included, so short runs understate it). The JSON holds every
run's figures and the machine (CPU model, its bfloat16 extensions, oneDNN).
Runs go seed by seed, so an interrupted sweep has every family's first seed
first; the JSON is rewritten after every run. `--tables_from=a.json,b.json`
trains nothing and prints the table of earlier sweeps' runs together (say,
a second seed run apart).
"""

# oneDNN on (unless TF_ENABLE_ONEDNN_OPTS is set) before anything imports TensorFlow.
from capskeras import onednn

onednn.enable()

import json  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

FLAGS_DIR = pathlib.Path(__file__).resolve().parents[1] / "flags"

# Family -> experiment whose flagfile sets its geometry and optimizer.
FAMILIES = {
    "capsnet": "capsnet_mnist",
    "study": "enc_deep_bp_dec_class",
    "em": "em_capsnet_mnist",
    "p4cnn": "p4cnn_mnist",
}


def define_flags():
    flags.DEFINE_list("families", list(FAMILIES), f"Model families, from {sorted(FAMILIES)}.")
    flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"],
                      "Keras dtype policies; the first is the reference.")
    flags.DEFINE_list("seeds", ["0", "1"], "Seeds; two or more give the spread between seeds.")
    flags.DEFINE_integer("train_examples", 3000, "Training examples per run.", lower_bound=1)
    flags.DEFINE_integer("eval_examples", 2000, "Test examples evaluated; 0 for all.",
                         lower_bound=0)
    flags.DEFINE_integer("epochs", 1, "Epochs per run.", lower_bound=1)
    flags.DEFINE_string("work_dir", "/tmp/capskeras_parity", "Run directories go here.")
    flags.DEFINE_string("output", None, "Write the JSON here and the Markdown beside it (.md).")
    flags.DEFINE_list("tables_from", None,
                      "Train nothing: summarize the runs of these JSON files (earlier --output).")


def check_request(families, precisions, seeds):
    """The request as (families, precisions, seeds); ValueError naming a bad value."""
    from capskeras.training.config import PRECISIONS

    for family in families:
        if family not in FAMILIES:
            raise ValueError(f"Received: families={family!r}; expected names from "
                             f"{sorted(FAMILIES)}")
    for precision in precisions:
        if precision not in PRECISIONS or precision == "auto":
            explicit = [name for name in PRECISIONS if name != "auto"]
            raise ValueError(f"Received: precisions={precision!r}; expected policies from "
                             f"{explicit}")
    try:
        seeds = [int(seed) for seed in seeds]
    except ValueError:
        raise ValueError(f"Received: seeds={seeds}; expected ints") from None
    if not families or not precisions or not seeds:
        raise ValueError(f"Received: families={families}, precisions={precisions}, "
                         f"seeds={seeds}; expected at least one of each")
    return families, precisions, seeds


def run_one(family, precision, seed, train_examples, eval_examples, epochs, work_dir):
    """Trains one short run; returns its figures."""
    from capskeras.training.flags import config_from_flagfile
    from capskeras.training.train import train

    model_dir = os.path.join(work_dir, f"{family}_{precision}_seed{seed}")
    shutil.rmtree(model_dir, ignore_errors=True)
    config = config_from_flagfile(FLAGS_DIR / f"{FAMILIES[family]}.cfg", [
        f"--precision={precision}", f"--seed={seed}", f"--epochs={epochs}",
        f"--train_examples={train_examples}", f"--eval_examples={eval_examples}",
        "--validation_examples=0", f"--model_dir={model_dir}", "--export_dir=",
        "--checkpoint_every_steps=0", "--noplot_reconstructions", "--verbose=0",
    ])
    cpu_started = time.process_time()
    results = train(config)
    cpu_seconds = time.process_time() - cpu_started
    return {
        "family": family,
        "experiment": FAMILIES[family],
        "precision": precision,
        "seed": seed,
        "train_examples": train_examples,
        "test_accuracy": results["test"]["accuracy"],
        "train_accuracy": results["train"]["accuracy"],
        "fit_seconds": results["fit_seconds"],
        "images_per_second": round(train_examples * epochs / results["fit_seconds"], 1),
        # CPU time of the whole run (training, evaluation, tracing): unlike wall time,
        # it hardly grows when other processes share the cores.
        "cpu_seconds": round(cpu_seconds, 1),
    }


def summarize(runs, families, precisions):
    """Per family: accuracy and throughput per precision, differences and seed spread.

    Args:
        runs: dicts as from `run_one`.
        families: family names, in table order.
        precisions: policies; the first is the reference.

    Returns:
        `{family: {"seeds", "seed_spread", <policy>: {"test_accuracy",
        "images_per_second", "difference"}}}`, means over the seeds run
        under every policy; families with none are left out.
    """
    summary = {}
    for family in families:
        rows = [run for run in runs if run["family"] == family]
        # Only seeds run under every precision, so that the means compare like with like.
        seeds = [seed for seed in dict.fromkeys(run["seed"] for run in rows)
                 if {run["precision"] for run in rows if run["seed"] == seed} >= set(precisions)]
        if not seeds:
            continue
        by_precision = {p: [run for run in rows if run["precision"] == p and run["seed"] in seeds]
                        for p in precisions}
        reference = [run["test_accuracy"] for run in by_precision[precisions[0]]]
        entry = {"seeds": len(reference),
                 "seed_spread": max(reference) - min(reference) if len(reference) > 1 else None}
        for precision, runs_of in by_precision.items():
            accuracy = sum(run["test_accuracy"] for run in runs_of) / len(runs_of)
            speed = sum(run["images_per_second"] for run in runs_of) / len(runs_of)
            entry[precision] = {"test_accuracy": accuracy, "images_per_second": round(speed, 1)}
            if all("cpu_seconds" in run for run in runs_of):
                entry[precision]["cpu_seconds"] = round(
                    sum(run["cpu_seconds"] for run in runs_of) / len(runs_of), 1)
        for precision in precisions[1:]:
            entry[precision]["difference"] = (entry[precision]["test_accuracy"]
                                              - entry[precisions[0]]["test_accuracy"])
        summary[family] = entry
    return summary


def markdown(summary, precisions, settings):
    """The summary as a Markdown table, with the settings it was measured under."""
    reference = precisions[0]
    header = ["family (experiment)", "seeds"]
    header += [f"test acc. {p}" for p in precisions]
    header += [f"{p} - {reference}" for p in precisions[1:]]
    header += ["seed spread"] + [f"images/s {p}" for p in precisions]
    header += [f"CPU s {p}" for p in precisions]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for family, entry in summary.items():
        cells = [f"{family} ({FAMILIES[family]})", str(entry["seeds"])]
        cells += [f"{100 * entry[p]['test_accuracy']:.2f}%" for p in precisions]
        cells += [f"{100 * entry[p]['difference']:+.2f}" for p in precisions[1:]]
        spread = entry["seed_spread"]
        cells.append("n/a" if spread is None else f"{100 * spread:.2f}")
        cells += [f"{entry[p]['images_per_second']:.0f}" for p in precisions]
        cells += [f"{entry[p]['cpu_seconds']:.0f}" if "cpu_seconds" in entry[p] else "n/a"
                  for p in precisions]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"{settings['train_examples']} training images, {settings['epochs']} epoch(s), test "
        f"accuracy on {settings['eval_examples'] or 'all'} test images, mean over seeds "
        f"{settings['seeds']}; differences and spread in percentage points (spread: the "
        f"largest minus the smallest {reference} accuracy over the seeds); images/s over the "
        "whole fit, tracing included, which other processes on the machine slow down; CPU s: "
        "this process's CPU seconds for the whole run (training and evaluation), which they "
        "hardly change.")
    return "\n".join(lines) + "\n"


def machine():
    """The CPU and what bfloat16 speed depends on here."""
    from capskeras import precision

    status = onednn.status()
    return {"cpu": status["cpu"], "cpu_cores": os.cpu_count(),
            "bfloat16_flags": sorted(precision.BFLOAT16_CPU_FLAGS & onednn.cpu_info()[1]),
            "onednn_enabled": status["enabled"],
            "auto_precision": precision.auto_precision()[0]}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Received unexpected arguments {argv[1:]}; expected flags only")
    FLAGS = flags.FLAGS
    try:
        families, precisions, seeds = check_request(
            FLAGS.families, FLAGS.precisions, FLAGS.seeds)
    except ValueError as error:
        print(f"precision_parity.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    if FLAGS.tables_from:
        runs, measured = [], {}
        for path in FLAGS.tables_from:
            with open(path) as f:
                saved = json.load(f)
            runs += saved["runs"]
            for name in ("train_examples", "eval_examples", "epochs"):
                measured.setdefault(name, set()).add(saved["settings"][name])
        families = [family for family in families if any(run["family"] == family for run in runs)]
        settings = {name: values.pop() if len(values) == 1 else sorted(values)
                    for name, values in measured.items()}
        settings.update(seeds=sorted({run["seed"] for run in runs}), precisions=precisions)
        print(markdown(summarize(runs, families, precisions), precisions, settings))
        return
    settings = {"train_examples": FLAGS.train_examples, "eval_examples": FLAGS.eval_examples,
                "epochs": FLAGS.epochs, "seeds": seeds, "precisions": precisions}
    result = {"settings": settings, "machine": machine(), "runs": [], "summary": {}}
    for seed in seeds:
        for family in families:
            for precision in precisions:
                run = run_one(family, precision, seed, FLAGS.train_examples,
                              FLAGS.eval_examples, FLAGS.epochs, FLAGS.work_dir)
                print(json.dumps(run), file=sys.stderr, flush=True)
                result["runs"].append(run)
                result["summary"] = summarize(result["runs"], families, precisions)
                if FLAGS.output:
                    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
                    with open(FLAGS.output, "w") as f:
                        json.dump(result, f, indent=2)
    table = markdown(result["summary"], precisions, settings)
    if FLAGS.output:
        with open(os.path.splitext(FLAGS.output)[0] + ".md", "w") as f:
            f.write(table)
    print(table)


if __name__ == "__main__":
    define_flags()
    app.run(main)
