"""Generalization to rotations: MNIST test accuracy as the digits turn.

A trained classifier is loaded from what the trainer leaves behind, either
form behind one interface (`Classifier`):

- a SavedModel: a version directory holding `saved_model.pb`, or an export
  directory whose integer subdirectories are versions (the newest is
  used), served through its `serving_default` signature (see
  `capskeras.export`);
- a model directory holding `model.keras` (or that file itself), loaded
  with `keras.saving.load_model`, predicting with `serving_outputs`.

    classifier = load_classifier("runs/capsnet")
    sweep = rotation_sweep(classifier, num_examples=1000)
    sweep[35.0]  # accuracy on the first 1000 test digits rotated by 35 degrees

Images are padded centrally to the side the model expects (40 for models
trained under the affNIST protocol, `--pad_to=40`) before they are rotated,
so a rotation never cuts off more of the digit than the model's canvas
does.
"""

import dataclasses
import os
from typing import Callable

import keras
import numpy as np

import capskeras.models  # noqa: F401  Registers the classes `model.keras` files name.
from capskeras.checks import check_positive_int
from capskeras.data import mnist
from capskeras.data import transforms
from capskeras.evaluation import code_svm
from capskeras.models.contract import check_servable

SAVED_MODEL_FILE = "saved_model.pb"
KERAS_MODEL_FILE = "model.keras"
SIGNATURE_NAME = "serving_default"
INPUT_NAME = "images"
# Accuracy every 5 degrees from upright to upside down; 35 degrees is in it.
DEFAULT_ANGLES = tuple(sorted(set(float(angle) for angle in range(0, 181, 5)) | {35.0}))
DEFAULT_BATCH_SIZE = 128
# The shifted MNIST test set (`shifted_mnist_test_set`): the affNIST protocol's
# largest shift, and a seed fixed once, so that every model and every epoch
# sees the same images.
DEFAULT_SHIFT_PIXELS = 6
SHIFT_SEED = 0
ACCEPTED_PATHS = (
    "a SavedModel version directory (containing saved_model.pb), an export "
    "directory with integer version subdirectories holding one, or a model "
    "directory containing model.keras (or a .keras file)"
)
# Base directories too generic to name a model: the one above names it.
_GENERIC_DIR_NAMES = ("saved_model", "saved_models", "export", "exports", "serving")


@dataclasses.dataclass
class Classifier:
    """A trained classifier, whatever the form it was saved in.

    Attributes:
        name: display name, for tables and legends.
        path: the file or directory it was loaded from (for a SavedModel,
            the version directory actually used).
        format: `"saved_model"` or `"keras"`.
        image_shape: `(H, W, C)` of the images it takes.
        predict_batch: `predict_batch(images) -> class ids`, for one batch
            of float32 `[B, H, W, C]` images.
    """

    name: str
    path: str
    format: str
    image_shape: tuple
    predict_batch: Callable

    def predict_class_ids(self, images, batch_size=DEFAULT_BATCH_SIZE):
        """The predicted class of each image, `[N]` int64.

        Args:
            images: `[N, H, W, C]` float images in [0, 1], `(H, W, C)` the
                classifier's `image_shape`.
            batch_size: images per forward pass.
        """
        images = np.asarray(images, dtype="float32")
        if images.ndim != 4 or tuple(images.shape[1:]) != tuple(self.image_shape):
            raise ValueError(
                f"Received: images of shape {images.shape} for {self.name!r}; "
                f"expected [N, {', '.join(str(d) for d in self.image_shape)}]"
            )
        check_positive_int("batch_size", batch_size)
        predictions = [
            np.asarray(self.predict_batch(images[start:start + batch_size])).astype("int64")
            for start in range(0, len(images), batch_size)
        ]
        if not predictions:
            return np.zeros((0,), "int64")
        return np.concatenate(predictions).reshape(-1)


