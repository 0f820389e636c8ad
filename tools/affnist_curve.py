"""The affNIST protocol's curve: affNIST accuracy against shifted-MNIST accuracy, per epoch.

    capskeras-train --flagfile=flags/capsnet_affnist.cfg        # --eval_each_epoch in it
    capskeras-train --flagfile=flags/cnn_baseline_affnist.cfg
    python tools/affnist_curve.py --run_dirs=runs/capsnet_affnist,runs/cnn_baseline_affnist \
        --output=runs/affnist_curve.png

Sabour et al. (2017) train until the expanded (shifted) MNIST test accuracy
reaches 99.23% and then read affNIST: CapsNet 79%, a CNN of the same
accuracy 66%. A run trained with `--eval_each_epoch=mnist_shifted,affnist_regen`
(`capskeras.training.epoch_eval`) records both accuracies after every epoch
in `<run>/checkpoints/history.json`; this tool reads one or more runs and
draws one line per model (x: `--x_dataset`, y: `--y_dataset`, a marker per
epoch, the first and last epoch numbered) with the published points marked:
CapsNet 99.23% / 79%, the CNN 99.22% / 66%, and SparseCaps' 90% on affNIST
as a level (no shifted-MNIST figure is published with it). It writes the
PNG and, beside it, the JSON it was drawn from (`<output stem>.json`).

The published y figures are on the real affNIST; `affnist_regen` is a
regenerated stand-in (MNIST test digits under affNIST-range warps), and the
figure's title says so when it is drawn.
"""

import json
import os
import sys

from absl import app
from absl import flags

from capskeras.evaluation import plots
from capskeras.evaluation import report
from capskeras.files import write_text_atomically
from capskeras.training import epoch_eval

FLAGS = flags.FLAGS
HISTORY = os.path.join("checkpoints", "history.json")
# The y datasets tried, in order, when --y_dataset is empty.
Y_PREFERENCE = ("affnist", "affnist_regen")


def define_flags():
    flags.DEFINE_list("run_dirs", [], "capskeras-train model directories (or their "
                      "history.json files), one line each.")
    flags.DEFINE_list("names", [], "Display names, one per run; default the run's experiment.")
    flags.DEFINE_string("x_dataset", "mnist_shifted", "The --eval_each_epoch test set on x.")
    flags.DEFINE_string("y_dataset", "", "The --eval_each_epoch test set on y; empty for "
                        "affnist where every run has it, else affnist_regen.")
    flags.DEFINE_string("output", "runs/affnist_curve.png",
                        "The PNG to write; the JSON goes beside it.")


def read_history(run_dir):
    """`(history records, display name)` of a model directory or a history.json file."""
    path = run_dir if os.path.isfile(run_dir) else os.path.join(run_dir, HISTORY)
    if not os.path.isfile(path):
        raise ValueError(f"Received: run_dirs entry {run_dir!r}, which holds no {HISTORY}; "
                         "expected a capskeras-train model directory or a history.json file")
    with open(path) as f:
        history = json.load(f)
    directory = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    name = os.path.basename(directory)
    config_file = os.path.join(directory, "config.json")
    if os.path.isfile(config_file):
        with open(config_file) as f:
            name = json.load(f).get("experiment") or name
    return history, name


def _keys(history):
    return sorted({key for record in history for key in record if key.endswith("_accuracy")})


def choose_y(histories, y_dataset=""):
    """`y_dataset`, or the first of `Y_PREFERENCE` every history records."""
    if y_dataset:
        return y_dataset
    for name in Y_PREFERENCE:
        if all(any(epoch_eval.history_key(name) in record for record in history)
               for history in histories):
            return name
    return Y_PREFERENCE[-1]


