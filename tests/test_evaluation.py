"""Tests for capskeras.evaluation: rotations, the rotation sweep, model loading,
the `capskeras-eval` CLI and the capsule perturbation figure."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from capskeras import export
from capskeras.data import transforms
from capskeras.evaluation import evaluate
from capskeras.evaluation import generalization
from capskeras.evaluation import perturbation
from capskeras.evaluation import plots
from capskeras.tasks import build_model
from capskeras.models import build_study_model
from capskeras.training.config import TrainConfig
from capskeras.training.train import train

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _cli():
    return str(Path(sys.executable).parent / "capskeras-eval")


def _asymmetric_images(shape=(3, 9, 9, 1)):
    return np.random.default_rng(0).uniform(size=shape).astype("float32")


# --- transforms.rotate --------------------------------------------------------


@pytest.mark.parametrize("quarter_turns", [1, 2, 3])
def test_rotate_by_quarter_turns_matches_rot90(quarter_turns):
    images = _asymmetric_images()
    rotated = transforms.rotate(images, 90.0 * quarter_turns).numpy()
    # np.rot90 turns counter-clockwise as displayed (rows down, columns right).
    expected = np.rot90(images, quarter_turns, axes=(1, 2))
    np.testing.assert_allclose(rotated, expected, atol=1e-5)


def test_rotate_zero_is_identity_and_one_image_is_accepted():
    images = _asymmetric_images()
    np.testing.assert_array_equal(transforms.rotate(images, 0.0).numpy(), images)
    single = transforms.rotate(images[0], 90.0).numpy()
    assert single.shape == images[0].shape
    np.testing.assert_allclose(single, np.rot90(images[0], 1, axes=(0, 1)), atol=1e-5)


def test_rotate_half_turn_of_a_non_square_image():
    images = _asymmetric_images((2, 5, 8, 2))
    np.testing.assert_allclose(
        transforms.rotate(images, 180.0).numpy(), np.rot90(images, 2, axes=(1, 2)), atol=1e-5
    )


def test_rotate_takes_one_angle_per_image():
    images = _asymmetric_images()
    angles = np.array([0.0, 90.0, 35.0], "float32")
    rotated = transforms.rotate(images, angles).numpy()
    for image, angle, result in zip(images, angles, rotated):
        np.testing.assert_allclose(
            result, transforms.rotate(image[None], float(angle)).numpy()[0], atol=1e-6
        )


@pytest.mark.parametrize("degrees", [35.0, 73.0, -120.0])
def test_rotate_keeps_a_centred_disc(degrees):
    rows, columns = np.mgrid[:28, :28]
    disc = ((rows - 13.5) ** 2 + (columns - 13.5) ** 2 <= 8.0 ** 2).astype("float32")
    images = disc[None, :, :, None]
    rotated = transforms.rotate(images, degrees).numpy()
    assert rotated.sum() == pytest.approx(images.sum(), rel=0.02)
    assert np.abs(rotated - images).mean() < 0.02
    assert rotated.min() >= 0.0 and rotated.max() <= 1.0 + 1e-6


def test_rotate_rejects_a_bad_rank():
    with pytest.raises(ValueError, match=r"shape \(28, 28\)"):
        transforms.rotate(np.zeros((28, 28), "float32"), 10.0)


# --- angles --------------------------------------------------------------------


def test_default_angles_are_0_to_180_by_5_with_35_once():
    angles = generalization.DEFAULT_ANGLES
    assert angles == tuple(float(a) for a in range(0, 181, 5))
    assert angles.count(35.0) == 1
    assert list(angles) == sorted(angles)


def test_parse_angles():
    assert evaluate.parse_angles([]) == generalization.DEFAULT_ANGLES
    assert evaluate.parse_angles(["90", "0", "35", "35.0"]) == (0.0, 35.0, 90.0)
    assert evaluate.parse_angles(["0:180:45", "35"]) == (0.0, 35.0, 45.0, 90.0, 135.0, 180.0)
    assert evaluate.parse_angles(["-10:10:2.5"])[:3] == (-10.0, -7.5, -5.0)
    for bad in (["ten"], ["0:180"], ["0:180:0"], ["nan"]):
        with pytest.raises(ValueError, match="Received: angle"):
            evaluate.parse_angles(bad)


# --- loading classifiers and the sweep -----------------------------------------


@pytest.fixture(scope="module")
def lenet5_run(tmp_path_factory):
    """A LeNet5 trained briefly: its model dir and export dir (versions 1 and 2)."""
    base = tmp_path_factory.mktemp("lenet5")
    model_dir, export_dir = str(base / "run"), str(base / "run" / "saved_model")
    train(TrainConfig.from_flat(
        model="lenet5", train_examples=512, eval_examples=128, epochs=1, batch_size=64,
        verbose=0, model_dir=model_dir, export_dir=export_dir,
    ))
    # A second version, exported from the saved model file: the newest is used.
    loaded = keras.saving.load_model(os.path.join(model_dir, "model.keras"))
    export.export_saved_model(loaded, export_dir, (28, 28, 1), version=2)
    return model_dir, export_dir


@pytest.fixture(scope="module")
def mnist_batch():
    images, labels = next(iter(generalization.mnist_test_set(num_examples=128, batch_size=128)))
    return np.asarray(images), np.asarray(labels)


def test_saved_model_and_model_dir_loaders_agree(lenet5_run, mnist_batch):
    model_dir, export_dir = lenet5_run
    from_dir = generalization.load_classifier(model_dir)
    from_export = generalization.load_classifier(export_dir)
    from_version = generalization.load_classifier(os.path.join(export_dir, "1"), name="v1")
    assert (from_dir.format, from_export.format) == ("keras", "saved_model")
    assert from_export.path == os.path.join(export_dir, "2")
    assert (from_dir.name, from_export.name, from_version.name) == ("run", "run v2", "v1")
    for classifier in (from_dir, from_export, from_version):
        assert classifier.image_shape == (28, 28, 1)
    images, labels = mnist_batch
    expected = from_dir.predict_class_ids(images, batch_size=50)
    assert expected.shape == (128,) and expected.dtype == np.int64
    np.testing.assert_array_equal(from_export.predict_class_ids(images), expected)
    np.testing.assert_array_equal(from_version.predict_class_ids(images), expected)
    # Trained a little, it beats chance (10%) on upright digits.
    assert np.mean(expected == labels) > 0.2


def test_sweep_accuracies_and_angle_zero(lenet5_run):
    classifier = generalization.load_classifier(lenet5_run[1])
    sweep = generalization.rotation_sweep(classifier, [90, 0, 35, 180], num_examples=128)
    assert list(sweep) == [0.0, 35.0, 90.0, 180.0]
    assert all(0.0 <= value <= 1.0 for value in sweep.values())
    upright = generalization.accuracy(
        classifier, generalization.mnist_test_set(classifier, num_examples=128)
    )
    assert sweep[0.0] == upright
    # Upright digits are what it learned; upside-down ones it mostly misreads.
    assert sweep[0.0] > sweep[180.0]


def test_a_bare_serving_signature_is_called_by_keyword(tmp_path):
    """A SavedModel with only a `serving_default` signature, not written by capskeras."""
    import tensorflow as tf

    module = tf.Module()
    module.weights = tf.Variable(np.arange(10, dtype="float32"))

    @tf.function(input_signature=[tf.TensorSpec((None, 28, 28, 1), tf.float32, name="images")])
    def serve(images):
        brightness = tf.reduce_mean(images, axis=[1, 2, 3])
        scores = brightness[:, None] * module.weights[None, :]
        return {"class_ids": tf.argmax(scores, axis=-1)}

    tf.saved_model.save(module, str(tmp_path / "7"), signatures={"serving_default": serve})
    classifier = generalization.load_classifier(tmp_path)
    assert (classifier.name, classifier.image_shape) == (f"{tmp_path.name} v7", (28, 28, 1))
    images = np.zeros((3, 28, 28, 1), "float32")
    images[1:] = 0.5
    np.testing.assert_array_equal(classifier.predict_class_ids(images), [0, 9, 9])


def test_digits_are_padded_for_40x40_models(tmp_path):
    model = build_model("lenet5", pad_to=40)
    model_dir = tmp_path / "lenet5_40"
    model_dir.mkdir()
    model.save(model_dir / "model.keras")
    export_dir = export.export_saved_model(model, str(tmp_path / "export"), (40, 40, 1))
    from_dir = generalization.load_classifier(model_dir)
    from_export = generalization.load_classifier(export_dir)
    assert from_dir.image_shape == from_export.image_shape == (40, 40, 1)
    images, _ = next(iter(generalization.mnist_test_set(from_dir, num_examples=8)))
    images = np.asarray(images)
    assert images.shape == (8, 40, 40, 1)
    # Centred: the 6-pixel border the padding added is black.
    assert images[:, :6].max() == images[:, -6:].max() == images[:, :, :6].max() == 0.0
    np.testing.assert_array_equal(
        from_dir.predict_class_ids(images), from_export.predict_class_ids(images)
    )
    sweep = generalization.rotation_sweep(from_export, [0, 45], num_examples=32)
    assert all(0.0 <= value <= 1.0 for value in sweep.values())


def test_bad_paths_name_the_path_and_the_accepted_forms(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "not_versions" / "latest").mkdir(parents=True)
    for path in (tmp_path / "missing", tmp_path / "empty", tmp_path / "not_versions"):
        with pytest.raises(ValueError) as info:
            generalization.load_classifier(path)
        message = str(info.value)
        assert repr(str(path)) in message
        assert "saved_model.pb" in message and "model.keras" in message


def test_a_model_without_class_predictions_is_rejected(tmp_path):
    build_study_model("untrained", "recon", seed=0).save(tmp_path / "model.keras")
    with pytest.raises(ValueError, match="class_ids"):
        generalization.load_classifier(tmp_path)


def test_images_of_the_wrong_shape_are_rejected(lenet5_run):
    classifier = generalization.load_classifier(lenet5_run[1])
    with pytest.raises(ValueError, match=r"expected \[N, 28, 28, 1\]"):
        classifier.predict_class_ids(np.zeros((2, 40, 40, 1), "float32"))


# --- capskeras-eval -------------------------------------------------------------


def test_cli_writes_json_and_png_for_two_models(lenet5_run, tmp_path):
    model_dir, export_dir = lenet5_run
    output_dir = tmp_path / "sweep"
    result = subprocess.run(
        [_cli(), f"--models={model_dir},{export_dir}", "--names=keras file,served",
         "--eval_examples=64", "--angles=0,35,90", f"--output_dir={output_dir}"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((output_dir / "rotation_sweep.json").read_text())
    assert results["eval_examples"] == 64
    assert results["angles"] == [0.0, 35.0, 90.0]
    assert [model["name"] for model in results["models"]] == ["keras file", "served"]
    assert [model["format"] for model in results["models"]] == ["keras", "saved_model"]
    for model in results["models"]:
        assert set(model["accuracy_by_angle"]) == {"0", "35", "90"}
        assert all(0.0 <= value <= 1.0 for value in model["accuracy_by_angle"].values())
        assert model["upright_accuracy"] == model["accuracy_by_angle"]["0"]
        assert os.path.isabs(model["path"])
    assert (output_dir / "rotation_sweep.png").read_bytes()[:8] == PNG_MAGIC
    assert "served" in result.stdout and "35" in result.stdout


def test_cli_exits_non_zero_for_a_bad_path(tmp_path):
    missing = tmp_path / "no_such_model"
    result = subprocess.run(
        [_cli(), f"--models={missing}", f"--output_dir={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert "capskeras-eval: error" in result.stderr
    assert str(missing) in result.stderr and "model.keras" in result.stderr
    assert not (tmp_path / "out").exists()


# --- the perturbation figure --------------------------------------------------


@pytest.fixture(scope="module")
def capsnet():
    keras.utils.set_random_seed(0)
    return build_model("capsnet")


def test_perturbed_decoder_inputs_layout():
    capsules = np.random.default_rng(1).normal(size=(2, 10, 16)).astype("float32")
    capsules[0, 3] *= 10.0  # capsule 3 wins for example 0
    inputs = perturbation.perturbed_decoder_inputs(capsules)
    assert inputs.shape == (2, 16, 11, 160)
    assert perturbation.winning_capsules(capsules)[0] == 3
    assert len(perturbation.PERTURBATIONS) == 11
    assert perturbation.PERTURBATIONS[0] == -0.25 and perturbation.PERTURBATIONS[-1] == 0.25
    assert perturbation.PERTURBATIONS[5] == 0.0
    # The middle column is the CapsuleMask output: only the winner, unchanged.
    masked = keras.ops.convert_to_numpy(build_model("capsnet").mask(capsules))
    for dim in range(16):
        np.testing.assert_array_equal(inputs[:, dim, 5], masked)
    # Everywhere else exactly one value, dimension d of the winner, moves by p.
    difference = inputs[0] - masked[0][None, None]
    for dim in range(16):
        for step, offset in enumerate(perturbation.PERTURBATIONS):
            expected = np.zeros(160, "float32")
            expected[3 * 16 + dim] = offset
            np.testing.assert_allclose(difference[dim, step], expected, atol=1e-6)


def test_perturbation_images(capsnet, mnist_batch):
    images = mnist_batch[0][:2]
    result = perturbation.perturbation_images(capsnet, images)
    blocks = result["images"]
    assert blocks.shape == (2, 16, 11, 28, 28)
    capsules = capsnet.encoder(images)
    np.testing.assert_array_equal(
        result["class_ids"], np.argmax(keras.ops.convert_to_numpy(capsnet.lengths(capsules)), -1)
    )
    unperturbed = keras.ops.convert_to_numpy(capsnet.decoder(capsnet.mask(capsules)))[..., 0]
    for dim in range(16):
        np.testing.assert_allclose(blocks[:, dim, 5], unperturbed, atol=1e-5)
    # Different dimensions (and offsets) give different images.
    assert np.abs(blocks[:, 0, -1] - blocks[:, 1, -1]).max() > 1e-6
    assert np.abs(blocks[:, 0, 0] - blocks[:, 0, -1]).max() > 1e-6


def test_perturbation_rejects_bad_inputs(capsnet):
    with pytest.raises(ValueError, match=r"expected \[B, N, D\]"):
        perturbation.perturbed_decoder_inputs(np.zeros((10, 16)))
    with pytest.raises(ValueError, match="class_ids"):
        perturbation.perturbed_decoder_inputs(np.ones((1, 10, 16)), class_ids=[10])
    with pytest.raises(ValueError, match=r"without \['code_capsules', 'code_decoder'\]"):
        perturbation.perturbation_images(build_model("lenet5"), np.zeros((1, 28, 28, 1)))


def test_perturbation_figure_tool(tmp_path):
    output = tmp_path / "figure" / "perturbations.png"
    tool = str(REPO / "tools" / "perturbation_figure.py")
    result = subprocess.run(
        [sys.executable, tool, "--untrained", "--num_digits=2", f"--output={output}"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == str(output)
    assert output.read_bytes()[:8] == PNG_MAGIC
    drawn_from = json.loads(output.with_suffix(".json").read_text())
    assert len(drawn_from["labels"]) == 2 and len(drawn_from["pixel_change_by_dimension"][0]) == 16
    assert np.load(output.with_suffix(".npz"))["images"].shape[:3] == (2, 16, 11)
    missing = subprocess.run(
        [sys.executable, tool, f"--model_dir={tmp_path / 'nothing'}"],
        capture_output=True, text=True, timeout=300,
    )
    assert missing.returncode == 2
    assert "model.keras" in missing.stderr


def test_plots_write_and_check_shapes(tmp_path):
    path = plots.save_rotation_sweep_plot(
        {"a": {0.0: 0.9, 35.0: 0.5}, "b": {"0": 0.8, "35": 0.4}}, str(tmp_path / "s.png"),
        published={"LeNet5": (35.0, 0.7605), "CapsNet": (35.0, 0.9212)},
    )
    assert Path(path).read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="11 perturbations"):
        plots.save_perturbation_grid(
            np.zeros((1, 16, 5, 28, 28)), str(tmp_path / "p.png"), perturbation.PERTURBATIONS
        )


def test_a_subclassed_encoders_model_dir_loads_with_its_build_shape(tmp_path):
    # PredCaps' encoder is a subclassed model with no input shape of its own.
    from capskeras.evaluation import equivariance

    for head in ("class", "recon"):
        model = build_study_model("predcaps", head, seed=0)
        (tmp_path / head).mkdir()
        model.save(tmp_path / head / "model.keras")
    classifier = generalization.load_classifier(str(tmp_path / "class"))
    assert classifier.image_shape == (28, 28, 1)
    assert classifier.predict_batch(np.zeros((2, 28, 28, 1), "float32")).shape == (2,)
    code_model = equivariance.load_code_model(tmp_path / "recon")
    assert code_model.image_shape == (28, 28, 1) and code_model.decode is not None
    assert np.asarray(code_model.encode(np.zeros((2, 28, 28, 1), "float32"))).shape == (2, 256)
    # The rotated-feature chart reads its first layer's filter responses, the drive.
    first = keras.saving.load_model(tmp_path / "recon" / "model.keras").encoder.pred_caps_layers[0]
    images = np.random.default_rng(0).uniform(size=(3, 28, 28, 1)).astype("float32")
    maps = equivariance.response_maps(code_model.feature_responses, images)
    assert maps.shape == (3, 10, 10, 64)
    np.testing.assert_allclose(maps, first.drive(images), rtol=1e-5, atol=1e-6)
    assert np.count_nonzero(maps) > np.count_nonzero(first(images))  # before the selection
