"""The absl evaluator: trained models -> accuracy across test sets, and a report.

    capskeras-eval --models=runs/capsnet_affnist,runs/cnn_baseline_affnist,runs/lenet5_mnist \
        --datasets=mnist,affnist,affnist_regen,rotated_mnist --angles=0,35,90 \
        --eval_examples=2000 --output_dir=runs/evaluation

Each entry of `--models` is a SavedModel (a version directory, or an export
directory whose newest version is used) or a model directory holding
`model.keras`; see `capskeras.evaluation.generalization.load_classifier`.
`--datasets` picks from `mnist`, `affnist` (the real affNIST test split),
`affnist_regen` (the regenerated stand-in) and `rotated_mnist` (the MNIST
test digits rotated counter-clockwise by each of `--angles`, about the
centre of the model's canvas); see `capskeras.evaluation.report`. The
command writes to `--output_dir`:

- `<model>.json` per model: its accuracy on every dataset (and by angle),
  how the images were fitted to its canvas, or why a cell is empty;
- `report.md`: the model x dataset accuracy table with the published
  anchors (Sabour et al. 2017 on affNIST; rotated MNIST at 35 degrees)
  beside the measured rows, notes, and links to
- `accuracy.png` (bars per dataset) and `rotation_sweep.png` (accuracy
  against angle, one line per model);
- `rotation_sweep.json` when `rotated_mnist` is evaluated, in the format of
  earlier versions: `{"models": [{"name", "path", "format", "image_shape",
  "upright_accuracy", "accuracy_by_angle"}], ...}`;

and prints the table. A dataset that is not prepared is reported with the
error naming how to prepare it (on stderr and in the report) while the
other datasets still run; the exit status is 0 when at least one (model,
dataset) pair was evaluated, 1 when none could be, 2 for bad flags or
model paths. 28x28 models are not evaluated on 40x40 affNIST images unless
`--canvas_mismatch=crop|resize` says how to fit them (marked `*`).

Reference:
    Sabour, Frosst and Hinton, "Dynamic Routing Between Capsules", NeurIPS
    2017, section 5.2 (robustness to affine transformations).
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging

from capskeras import cli
from capskeras.evaluation import generalization
from capskeras.evaluation import report
from capskeras.files import write_text_atomically

FLAGS = flags.FLAGS
JSON_FILE = "rotation_sweep.json"


def define_flags(flag_values):
    """Defines `capskeras-eval`'s flags on `flag_values`."""
    common = dict(flag_values=flag_values)
    flags.DEFINE_list("models", [],
                      "Comma-separated model paths: SavedModel version or export directories, "
                      "or model directories holding model.keras.", **common)
    flags.DEFINE_list("names", [],
                      "Comma-separated display names, one per --models entry; defaults to "
                      "names taken from the paths.", **common)
    flags.DEFINE_integer("eval_examples", 0, "Evaluate on the first N test examples; 0 for all.",
                         **common)
    flags.DEFINE_integer("batch_size", 128, "Images per forward pass.", **common)
    flags.DEFINE_list("angles", [],
                      "Comma-separated rotations in degrees (counter-clockwise), each a number "
                      "or start:stop:step (stop included); empty for 0 to 180 in 5-degree "
                      "steps.", **common)
    flags.DEFINE_list("datasets", ["mnist", "rotated_mnist"],
                      f"Comma-separated test sets, any of {','.join(report.DATASETS)}.",
                      **common)
    flags.DEFINE_enum(
        "canvas_mismatch", "skip", list(report.CANVAS_POLICIES),
        "40x40 affNIST data and a smaller model: skip the cell (default), or centre-crop "
        "or resize the images to the model's canvas (marked * in the report).", **common)
    flags.DEFINE_string("output_dir", "runs/evaluation",
                        f"Directory for <model>.json, {report.REPORT_FILE}, its PNG plots and "
                        f"{JSON_FILE}.", **common)
    flags.DEFINE_string("data_dir", "",
                        "Prepared TFDS directory; empty for $TFDS_DATA_DIR or TFDS's default.",
                        **common)


