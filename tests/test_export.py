"""Tests for the versioned SavedModel export (capskeras.export)."""

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from capskeras import export
from capskeras import tasks
from capskeras.models import build_study_model

IMAGE_SHAPE = (28, 28, 1)
OUTPUT_KEYS = {
    "class": {"encoding", "probabilities", "class_ids"},
    "recon": {"encoding", "reconstruction"},
}
IMAGES = np.random.default_rng(0).uniform(size=(7, 28, 28, 1)).astype("float32")


def _saved_model_cli():
    return str(Path(sys.executable).parent / "saved_model_cli")


@pytest.fixture(scope="module")
def class_model():
    return build_study_model("untrained", "class", seed=0)


@pytest.fixture(scope="module")
def recon_model():
    return build_study_model("deep_bp", "recon", seed=0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, class_model, recon_model):
    """One export of each model: {head: (model, version_dir)}."""
    base = tmp_path_factory.mktemp("saved_models")
    return {
        "class": (class_model, export.export_saved_model(
            class_model, str(base / "class"), IMAGE_SHAPE)),
        "recon": (recon_model, export.export_saved_model(
            recon_model, str(base / "recon"), IMAGE_SHAPE)),
    }


@pytest.mark.parametrize("head", ["class", "recon"])
def test_serving_default_signature(exported, head):
    _, path = exported[head]
    assert os.path.basename(path) == "1"
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
    signature = tf.saved_model.load(path).signatures["serving_default"]
    args, kwargs = signature.structured_input_signature
    assert args == ()
    assert set(kwargs) == {"images"}
    spec = kwargs["images"]
    assert spec.dtype == tf.float32
    assert spec.shape.as_list() == [None, 28, 28, 1]
    assert set(signature.structured_outputs) == OUTPUT_KEYS[head]


@pytest.mark.parametrize("head", ["class", "recon"])
@pytest.mark.parametrize("batch", [1, 7])
def test_served_outputs_match_the_keras_model(exported, head, batch):
    model, path = exported[head]
    signature = tf.saved_model.load(path).signatures["serving_default"]
    images = IMAGES[:batch]
    served = signature(images=tf.constant(images))
    expected = model.serving_outputs(images)
    assert set(served) == set(expected) == OUTPUT_KEYS[head]
    for name, value in expected.items():
        actual = served[name].numpy()
        value = keras.ops.convert_to_numpy(value)
        assert actual.shape == value.shape, name
        if name == "class_ids":
            np.testing.assert_array_equal(actual, value)
        else:
            assert served[name].dtype == tf.float32, name
            np.testing.assert_allclose(actual, value, atol=1e-5, err_msg=name)
    if head == "class":
        np.testing.assert_allclose(served["probabilities"].numpy().sum(-1), 1.0, rtol=1e-5)