def load_classifier(path, name=None):
    """Loads the classifier saved at `path`, a SavedModel or a model directory.

    Args:
        path: a SavedModel version directory (holding `saved_model.pb`), an
            export directory with integer version subdirectories (the
            newest version is loaded), a model directory holding
            `model.keras` (as `capskeras-train --model_dir` writes it), or
            a `.keras` file.
        name: display name; defaults to one made from `path`.

    Returns:
        A `Classifier`.

    Raises:
        ValueError: `path` is none of the accepted forms, or the model does
            not serve class predictions (`class_ids`).
    """
    path = os.fspath(path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, SAVED_MODEL_FILE)):
        return _load_saved_model(path, name)
    versions = _saved_model_versions(path)
    if versions:
        return _load_saved_model(os.path.join(path, str(versions[-1])), name)
    if os.path.isfile(os.path.join(path, KERAS_MODEL_FILE)):
        return _load_keras_model(os.path.join(path, KERAS_MODEL_FILE), path, name)
    if os.path.isfile(path) and path.endswith(".keras"):
        return _load_keras_model(path, path, name)
    state = "does not exist" if not os.path.exists(path) else "holds no model"
    raise ValueError(f"Received: model path {path!r}, which {state}; expected {ACCEPTED_PATHS}")


def _saved_model_versions(path):
    """Integer subdirectories of `path` holding a SavedModel, ascending."""
    if not os.path.isdir(path):
        return []
    return sorted(
        int(entry) for entry in os.listdir(path)
        if entry.isdigit() and os.path.isfile(os.path.join(path, entry, SAVED_MODEL_FILE))
    )


def _load_saved_model(version_dir, name):
    layer = keras.layers.TFSMLayer(version_dir, call_endpoint=SIGNATURE_NAME)
    endpoint = layer.call_endpoint_fn
    # A tf.function endpoint takes the images positionally; a bare signature
    # (SavedModels not written by capskeras.export) by keyword only.
    input_signature = getattr(endpoint, "input_signature", None)
    if input_signature:
        spec = input_signature[0]
        serve = lambda images: endpoint(images)  # noqa: E731
    else:
        _, keyword_specs = endpoint.structured_input_signature
        if INPUT_NAME not in keyword_specs:
            raise ValueError(
                f"Received: SavedModel {version_dir!r} whose {SIGNATURE_NAME!r} signature "
                f"takes {sorted(keyword_specs)}; expected an input named {INPUT_NAME!r}"
            )
        spec = keyword_specs[INPUT_NAME]
        serve = lambda images: endpoint(**{INPUT_NAME: images})  # noqa: E731
    image_shape = _image_shape(spec.shape.as_list()[1:], version_dir)

    def predict_batch(images):
        outputs = serve(keras.ops.convert_to_tensor(images, "float32"))
        return keras.ops.convert_to_numpy(outputs["class_ids"])

    base, version = os.path.split(os.path.normpath(version_dir))
    if version.isdigit():
        default_name = f"{_model_name(base)} v{version}"
    else:
        default_name = _model_name(version_dir)
    classifier = Classifier(
        name or default_name, version_dir, "saved_model", image_shape, predict_batch
    )
    _check_serves_classes(classifier, lambda: serve(_blank(image_shape)))
    return classifier


def _load_keras_model(model_file, model_path, name):
    model = keras.saving.load_model(model_file, safe_mode=True)
    if name is None:
        name = (_model_name(model_path) if os.path.isdir(model_path)
                else os.path.splitext(os.path.basename(model_file))[0])
    return classifier_from_model(model, name, path=model_path)


def classifier_from_model(model, name, path=""):
    """A `Classifier` of a live Keras model that serves `class_ids`.

    The trainer uses it to evaluate the model it is training after every
    epoch; `load_classifier` uses it for a loaded `model.keras`. The
    classifier calls the model itself, so later weight updates show.

    Args:
        model: a built Keras model following the model contract
            (`capskeras.models.contract`).
        name: display name, for tables and legends.
        path: where the model was loaded from, for messages and reports;
            empty for a model in memory.

    Returns:
        A `Classifier` of format `"keras"`.

    Raises:
        ValueError: the model breaks the contract, or serves no `class_ids`
            (an unsupervised model: see `svm_classifier_from_model`).
    """
    path = os.fspath(path) if path else name
    try:
        check_servable(model)
    except TypeError as error:
        raise ValueError(f"Received: model path {path!r}; {error}") from None
    image_shape = _image_shape(keras_input_shape(model, path), path)
    # `predict` compiles the serving outputs into one graph per batch shape.
    predictor = _ServingOutput(model, "class_ids", name="class_ids")

    def predict_batch(images):
        return predictor.predict_on_batch(images)

    classifier = Classifier(name, path, "keras", image_shape, predict_batch)
    _check_serves_classes(classifier, lambda: model.serving_outputs(_blank(image_shape)))
    return classifier


