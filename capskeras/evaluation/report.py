"""Accuracy of trained classifiers across test sets, with published anchors.

    results = evaluate_on_datasets(classifiers, ["mnist", "affnist_regen", "rotated_mnist"])
    write_report(results, "runs/evaluation")   # <model>.json, report.md, accuracy.png

Datasets (`DATASETS`):

- `mnist`: the MNIST test split, padded centrally to the model's canvas
  when it is larger than 28x28 (the affNIST training protocol).
- `mnist_shifted`: the expanded MNIST test set of the affNIST protocol:
  the same digits on the model's canvas, each shifted at random by up to 6
  pixels (`mnist_shifted/<N>`: up to N), the shifts fixed by a seed so
  every model and every call sees the same images
  (`generalization.shifted_mnist_test_set`).
- `affnist`: the real affNIST test split (320,000 40x40 images); see
  `capskeras.data.affnist`.
- `affnist_regen`: the REGENERATED affNIST-style test set (MNIST test
  digits under seeded affNIST-range warps), not the original.
- `rotated_mnist`: the MNIST test split rotated by each of the given angles
  (`capskeras.evaluation.generalization.rotation_sweep`).

A dataset that is not prepared is recorded with the `DatasetNotFoundError`
message (which says how to prepare it) and the others still run.

Canvas mismatch: affNIST images are 40x40, and a model built for 28x28
digits cannot take them. Shrinking or cropping would change the test (a
crop cuts off digits that affNIST translated towards the border; a resize
shrinks every digit by 0.7), so by default (`canvas_mismatch="skip"`) such
a cell is left empty with the reason, and the models trained under the
affNIST protocol (40x40 canvas, `--pad_to=40`) are the ones the affNIST
columns speak for. `"crop"` (centre 28x28) or `"resize"` (bilinear,
antialiased) evaluate anyway and mark the cell. Models with a larger canvas
get the 40x40 images padded centrally.
"""

import dataclasses
import json
import os
import re

import tensorflow as tf

from capskeras.data import affnist
from capskeras.data import builders
from capskeras.data import mnist
from capskeras.evaluation import generalization
from capskeras.evaluation import plots
from capskeras.files import write_text_atomically

DATASETS = ("mnist", "mnist_shifted", "affnist", "affnist_regen", "rotated_mnist")
# Datasets that take a `/<suffix>`: a config of the regenerated set, or the largest shift.
SUFFIXED = ("affnist_regen", "mnist_shifted")
CANVAS_POLICIES = ("skip", "crop", "resize")
REPORT_FILE = "report.md"
ACCURACY_PNG = "accuracy.png"
ROTATION_PNG = "rotation_sweep.png"
# Angles shown as table columns when the sweep has many (all are in the JSON).
TABLE_ANGLES = (35.0, 90.0, 180.0)
MAX_TABLE_ANGLES = 6


@dataclasses.dataclass(frozen=True)
class Anchor:
    """A published accuracy shown beside the measured rows."""

    model: str
    dataset: str  # a DATASETS name; "rotated_mnist" with `angle`
    accuracy: float  # percent
    source: str
    angle: float = None


_TRANSLATED = "trained on translated MNIST (40x40, shifts <= 6 px)"
ANCHORS = (
    Anchor(f"plain CNN, {_TRANSLATED}", "mnist_shifted", 99.22,
           "Sabour, Frosst and Hinton 2017, section 5.2 (expanded MNIST test set)"),
    Anchor(f"CapsNet, {_TRANSLATED}", "mnist_shifted", 99.23,
           "Sabour, Frosst and Hinton 2017, section 5.2 (expanded MNIST test set)"),
    Anchor(f"plain CNN, {_TRANSLATED}", "affnist", 66.0,
           "Sabour, Frosst and Hinton 2017, section 5.2"),
    Anchor(f"CapsNet, {_TRANSLATED}", "affnist", 79.0,
           "Sabour, Frosst and Hinton 2017, section 5.2"),
    Anchor("Sparse Unsupervised Capsules, trained on MNIST only, SVM on the code", "affnist",
           90.0, "Rawlinson, Ahmed and Kowadlo 2018"),
    Anchor("LeNet5, trained on MNIST", "rotated_mnist", 76.05,
           "published rotated-MNIST comparison (35 degrees)", angle=35.0),
    Anchor("CapsNet, trained on MNIST", "rotated_mnist", 92.12,
           "published rotated-MNIST comparison (35 degrees)", angle=35.0),
)


