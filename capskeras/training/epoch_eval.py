"""Test-set accuracy after every epoch: the affNIST protocol's curve.

    capskeras-train --flagfile=flags/capsnet_affnist.cfg \
        --eval_each_epoch=mnist_shifted,affnist_regen --eval_each_epoch_examples=0
    python tools/affnist_curve.py --run_dirs=runs/capsnet_affnist,runs/cnn_baseline_affnist

With `--eval_each_epoch`, after every epoch of the model's training (not of
a pretraining stage) the chief evaluates the live model on each named test
set with `capskeras.evaluation.report.evaluate_on_datasets`, and the
epoch's record in `history.json` gains `<dataset>_accuracy` (a `/` written
`_`: `affnist_regen/small` gives `affnist_regen_small_accuracy`) beside the
training metrics and the validation split's `val_*`. TensorBoard shows them
too. The test sets (`DATASETS`):

- `mnist`: the MNIST test digits, padded to the model's canvas;
- `mnist_shifted`: the expanded MNIST test set of the affNIST protocol, the
  same digits each shifted at random by up to the run's `--translate_pixels`,
  the shifts fixed by a seed (every epoch and every model sees the same
  images); `mnist_shifted/<N>` shifts by up to N pixels;
- `affnist`, `affnist_regen` (`affnist_regen/<config>`): 40x40 as they are
  (a larger canvas gets them padded; a smaller one is refused, since
  cropping or resizing changes the test). Prepare them first
  (`python -m capskeras.data.prepare affnist_regen --data_dir=<dir>`).

Everything is checked before the run writes anything (`check_request`): the
names, the canvas and that every test set is prepared.

Models without class outputs (Sparse Unsupervised Capsules, reconstruction
models) are read the way their paper reads them, through an RBF SVM on the
code (`capskeras.evaluation.code_svm`, needs scikit-learn): after every
epoch an SVM is fitted on the codes of the first
`--eval_each_epoch_svm_examples` training digits (5,000 by default; placed as
training places them: on the canvas, shifted by up to `--translate_pixels`
with a fixed seed, the same digits every epoch) and classifies the test
sets' codes. That costs one encoding pass over those digits and a fit of a
few seconds (5,000 codes) per epoch, beside the test sets' own pass. The
SVM figures are the SVM's, not a trained head's: the history says so
(`svm_examples`).
"""

from absl import logging
import numpy as np

from capskeras.data import affnist
from capskeras.data import mnist
from capskeras.evaluation import code_svm
from capskeras.evaluation import generalization
from capskeras.evaluation import report
from capskeras.tasks import InputOptions

DATASETS = tuple(name for name in report.DATASETS if name != "rotated_mnist")
EXPECTED = (
    f"comma-separated test set names from {list(DATASETS)} (affnist_regen/<config> for a "
    "config of the regenerated set, mnist_shifted/<N> for shifts of up to N pixels), or "
    "empty for none"
)


def parse_datasets(value):
    """The test set names of an `--eval_each_epoch` value, in order, without repeats.

    Raises:
        ValueError: naming the value and the accepted names.
    """
    names = [name.strip() for name in str(value).split(",") if name.strip()]
    if not names:
        return ()
    try:
        checked = report.check_datasets(names)
    except ValueError:
        checked = None
    if checked is None or any(_base(name) not in DATASETS for name in checked):
        raise ValueError(f"Received: eval_each_epoch={value!r}; expected {EXPECTED}")
    return checked


def accepts(value):
    """Whether `value` is a valid `--eval_each_epoch` (for the setting's check)."""
    try:
        parse_datasets(value)
    except ValueError:
        return False
    return True


def history_key(name):
    """The `history.json` key of test set `name`'s accuracy."""
    return name.replace("/", "_") + "_accuracy"


def _base(name):
    return name.split("/")[0]


def _evaluated_name(name, translate_pixels):
    """The `report` dataset name: `mnist_shifted` shifts by the run's `translate_pixels`."""
    return f"mnist_shifted/{translate_pixels}" if name == "mnist_shifted" else name


