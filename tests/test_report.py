"""Tests for the multi-dataset evaluation and its report (capskeras.evaluation.report)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from capskeras.data import affnist
from capskeras.evaluation import generalization
from capskeras.evaluation import report
from capskeras.tasks import build_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _cli():
    candidate = Path(sys.executable).parent / "capskeras-eval"
    return str(candidate) if candidate.exists() else "capskeras-eval"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A TFDS directory with MNIST (linked) and a tiny regenerated affNIST, no real affNIST."""
    root = tmp_path_factory.mktemp("tfds")
    source = os.environ["TFDS_DATA_DIR"]
    os.symlink(os.path.join(source, "mnist"), root / "mnist")
    config = affnist.AffnistRegenConfig(name="tiny", copies_per_digit=2, num_digits=12)
    tfds.builder("affnist_regen", config=config, data_dir=str(root)).download_and_prepare()
    return str(root)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Untrained LeNet5s saved as model directories: one 28x28, one 40x40."""
    root = tmp_path_factory.mktemp("models")
    paths = []
    for side in (28, 40):
        path = root / f"lenet5_{side}"
        path.mkdir()
        build_model("lenet5", pad_to=side if side != 28 else 0).save(path / "model.keras")
        paths.append(str(path))
    return paths


def test_check_datasets():
    assert report.check_datasets(["mnist", " affnist", "mnist"]) == ("mnist", "affnist")
    assert report.check_datasets(["affnist_regen/small"]) == ("affnist_regen/small",)
    for bad in ([], ["mnist", "svhn"], ["mnist/extra"]):
        with pytest.raises(ValueError, match="expected one or more of"):
            report.check_datasets(bad)


def test_cells_skip_crop_resize_and_missing_data(models, data_dir):
    classifiers = [generalization.load_classifier(path) for path in models]
    lines = []
    results = report.evaluate_on_datasets(
        classifiers, ["affnist", "affnist_regen/tiny", "mnist"], eval_examples=16,
        batch_size=8, data_dir=data_dir, log=lines.append,
    )
    small, large = results["models"]
    # Real affNIST is not prepared: the error says how to prepare it, for every model.
    assert results["datasets"]["affnist"]["status"] == "error"
    assert "python -m capskeras.data.prepare affnist" in small["results"]["affnist"]["error"]
    assert "error" in large["results"]["affnist"]
    # The 28x28 model is not fed 40x40 images; the 40x40 one is, and sees MNIST padded.
    assert "28x28 model" in small["results"]["affnist_regen/tiny"]["skipped"]
    assert large["results"]["affnist_regen/tiny"]["input"] == "as is"
    assert large["results"]["mnist"]["input"] == "padded to 40x40"
    for result in (large["results"]["affnist_regen/tiny"], small["results"]["mnist"]):
        assert 0.0 <= result["accuracy"] <= 1.0
    assert report.evaluated_cells(results) == 3
    assert any("affnist: error" in line for line in lines)
    for policy, note in (("crop", "centre-cropped to 28x28"), ("resize", "resized to 28x28")):
        forced = report.evaluate_on_datasets(
            classifiers[:1], ["affnist_regen/tiny"], eval_examples=16, batch_size=8,
            data_dir=data_dir, canvas_mismatch=policy, log=lines.append,
        )
        cell = forced["models"][0]["results"]["affnist_regen/tiny"]
        assert cell["input"] == note and 0.0 <= cell["accuracy"] <= 1.0
        assert "*" in report.format_markdown_table(forced)
    with pytest.raises(ValueError, match="canvas_mismatch='shrink'"):
        report.evaluate_on_datasets(classifiers, ["mnist"], canvas_mismatch="shrink")


def test_cell_counts_match_a_direct_computation(models, data_dir):
    classifier = generalization.load_classifier(models[1])
    results = report.evaluate_on_datasets(
        [classifier], ["affnist_regen/tiny"], eval_examples=0, batch_size=7, data_dir=data_dir)
    images, labels = [], []
    for x, y in affnist.load_affnist("test", batch_size=24, name="affnist_regen/tiny",
                                     data_dir=data_dir):
        images.append(np.asarray(x))
        labels.append(np.asarray(y))
    predicted = classifier.predict_class_ids(np.concatenate(images))
    expected = float(np.mean(predicted == np.concatenate(labels)))
    assert results["models"][0]["results"]["affnist_regen/tiny"]["accuracy"] == pytest.approx(expected)


def test_markdown_table_shows_anchors_beside_measured_rows():
    results = {
        "settings": {"datasets": ["mnist", "affnist", "rotated_mnist"], "angles": [0.0, 35.0],
                     "eval_examples": 10, "canvas_mismatch": "skip"},
        "datasets": {"mnist": {"status": "ok"}, "affnist": {"status": "ok"},
                     "rotated_mnist": {"status": "ok"}},
        "models": [{"name": "net", "results": {
            "mnist": {"accuracy": 0.9912, "input": "as is"},
            "affnist": {"skipped": "28x28 model"},
            "rotated_mnist": {"accuracy_by_angle": {"0": 0.99, "35": 0.8125}, "input": "as is"},
        }}],
    }
    table = report.format_markdown_table(results).splitlines()
    assert table[0] == "| model | mnist | affnist | rotated 0° | rotated 35° |"
    assert table[2] == "| net | 99.12 | n/a | 99.00 | 81.25 |"
    rows = "\n".join(table[3:])
    for figure in ("| 66 |", "| 79 |", "| 90 |", "| 76.05 |", "| 92.12 |"):
        assert figure in rows
    assert "Sabour" in rows and "Rawlinson" in rows
    # Many angles: the table keeps 35, 90 and 180; the JSON keeps them all.
    results["settings"]["angles"] = [float(a) for a in range(0, 181, 5)]
    assert "rotated 35° | rotated 90° | rotated 180°" in report.format_markdown_table(results)


def test_cli_report_for_two_models_four_datasets(models, data_dir, tmp_path):
    output_dir = tmp_path / "evaluation"
    result = subprocess.run(
        [_cli(), f"--models={','.join(models)}", "--names=small,large",
         "--datasets=mnist,affnist,affnist_regen/tiny,rotated_mnist", "--angles=0,35",
         "--eval_examples=16", "--batch_size=8", f"--data_dir={data_dir}",
         f"--output_dir={output_dir}"],
        capture_output=True, text=True, timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # The missing dataset is named on stderr with how to prepare it.
    assert "affnist" in result.stderr and "python -m capskeras.data.prepare affnist" in result.stderr
    for name in ("small", "large"):
        payload = json.loads((output_dir / f"{name}.json").read_text())
        assert payload["model"]["name"] == name
        assert set(payload["model"]["results"]) == {"mnist", "affnist", "affnist_regen/tiny",
                                                    "rotated_mnist"}
    text = (output_dir / "report.md").read_text()
    assert "| small |" in text and "| large |" in text and "| 66 |" in text
    assert "REGENERATED" in text and "`affnist` was not evaluated" in text
    for png in ("accuracy.png", "rotation_sweep.png"):
        assert f"]({png})" in text
        assert (output_dir / png).read_bytes()[:8] == PNG_MAGIC
    assert "[small](small.json)" in text
    sweep = json.loads((output_dir / "rotation_sweep.json").read_text())
    assert [model["name"] for model in sweep["models"]] == ["small", "large"]
    assert "| model | mnist | affnist | affnist_regen/tiny | rotated 0° | rotated 35° |" in result.stdout


def test_cli_exits_1_when_nothing_can_run(models, tmp_path):
    empty = tmp_path / "empty_tfds"
    empty.mkdir()
    result = subprocess.run(
        [_cli(), f"--models={models[1]}", "--datasets=affnist,affnist_regen",
         f"--data_dir={empty}", f"--output_dir={tmp_path / 'out'}"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1
    assert "no model could be evaluated" in result.stderr
    assert "python -m capskeras.data.prepare affnist_regen" in result.stderr
