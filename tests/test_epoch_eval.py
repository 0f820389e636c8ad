"""Test-set accuracy after every epoch (capskeras.training.epoch_eval) and its curve tool."""

import importlib.util
import json
import os
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from capskeras.data import affnist
from capskeras.evaluation import generalization
from capskeras.evaluation import report
from capskeras.training.config import TrainConfig
from capskeras.training.train import ConfigurationError
from capskeras.training.train import train

REPO = pathlib.Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A TFDS directory with MNIST (linked) and a tiny regenerated affNIST."""
    root = tmp_path_factory.mktemp("tfds")
    os.symlink(os.path.join(os.environ["TFDS_DATA_DIR"], "mnist"), root / "mnist")
    config = affnist.AffnistRegenConfig(name="tiny", copies_per_digit=2, num_digits=32)
    tfds.builder("affnist_regen", config=config, data_dir=str(root)).download_and_prepare()
    return str(root)


def _config(tmp_path, data_dir, **overrides):
    settings = dict(model="lenet5", pad_to=40, translate_pixels=3, epochs=2, train_examples=256,
                    eval_examples=64, batch_size=64, verbose=0, data_dir=data_dir,
                    eval_each_epoch="mnist_shifted,affnist_regen/tiny",
                    eval_each_epoch_examples=64, model_dir=str(tmp_path / "run"))
    settings.update(overrides)
    return TrainConfig.from_flat(**settings)


def _history(model_dir):
    return json.loads((pathlib.Path(model_dir) / "checkpoints" / "history.json").read_text())


def test_every_epoch_records_both_accuracies_of_the_live_model(tmp_path, data_dir):
    train(_config(tmp_path, data_dir))

    history = _history(tmp_path / "run")
    assert [record["epoch"] for record in history] == [1, 2]
    for record in history:
        for key in ("mnist_shifted_accuracy", "affnist_regen_tiny_accuracy"):
            assert 0.0 <= record[key] <= 1.0
    # The last epoch's figures are the trained model's on the same fixed images
    # that capskeras-eval builds (shifted by the run's --translate_pixels).
    classifier = generalization.load_classifier(tmp_path / "run")
    results = report.evaluate_on_datasets(
        [classifier], ["mnist_shifted/3", "affnist_regen/tiny"], eval_examples=64,
        data_dir=data_dir, log=lambda line: None)["models"][0]["results"]
    assert history[-1]["mnist_shifted_accuracy"] == results["mnist_shifted/3"]["accuracy"]
    assert history[-1]["affnist_regen_tiny_accuracy"] == results["affnist_regen/tiny"]["accuracy"]


def test_shifted_test_set_is_fixed_and_shifted():
    first = np.concatenate([x for x, _ in generalization.shifted_mnist_test_set(
        None, 3, num_examples=40, batch_size=16)])
    again = np.concatenate([x for x, _ in generalization.shifted_mnist_test_set(
        None, 3, num_examples=40, batch_size=40)])
    upright = np.concatenate([x for x, _ in generalization.mnist_test_set(None, 40, 40)])
    np.testing.assert_array_equal(first, again)
    assert (first != upright).any(axis=(1, 2, 3)).mean() > 0.5


def test_requests_that_cannot_be_evaluated_are_refused_before_any_write(tmp_path, data_dir):
    for overrides, message in [
        (dict(pad_to=0), "needs square one-channel images of side >= 40"),
        (dict(eval_each_epoch="affnist"), "'affnist' is not prepared"),
    ]:
        with pytest.raises(ConfigurationError, match=message):
            train(_config(tmp_path, data_dir, **overrides))
        assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match=r"eval_each_epoch='mnist,rotated_mnist'.*mnist_shifted"):
        _config(tmp_path, data_dir, eval_each_epoch="mnist,rotated_mnist").validate()


def test_model_without_classes_is_read_through_an_svm(tmp_path, data_dir):
    pytest.importorskip("sklearn")
    train(_config(tmp_path, data_dir, model="sparsecaps", pad_to=0, epochs=1, train_examples=128,
                  eval_each_epoch="mnist_shifted", eval_each_epoch_svm_examples=100))

    (record,) = _history(tmp_path / "run")
    assert record["svm_examples"] == 100
    assert 0.0 <= record["mnist_shifted_accuracy"] <= 1.0


def _load_curve_tool():
    spec = importlib.util.spec_from_file_location("capskeras_tools_affnist_curve",
                                                  REPO / "tools" / "affnist_curve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_run(root, name, points, y_key="affnist_regen_accuracy"):
    checkpoints = root / name / "checkpoints"
    checkpoints.mkdir(parents=True)
    history = [{"epoch": epoch + 1, "loss": 1.0 / (epoch + 1), "mnist_shifted_accuracy": x,
                y_key: y} for epoch, (x, y) in enumerate(points)]
    (checkpoints / "history.json").write_text(json.dumps(history))
    (root / name / "config.json").write_text(json.dumps({"experiment": name}))
    return str(root / name)


def test_curve_tool_draws_each_run_and_the_published_points(tmp_path):
    tool = _load_curve_tool()
    runs = [_fake_run(tmp_path, "capsnet_affnist", [(0.97, 0.60), (0.99, 0.72), (0.992, 0.75)]),
            _fake_run(tmp_path, "cnn_baseline_affnist", [(0.98, 0.55), (0.991, 0.62)])]
    png, json_path = tool.draw(runs, str(tmp_path / "out" / "curve.png"))

    assert pathlib.Path(png).read_bytes()[:8] == PNG_MAGIC
    drawn = json.loads(pathlib.Path(json_path).read_text())
    assert (drawn["x"], drawn["y"], drawn["y_regenerated"]) == (
        "mnist_shifted", "affnist_regen", True)
    assert [model["name"] for model in drawn["models"]] == ["capsnet_affnist",
                                                           "cnn_baseline_affnist"]
    assert drawn["models"][1]["points"] == [
        {"epoch": 1, "mnist_shifted": 0.98, "affnist_regen": 0.55},
        {"epoch": 2, "mnist_shifted": 0.991, "affnist_regen": 0.62}]
    published = sorted(drawn["published"]["points"].values(), key=lambda p: p["affnist"])
    assert published == [{"mnist_shifted": pytest.approx(0.9922), "affnist": pytest.approx(0.66)},
                         {"mnist_shifted": pytest.approx(0.9923), "affnist": pytest.approx(0.79)}]
    assert list(drawn["published"]["affnist_levels"].values()) == [pytest.approx(0.90)]

    with pytest.raises(ValueError,
                       match=r"without 'mnist_shifted_accuracy' and 'affnist_accuracy'"):
        tool.draw(runs[:1], str(tmp_path / "curve2.png"), y_dataset="affnist")
