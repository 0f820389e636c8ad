"""SavedModel export with an explicit `serving_default` signature.

Exports follow the TensorFlow Serving layout `<export_dir>/<version>/`, with
`version` an increasing integer. The signature takes `images`, float32
`[None, H, W, C]` in [0, 1], runs the model in inference mode and returns the
model's `serving_outputs` dict: always `encoding`; `probabilities` and
`class_ids` for classifiers; `reconstruction` for decoders.

The signature checks its input inside the graph, before the model runs
(`checked_images`): a batch of another shape or holding NaN or Inf is
refused with an error naming `images` and the expected shape. The loaded
signature does not enforce its declared shape by itself, so the declared
shape stays exact (`[None, H, W, C]`, what `saved_model_cli` and TensorFlow
Serving's metadata show) and the check gives the message.
"""

import os
import shutil
import tempfile

import tensorflow as tf
from keras.export import ExportArchive

from capskeras.models.contract import check_servable
from capskeras.models.contract import check_serving_outputs

SIGNATURE_NAME = "serving_default"
INPUT_NAME = "images"


def existing_versions(export_dir):
    """The integer versions already exported under `export_dir`, ascending."""
    if not os.path.isdir(export_dir):
        return []
    return sorted(int(name) for name in os.listdir(export_dir) if name.isdigit())


def export_saved_model(model, export_dir, image_shape, version=None):
    """Writes `model` as a servable SavedModel at `export_dir/<version>/`.

    The export is written to a temporary directory beside its target and
    renamed into place only once complete, so a failed export never leaves
    a partial version behind for a server to pick up.

    Args:
        model: a model following `capskeras.models.contract.ServableModel`
            (every capskeras model does). When it has a `serving_model()`
            method, the model that returns is exported instead.
        export_dir: the model's base directory; versions go below it.
        image_shape: `(H, W, C)` of the served images.
        version: int >= 1; defaults to one more than the newest version.

    Returns:
        The path of the written version directory.
    """
    check_servable(model)
    # A model may name a simpler model with the same serving outputs to
    # export instead (StudyModel folds group convolutions into plain ones).
    if hasattr(model, "serving_model"):
        model = model.serving_model()
    versions = existing_versions(export_dir)
    if version is None:
        version = versions[-1] + 1 if versions else 1
    if (not isinstance(version, int) or isinstance(version, bool) or version < 1
            or version in versions):
        raise ValueError(
            f"Received: version={version!r}; expected an int >= 1 not already "
            f"in {export_dir} (existing: {versions})"
        )
    os.makedirs(export_dir, exist_ok=True)
    target = os.path.join(export_dir, str(version))

    staging = tempfile.mkdtemp(prefix=f".{version}-", dir=export_dir)
    try:
        # Traced outside Keras's train and predict steps, so layers that
        # compile parts of themselves with XLA by default ("auto") write the
        # plain kernels, which TensorFlow Serving runs without extra flags.
        archive = ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            name=SIGNATURE_NAME,
            fn=lambda images: _float32_outputs(check_serving_outputs(
                model.serving_outputs(checked_images(images, image_shape)))),
            input_signature=[
                tf.TensorSpec((None,) + tuple(image_shape), tf.float32, name=INPUT_NAME)
            ],
        )
        archive.write_out(staging, verbose=False)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def checked_images(images, image_shape):
    """`images`, run only once they have the served shape and are finite.

    Plain TensorFlow ops (no XLA), so TensorFlow Serving runs them: a batch
    of another height, width, channel count or rank fails with
    `images has shape [1, 32, 32, 1], expected [None, 28, 28, 1]`, and one
    holding NaN or Inf with `images must be finite`, before the model runs.

    Args:
        images: the served float tensor, `[B, H, W, C]` when well formed.
        image_shape: `(H, W, C)` the model takes.

    Returns:
        `images`, with its static shape `[None, H, W, C]`.
    """
    image_shape = tuple(int(size) for size in image_shape)
    expected = "[None, " + ", ".join(str(size) for size in image_shape) + "]"
    rank = len(image_shape) + 1
    shape = tf.shape(images)
    # The shape padded with -1 to rank + 1: the sizes after the batch must be
    # `image_shape` and then -1, which also refuses a higher or lower rank
    # without trusting the signature's static shape.
    padded = tf.concat([shape, tf.fill([rank + 1], -1)], axis=0)[1:rank + 1]
    well_formed = tf.reduce_all(tf.equal(padded, image_shape + (-1,)))
    shape_check = tf.debugging.Assert(well_formed, [tf.strings.join([
        f"{INPUT_NAME} has shape [",
        tf.strings.reduce_join(tf.strings.as_string(shape), separator=", "),
        f"], expected {expected}",
    ])])
    with tf.control_dependencies([shape_check]):
        images = tf.identity(images)
    images = tf.debugging.assert_all_finite(
        images, f"{INPUT_NAME} must be finite (no NaN or Inf values)")
    return tf.ensure_shape(images, (None,) + image_shape)


def _float32_outputs(outputs):
    """Serves floats as float32 whatever the model's compute dtype."""
    return {
        name: tf.cast(value, tf.float32) if value.dtype.is_floating else value
        for name, value in outputs.items()
    }
