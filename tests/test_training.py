"""The absl trainer on real MNIST: flagfiles, outputs, resuming, strategies, errors."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from capskeras.training.config import TrainConfig
from capskeras.training.flags import config_from_flagfile
from capskeras.training.train import IncompatibleRunError
from capskeras.training.train import train

REPO = pathlib.Path(__file__).resolve().parents[1]
FLAGFILES = sorted(path.stem for path in (REPO / "flags").glob("*.cfg"))
TRAIN_CLI = str(pathlib.Path(sys.executable).parent / "capskeras-train")


def tiny_overrides(tmp_path):
    return [
        "--train_examples=256",
        "--eval_examples=128",
        "--batch_size=64",
        "--epochs=1",
        "--pretrain_epochs=1",
        "--verbose=0",
        f"--model_dir={tmp_path / 'run'}",
        f"--export_dir={tmp_path / 'export'}",
    ]


def tiny_config(tmp_path, **overrides):
    settings = dict(
        train_examples=256,
        eval_examples=128,
        batch_size=64,
        epochs=1,
        pretrain_epochs=1,
        verbose=0,
        model_dir=str(tmp_path / "run"),
        export_dir=str(tmp_path / "export"),
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def test_every_experiment_has_its_flagfile():
    study = [f"enc_{encoder}_dec_{head}" for encoder in ("untrained", "deep_bp", "ksparse")
             for head in ("recon", "class")]
    capsules = ["capsnet_mnist", "capsnet_affnist", "lenet5_mnist", "cnn_baseline_affnist"]
    assert FLAGFILES == sorted(study + capsules + ["quickstart"])


@pytest.mark.parametrize("name", FLAGFILES)
def test_flagfile_trains_writes_metrics_and_exports(name, tmp_path):
    config = config_from_flagfile(REPO / "flags" / f"{name}.cfg", tiny_overrides(tmp_path))
    results = train(config)

    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["experiment"] == name
    assert metrics["epochs"] == 1
    classifies = config.model != "study" or config.head == "class"
    reconstructs = config.model == "capsnet" or (config.model == "study" and config.head == "recon")
    if classifies:
        assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    if reconstructs:
        assert (run / "reconstructions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if config.model == "study" and config.head == "recon":
        assert 0.0 < metrics["test"]["mse"] < 0.25
    if config.model == "study" and config.encoder == "ksparse":
        assert metrics["pretrain"]["epochs"] == 1
        assert (run / "pretrain" / "checkpoints" / "latest.json").exists()
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["epoch"] == 1
    assert list((run / "logs").rglob("events.out.tfevents.*"))
    # The resolved flags reproduce the run's configuration.
    assert config_from_flagfile(run / "flags.cfg") == config

    reloaded = keras.saving.load_model(run / "model.keras")
    assert type(reloaded).__name__ == ("StudyModel" if config.model != "capsnet" else "CapsNet")

    served = tf.saved_model.load(results["export"]).signatures["serving_default"]
    side = config.pad_to or 28
    outputs = served(images=tf.zeros((2, side, side, 1)))
    assert "encoding" in outputs
    assert ({"probabilities", "class_ids"} <= set(outputs)) == classifies
    assert ("reconstruction" in outputs) == reconstructs
    assert results["export"] == str(tmp_path / "export" / "1")


def test_training_learns_to_classify_mnist(tmp_path):
    results = train(tiny_config(tmp_path, train_examples=4096, eval_examples=1000, epochs=2))
    assert results["test"]["accuracy"] > 0.85, results["test"]
    history = results["history"]
    assert [record["epoch"] for record in history] == [1, 2]
    assert history[1]["loss"] < history[0]["loss"]


def test_more_epochs_resume_where_the_last_run_stopped(tmp_path):
    first = train(tiny_config(tmp_path, epochs=1))
    model_dir = pathlib.Path(first["model_file"]).parent
    second = train(tiny_config(tmp_path, epochs=2))
    assert second["resumed_from_epoch"] == 1
    assert [record["epoch"] for record in second["history"]] == [1, 2]
    assert second["history"][0] == first["history"][0]
    # The optimizer state came back too: its step count spans both runs.
    model = keras.saving.load_model(model_dir / "model.keras")
    assert int(model.optimizer.iterations.numpy()) == 2 * 4


def test_resume_refuses_a_different_model(tmp_path):
    train(tiny_config(tmp_path, encoder="deep_bp"))
    with pytest.raises(IncompatibleRunError, match="encoder='untrained'.*encoder='deep_bp'"):
        train(tiny_config(tmp_path, encoder="untrained"))


def test_killed_run_resumes_from_its_last_epoch(tmp_path):
    model_dir = tmp_path / "run"
    command = [
        TRAIN_CLI, "--encoder=deep_bp", "--head=class", "--epochs=5",
        "--train_examples=6144", "--eval_examples=128", "--batch_size=64",
        "--verbose=0", f"--model_dir={model_dir}",
    ]
    state_file = model_dir / "checkpoints" / "latest.json"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not state_file.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.communicate()
    finally:
        process.kill()
    killed_at = json.loads(state_file.read_text())
    assert 1 <= killed_at["epoch"] < 5, "the run ended before it could be killed"
    assert not (model_dir / "metrics.json").exists()

    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert f"Resuming enc_deep_bp_dec_class from epoch {killed_at['epoch']}" in finished.stderr
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == killed_at["epoch"]
    assert [record["epoch"] for record in metrics["history"]] == [1, 2, 3, 4, 5]
    assert metrics["history"][: killed_at["epoch"]] == killed_at["history"]


@pytest.mark.parametrize("strategy,replicas", [("mirrored", 2), ("multi_worker", 1)])
def test_distribution_strategies_train_and_export(strategy, replicas, tmp_path):
    results = train(tiny_config(tmp_path, distribution_strategy=strategy))
    assert results["replicas"] == replicas
    assert np.isfinite(results["test"]["loss"])
    assert os.path.isdir(results["export"])


def test_xla_and_mixed_precision_training_serves_float32(tmp_path):
    results = train(tiny_config(tmp_path, head="recon", jit_compile=True, precision="mixed_bfloat16"))
    assert np.isfinite(results["test"]["mse"])
    served = tf.saved_model.load(results["export"]).signatures["serving_default"]
    outputs = served(images=tf.zeros((3, 28, 28, 1)))
    assert outputs["reconstruction"].dtype == tf.float32
    assert keras.config.dtype_policy().name == "float32", "the global policy leaked"


@pytest.mark.parametrize(
    "settings,message",
    [
        (dict(encoder="capsules9000"), "encoder='capsules9000'; expected one of"),
        (dict(head="segmentation"), "head='segmentation'; expected one of"),
        (dict(distribution_strategy="parameter_server"), "distribution_strategy='parameter_server'"),
        (dict(epochs=0), "epochs=0; expected an int >= 1"),
        (dict(learning_rate=-1.0), "learning_rate=-1.0; expected a float > 0"),
        (dict(pad_to=20), "pad_to=20; expected 0 or an int >= 28"),
        (dict(ksparse_k=(1, 2)), r"ksparse_k=\(1, 2\); expected three ints"),
        (dict(batch_size=2.5), "batch_size=2.5; expected an int"),
    ],
)
def test_bad_values_name_the_value_and_what_is_accepted(settings, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        train(tiny_config(tmp_path, **settings))
    assert not (tmp_path / "run").exists(), "a rejected run must not touch model_dir"


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["--encoder=capsules9000"], "encoder='capsules9000'; expected one of"),
        (["--distribution_strategy=parameter_server"], "distribution_strategy"),
        (["--ksparse_k=a,b,c"], "ksparse_k=a,b,c; expected comma-separated ints"),
        (["--data_dir={empty}", "--nodownload"], "Dataset 'mnist' is not prepared in"),
    ],
)
def test_command_line_rejects_bad_input_with_nonzero_exit(arguments, message, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    arguments = [argument.format(empty=empty) for argument in arguments]
    finished = subprocess.run(
        [TRAIN_CLI, f"--model_dir={tmp_path / 'run'}", *arguments],
        capture_output=True, text=True, timeout=120,
    )
    assert finished.returncode != 0
    assert message in finished.stderr


def test_multi_worker_refuses_a_cluster_keras_fit_cannot_run(tmp_path, monkeypatch):
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    with pytest.raises(ValueError, match=r"with 2 tasks in TF_CONFIG.*keras-team/keras#20585"):
        train(tiny_config(tmp_path, distribution_strategy="multi_worker"))
    assert not (tmp_path / "run").exists()