def _translate_pixels(config):
    return getattr(config.settings, "translate_pixels", 0)


def check_request(config, task):
    """Refuses `--eval_each_epoch` test sets that cannot be evaluated, before any write.

    Raises:
        ValueError: a bad name, or a model canvas the test set does not fit.
        DatasetNotFoundError: a test set is not prepared; the message says how
            to prepare it.
    """
    names = parse_datasets(config.eval_each_epoch)
    height, width, channels = task.image_shape()
    for name in names:
        base = _base(name)
        side = affnist.IMAGE_SIZE if base.startswith("affnist") else mnist.IMAGE_SHAPE[0]
        if channels != 1 or height != width or height < side:
            raise ValueError(
                f"Received: eval_each_epoch={config.eval_each_epoch!r} for a model taking "
                f"{height}x{width}x{channels} images; {name} needs square one-channel images of "
                f"side >= {side}" + (" (the affNIST protocol's canvas: --pad_to=40)"
                                     if side == affnist.IMAGE_SIZE else ""))
    data_dir = config.data_dir or None
    if any(_base(name).startswith("mnist") for name in names):
        mnist.prepared_builder("mnist", data_dir=data_dir, download=config.download)
    for name in names:
        if _base(name).startswith("affnist"):
            affnist.load_affnist("test", batch_size=1, name=name, data_dir=data_dir)
    return names


class EpochEvaluation:
    """The accuracies `--eval_each_epoch` records, as `evaluation(model) -> dict`.

    Built before training: a model without class outputs gets its SVM's
    training digits here, and scikit-learn is required here.

    Args:
        config: the run's `TrainConfig`.
        task: its `Task`.
        model: the model being trained (contract-following, built).

    Raises:
        ImportError: the model serves no classes and scikit-learn is not
            installed.
    """

    def __init__(self, config, task, model):
        self.config = config
        self.names = parse_datasets(config.eval_each_epoch)
        pixels = _translate_pixels(config)
        self.evaluated = tuple(_evaluated_name(name, pixels) for name in self.names)
        self.svm_digits = None
        self._cached = (None, None)
        if not generalization.serves_classes(model):
            code_svm.check_request()
            options = InputOptions(
                batch_size=config.batch_size, num_examples=config.eval_each_epoch_svm_examples,
                data_dir=config.data_dir or None, download=config.download,
                validation_examples=config.validation_examples)
            digits = generalization.shifted(task.images("train", options, shuffle=False), pixels,
                                            batch_size=config.batch_size)
            images, labels = zip(*((np.asarray(x), np.asarray(y)) for x, y in digits))
            self.svm_digits = np.concatenate(images), np.concatenate(labels)

    def classifier(self, model):
        """The `Classifier` of `model`'s current weights: its own, or an SVM on its code."""
        name = self.config.experiment or model.name
        if self.svm_digits is not None:
            return generalization.svm_classifier_from_model(
                model, name, *self.svm_digits, batch_size=self.config.batch_size)
        if self._cached[0] is not model:  # The same model: its traced predictor is reused.
            self._cached = (model, generalization.classifier_from_model(model, name))
        return self._cached[1]

    def __call__(self, model):
        """`{<dataset>_accuracy: float}` of `model` now (and `svm_examples` for an SVM)."""
        results = report.evaluate_on_datasets(
            [self.classifier(model)], self.evaluated,
            eval_examples=self.config.eval_each_epoch_examples,
            batch_size=self.config.batch_size, data_dir=self.config.data_dir or None,
            log=lambda line: logging.info("%s", line))
        cells = results["models"][0]["results"]
        accuracies = {}
        for name, evaluated in zip(self.names, self.evaluated):
            cell = cells[evaluated]
            if "accuracy" not in cell:
                raise RuntimeError(
                    f"{name} could not be evaluated after the epoch: "
                    f"{cell.get('error') or cell.get('skipped')}")
            accuracies[history_key(name)] = cell["accuracy"]
        if self.svm_digits is not None:
            accuracies["svm_examples"] = len(self.svm_digits[1])
        return accuracies
