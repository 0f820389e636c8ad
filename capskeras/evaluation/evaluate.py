"""The absl evaluator: trained models -> MNIST test accuracy as the digits rotate.

    capskeras-eval --models=runs/capsnet,saved_models/enc_deep_bp_dec_class \
        --names=CapsNet,"deep BP" --eval_examples=1000 --output_dir=runs/rotation_sweep

Each entry of `--models` is a SavedModel (a version directory, or an export
directory whose newest version is used) or a model directory holding
`model.keras`; see `capskeras.evaluation.generalization.load_classifier`.
For every model it prints the upright MNIST test accuracy and the accuracy
with the test digits rotated by each of `--angles` (counter-clockwise,
about the centre of the model's canvas: digits are padded to 40x40 first
for models trained that way), and writes to `--output_dir`:

- `rotation_sweep.json`: `{"models": [{"name", "path", "format",
  "image_shape", "upright_accuracy", "accuracy_by_angle": {angle:
  accuracy}}], ...}` with the settings of the run;
- `rotation_sweep.png`: accuracy against angle, one line per model, 35
  degrees marked.

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

from capskeras.data import mnist
from capskeras.evaluation import generalization
from capskeras.evaluation import plots
from capskeras.files import write_text_atomically

FLAGS = flags.FLAGS
JSON_FILE = "rotation_sweep.json"
PNG_FILE = "rotation_sweep.png"
MARK_ANGLE = 35.0


def _define(kind, name, default, help_text):
    """Defines `--name` unless defined already (the trainer shares some names)."""
    if name not in FLAGS:
        getattr(flags, f"DEFINE_{kind}")(name, default, help_text)


_define("list", "models", [],
        "Comma-separated model paths: SavedModel version or export directories, or "
        "model directories holding model.keras.")
_define("list", "names", [],
        "Comma-separated display names, one per --models entry; defaults to names "
        "taken from the paths.")
_define("integer", "eval_examples", 0, "Evaluate on the first N test examples; 0 for all.")
_define("integer", "batch_size", 128, "Images per forward pass.")
_define("list", "angles", [],
        "Comma-separated rotations in degrees (counter-clockwise), each a number or "
        "start:stop:step (stop included); empty for 0 to 180 in 5-degree steps.")
_define("string", "output_dir", "runs/rotation_sweep",
        f"Directory for {JSON_FILE} and {PNG_FILE}.")
_define("string", "data_dir", "",
        "Prepared TFDS directory; empty for $TFDS_DATA_DIR or TFDS's default.")


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


def evaluate_models(paths, names=(), angles=generalization.DEFAULT_ANGLES, eval_examples=0,
                    batch_size=generalization.DEFAULT_BATCH_SIZE, data_dir=None, download=True):
    """Upright accuracy and the rotation sweep of every model in `paths`.

    All models are loaded (and the data located) before any is evaluated,
    so a bad path fails at once.

    Returns:
        The results dict written to `rotation_sweep.json`.
    """
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
    if not isinstance(eval_examples, int) or eval_examples < 0:
        raise ValueError(
            f"Received: eval_examples={eval_examples!r}; expected an int >= 0 (0 for all)"
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"Received: batch_size={batch_size!r}; expected an int >= 1")
    angles = generalization.check_angles(angles)
    classifiers = [
        generalization.load_classifier(path, names[i] if names else None)
        for i, path in enumerate(paths)
    ]
    _make_names_unique(classifiers)
    builder = mnist.prepared_builder("mnist", data_dir=data_dir or None, download=download)
    available = builder.info.splits["test"].num_examples
    results = {
        "dataset": "mnist",
        "split": "test",
        "eval_examples": min(eval_examples, available) if eval_examples else available,
        "angles": list(angles),
        "rotation": "counter-clockwise about the image centre, bilinear, zero fill",
        "models": [],
    }
    for classifier in classifiers:
        upright = generalization.mnist_test_set(
            classifier, eval_examples or None, batch_size, data_dir, download
        )
        accuracy = generalization.accuracy(classifier, upright, batch_size=batch_size)
        logging.info("%s: upright accuracy %.4f", classifier.name, accuracy)
        sweep = generalization.rotation_sweep(
            classifier, angles, batch_size=batch_size, dataset=upright
        )
        results["models"].append(
            {
                "name": classifier.name,
                "path": os.path.abspath(classifier.path),
                "format": classifier.format,
                "image_shape": list(classifier.image_shape),
                "upright_accuracy": accuracy,
                "accuracy_by_angle": {_angle_key(a): value for a, value in sweep.items()},
            }
        )
    return results


def write_results(results, output_dir):
    """Writes `rotation_sweep.json` and `rotation_sweep.png`; returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    json_path = os.path.join(output_dir, JSON_FILE)
    write_text_atomically(json_path, json.dumps(results, indent=2) + "\n")
    png_path = plots.save_rotation_sweep_plot(
        {model["name"]: model["accuracy_by_angle"] for model in results["models"]},
        os.path.join(output_dir, PNG_FILE),
        mark_angle=MARK_ANGLE,
        title=f"MNIST test accuracy under rotation ({results['eval_examples']:,} digits)",
    )
    return json_path, png_path


def format_table(results):
    """The results as a plain-text table: upright accuracy, then one row per angle."""
    models = results["models"]
    width = max([12] + [len(model["name"]) + 2 for model in models])
    header = "angle".rjust(8) + "".join(model["name"].rjust(width) for model in models)
    lines = [header, "upright".rjust(8) + "".join(
        f"{100 * model['upright_accuracy']:.2f}%".rjust(width) for model in models)]
    for angle in results["angles"]:
        key = _angle_key(angle)
        lines.append(key.rjust(8) + "".join(
            f"{100 * model['accuracy_by_angle'][key]:.2f}%".rjust(width) for model in models))
    return "\n".join(lines)


def _angle_key(angle):
    """A JSON key for an angle: 35.0 -> "35", 2.5 -> "2.5"."""
    return f"{float(angle):g}"


def _make_names_unique(classifiers):
    seen = {}
    for classifier in classifiers:
        count = seen.get(classifier.name, 0) + 1
        seen[classifier.name] = count
        if count > 1:
            classifier.name = f"{classifier.name} ({count})"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Received unexpected arguments {argv[1:]}; expected flags only")
    try:
        results = evaluate_models(
            FLAGS.models,
            names=FLAGS.names,
            angles=parse_angles(FLAGS.angles),
            eval_examples=FLAGS.eval_examples,
            batch_size=FLAGS.batch_size,
            data_dir=FLAGS.data_dir or None,
        )
        json_path, png_path = write_results(results, FLAGS.output_dir)
    except (ValueError, OSError, mnist.DatasetNotFoundError) as error:
        print(f"capskeras-eval: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"MNIST test accuracy, {results['eval_examples']:,} digits rotated counter-clockwise:")
    print(format_table(results))
    print(f"Wrote {json_path} and {png_path}")


def run():
    """Console-script entry point of `capskeras-eval`."""
    app.run(main)


if __name__ == "__main__":
    run()