def check_datasets(names):
    """`names` as a tuple of distinct `DATASETS` entries, in the given order.

    `affnist_regen/<config>` names a prepared config of the regenerated set
    (e.g. `affnist_regen/small`); `mnist_shifted/<N>` shifts by up to N
    pixels (an int >= 0) instead of 6.
    """
    names = [str(name).strip() for name in names if str(name).strip()]
    unknown = [name for name in names if not _known(name)]
    if unknown or not names:
        raise ValueError(
            f"Received: datasets={names}; expected one or more of {list(DATASETS)} "
            "(affnist_regen/<config> for a config of the regenerated set, mnist_shifted/<N> "
            "for shifts of up to N pixels)"
        )
    return tuple(dict.fromkeys(names))


def _known(name):
    base, _, suffix = name.partition("/")
    if base not in DATASETS or ("/" in name and base not in SUFFIXED):
        return False
    if base == "mnist_shifted" and "/" in name:
        return suffix.isdigit()
    return "/" not in name or bool(suffix)


def shift_pixels(name):
    """The largest shift of `mnist_shifted` (6) or `mnist_shifted/<N>` (N)."""
    _, _, suffix = name.partition("/")
    return int(suffix) if suffix else generalization.DEFAULT_SHIFT_PIXELS


def _base(name):
    return name.split("/")[0]


class _Skipped(Exception):
    """A (model, dataset) cell that is not evaluated, and why."""


def _affnist_batches(name, classifier, eval_examples, batch_size, data_dir, canvas_mismatch):
    """40x40 affNIST test batches fitted to the classifier's canvas, and how."""
    side = classifier.image_shape[0]
    # Loaded first: a dataset that is not prepared is an error for every model.
    dataset = affnist.load_affnist(
        "test", batch_size=batch_size, name=name, data_dir=data_dir,
        num_examples=eval_examples or None,
    )
    if side < affnist.IMAGE_SIZE and canvas_mismatch == "skip":
        raise _Skipped(
            f"{side}x{side} model, {affnist.IMAGE_SIZE}x{affnist.IMAGE_SIZE} data: not "
            "evaluated (--canvas_mismatch=crop or resize to force)"
        )
    if side == affnist.IMAGE_SIZE:
        return dataset, "as is"
    if side > affnist.IMAGE_SIZE:
        offset = (side - affnist.IMAGE_SIZE) // 2
        return dataset.map(lambda x, y: (
            tf.image.pad_to_bounding_box(x, offset, offset, side, side), y)
        ), f"padded to {side}x{side}"
    if canvas_mismatch == "crop":
        offset = (affnist.IMAGE_SIZE - side) // 2
        return dataset.map(lambda x, y: (
            tf.image.crop_to_bounding_box(x, offset, offset, side, side), y)
        ), f"centre-cropped to {side}x{side}"
    return dataset.map(lambda x, y: (
        tf.image.resize(x, (side, side), antialias=True), y)
    ), f"resized to {side}x{side}"


