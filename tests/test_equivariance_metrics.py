"""Tests for capskeras.evaluation.equivariance and the judge, on cases with known answers."""

import json
import math

import keras
import numpy as np
import pytest

from capskeras.evaluation import equivariance
from capskeras.evaluation import judge
from capskeras.tasks import build_model
from capskeras.models import build_study_model


def _identity_code_model(shape=(8, 8, 1)):
    """An exactly equivariant 'encoder': the code is the pixels; the decoder undoes it."""
    return equivariance.CodeModel(
        "pixels", "", shape,
        encode=lambda x: np.asarray(x, "float32").reshape(len(x), -1),
        decode=lambda c: np.asarray(c, "float32").reshape((-1,) + shape[:2]),
    )


def _images(count=600, side=8, seed=0):
    return np.random.default_rng(seed).uniform(size=(count, side, side, 1)).astype("float32")


# --- transformation equivariance ----------------------------------------------------


def test_a_permutation_of_pixels_is_equivariant_not_invariant():
    images = _images()
    codes = images.reshape(len(images), -1)
    turned = np.rot90(images, 1, axes=(1, 2)).reshape(len(images), -1)
    result = equivariance.linear_equivariance(codes, turned)
    assert result["equivariance"] > 0.999
    assert abs(result["invariance"]) < 0.15
    assert (result["fit_pairs"], result["test_pairs"]) == (300, 300)
    assert result["ridge"] in equivariance.RIDGES


def test_more_code_elements_than_pairs_are_not_overfitted():
    """With 64 elements and 40 fitting pairs the chosen ridge keeps R^2 of a permutation high."""
    images = _images(80)
    codes = images.reshape(len(images), -1)
    turned = np.rot90(images, 1, axes=(1, 2)).reshape(len(images), -1)
    noise = np.random.default_rng(5).normal(scale=0.05, size=turned.shape)
    result = equivariance.linear_equivariance(codes, turned + noise)
    assert result["equivariance"] > 0.3


def test_an_invariant_code_is_both():
    images = _images()
    # Sorted pixel values do not change when the pixels are permuted.
    codes = np.sort(images.reshape(len(images), -1), axis=1)
    turned = np.sort(np.rot90(images, 1, axes=(1, 2)).reshape(len(images), -1), axis=1)
    result = equivariance.linear_equivariance(codes, turned)
    assert result["invariance"] == pytest.approx(1.0)
    assert result["equivariance"] > 0.999


def test_a_random_map_is_neither():
    images = _images()
    weights = np.random.default_rng(1).normal(size=(64, 16))
    codes = np.tanh(images.reshape(len(images), -1) @ weights)
    turned = np.tanh(np.rot90(images, 1, axes=(1, 2)).reshape(len(images), -1) @ weights)
    result = equivariance.linear_equivariance(codes, turned)
    assert result["equivariance"] < 0.3
    assert abs(result["invariance"]) < 0.2


def test_every_warp_is_linear_in_pixels():
    """Bilinear warps are linear maps of the pixels: the pixel code is equivariant to all."""
    table = equivariance.equivariance_table(_identity_code_model((12, 12, 1)),
                                            _images(700, 12, seed=2))
    assert set(table) == set(equivariance.TRANSFORMS)
    for result in table.values():
        assert result["equivariance"] > 0.99
        assert result["invariance"] < 0.9