def serves_classes(model):
    """Whether the contract-following `model` serves `class_ids` (a classifier)."""
    shape = _image_shape(keras_input_shape(model), getattr(model, "name", "model"))
    return "class_ids" in model.serving_outputs(_blank(shape))


def svm_classifier_from_model(model, name, images, labels, c=code_svm.C, gamma=code_svm.GAMMA,
                              batch_size=DEFAULT_BATCH_SIZE):
    """A `Classifier` reading a live model's code with an RBF SVM fitted on `images`.

    The read-out of models without class outputs (Sparse Unsupervised
    Capsules): the model's serving `encoding` of `images` trains an RBF SVM
    (`capskeras.evaluation.code_svm`, needs scikit-learn), which then
    classifies the codes of the images given to the classifier. The SVM is
    fitted once, here, on the model's current weights.

    Args:
        model: a built Keras model following the model contract.
        name: display name.
        images: `[N, H, W, C]` float images in [0, 1] the SVM is fitted on.
        labels: `[N]` int labels.
        c, gamma: the SVM's `C` and RBF `gamma` (the paper's by default).
        batch_size: images per forward pass when encoding.

    Returns:
        A `Classifier` of format `"keras+svm"`.

    Raises:
        ImportError: scikit-learn is not installed.
        ValueError: the model breaks the contract, or images and labels
            differ in number.
    """
    try:
        check_servable(model)
    except TypeError as error:
        raise ValueError(f"Received: model {name!r}; {error}") from None
    image_shape = _image_shape(keras_input_shape(model, name), name)
    encoder = _ServingOutput(model, "encoding", name="encoding")

    def encode(batch):
        batch = np.asarray(batch, "float32")
        codes = [np.asarray(encoder.predict_on_batch(batch[start:start + batch_size]))
                 for start in range(0, len(batch), batch_size)]
        return np.concatenate(codes).reshape(len(batch), -1)

    svm = code_svm.fit_svm(encode(images), labels, c=c, gamma=gamma)

    def predict_batch(batch):
        return svm.predict(encode(batch))

    return Classifier(name, name, "keras+svm", image_shape, predict_batch)


class _ServingOutput(keras.Model):
    """One of a model's serving outputs as a model, for `predict_on_batch`."""

    def __init__(self, model, output, **kwargs):
        super().__init__(**kwargs)
        self.wrapped = model
        self.output_key = output

    def call(self, images):
        return self.wrapped.serving_outputs(images)[self.output_key]


def keras_input_shape(model, model_path=""):
    """`(H, W, C)` the Keras `model` takes.

    Its own `image_shape`, its encoder's or its own input shape, or else the
    shape it was built for (a subclassed encoder such as PredCaps' has no
    input shape, but a built model records its build shape in `model.keras`).
    """
    if getattr(model, "image_shape", None):
        return list(model.image_shape)
    for candidate in (getattr(model, "encoder", None), model):
        try:
            return list(candidate.input_shape[1:])
        except (AttributeError, ValueError, TypeError):
            continue
    build_shape = (model.get_build_config() or {}).get("input_shape")
    if build_shape and len(build_shape) == 4:
        return list(build_shape[1:])
    raise ValueError(
        f"Received: model path {model_path!r} holding a {type(model).__name__} whose input "
        "shape is unknown; expected a model built for [None, H, W, C] images"
    )


def _image_shape(shape, path):
    shape = tuple(shape)
    if len(shape) != 3 or None in shape or shape[-1] != 1:
        raise ValueError(
            f"Received: model {path!r} taking images of shape {shape}; expected (H, W, 1)"
        )
    height, width, _ = shape
    if height != width or height < mnist.IMAGE_SHAPE[0]:
        raise ValueError(
            f"Received: model {path!r} taking {height}x{width} images; expected square "
            f"images of side >= {mnist.IMAGE_SHAPE[0]} (MNIST digits, padded when larger)"
        )
    return tuple(int(dim) for dim in shape)


