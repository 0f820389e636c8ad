"""What CapsNet's capsule dimensions encode: Sabour et al. (2017), Fig. 4.

    python tools/perturbation_figure.py --model_dir=runs/capsnet
    python tools/perturbation_figure.py --untrained --output=/tmp/perturbations.png

Takes the first `--num_digits` MNIST test digits, encodes each with a
trained CapsNet (`<model_dir>/model.keras`, as `capskeras-train
--model=capsnet` writes it), finds its winning (longest) digit capsule,
adds each of -0.25, -0.20, ..., 0.25 to each of the capsule's 16
dimensions in turn and decodes every perturbed capsule with the CapsNet
decoder, all other capsules masked. The PNG has one block per digit: 16
rows (the dimensions) by 11 columns (the perturbations); the middle column
is the unperturbed reconstruction. `--untrained` builds a fresh CapsNet
instead, a smoke run of the figure without a trained model.

The computation is `capskeras.evaluation.perturbation`; this script only
reads the model and the digits and writes the figure (by default
`<model_dir>/perturbations.png`). It prints the PNG's path.
"""

# oneDNN on (unless TF_ENABLE_ONEDNN_OPTS is set) before anything imports TensorFlow.
from capskeras import onednn

onednn.enable()

import os  # noqa: E402
import sys  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from capskeras import tasks  # noqa: E402
from capskeras.data import mnist  # noqa: E402
from capskeras.evaluation import perturbation  # noqa: E402
from capskeras.evaluation import plots  # noqa: E402
from capskeras.models.capsnet import CapsNet  # noqa: E402

FLAGS = flags.FLAGS
OUTPUT_FILE = "perturbations.png"


def _define(kind, name, default, help_text):
    """Defines `--name` unless defined already (the trainer shares some names)."""
    if name not in FLAGS:
        getattr(flags, f"DEFINE_{kind}")(name, default, help_text)


_define("string", "model_dir", "", "A trained CapsNet's model directory, holding model.keras.")
_define("boolean", "untrained", False,
        "Build a fresh, untrained CapsNet instead of loading --model_dir.")
_define("integer", "num_digits", 3, "How many test digits (the first N of the split).")
_define("string", "output", "",
        f"The PNG to write; defaults to <model_dir>/{OUTPUT_FILE}, or ./{OUTPUT_FILE} "
        "with --untrained.")
_define("integer", "seed", 0, "Seeds the untrained CapsNet's initializers.")
_define("string", "data_dir", "",
        "Prepared TFDS directory; empty for $TFDS_DATA_DIR or TFDS's default.")


def load_capsnet(model_dir, untrained=False, seed=0):
    """The CapsNet to draw: loaded from `model_dir`, or freshly built."""
    if untrained == bool(model_dir):
        raise ValueError(
            f"Received: model_dir={model_dir!r}, untrained={untrained}; expected exactly "
            "one of --model_dir (a trained CapsNet) or --untrained"
        )
    if untrained:
        keras.utils.set_random_seed(seed)
        return tasks.build_model("capsnet")
    path = os.path.join(model_dir, "model.keras")
    if not os.path.isfile(path):
        raise ValueError(
            f"Received: model_dir={model_dir!r} without model.keras; expected the "
            "model directory of a trained CapsNet (capskeras-train --model=capsnet)"
        )
    model = keras.saving.load_model(path, safe_mode=True)
    if not isinstance(model, CapsNet):
        raise ValueError(
            f"Received: model_dir={model_dir!r} holding a {type(model).__name__}; "
            "expected a CapsNet"
        )
    return model


def first_test_digits(num_digits, image_shape, data_dir=None):
    """The first `num_digits` MNIST test images, padded to `image_shape`, and their labels."""
    pad_to = image_shape[0] if image_shape[0] != mnist.IMAGE_SHAPE[0] else None
    images, labels = next(iter(mnist.load_mnist(
        "test", batch_size=num_digits, num_examples=num_digits, data_dir=data_dir,
        pad_to=pad_to,
    )))
    return np.asarray(images), np.asarray(labels)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Received unexpected arguments {argv[1:]}; expected flags only")
    try:
        if FLAGS.num_digits < 1:
            raise ValueError(f"Received: num_digits={FLAGS.num_digits}; expected an int >= 1")
        model = load_capsnet(FLAGS.model_dir, FLAGS.untrained, FLAGS.seed)
        images, labels = first_test_digits(
            FLAGS.num_digits, model.image_shape, FLAGS.data_dir or None
        )
        result = perturbation.perturbation_images(model, images)
        output = FLAGS.output or os.path.join(FLAGS.model_dir or ".", OUTPUT_FILE)
        if os.path.dirname(output):
            os.makedirs(os.path.dirname(output), exist_ok=True)
        source = "untrained CapsNet" if FLAGS.untrained else FLAGS.model_dir
        plots.save_perturbation_grid(
            result["images"], output, perturbation.PERTURBATIONS,
            titles=[f"test digit {int(label)}, capsule {int(capsule)}"
                    for label, capsule in zip(labels, result["class_ids"])],
            title=f"{source}: perturbing each winning-capsule dimension by -0.25 to 0.25",
        )
    except (ValueError, OSError, mnist.DatasetNotFoundError) as error:
        print(f"perturbation_figure: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(output)


if __name__ == "__main__":
    app.run(main)