def test_linear_equivariance_rejects_too_few_pairs():
    with pytest.raises(ValueError, match="four to fit"):
        equivariance.linear_equivariance(np.zeros((3, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="same N"):
        equivariance.linear_equivariance(np.zeros((4, 2)), np.zeros((5, 2)))


# --- perturbation sweeps, plausibility, smoothness -----------------------------------


def test_sweeps_move_one_element_by_its_spread():
    model = _identity_code_model((4, 4, 1))
    images = _images(5, 4, seed=3)
    out = equivariance.perturbation_sweeps(model, images, scales=(-1.0, 0.0, 2.0), rows=3)
    assert out["images"].shape == (5, 3, 3, 4, 4)
    spread = equivariance.element_spread(images.reshape(5, -1))
    for b in range(5):
        # The three most active pixels, in order.
        expected = np.argsort(-images[b].reshape(-1), kind="stable")[:3]
        np.testing.assert_array_equal(out["elements"][b], expected)
        for r, element in enumerate(expected):
            centre = out["images"][b, r, 1].reshape(-1)
            np.testing.assert_allclose(centre, images[b].reshape(-1), atol=1e-6)
            for s, scale in ((0, -1.0), (2, 2.0)):
                change = out["images"][b, r, s].reshape(-1) - centre
                assert np.count_nonzero(np.abs(change) > 1e-6) == 1
                assert change[element] == pytest.approx(scale * spread[element], rel=1e-5)


def test_element_spread_fills_constant_elements():
    codes = np.array([[0.0, 1.0, 5.0], [0.0, 3.0, 5.0]])
    np.testing.assert_allclose(equivariance.element_spread(codes), [1.0, 1.0, 1.0])


class _IntensityJudge:
    """A judge whose verdict is known: class = floor(10 * mean intensity), fully confident."""

    def predict(self, images, batch_size=None, verbose=0):
        classes = np.clip((np.asarray(images).mean(axis=(1, 2, 3)) * 10).astype(int), 0, 9)
        return np.eye(10)[classes]


class _UndecidedJudge:
    def predict(self, images, batch_size=None, verbose=0):
        return np.full((len(images), 10), 0.1)


def test_sweep_metrics_on_known_judges():
    steps = np.array([0.05, 0.15, 0.25, 0.35, 0.45])
    ramp = np.broadcast_to(steps[None, None, :, None, None], (1, 1, 5, 28, 28))
    flat = np.full((1, 1, 5, 28, 28), 0.55)
    decoded = np.concatenate([ramp, flat], axis=1)  # two sweeps of five steps
    scales = (-2, -1, 0, 1, 2)
    metrics = equivariance.sweep_metrics(decoded, _IntensityJudge(), scales)
    assert metrics["confident_fraction"] == 1.0 and metrics["mean_entropy"] == pytest.approx(0.0)
    assert metrics["pixel_change_per_step"] == pytest.approx(0.05)  # 0.1 on one sweep, 0 on the other
    assert metrics["class_change_rate"] == pytest.approx(0.5)  # every step of one sweep
    assert metrics["sweeps_changing_class"] == pytest.approx(0.5)
    assert metrics["class_kept"] == pytest.approx(0.5)  # the flat sweep keeps its class
    assert set(metrics["by_scale"]) == {"-2", "-1", "0", "1", "2"}
    undecided = equivariance.sweep_metrics(decoded, _UndecidedJudge(), scales)
    assert undecided["confident_fraction"] == 0.0
    assert undecided["mean_entropy"] == pytest.approx(math.log(10))
    with pytest.raises(ValueError, match="one per step"):
        equivariance.sweep_metrics(decoded, _UndecidedJudge(), (0, 1))


def test_judge_plausibility_and_resizing():
    assert judge.plausibility(np.eye(10)) == {"confident_fraction": 1.0, "mean_entropy": 0.0}
    mixed = np.array([[0.95] + [0.05 / 9] * 9, [0.5, 0.5] + [0.0] * 8])
    result = judge.plausibility(mixed)
    assert result["confident_fraction"] == 0.5
    assert result["mean_entropy"] == pytest.approx(np.mean(judge.entropy(mixed)))
    model = judge.build_judge(seed=0)
    probabilities = judge.judge_probabilities(model, np.zeros((3, 40, 40), "float32"))
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


# --- rotated feature families -------------------------------------------------------


def _bars(count=300, side=12, seed=0):
    """Images of one bright bar each, at a random angle and offset."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:side, 0:side] - (side - 1) / 2
    images = np.zeros((count, side, side, 1), "float32")
    for index in range(count):
        theta = rng.uniform(0, np.pi)
        offset = rng.uniform(-3, 3)
        distance = np.abs(xs * np.sin(theta) - ys * np.cos(theta) - offset)
        images[index, :, :, 0] = np.clip(1.5 - distance, 0, 1)
    return images


def test_rotated_copies_of_a_filter_form_a_family():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(5, 5))
    filters = [np.rot90(base, k) for k in range(4)] + [rng.normal(size=(5, 5)) for _ in range(4)]
    layer = keras.layers.Conv2D(8, 5, padding="same", activation="relu")
    layer.build((None, 12, 12, 1))
    layer.set_weights([np.stack(filters, axis=-1)[:, :, None, :].astype("float32"),
                       np.zeros(8, "float32")])
    images = _bars()
    families = equivariance.rotated_families(
        lambda x: equivariance.response_maps(layer, x), images, angles=(90, 180, 270))
    for unit in range(4):
        assert families["correlation"][unit] > 0.999
        assert families["partner"][unit] in set(range(4)) - {unit}
        assert families["angle"][unit] in (90.0, 180.0, 270.0)
    assert np.all(families["correlation"][4:] < 0.999)
    summary = equivariance.family_summary(families, threshold=0.999)
    assert summary["units"] == 8 and summary["rotated_partner_above_0.999"] == 4


def test_rotated_families_need_a_non_zero_angle():
    with pytest.raises(ValueError, match="non-zero angle"):
        equivariance.rotated_families(lambda x: x, _images(4), angles=(0, 360))


# --- the models the study trains -----------------------------------------------------


def test_study_capsnet_and_sparsecaps_models_as_code_models(tmp_path):
    study = build_study_model("untrained", "recon", seed=0)
    study.save(tmp_path / "model.keras")
    loaded = equivariance.load_code_model(tmp_path, name="untrained recon")
    images = _images(3, 28, seed=4)
    out = equivariance.perturbation_sweeps(loaded, images, rows=4)
    assert out["images"].shape == (3, 4, len(equivariance.SCALES), 28, 28)
    assert out["codes"].shape == (3, 256)
    # The rotated-feature chart reads the encoder's first convolution.
    np.testing.assert_allclose(
        equivariance.response_maps(loaded.feature_responses, images),
        np.asarray(study.encoder.get_layer("conv_1")(images)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["codes"], np.asarray(study.encode(images)), rtol=1e-5, atol=1e-6)

    keras.utils.set_random_seed(0)
    capsnet_model = build_model("capsnet")
    capsnet = equivariance.code_model_from_keras(capsnet_model, "capsnet")
    out = equivariance.perturbation_sweeps(capsnet, images, scales=(-1.0, 0.0, 1.0))
    assert out["images"].shape == (3, 16, 3, 28, 28)
    # Unperturbed, the code decodes to the model's own reconstruction (longest capsule kept).
    np.testing.assert_allclose(
        out["images"][:, 0, 1],
        np.asarray(capsnet_model.serving_outputs(images)["reconstruction"])[..., 0],
        rtol=1e-4, atol=1e-5)
    winners = out["elements"][:, 0] // 16
    np.testing.assert_array_equal(out["elements"], winners[:, None] * 16 + np.arange(16))

    sparsecaps_model = build_model("sparsecaps")
    sparsecaps = equivariance.code_model_from_keras(sparsecaps_model, "sparsecaps")
    out = equivariance.perturbation_sweeps(sparsecaps, images, scales=(-1.0, 0.0, 1.0))
    assert out["images"].shape == (3, 16, 3, 28, 28)
    # Unperturbed, the code decodes to the model's own reconstruction.
    np.testing.assert_allclose(out["images"][:, 0, 1], np.asarray(sparsecaps_model(images))[..., 0],
                               rtol=1e-4, atol=1e-5)
    # The code is the rank mask's output: capsules ranked 6th or lower are zero.
    norms = np.linalg.norm(out["codes"].reshape(3, 16, 16), axis=-1)
    assert ((norms > 0).sum(-1) <= 6).all()
    np.testing.assert_allclose(
        equivariance.response_maps(sparsecaps.feature_responses, images),
        np.asarray(sparsecaps_model.conv(images)), rtol=1e-5, atol=1e-6)

    classifier = equivariance.code_model_from_keras(
        build_study_model("untrained", "class", seed=0), "class")
    with pytest.raises(ValueError, match="without a reconstruction decoder"):
        equivariance.perturbation_sweeps(classifier, images)
    with pytest.raises(ValueError, match="model.keras"):
        equivariance.load_code_model(tmp_path / "missing")


def test_equivariance_report_tool(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    model_dir = tmp_path / "enc_untrained_dec_recon"
    model_dir.mkdir()
    build_study_model("untrained", "recon", seed=0).save(model_dir / "model.keras")
    judge_dir = tmp_path / "judge"
    judge_dir.mkdir()
    judge.build_judge(seed=0).save(judge_dir / judge.JUDGE_FILE)  # untrained: the format only
    output_dir = tmp_path / "report"
    tool = Path(__file__).resolve().parents[1] / "tools" / "equivariance_report.py"
    result = subprocess.run(
        [sys.executable, str(tool), f"--models={model_dir}", f"--judge={judge_dir}",
         f"--output_dir={output_dir}", "--sweep_digits=3", "--rows=2", "--pairs=24",
         "--family_digits=8", "--grid_digits=2"],
        capture_output=True, text=True, timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = (output_dir / "equivariance.md").read_text()
    for heading in ("Perturbed decodings, judged", "Confident-digit % by perturbation scale",
                    "equivariance / invariance", "Rotated feature families"):
        assert heading in text
    assert "| enc_untrained_dec_recon |" in text and "rotation 15°" in text
    for png in ("enc_untrained_dec_recon_perturbations.png", "enc_untrained_dec_recon_families.png"):
        assert f"]({png})" in text
        assert (output_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    payload = json.loads((output_dir / "enc_untrained_dec_recon_equivariance.json").read_text())
    assert set(payload["transforms"]) == set(equivariance.TRANSFORMS)
    assert 0.0 <= payload["sweeps"]["confident_fraction"] <= 1.0
    assert len(payload["families"]["per_unit"]["partner"]) == 64
    assert "| enc_untrained_dec_recon |" in result.stdout