def _check_serves_classes(classifier, serve_blank):
    outputs = serve_blank()
    if "class_ids" not in outputs:
        raise ValueError(
            f"Received: model path {classifier.path!r} serving outputs {sorted(outputs)}; "
            "expected a classifier serving 'class_ids'"
        )


def _blank(image_shape):
    return np.zeros((1,) + tuple(image_shape), "float32")


def _model_name(path):
    """A display name from a directory: its name, or its parent's when generic."""
    path = os.path.normpath(os.path.abspath(path))
    base = os.path.basename(path)
    if base in _GENERIC_DIR_NAMES:
        base = os.path.basename(os.path.dirname(path)) or base
    return base


def mnist_test_set(classifier=None, num_examples=None, batch_size=DEFAULT_BATCH_SIZE,
                   data_dir=None, download=True):
    """The MNIST test split as batches of `(images, labels)`, shaped for `classifier`.

    Args:
        classifier: a `Classifier`; the digits are padded centrally to its
            `image_shape` (e.g. 40x40). `None` keeps them 28x28.
        num_examples: the first N test examples; `None` or 0 for all 10,000.
        batch_size: int >= 1.
        data_dir: a prepared TFDS directory; defaults to `$TFDS_DATA_DIR`.
        download: let TFDS download MNIST when it is missing.

    Returns:
        A `tf.data.Dataset` of float32 `[B, H, W, 1]` images and int32 labels.
    """
    pad_to = None
    if classifier is not None and classifier.image_shape[0] != mnist.IMAGE_SHAPE[0]:
        pad_to = classifier.image_shape[0]
    return mnist.load_mnist(
        "test", batch_size=batch_size, data_dir=data_dir or None, download=download,
        num_examples=num_examples or None, pad_to=pad_to,
    )