def test_saved_model_cli_shows_the_signature(exported):
    for head, (_, path) in exported.items():
        result = subprocess.run(
            [_saved_model_cli(), "show", "--dir", path, "--tag_set", "serve",
             "--signature_def", "serving_default"],
            capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert "images" in result.stdout
        assert "DT_FLOAT" in result.stdout
        for name in OUTPUT_KEYS[head]:
            assert name in result.stdout, (name, result.stdout)


def test_versions_increase(tmp_path, class_model):
    base = str(tmp_path / "class")
    assert export.existing_versions(base) == []
    first = export.export_saved_model(class_model, base, IMAGE_SHAPE)
    second = export.export_saved_model(class_model, base, IMAGE_SHAPE)
    assert (first, second) == (os.path.join(base, "1"), os.path.join(base, "2"))
    assert export.existing_versions(base) == [1, 2]
    explicit = export.export_saved_model(class_model, base, IMAGE_SHAPE, version=10)
    assert explicit == os.path.join(base, "10")
    after = export.export_saved_model(class_model, base, IMAGE_SHAPE)
    assert after == os.path.join(base, "11")
    # Only version directories, no staging leftovers.
    assert sorted(os.listdir(base)) == ["1", "10", "11", "2"]
    assert export.existing_versions(base) == [1, 2, 10, 11]


def test_explicit_existing_version_raises_and_keeps_it(tmp_path, class_model):
    base = str(tmp_path / "class")
    path = export.export_saved_model(class_model, base, IMAGE_SHAPE)
    stamp = os.path.getmtime(os.path.join(path, "saved_model.pb"))
    with pytest.raises(ValueError, match="version=1"):
        export.export_saved_model(class_model, base, IMAGE_SHAPE, version=1)
    assert os.listdir(base) == ["1"]
    assert os.path.getmtime(os.path.join(path, "saved_model.pb")) == stamp


@pytest.mark.parametrize("version", [0, -3, "2", 2.0])
def test_invalid_version_raises(tmp_path, class_model, version):
    base = str(tmp_path / "class")
    with pytest.raises(ValueError, match=f"version={version!r}"):
        export.export_saved_model(class_model, base, IMAGE_SHAPE, version=version)
    assert not os.path.exists(base) or os.listdir(base) == []


def test_bool_version_is_rejected(tmp_path, class_model):
    # bool is an int subclass; version=True must not export to "<dir>/True",
    # a directory that is no version to existing_versions or TF Serving.
    base = str(tmp_path / "class")
    with pytest.raises(ValueError, match="version=True"):
        export.export_saved_model(class_model, base, IMAGE_SHAPE, version=True)
    assert not os.path.exists(base) or os.listdir(base) == []


def test_failed_write_leaves_no_version_and_no_staging(tmp_path, class_model, monkeypatch):
    base = str(tmp_path / "class")
    export.export_saved_model(class_model, base, IMAGE_SHAPE)
    staged = []

    def broken_write_out(self, filepath, **kwargs):
        staged.append(filepath)
        os.makedirs(os.path.join(filepath, "variables"), exist_ok=True)
        Path(filepath, "saved_model.pb").write_bytes(b"partial")
        raise OSError("disk full")

    # `ExportArchive()` returns the backend's archive class: patch that one.
    archive_class = type(keras.export.ExportArchive())
    monkeypatch.setattr(archive_class, "write_out", broken_write_out)
    with pytest.raises(OSError, match="disk full"):
        export.export_saved_model(class_model, base, IMAGE_SHAPE)
    assert staged, "export did not write through ExportArchive.write_out"
    # The partial write was staged beside the target, then removed.
    assert os.path.dirname(os.path.abspath(staged[0])) == os.path.abspath(base)
    assert os.listdir(base) == ["1"]
    assert export.existing_versions(base) == [1]


def test_failed_first_write_leaves_no_version(tmp_path, class_model, monkeypatch):
    base = str(tmp_path / "recon")

    real_export_archive = export.ExportArchive

    def failing_export_archive(*args, **kwargs):
        archive = real_export_archive(*args, **kwargs)

        def broken_write_out(filepath, **kwargs):
            os.makedirs(os.path.join(filepath, "assets"), exist_ok=True)
            raise RuntimeError("serialization failed")

        archive.write_out = broken_write_out
        return archive

    # The module's own reference to the archive class.
    monkeypatch.setattr(export, "ExportArchive", failing_export_archive)
    with pytest.raises(RuntimeError, match="serialization failed"):
        export.export_saved_model(class_model, base, IMAGE_SHAPE)
    assert os.listdir(base) == []


def test_model_without_serving_outputs_raises_type_error(tmp_path):
    plain = keras.Sequential(
        [keras.Input(IMAGE_SHAPE), keras.layers.Flatten(), keras.layers.Dense(3)],
        name="plain",
    )
    with pytest.raises(TypeError, match="serving_outputs") as info:
        export.export_saved_model(plain, str(tmp_path / "plain"), IMAGE_SHAPE)
    assert "plain" in str(info.value)
    assert not (tmp_path / "plain").exists()


def test_mixed_precision_model_serves_float32(tmp_path):
    try:
        keras.config.set_dtype_policy("mixed_float16")
        model = build_study_model("untrained", "class", seed=0)
    finally:
        keras.config.set_dtype_policy("float32")
    assert keras.backend.standardize_dtype(model(IMAGES[:2]).dtype) == "float16"
    path = export.export_saved_model(model, str(tmp_path / "mixed"), IMAGE_SHAPE)
    served = tf.saved_model.load(path).signatures["serving_default"](
        images=tf.constant(IMAGES[:2])
    )
    assert served["encoding"].dtype == tf.float32
    assert served["probabilities"].dtype == tf.float32
    np.testing.assert_allclose(served["probabilities"].numpy().sum(-1), 1.0, rtol=1e-3)


# One tiny model of each family that exports differently: a study classifier
# and decoder, CapsNet, EM capsules on smallNORB's 32x32 images,
# and P4CNN, which exports its group convolutions folded (`serving_model()`).
FAMILIES = {
    "deep_bp_class": ("study", {"encoder": "deep_bp", "head": "class"}),
    "untrained_recon": ("study", {"encoder": "untrained", "head": "recon"}),
    "capsnet": ("capsnet", {"routing_iterations": 1}),
    "em_capsnet_smallnorb": ("em_capsnet_smallnorb", {"em_sizes": "8,4,4,4", "em_iterations": 1}),
    "p4cnn": ("p4cnn", {"gcnn_channels": 4}),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_export(request, tmp_path_factory):
    """`(model, image_shape, serving_default of the loaded export)` of one family."""
    name, settings = FAMILIES[request.param]
    task_class = tasks.get_task(name)
    image_shape = task_class(task_class.Settings(**settings)).image_shape()
    model = tasks.build_model(name, **settings)
    path = export.export_saved_model(model, str(tmp_path_factory.mktemp(request.param)),
                                     image_shape)
    return model, image_shape, tf.saved_model.load(path).signatures["serving_default"]


def _refusal(serve, images):
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        serve(images=tf.constant(images, tf.float32))
    return str(info.value)


def test_every_family_serves_good_images_and_refuses_bad_ones(family_export):
    model, (height, width, channels), serve = family_export
    images = np.random.default_rng(1).uniform(size=(3, height, width, channels)).astype("float32")
    served = serve(images=tf.constant(images))
    expected = model.serving_outputs(images)
    assert set(served) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(served[name].numpy(), keras.ops.convert_to_numpy(value),
                                   rtol=1e-4, atol=1e-5, err_msg=name)

    # Before the checks a NaN went through ReLU as 0 and served plausible
    # outputs: one bad pixel in one image now refuses the batch.
    for bad in (np.nan, np.inf, -np.inf):
        poisoned = images.copy()
        poisoned[1, height // 2, width // 2, 0] = bad
        assert "images must be finite" in _refusal(serve, poisoned)

    # A wrong height, width, channel count or rank fails before the model,
    # naming the shape received and the one expected; the model's own
    # layers gave reshape errors, and oneDNN aborted the process on rank 3.
    expected = f"expected [None, {height}, {width}, {channels}]"
    for shape in [(1, height + 4, width + 4, channels), (2, height, width + 1, channels),
                  (1, height, width, 3), (height, width, channels),
                  (1, height, width, channels, 1)]:
        message = _refusal(serve, np.zeros(shape))
        received = ", ".join(str(size) for size in shape)
        assert f"images has shape [{received}], {expected}" in message, message


def test_the_signature_still_declares_the_served_shape(family_export):
    # The checks sit inside the graph, so the signature keeps the exact
    # shape for saved_model_cli and TensorFlow Serving's metadata.
    _, image_shape, serve = family_export
    _, kwargs = serve.structured_input_signature
    assert kwargs["images"].shape.as_list() == [None, *image_shape]