def evaluate_on_datasets(classifiers, datasets, *, angles=generalization.DEFAULT_ANGLES,
                         eval_examples=0, batch_size=generalization.DEFAULT_BATCH_SIZE,
                         data_dir=None, canvas_mismatch="skip", log=print):
    """Accuracy of every classifier on every dataset.

    Args:
        classifiers: `generalization.Classifier`s.
        datasets: names from `DATASETS`.
        angles: the rotations of `rotated_mnist`, in degrees.
        eval_examples: the first N examples of each test set; 0 for all.
        batch_size: images per forward pass.
        data_dir: a prepared TFDS directory; defaults to `$TFDS_DATA_DIR`.
        canvas_mismatch: `"skip"`, `"crop"` or `"resize"`: what to do with
            40x40 data for a model of a smaller canvas (module docstring).
        log: called with one line per evaluated or failed cell.

    Returns:
        A results dict: `settings`, `datasets` (per name: `status` "ok" or
        "error" and the `error` message) and `models` (per model: name,
        path, format, image_shape and `results` per dataset: `accuracy`
        (and `accuracy_by_angle` for `rotated_mnist`), `input` (how the
        images were fitted), or `skipped`/`error` with the reason).
    """
    datasets = check_datasets(datasets)
    if canvas_mismatch not in CANVAS_POLICIES:
        raise ValueError(
            f"Received: canvas_mismatch={canvas_mismatch!r}; expected one of {CANVAS_POLICIES}"
        )
    angles = generalization.check_angles(angles)
    status = {name: {"status": "ok"} for name in datasets}
    models = []
    for classifier in classifiers:
        entry = {
            "name": classifier.name,
            "path": os.path.abspath(classifier.path),
            "format": classifier.format,
            "image_shape": list(classifier.image_shape),
            "results": {},
        }
        upright = None
        for name in datasets:
            if status[name]["status"] == "error":
                entry["results"][name] = {"error": status[name]["error"]}
                continue
            try:
                if _base(name) == "mnist_shifted":
                    result = {"accuracy": generalization.accuracy(
                        classifier, generalization.shifted_mnist_test_set(
                            classifier, shift_pixels(name), eval_examples or None, batch_size,
                            data_dir), batch_size=batch_size)}
                    side = classifier.image_shape[0]
                    fitted = (f"padded to {side}x{side}, " if side != mnist.IMAGE_SHAPE[0]
                              else "") + f"shifted by up to {shift_pixels(name)} px"
                elif _base(name) in ("mnist", "rotated_mnist"):
                    if upright is None:
                        upright = generalization.mnist_test_set(
                            classifier, eval_examples or None, batch_size, data_dir)
                    fitted = ("as is" if classifier.image_shape[0] == mnist.IMAGE_SHAPE[0]
                              else f"padded to {classifier.image_shape[0]}x"
                                   f"{classifier.image_shape[1]}")
                    if name == "mnist":
                        result = {"accuracy": generalization.accuracy(
                            classifier, upright, batch_size=batch_size)}
                    else:
                        sweep = generalization.rotation_sweep(
                            classifier, angles, batch_size=batch_size, dataset=upright)
                        result = {"accuracy_by_angle": {_angle_key(a): v for a, v in sweep.items()}}
                else:
                    batches, fitted = _affnist_batches(
                        name, classifier, eval_examples, batch_size, data_dir, canvas_mismatch)
                    result = {"accuracy": generalization.accuracy(
                        classifier, batches, batch_size=batch_size)}
                result["input"] = fitted
                log(f"{classifier.name} on {name}: "
                    + (f"{100 * result['accuracy']:.2f}%" if "accuracy" in result
                       else "rotation sweep done"))
            except _Skipped as reason:
                result = {"skipped": str(reason)}
                log(f"{classifier.name} on {name}: skipped, {reason}")
            except builders.DatasetNotFoundError as error:
                status[name] = {"status": "error", "error": str(error)}
                result = {"error": str(error)}
                log(f"{name}: error: {error}")
            entry["results"][name] = result
        models.append(entry)
    return {
        "settings": {
            "datasets": list(datasets),
            "eval_examples": eval_examples or "all",
            "angles": list(angles),
            "rotation": "counter-clockwise about the image centre, bilinear, zero fill",
            "canvas_mismatch": canvas_mismatch,
            "split": "test",
        },
        "datasets": status,
        "models": models,
    }


def evaluated_cells(results):
    """How many (model, dataset) cells were measured."""
    return sum(
        1 for model in results["models"] for result in model["results"].values()
        if "accuracy" in result or "accuracy_by_angle" in result
    )


def table_columns(results):
    """`[(header, dataset, angle or None)]`: one column per dataset, per shown angle."""
    columns = []
    angles = results["settings"]["angles"]
    shown = angles if len(angles) <= MAX_TABLE_ANGLES else [
        a for a in angles if a in TABLE_ANGLES]
    for name in results["settings"]["datasets"]:
        if name == "rotated_mnist":
            columns.extend((f"rotated {a:g}°", name, a) for a in shown)
        else:
            columns.append((name, name, None))
    return columns


def _cell(result, angle):
    if "accuracy" in result:
        fitted = result.get("input", "as is")
        mark = "*" if "cropped" in fitted or "resized" in fitted else ""
        return f"{100 * result['accuracy']:.2f}{mark}"
    if "accuracy_by_angle" in result:
        value = result["accuracy_by_angle"].get(_angle_key(angle))
        return "" if value is None else f"{100 * value:.2f}"
    if "skipped" in result:
        return "n/a"
    return "not prepared"


def _anchor_cell(anchor, dataset, angle):
    if anchor.dataset != dataset:
        return ""
    if dataset == "rotated_mnist" and anchor.angle != angle:
        return ""
    return f"{anchor.accuracy:g}"