def parse_angles(items):
    """Angles from `--angles` items: numbers or inclusive `start:stop:step` ranges.

    Returns:
        Sorted distinct floats; `generalization.DEFAULT_ANGLES` for no items.

    Raises:
        ValueError: naming the bad item and the accepted forms.
    """
    items = [str(item).strip() for item in items if str(item).strip()]
    if not items:
        return generalization.DEFAULT_ANGLES
    angles = []
    for item in items:
        try:
            parts = [float(part) for part in item.split(":")]
        except ValueError:
            parts = None
        if parts is None or len(parts) not in (1, 3) or (len(parts) == 3 and parts[2] <= 0):
            raise ValueError(
                f"Received: angles item {item!r}; expected a number of degrees or "
                "start:stop:step with step > 0, e.g. --angles=0,35,90 or --angles=0:180:15"
            )
        if len(parts) == 1:
            angles.append(parts[0])
            continue
        start, stop, step = parts
        count = int((stop - start) / step + 1e-9) + 1
        angles.extend(round(start + i * step, 6) for i in range(max(count, 0)))
    return generalization.check_angles(angles)


def _make_names_unique(classifiers):
    seen = {}
    for classifier in classifiers:
        count = seen.get(classifier.name, 0) + 1
        seen[classifier.name] = count
        if count > 1:
            classifier.name = f"{classifier.name} ({count})"


def load_classifiers(paths, names=()):
    """Loads every model of `--models` (named by `--names`), failing at the first bad one."""
    paths = [str(path) for path in paths if str(path).strip()]
    if not paths:
        raise ValueError(
            "Received: models=[]; expected one or more comma-separated model paths"
        )
    names = list(names)
    if names and len(names) != len(paths):
        raise ValueError(
            f"Received: names={names} for {len(paths)} models; expected one name per model "
            "or none"
        )
    classifiers = [
        generalization.load_classifier(path, names[i] if names else None)
        for i, path in enumerate(paths)
    ]
    _make_names_unique(classifiers)
    return classifiers


def rotation_results(results):
    """The `rotation_sweep.json` dict of earlier versions, from the report's results."""
    settings = results["settings"]
    examples = settings["eval_examples"]
    models = []
    for model in results["models"]:
        sweep = model["results"].get("rotated_mnist", {}).get("accuracy_by_angle")
        if sweep is None:
            continue
        upright = model["results"].get("mnist", {}).get("accuracy", sweep.get("0"))
        models.append({key: model[key] for key in ("name", "path", "format", "image_shape")}
                      | {"upright_accuracy": upright, "accuracy_by_angle": sweep})
    return {
        "dataset": "mnist",
        "split": "test",
        "eval_examples": examples if examples != "all" else 10_000,
        "angles": settings["angles"],
        "rotation": settings["rotation"],
        "models": models,
    }


def _stderr(line):
    print(f"capskeras-eval: {line}", file=sys.stderr)


def _log(line):
    if ": error: " in line:
        _stderr(line)
    else:
        logging.info("%s", line)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Received unexpected arguments {argv[1:]}; expected flags only")
    try:
        datasets = report.check_datasets(FLAGS.datasets)
        angles = parse_angles(FLAGS.angles)
        if FLAGS.eval_examples < 0:
            raise ValueError(
                f"Received: eval_examples={FLAGS.eval_examples}; expected an int >= 0 (0 for all)"
            )
        if FLAGS.batch_size < 1:
            raise ValueError(f"Received: batch_size={FLAGS.batch_size}; expected an int >= 1")
        classifiers = load_classifiers(FLAGS.models, FLAGS.names)
    except (ValueError, OSError) as error:
        _stderr(f"error: {error}")
        sys.exit(2)
    results = report.evaluate_on_datasets(
        classifiers, datasets, angles=angles, eval_examples=FLAGS.eval_examples,
        batch_size=FLAGS.batch_size, data_dir=FLAGS.data_dir or None,
        canvas_mismatch=FLAGS.canvas_mismatch, log=_log,
    )
    if not report.evaluated_cells(results):
        _stderr("error: no model could be evaluated on any of the datasets "
                f"{list(datasets)}; see the errors above")
        sys.exit(1)
    written = report.write_report(results, FLAGS.output_dir)
    if "rotated_mnist" in datasets:
        path = os.path.join(FLAGS.output_dir, JSON_FILE)
        write_text_atomically(path, json.dumps(rotation_results(results), indent=2) + "\n")
        written.append(path)
    print(report.format_markdown_table(results))
    print("Wrote " + ", ".join(written))


def run(argv=None):
    """Console-script entry point of `capskeras-eval`."""
    cli.run_command("capskeras-eval", define_flags, main, argv)


if __name__ == "__main__":
    run()
