"""What a capsule code's dimensions encode: Sabour et al. (2017), Fig. 4.

    python tools/perturbation_figure.py --model_dir=runs/capsnet
    python tools/perturbation_figure.py --untrained --output=/tmp/perturbations.png

Takes the first `--num_digits` MNIST test digits, encodes each with a
trained model (`<model_dir>/model.keras`, as `capskeras-train` writes it;
CapsNet's is the figure of the paper), finds its winning (longest) capsule,
adds each of -0.25, -0.20, ..., 0.25 to each of the capsule's dimensions
in turn and decodes every perturbed capsule with the model's decoder, all
other capsules masked. The model needs a capsule code and a decoder (the
contract's `code_capsules` and `code_decoder()`,
`capskeras/models/contract.py`). The PNG has one block per digit: a row
per dimension by 11 columns (the perturbations); the middle column is the
unperturbed reconstruction. `--untrained` builds a fresh model of
`--model` (default `capsnet`) instead, a smoke run of the figure without a
trained model.

The computation is `capskeras.evaluation.perturbation`; this script only
reads the model and the digits and writes the figure (by default
`<model_dir>/perturbations.png`), with the images it is drawn from beside it
(`perturbations.npz`, `perturbations.json`). It prints the PNG's path.
"""

# oneDNN on (unless TF_ENABLE_ONEDNN_OPTS is set) before anything imports TensorFlow.
from capskeras import onednn

onednn.enable()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from capskeras import tasks  # noqa: E402
from capskeras.data import mnist  # noqa: E402
from capskeras.data.builders import DatasetNotFoundError  # noqa: E402
from capskeras.evaluation import perturbation  # noqa: E402
from capskeras.evaluation import plots  # noqa: E402
from capskeras.evaluation.generalization import keras_input_shape  # noqa: E402
from capskeras.models.contract import check_supports  # noqa: E402

FLAGS = flags.FLAGS
OUTPUT_FILE = "perturbations.png"
PURPOSE = "The perturbation figure (a capsule code and its decoder)"


def define_flags(flag_values=FLAGS):
    """Defines the tool's flags on `flag_values`, each unless defined already."""
    definitions = [
        ("string", "model_dir", "", "A trained model's directory, holding model.keras."),
        ("boolean", "untrained", False,
         "Build a fresh, untrained model of --model instead of loading --model_dir."),
        ("string", "model", "capsnet", "With --untrained: the task to build (capsnet, ...)."),
        ("integer", "num_digits", 3, "How many test digits (the first N of the split)."),
        ("string", "output", "",
         f"The PNG to write; defaults to <model_dir>/{OUTPUT_FILE}, or ./{OUTPUT_FILE} "
         "with --untrained."),
        ("integer", "seed", 0, "Seeds the untrained model's initializers."),
        ("string", "data_dir", "",
         "Prepared TFDS directory; empty for $TFDS_DATA_DIR or TFDS's default."),
    ]
    for kind, name, default, help_text in definitions:
        if name not in flag_values:
            getattr(flags, f"DEFINE_{kind}")(name, default, help_text, flag_values=flag_values)


def load_model(model_dir, untrained=False, seed=0, model="capsnet"):
    """The model to draw: loaded from `model_dir`, or a fresh one of task `model`.

    Raises:
        ValueError: not exactly one source, no `model.keras`, or a model
            without a capsule code and a decoder.
    """
    if untrained == bool(model_dir):
        raise ValueError(
            f"Received: model_dir={model_dir!r}, untrained={untrained}; expected exactly "
            "one of --model_dir (a trained model) or --untrained"
        )
    if untrained:
        keras.utils.set_random_seed(seed)
        loaded = tasks.build_model(model)
    else:
        path = os.path.join(model_dir, "model.keras")
        if not os.path.isfile(path):
            raise ValueError(
                f"Received: model_dir={model_dir!r} without model.keras; expected the "
                "model directory of a trained model (capskeras-train --model=capsnet)"
            )
        loaded = keras.saving.load_model(path, safe_mode=True)
    return check_supports(loaded, "code_capsules", "code_decoder", purpose=PURPOSE)


def first_test_digits(num_digits, image_shape, data_dir=None):
    """The first `num_digits` MNIST test images, padded to `image_shape`, and their labels."""
    pad_to = image_shape[0] if image_shape[0] != mnist.IMAGE_SHAPE[0] else None
    images, labels = next(iter(mnist.load_mnist(
        "test", batch_size=num_digits, num_examples=num_digits, data_dir=data_dir,
        pad_to=pad_to,
    )))
    return np.asarray(images), np.asarray(labels)


def _draw(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Received unexpected arguments {argv[1:]}; expected flags only")
    try:
        if FLAGS.num_digits < 1:
            raise ValueError(f"Received: num_digits={FLAGS.num_digits}; expected an int >= 1")
        model = load_model(FLAGS.model_dir, FLAGS.untrained, FLAGS.seed, FLAGS.model)
        images, labels = first_test_digits(
            FLAGS.num_digits, keras_input_shape(model), FLAGS.data_dir or None
        )
        result = perturbation.perturbation_images(model, images)
        output = FLAGS.output or os.path.join(FLAGS.model_dir or ".", OUTPUT_FILE)
        if os.path.dirname(output):
            os.makedirs(os.path.dirname(output), exist_ok=True)
        source = f"untrained {FLAGS.model}" if FLAGS.untrained else FLAGS.model_dir
        plots.save_perturbation_grid(
            result["images"], output, perturbation.PERTURBATIONS,
            titles=[f"test digit {int(label)}, capsule {int(capsule)}"
                    for label, capsule in zip(labels, result["class_ids"])],
            title=f"{source}: perturbing each winning-capsule dimension by -0.25 to 0.25",
        )
        write_figure_data(os.path.splitext(output)[0], result, labels, source)
    except (ValueError, OSError, DatasetNotFoundError) as error:
        print(f"perturbation_figure: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(output)


def write_figure_data(stem, result, labels, source):
    """What the figure is drawn from: `<stem>.npz` (the images) and `<stem>.json`.

    The JSON holds the digits' labels, the capsule kept for each, the
    perturbations and, per digit and dimension, the mean absolute pixel
    change between the reconstructions at -0.25 and +0.25: how strongly
    that dimension moves the decoded digit.
    """
    images = np.asarray(result["images"], "float32")  # [B, D, P, H, W]
    np.savez_compressed(f"{stem}.npz", images=images, labels=np.asarray(labels),
                        class_ids=np.asarray(result["class_ids"]))
    change = np.abs(images[:, :, -1] - images[:, :, 0]).mean(axis=(-2, -1))
    with open(f"{stem}.json", "w") as file:
        json.dump({
            "source": source,
            "perturbations": [float(value) for value in perturbation.PERTURBATIONS],
            "labels": [int(label) for label in labels],
            "capsules": [int(capsule) for capsule in result["class_ids"]],
            "pixel_change_by_dimension": np.round(change, 5).tolist(),
            "images": os.path.basename(f"{stem}.npz"),
        }, file, indent=2)


def _parse_flags(argv):
    """The flags of `argv` alone (earlier parses forgotten); a bad one exits with status 2."""
    FLAGS.unparse_flags()
    try:
        return FLAGS(argv)
    except flags.Error as error:
        print(f"perturbation_figure: error: {error}", file=sys.stderr)
        sys.exit(2)


def main(argv=None):
    """Defines the flags, parses `argv` (default `sys.argv`), draws; exits with the status."""
    define_flags()
    app.run(_draw, argv=argv, flags_parser=_parse_flags)


if __name__ == "__main__":
    main()