def format_markdown_table(results):
    """The model x dataset accuracy table (percent) in Markdown, anchors below."""
    columns = table_columns(results)
    header = "| model | " + " | ".join(c[0] for c in columns) + " |"
    lines = [header, "|---|" + "---:|" * len(columns)]
    for model in results["models"]:
        cells = [_cell(model["results"].get(dataset, {"skipped": ""}), angle)
                 for _, dataset, angle in columns]
        lines.append(f"| {model['name']} | " + " | ".join(cells) + " |")
    for anchor in ANCHORS:
        cells = [_anchor_cell(anchor, dataset, angle) for _, dataset, angle in columns]
        if any(cells):
            lines.append(f"| *published: {anchor.model} ({anchor.source})* | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def _slug(name):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "model"


def write_report(results, output_dir):
    """Writes `<model>.json` per model, `report.md` and its PNG plots.

    Returns:
        The paths written, the report first.
    """
    os.makedirs(output_dir, exist_ok=True)
    written = []
    used = set()
    for model in results["models"]:
        slug = _slug(model["name"])
        while slug in used:
            slug += "_"
        used.add(slug)
        payload = {"model": model, "settings": results["settings"],
                   "datasets": results["datasets"]}
        path = os.path.join(output_dir, f"{slug}.json")
        write_text_atomically(path, json.dumps(payload, indent=2) + "\n")
        model["json"] = os.path.basename(path)
        written.append(path)
    figures = []
    bars = {}
    for model in results["models"]:
        bars[model["name"]] = {
            name: result["accuracy"] for name, result in model["results"].items()
            if "accuracy" in result
        }
    if any(bars.values()):
        figures.append(plots.save_accuracy_bars(
            bars, os.path.join(output_dir, ACCURACY_PNG),
            anchors={(a.model, a.dataset): a.accuracy / 100 for a in ANCHORS
                     if a.dataset != "rotated_mnist"},
            title="Test accuracy by dataset",
        ))
    sweeps = {model["name"]: model["results"]["rotated_mnist"]["accuracy_by_angle"]
              for model in results["models"]
              if "accuracy_by_angle" in model["results"].get("rotated_mnist", {})}
    if sweeps:
        figures.append(plots.save_rotation_sweep_plot(
            sweeps, os.path.join(output_dir, ROTATION_PNG), mark_angle=35.0,
            title="MNIST test accuracy under rotation",
            published={anchor.model: (anchor.angle, anchor.accuracy / 100)
                       for anchor in ANCHORS if anchor.dataset == "rotated_mnist"},
        ))
    report = format_report(results, [os.path.basename(f) for f in figures])
    report_path = os.path.join(output_dir, REPORT_FILE)
    write_text_atomically(report_path, report)
    return [report_path] + written + figures


def format_report(results, figures=()):
    """The Markdown report: the table, the notes it needs, the figures."""
    settings = results["settings"]
    examples = settings["eval_examples"]
    lines = [
        "# Generalization report",
        "",
        f"Test accuracy (%) of each model; {examples if examples == 'all' else f'the first {examples:,}'}"
        " examples of each test split. Rows in italics are published figures, not "
        "measured here.",
        "",
        format_markdown_table(results),
        "",
        "Notes:",
        "",
        "- `affnist_regen` (and its configs) is REGENERATED (MNIST test digits under seeded affNIST-range "
        "warps), not Tieleman's affNIST; published affNIST figures compare with `affnist`.",
        "- `mnist_shifted`: MNIST test digits on the model's canvas, each shifted at random "
        "(seeded, the same images for every model) by up to 6 pixels, or N for "
        "`mnist_shifted/N`: the expanded test set of the affNIST protocol.",
        "- `rotated` columns: MNIST test digits rotated counter-clockwise about the centre "
        "of the model's canvas (bilinear, zero fill).",
        f"- Canvas mismatch policy: `{settings['canvas_mismatch']}`. `n/a`: a 28x28 model is "
        "not evaluated on 40x40 affNIST images; `*`: evaluated on images cropped or "
        "resized to its canvas, not the published protocol. 40x40 models see MNIST "
        "padded to 40x40.",
    ]
    for name, state in results["datasets"].items():
        if state["status"] == "error":
            lines.append(f"- `{name}` was not evaluated: {state['error']}")
    skipped = sorted({f"{m['name']} on {d}: {r['skipped']}" for m in results["models"]
                      for d, r in m["results"].items() if "skipped" in r})
    for line in skipped:
        lines.append(f"- {line}")
    lines.append("")
    lines.append("Per-model results: " + ", ".join(
        f"[{m['name']}]({m['json']})" for m in results["models"] if "json" in m) + ".")
    for figure in figures:
        lines.extend(["", f"![{figure}]({figure})"])
    return "\n".join(lines) + "\n"


def _angle_key(angle):
    """A JSON key for an angle: 35.0 -> "35", 2.5 -> "2.5"."""
    return f"{float(angle):g}"