def curve_points(history, x_dataset, y_dataset, source=""):
    """`[(x, y, epoch)]` of the records holding both accuracies.

    Raises:
        ValueError: no record holds both; names the keys the history has.
    """
    x_key, y_key = epoch_eval.history_key(x_dataset), epoch_eval.history_key(y_dataset)
    points = [(record[x_key], record[y_key], record["epoch"]) for record in history
              if x_key in record and y_key in record]
    if not points:
        raise ValueError(
            f"Received: {source or 'a history'} without {x_key!r} and {y_key!r} in any epoch "
            f"(it records {_keys(history)}); expected a run trained with "
            f"--eval_each_epoch={x_dataset},{y_dataset}")
    return points


def published_figures():
    """`(points, levels)`: published `{label: (x, y)}` on mnist_shifted/affnist, `{label: y}`."""
    by_model = {}
    for anchor in report.ANCHORS:
        if anchor.dataset in ("mnist_shifted", "affnist"):
            by_model.setdefault(anchor.model, {})[anchor.dataset] = anchor.accuracy / 100
    points, levels = {}, {}
    for model, figures in by_model.items():
        short = model.split(",")[0]
        if "mnist_shifted" in figures:
            points[f"{short} ({100 * figures['mnist_shifted']:.2f}%, "
                   f"{100 * figures['affnist']:g}%)"] = (figures["mnist_shifted"],
                                                         figures["affnist"])
        else:
            levels[f"{short}, affNIST {100 * figures['affnist']:g}%"] = figures["affnist"]
    return points, levels


def draw(run_dirs, output, names=(), x_dataset="mnist_shifted", y_dataset=""):
    """Draws the curve of `run_dirs` to `output` (PNG) and writes its JSON beside it.

    Returns:
        `(png path, json path)`.

    Raises:
        ValueError: no runs, names not one per run, a run without history
            or without both accuracies.
    """
    run_dirs = [str(path) for path in run_dirs if str(path).strip()]
    if not run_dirs:
        raise ValueError("Received: run_dirs=[]; expected one or more model directories")
    names = list(names)
    if names and len(names) != len(run_dirs):
        raise ValueError(f"Received: names={names} for {len(run_dirs)} runs; expected one "
                         "name per run or none")
    read = [read_history(path) for path in run_dirs]
    y_dataset = choose_y([history for history, _ in read], y_dataset)
    curves, models = {}, []
    for index, (path, (history, default_name)) in enumerate(zip(run_dirs, read)):
        name = names[index] if names else default_name
        while name in curves:
            name += "'"
        curves[name] = curve_points(history, x_dataset, y_dataset, source=path)
        models.append({"name": name, "run_dir": path, "points": [
            {"epoch": epoch, x_dataset: x, y_dataset: y} for x, y, epoch in curves[name]]})
    points, levels = published_figures()
    regenerated = y_dataset.startswith("affnist_regen")
    title = "affNIST protocol: generalization against shifted-MNIST accuracy, per epoch"
    if regenerated:
        title += f"\n(y: {y_dataset}, REGENERATED; the published points are on the real affNIST)"
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    plots.save_accuracy_curve(
        curves, output, published=points, published_levels=levels,
        x_label=f"{x_dataset} test accuracy (%)", y_label=f"{y_dataset} test accuracy (%)",
        title=title)
    json_path = os.path.splitext(output)[0] + ".json"
    payload = {"x": x_dataset, "y": y_dataset, "y_regenerated": regenerated, "models": models,
               "published": {"points": {label: {"mnist_shifted": x, "affnist": y}
                                        for label, (x, y) in points.items()},
                             "affnist_levels": levels,
                             "source": "Sabour, Frosst and Hinton 2017, section 5.2; "
                                       "Rawlinson, Ahmed and Kowadlo 2018"}}
    write_text_atomically(json_path, json.dumps(payload, indent=2) + "\n")
    return output, json_path


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Received unexpected arguments {argv[1:]}; expected flags only")
    try:
        written = draw(FLAGS.run_dirs, FLAGS.output, FLAGS.names, FLAGS.x_dataset,
                       FLAGS.y_dataset)
    except (ValueError, OSError) as error:
        print(f"affnist_curve: error: {error}", file=sys.stderr)
        sys.exit(2)
    print("Wrote " + ", ".join(written))


if __name__ == "__main__":
    define_flags()
    app.run(main)
