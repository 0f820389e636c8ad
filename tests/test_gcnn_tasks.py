"""The p4cnn and z2cnn trainer tasks (capskeras.tasks.gcnn) and their flagfiles."""

import json
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from capskeras import tasks
from capskeras.training.config import TrainConfig
from capskeras.training.flags import config_from_flagfile
from capskeras.training.train import train

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["p4cnn", "z2cnn"])
def test_flagfiles_parse(name):
    config = config_from_flagfile(REPO / "flags" / f"{name}_rotated_mnist.cfg",
                                  ["--epochs=1"])
    assert config.model == name and config.epochs == 1
    assert config.settings.rotated_dataset == "rotated_mnist_regen"


def test_task_settings_build_the_models():
    assert tasks.build_model("p4cnn", gcnn_group="p4m").name == "p4mcnn"
    z2cnn = tasks.build_model("z2cnn", z2cnn_channels=8, z2cnn_dropout=0.1)
    assert z2cnn.encoder.output_shape == (None, 8)
    with pytest.raises(ValueError, match="gcnn_dropout=1.0"):
        tasks.build_model("p4cnn", gcnn_dropout=1.0)


def test_p4cnn_trains_and_exports_plain_convolutions(tmp_path):
    config = TrainConfig.from_flat(
        model="p4cnn", regen_train_examples=64, regen_test_examples=32,
        data_dir=str(tmp_path / "tfds"), epochs=1, batch_size=32, verbose=0,
        model_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "export"),
    )
    results = train(config)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    assert type(model.encoder.layers[0]).__name__ == "GroupConv2D"
    loaded = tf.saved_model.load(results["export"])
    images = np.random.default_rng(0).uniform(size=(2, 28, 28, 1)).astype("float32")
    served = loaded.signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(served["probabilities"].numpy(),
                               model.serving_outputs(images)["probabilities"], atol=1e-5)
    ops = {node.op for function in
           loaded.signatures["serving_default"].graph.as_graph_def().library.function
           for node in function.node_def}
    assert "Conv2D" in ops and "GatherV2" not in ops


def test_p4cnn_trains_on_upright_mnist_with_its_validation_split(tmp_path):
    config = TrainConfig.from_flat(
        model="p4cnn", rotated_dataset="mnist", train_examples=128, eval_examples=64,
        validation_examples=5000, batch_size=64, epochs=1, verbose=0,
        model_dir=str(tmp_path / "run"))
    options = tasks.InputOptions(batch_size=64, validation_examples=5000)
    assert config.task().num_examples("train", options) == 55000
    assert config.task().num_examples("validation", options) == 5000
    metrics = train(config)
    assert set(metrics) >= {"train", "validation", "test"}
    assert "val_accuracy" in metrics["history"][0]
