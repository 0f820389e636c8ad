"""SavedModel export with an explicit `serving_default` signature.

Exports follow the TensorFlow Serving layout `<export_dir>/<version>/`, with
`version` an increasing integer. The signature takes `images`, float32
`[None, H, W, C]` in [0, 1], runs the model in inference mode and returns the
model's `serving_outputs` dict: always `encoding`; `probabilities` and
`class_ids` for classifiers; `reconstruction` for decoders.
"""

import os
import shutil
import tempfile

import tensorflow as tf
from keras.export import ExportArchive

from capskeras import xla
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
            (every capskeras model does).
        export_dir: the model's base directory; versions go below it.
        image_shape: `(H, W, C)` of the served images.
        version: int >= 1; defaults to one more than the newest version.

    Returns:
        The path of the written version directory.
    """
    check_servable(model)
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
        # TensorFlow Serving runs XLA clusters only behind an experimental
        # flag: the signature is traced with the plain kernels.
        with xla.disabled():
            archive = ExportArchive()
            archive.track(model)
            archive.add_endpoint(
                name=SIGNATURE_NAME,
                fn=lambda images: _float32_outputs(check_serving_outputs(model.serving_outputs(images))),
                input_signature=[
                    tf.TensorSpec((None,) + tuple(image_shape), tf.float32, name=INPUT_NAME)
                ],
            )
            archive.write_out(staging, verbose=False)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _float32_outputs(outputs):
    """Serves floats as float32 whatever the model's compute dtype."""
    return {
        name: tf.cast(value, tf.float32) if value.dtype.is_floating else value
        for name, value in outputs.items()
    }