def shifted(dataset, max_pixels, batch_size=DEFAULT_BATCH_SIZE, seed=SHIFT_SEED):
    """`dataset`'s `(images, labels)`, each image shifted at random by up to `max_pixels`.

    The shift is the training protocol's (`capskeras.data.transforms.
    random_translate`: uniform over the integers in `[-max_pixels,
    max_pixels]` for rows and columns, zero fill), drawn for the i-th image
    from `(seed, i)` alone: every pass over the result, and every rebuild of
    it, shows the same images, whatever the global seed.

    Args:
        dataset: a `tf.data.Dataset` of `(images, labels)` batches.
        max_pixels: int >= 0; 0 returns `dataset` itself.
        batch_size: the batch size of the result.
        seed: int, picks the shifts.

    Returns:
        A `tf.data.Dataset` of `(images, labels)` batches of `batch_size`.
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 0:
        raise ValueError(f"Received: max_pixels={max_pixels!r}; expected an int >= 0")
    check_positive_int("batch_size", batch_size)
    if not max_pixels:
        return dataset

    def shift(index, example):
        image, label = example
        return transforms.random_translate(image, max_pixels, seed=[seed, index]), label

    return dataset.unbatch().enumerate().map(shift).batch(batch_size)


def shifted_mnist_test_set(classifier=None, max_pixels=DEFAULT_SHIFT_PIXELS, num_examples=None,
                           batch_size=DEFAULT_BATCH_SIZE, data_dir=None, download=True,
                           seed=SHIFT_SEED):
    """The expanded MNIST test set of the affNIST protocol: test digits shifted at random.

    Sabour et al. (2017) report CapsNet's 99.23% on "the expanded MNIST
    test set": the test digits placed at random on the 40x40 training
    canvas. Here: `mnist_test_set` (padded to the classifier's canvas),
    each digit shifted by up to `max_pixels` (see `shifted`), the same
    images on every call.

    Args:
        classifier: a `Classifier`, whose canvas the digits are padded to;
            `None` keeps them 28x28.
        max_pixels: the largest shift, int >= 0 (6 in the affNIST protocol).
        num_examples: the first N test examples; `None` or 0 for all 10,000.
        batch_size: int >= 1.
        data_dir: a prepared TFDS directory; defaults to `$TFDS_DATA_DIR`.
        download: let TFDS download MNIST when it is missing.
        seed: int, picks the shifts.

    Returns:
        A `tf.data.Dataset` of float32 `[B, H, W, 1]` images and int32 labels.
    """
    upright = mnist_test_set(classifier, num_examples, batch_size, data_dir, download)
    return shifted(upright, max_pixels, batch_size, seed)


def accuracy(classifier, dataset, batch_size=DEFAULT_BATCH_SIZE):
    """The fraction of `dataset`'s examples `classifier` classifies correctly.

    Args:
        classifier: a `Classifier` (see `load_classifier`).
        dataset: an iterable of `(images, labels)` batches (a `tf.data`
            pipeline such as `mnist_test_set`'s, or a list of array pairs),
            the images shaped as `classifier.image_shape`.
        batch_size: the most images per forward pass.

    Returns:
        A float in [0, 1].

    Raises:
        ValueError: `dataset` holds no examples.
    """
    correct = total = 0
    for images, labels in dataset:
        predicted = classifier.predict_class_ids(np.asarray(images), batch_size=batch_size)
        labels = np.asarray(labels).reshape(-1)
        correct += int(np.sum(predicted == labels))
        total += len(labels)
    if not total:
        raise ValueError("Received: an empty dataset; expected at least one example")
    return correct / total


def rotated(dataset, degrees):
    """`dataset`'s `(images, labels)` batches with the images rotated by `degrees`.

    Counter-clockwise for positive angles, bilinear, zero fill: see
    `capskeras.data.transforms.rotate`. A rotation by a multiple of 360
    degrees returns `dataset` itself.
    """
    degrees = float(degrees)
    if degrees % 360.0 == 0.0:
        return dataset
    return dataset.map(lambda images, labels: (transforms.rotate(images, degrees), labels))


def rotation_sweep(classifier, angles=DEFAULT_ANGLES, *, num_examples=None,
                   batch_size=DEFAULT_BATCH_SIZE, data_dir=None, download=True,
                   dataset=None):
    """Accuracy on the MNIST test split rotated by each of `angles`.

    Every angle sees the same digits, each rotated about the centre of the
    classifier's canvas (after padding to its `image_shape`).

    Args:
        classifier: a `Classifier` (see `load_classifier`).
        angles: rotations in degrees, counter-clockwise; defaults to
            `DEFAULT_ANGLES`, 0 to 180 in 5-degree steps (35 among them).
        num_examples: the first N test examples; `None` or 0 for all.
        batch_size: int >= 1, images per batch.
        data_dir: a prepared TFDS directory; defaults to `$TFDS_DATA_DIR`.
        download: let TFDS download MNIST when it is missing.
        dataset: upright `(images, labels)` batches to use instead of the
            MNIST test split, shaped for `classifier` (a `tf.data.Dataset`).

    Returns:
        `{angle: accuracy}`, float angles in ascending order, accuracies in
        [0, 1]; angle 0 gives `accuracy(classifier, dataset)`.

    Reference:
        Sabour, Frosst and Hinton, "Dynamic Routing Between Capsules",
        NeurIPS 2017, section 5.2 (robustness to affine transformations).
    """
    angles = check_angles(angles)
    if dataset is None:
        dataset = mnist_test_set(classifier, num_examples, batch_size, data_dir, download)
    return {
        angle: accuracy(classifier, rotated(dataset, angle), batch_size=batch_size)
        for angle in angles
    }


def check_angles(angles):
    """`angles` as sorted distinct floats; ValueError naming a bad one."""
    checked = set()
    for angle in angles:
        try:
            value = float(angle)
        except (TypeError, ValueError):
            value = float("nan")
        if isinstance(angle, bool) or not np.isfinite(value):
            raise ValueError(f"Received: angle={angle!r}; expected a finite number of degrees")
        checked.add(value)
    if not checked:
        raise ValueError(f"Received: angles={list(angles)!r}; expected at least one angle")
    return tuple(sorted(checked))
