"""The absl trainer on real MNIST: flagfiles, outputs, exact resume, strategies, errors."""

import dataclasses
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from capskeras.training.config import TrainConfig
from capskeras.training.flags import config_from_arguments
from capskeras.training.flags import config_from_flagfile
from capskeras.training.train import ConfigurationError
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
        verbose=0,
        model_dir=str(tmp_path / "run"),
        export_dir=str(tmp_path / "export"),
    )
    settings.update(overrides)
    return TrainConfig.from_flat(**settings)


def final_weights(model_dir):
    return keras.saving.load_model(pathlib.Path(model_dir) / "model.keras").get_weights()


def assert_same_run_up_to_rounding(model_dir, single_dir):
    """A multi-worker run's final weights are the single worker's, up to float rounding.

    One worker on the whole global batch is the same run up to float
    rounding. Adam's normalised steps carry that rounding into the few
    weights whose gradients are near zero, by up to about lr (1e-3) per
    step: 1.2e-3 was measured at most, at 9 of 2.8 million weights above
    5e-4, the median 7e-8. Workers that trained apart would differ by steps
    of 1e-3 nearly everywhere.
    """
    differences = np.concatenate([
        np.abs(a - b).ravel() for a, b in zip(final_weights(model_dir), final_weights(single_dir))])
    assert np.percentile(differences, 99.9) < 1e-4
    assert differences.max() < 5e-3


def max_difference(weights_a, weights_b):
    assert len(weights_a) == len(weights_b)
    return max(float(np.max(np.abs(a - b))) for a, b in zip(weights_a, weights_b))


def test_every_experiment_has_its_flagfile():
    study = [f"enc_{encoder}_dec_{head}" for encoder in ("untrained", "deep_bp", "ksparse")
             for head in ("recon", "class")]
    capsules = ["capsnet_mnist", "capsnet_affnist", "lenet5_mnist", "cnn_baseline_affnist"]
    groups = ["p4cnn_rotated_mnist", "z2cnn_rotated_mnist", "p4cnn_mnist"]
    predcaps = [f"enc_predcaps{ablation}_dec_{head}" for head in ("recon", "class")
                for ablation in ("", "_layernorm", "_units", "_nofeedback")]
    sparsecaps = ["sparsecaps_mnist", "sparsecaps_affnist"]
    em = ["em_capsnet_mnist", "em_capsnet_smallnorb"]
    assert FLAGFILES == sorted(study + capsules + groups + predcaps + sparsecaps + em
                               + ["quickstart"])


ABLATIONS = {"layernorm": {"normalization": "layer_norm"}, "units": {"selection": "unit"},
             "nofeedback": {"feedback_iterations": 0}}


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
@pytest.mark.parametrize("head", ["recon", "class"])
def test_ablation_flagfiles_differ_from_predcaps_in_their_switch_alone(ablation, head):
    base = config_from_flagfile(REPO / "flags" / f"enc_predcaps_dec_{head}.cfg")
    variant = config_from_flagfile(REPO / "flags" / f"enc_predcaps_{ablation}_dec_{head}.cfg")
    name = f"enc_predcaps_{ablation}_dec_{head}"
    expected = dataclasses.replace(
        base, experiment=name, model_dir=f"runs/{name}", export_dir=f"saved_models/{name}",
        settings=dataclasses.replace(base.settings, **ABLATIONS[ablation]),
    )
    assert variant == expected


# Rotated digits are regenerated from MNIST into a writable directory, few of them.
SMALL_DATA = {
    name: ["--regen_train_examples=256", "--regen_test_examples=128", "--data_dir={tmp}/tfds",
           "--validation_examples=64"]
    for name in ("p4cnn_rotated_mnist", "z2cnn_rotated_mnist")
}
# One EM iteration: the same layers, task and trainer, a fraction of the compilation.
SMALL_DATA["em_capsnet_mnist"] = ["--em_iterations=1"]
# Per-epoch test sets: the shifted MNIST digits only (affnist_regen is not prepared here;
# tests/test_epoch_eval.py evaluates it), a few of them.
SMALL_DATA["capsnet_affnist"] = ["--eval_each_epoch=mnist_shifted", "--eval_each_epoch_examples=64"]


# One flagfile of each family and each kind of stage trains end to end; the
# others (the same code under other settings, and P4CNN, which
# tests/test_gcnn_tasks.py trains) are parsed and built.
TRAINED_FLAGFILES = [
    "quickstart", "enc_untrained_dec_class", "enc_ksparse_dec_class", "enc_predcaps_dec_recon",
    "capsnet_affnist", "sparsecaps_mnist", "lenet5_mnist", "z2cnn_rotated_mnist",
    "em_capsnet_mnist",
]


@pytest.mark.parametrize("name", sorted(set(FLAGFILES) - set(TRAINED_FLAGFILES)))
def test_flagfile_builds_the_model_it_names(name):
    from capskeras.training.train import compiled_model

    config = config_from_flagfile(REPO / "flags" / f"{name}.cfg").validate()
    assert config.experiment == name and config.model_dir == f"runs/{name}"
    model = compiled_model(config)
    assert model.optimizer is not None and model.count_params() > 0


@pytest.mark.parametrize("name", TRAINED_FLAGFILES)
def test_flagfile_trains_writes_metrics_and_exports(name, tmp_path):
    small_data = [argument.format(tmp=tmp_path) for argument in SMALL_DATA.get(name, [])]
    config = config_from_flagfile(REPO / "flags" / f"{name}.cfg",
                                  tiny_overrides(tmp_path) + small_data)
    results = train(config)

    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["experiment"] == name
    assert metrics["epochs"] == 1
    settings = config.settings
    study = config.model == "study"
    classifies = settings.head == "class" if study else config.model != "sparsecaps"
    reconstructs = config.model in ("capsnet", "sparsecaps") or (study and settings.head == "recon")
    if classifies:
        for split in ("train", "validation", "test"):
            assert 0.0 <= metrics[split]["accuracy"] <= 1.0
    if reconstructs:
        assert (run / "reconstructions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if study and settings.head == "recon":
        assert 0.0 < metrics["test"]["mse"] < 0.25
    if study and settings.encoder in ("ksparse", "predcaps"):
        assert metrics["pretrain"]["epochs"] == settings.pretrain_epochs
        assert (run / "pretrain" / "checkpoints" / "checkpoint").exists()
    history = json.loads((run / "checkpoints" / "history.json").read_text())
    assert history[0]["epoch"] == 1
    if config.eval_each_epoch:
        assert 0.0 <= history[0]["mnist_shifted_accuracy"] <= 1.0
    assert list((run / "logs").rglob("events.out.tfevents.*"))
    # The resolved flags reproduce the run's configuration.
    assert config_from_flagfile(run / "flags.cfg") == config

    reloaded = keras.saving.load_model(run / "model.keras")
    assert type(reloaded).__name__ == {"capsnet": "CapsNet", "sparsecaps": "SparseCaps",
                                       "em_capsnet_mnist": "EmCapsNet"}.get(config.model,
                                                                            "StudyModel")

    served = tf.saved_model.load(results["export"]).signatures["serving_default"]
    side = getattr(settings, "pad_to", 0) or 28
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
    second = train(tiny_config(tmp_path, epochs=2))
    assert second["resumed_from"] == {"epoch": 1, "step": 0, "checkpoint": "ckpt-4"}
    assert [record["epoch"] for record in second["history"]] == [1, 2]
    assert second["history"][0] == first["history"][0]
    # The optimizer state came back too: its step count spans both runs.
    model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    assert int(model.optimizer.iterations.numpy()) == 2 * 4
    # The settings the run started with stay; the resume is logged beside them.
    assert json.loads((tmp_path / "run" / "config.json").read_text())["epochs"] == 1
    resumes = (tmp_path / "run" / "resumes.jsonl").read_text().splitlines()
    assert json.loads(resumes[0])["changed"] == {}


def test_resume_refuses_a_different_model(tmp_path):
    train(tiny_config(tmp_path, encoder="deep_bp"))
    with pytest.raises(ConfigurationError, match="encoder='untrained' \\(the run has 'deep_bp'\\)"):
        train(tiny_config(tmp_path, encoder="untrained", allow_setting_changes=True))


def test_resume_under_changed_settings_needs_the_flag(tmp_path):
    train(tiny_config(tmp_path, epochs=1))
    with pytest.raises(ConfigurationError) as refused:
        train(tiny_config(tmp_path, epochs=2, batch_size=32, learning_rate=0.01))
    assert "batch_size=32 (the run has 64)" in str(refused.value)
    assert "learning_rate=0.01 (the run has 0.001)" in str(refused.value)
    assert "--allow_setting_changes" in str(refused.value)

    results = train(tiny_config(tmp_path, epochs=2, batch_size=32, allow_setting_changes=True))
    assert results["epochs"] == 2
    # The run now goes by the new settings: resuming it again needs no flag.
    assert json.loads((tmp_path / "run" / "config.json").read_text())["batch_size"] == 32
    assert train(tiny_config(tmp_path, epochs=2, batch_size=32))["resumed_from"] == {
        "epoch": 2, "step": 0, "checkpoint": "ckpt-16"}
    # 4 steps of 64, then 8 of 32 under the new batch size.
    model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    assert int(model.optimizer.iterations.numpy()) == 4 + 8
    resumes = (tmp_path / "run" / "resumes.jsonl").read_text().splitlines()
    assert [json.loads(line)["changed"] for line in resumes] == [{"batch_size": [64, 32]}, {}]


def test_a_setting_added_since_the_run_started_counts_as_its_default(tmp_path):
    train(tiny_config(tmp_path))
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    del recorded["feedback_iterations"]  # As in a run from before PredCaps.
    (tmp_path / "run" / "config.json").write_text(json.dumps(recorded))
    assert train(tiny_config(tmp_path, epochs=2))["resumed_from"] == {
        "epoch": 1, "step": 0, "checkpoint": "ckpt-4"}


def test_a_batch_the_replicas_cannot_share_is_refused_before_any_write(tmp_path):
    with pytest.raises(ConfigurationError, match="batch_size=63 for 2 replicas"):
        train(tiny_config(tmp_path, batch_size=63, distribution_strategy="mirrored"))
    assert not (tmp_path / "run").exists()


def test_tf_config_speaks_only_for_multi_worker_runs(tmp_path, monkeypatch):
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps(
        {"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    results = train(tiny_config(tmp_path))  # The default strategy: this process is the chief.
    assert (tmp_path / "run" / "metrics.json").exists() and os.path.isdir(results["export"])
    monkeypatch.setenv("TF_CONFIG", json.dumps({"task": {"type": "worker", "index": 1}}))
    with pytest.raises(ConfigurationError, match="TF_CONFIG with task .* and no cluster"):
        train(tiny_config(tmp_path / "other", distribution_strategy="multi_worker"))


def test_epoch_checkpoints_of_the_earlier_trainer_are_refused_not_restarted(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "latest.json").write_text('{"epoch": 3}')
    with pytest.raises(ConfigurationError, match="epoch checkpoints of an earlier capskeras"):
        train(tiny_config(tmp_path))
    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == ["checkpoints"]


def test_raising_pretraining_epochs_after_it_finished_is_refused(tmp_path):
    train(tiny_config(tmp_path, encoder="ksparse", head="class", pretrain_epochs=1))
    with pytest.raises(ConfigurationError, match="finished that stage after 1 epochs"):
        train(tiny_config(tmp_path, encoder="ksparse", head="class", pretrain_epochs=2,
                          allow_setting_changes=True, epochs=2))


def test_pretrain_only_stops_after_pretraining_and_a_later_run_goes_on_from_it(tmp_path):
    run = tmp_path / "run"
    results = train(tiny_config(tmp_path, encoder="ksparse", head="class", pretrain_epochs=1,
                                pretrain_only=True))
    assert json.loads((run / "metrics.json").read_text())["pretrain"]["epochs"] == 1
    assert "test" not in results
    assert not (run / "model.keras").exists() and not (run / "checkpoints").exists()
    assert not (tmp_path / "export").exists()

    finished = train(tiny_config(tmp_path, encoder="ksparse", head="class", pretrain_epochs=1))
    assert finished["pretrain"]["resumed_from_epoch"] == 1
    assert 0.0 <= finished["test"]["accuracy"] <= 1.0

    with pytest.raises(ConfigurationError,
                       match="pretrain_only=True for model='study' .*no pretraining stage"):
        train(tiny_config(tmp_path / "other", encoder="deep_bp", pretrain_only=True))
    assert not (tmp_path / "other").exists()


def _run_cli(arguments, log, **kwargs):
    """Starts capskeras-train, its output in file `log` (a pipe could fill and block it)."""
    output = open(log, "w")
    return subprocess.Popen([TRAIN_CLI, *arguments], stdout=output, stderr=subprocess.STDOUT,
                            text=True, **kwargs)


def test_killed_run_resumes_mid_epoch_to_the_same_weights(tmp_path):
    """SIGKILL after a mid-epoch checkpoint; the resumed run ends where an uninterrupted one does."""
    arguments = [
        "--encoder=deep_bp", "--head=class", "--epochs=2", "--train_examples=1536",
        "--eval_examples=64", "--batch_size=64", "--translate_pixels=2",
        "--checkpoint_every_steps=5", "--deterministic", "--verbose=0",
        "--noplot_reconstructions",
    ]
    killed_dir, whole_dir = tmp_path / "killed", tmp_path / "whole"
    whole = _run_cli([*arguments, f"--model_dir={whole_dir}"], tmp_path / "whole.log")
    killed = _run_cli([*arguments, f"--model_dir={killed_dir}"], tmp_path / "killed.log")
    try:
        mid_epoch = killed_dir / "checkpoints" / "ckpt-10.index"  # Epoch 1, step 10 of 24.
        deadline = time.monotonic() + 240
        while not mid_epoch.exists() and killed.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    finally:
        killed.kill()
    assert mid_epoch.exists(), "the run ended before it could be killed"
    assert not (killed_dir / "metrics.json").exists()

    resumed = subprocess.run([TRAIN_CLI, *arguments, f"--model_dir={killed_dir}"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert whole.wait(timeout=300) == 0, (tmp_path / "whole.log").read_text()[-3000:]
    metrics = json.loads((killed_dir / "metrics.json").read_text())
    # From a mid-epoch checkpoint: step 10, or another if the kill came late or early.
    resumed_from = metrics["resumed_from"]
    assert resumed_from["epoch"] == 0 and 0 < resumed_from["step"] < 24, resumed_from
    assert [record["epoch"] for record in metrics["history"]] == [1, 2]
    assert max_difference(final_weights(killed_dir), final_weights(whole_dir)) == 0.0


class _PoisonedTask:
    """Registers a task whose training images turn to NaN from the 6th batch."""

    name = "poisoned_for_test"

    def __enter__(self):
        from capskeras import tasks
        from capskeras.tasks.study import StudyTask

        class Poisoned(StudyTask):
            def images(self, split, options, shuffle):
                images = super().images(split, options, shuffle)
                if split != "train":
                    return images
                return images.enumerate().map(
                    lambda index, batch: (
                        batch[0] * tf.where(index >= 5, float("nan"), 1.0), batch[1]))

        tasks.register_task(self.name)(Poisoned)
        return self

    def __exit__(self, *error):
        from capskeras import tasks

        del tasks.TASKS[self.name]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    with _PoisonedTask() as task:
        config = tiny_config(tmp_path, model=task.name, train_examples=512,
                             checkpoint_every_steps=2)
        checkpoints = tmp_path / "run" / "checkpoints"
        from capskeras.training.loop import NonFiniteLossError

        with pytest.raises(NonFiniteLossError, match="at epoch 1, step 6 of"):
            train(config)
    assert sorted(path.name for path in checkpoints.glob("*.index")) == [
        "ckpt-2.index", "ckpt-4.index"]
    reader = tf.train.load_checkpoint(str(checkpoints / "ckpt-4"))
    weights = [reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
               if name.startswith("weights/")]
    assert weights and all(np.all(np.isfinite(value)) for value in weights)
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize("strategy,replicas", [("mirrored", 2), ("multi_worker", 1)])
def test_distribution_strategies_train_and_export(strategy, replicas, tmp_path):
    results = train(tiny_config(tmp_path, distribution_strategy=strategy))
    assert results["replicas"] == replicas
    assert np.isfinite(results["test"]["loss"])
    assert os.path.isdir(results["export"])


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _checkpoint_weights(prefix):
    reader = tf.train.load_checkpoint(str(prefix))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name.startswith("weights/")}


def test_two_workers_train_in_step_and_match_one_worker(tmp_path):
    """Two MultiWorkerMirroredStrategy workers on loopback against one worker, same global batch."""
    arguments = [
        "--encoder=deep_bp", "--head=class", "--epochs=3", "--train_examples=512",
        "--eval_examples=64", "--batch_size=64", "--translate_pixels=2", "--verbose=0",
        "--noplot_reconstructions", "--checkpoint_every_steps=0",
    ]
    cluster = {"worker": [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]}
    model_dir = tmp_path / "cluster"
    workers = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        workers.append(_run_cli(
            [*arguments, "--distribution_strategy=multi_worker", f"--model_dir={model_dir}"],
            tmp_path / f"worker-{index}.log", env={**os.environ, "TF_CONFIG": tf_config},
        ))
    single = _run_cli([*arguments, f"--model_dir={tmp_path / 'single'}"], tmp_path / "single.log")
    try:
        for name, process in (("worker-0", workers[0]), ("worker-1", workers[1]),
                              ("single", single)):
            assert process.wait(timeout=300) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    finally:
        for process in (*workers, single):
            process.kill()

    # 8 steps an epoch, 24 in all; the chief and worker 1 hold the same weights.
    chief = _checkpoint_weights(model_dir / "checkpoints" / "ckpt-24")
    other = _checkpoint_weights(model_dir / "checkpoints" / "worker-1" / "ckpt-24")
    assert chief.keys() == other.keys() and len(chief) >= 10
    assert all(np.array_equal(chief[name], other[name]) for name in chief)

    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["replicas"] == 2
    losses = [record["loss"] for record in metrics["history"]]
    assert losses[-1] < losses[0]
    assert_same_run_up_to_rounding(model_dir, tmp_path / "single")


def _checkpoint_steps(directory):
    """The steps of the checkpoints the `CheckpointManager` of `directory` keeps."""
    state = tf.train.get_checkpoint_state(str(directory))
    return [int(path.rsplit("-", 1)[1]) for path in state.all_model_checkpoint_paths]


def _forget_newest_checkpoint(directory):
    """Leaves `directory` as if its worker died just before its newest save."""
    from google.protobuf import text_format

    state = tf.train.get_checkpoint_state(str(directory))
    newest = pathlib.Path(state.all_model_checkpoint_paths[-1]).name
    del state.all_model_checkpoint_paths[-1]
    del state.all_model_checkpoint_timestamps[-1]
    state.model_checkpoint_path = state.all_model_checkpoint_paths[-1]
    (directory / "checkpoint").write_text(text_format.MessageToString(state))
    for path in directory.glob(f"{newest}.*"):
        path.unlink()


def test_a_lost_worker_stops_its_peer_and_both_resume_to_the_same_weights(tmp_path):
    """SIGKILL one of two workers mid-epoch: the other exits 4 in seconds; restarted, both finish."""
    arguments = [
        "--model=lenet5", "--epochs=1", "--train_examples=768", "--eval_examples=64",
        "--batch_size=32", "--translate_pixels=2", "--verbose=0", "--checkpoint_every_steps=4",
    ]
    cluster = {"worker": [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]}
    model_dir = tmp_path / "cluster"

    def start_workers(name):
        workers = []
        for index in range(2):
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            workers.append(_run_cli(
                [*arguments, "--distribution_strategy=multi_worker",
                 "--collective_timeout_seconds=20", f"--model_dir={model_dir}"],
                tmp_path / f"{name}-{index}.log", env={**os.environ, "TF_CONFIG": tf_config},
            ))
        return workers

    workers = start_workers("killed")
    state = model_dir / "checkpoints" / "worker-1" / "checkpoint"
    try:
        # Worker 1 has written ckpt-4 and ckpt-8 of the epoch's 24 steps.
        deadline = time.monotonic() + 240
        while (not (state.exists() and '"ckpt-8"' in state.read_text())
               and workers[1].poll() is None and time.monotonic() < deadline):
            time.sleep(0.02)
        workers[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        workers[1].wait()
        survivor_code = workers[0].wait(timeout=120)
        lost_after = time.monotonic() - killed_at
    finally:
        for process in workers:
            process.kill()
    worker_steps = _checkpoint_steps(state.parent)
    assert len(worker_steps) >= 2 and max(worker_steps) < 24, "worker 1 was not killed mid-epoch"
    survivor_log = (tmp_path / "killed-0.log").read_text()
    assert survivor_code == 4, survivor_log[-3000:]
    assert "A peer worker was lost" in survivor_log, survivor_log[-3000:]
    assert "start every worker again with the same command" in survivor_log
    assert lost_after < 30, lost_after
    assert not (model_dir / "metrics.json").exists()

    # As if worker 1 had died just before its newest save: the workers then
    # hold different newest checkpoints and must agree on an older one.
    _forget_newest_checkpoint(state.parent)
    common = max(set(_checkpoint_steps(model_dir / "checkpoints")) & set(worker_steps[:-1]))
    workers = start_workers("resumed")
    try:
        # The uninterrupted run, on one worker, while the workers start.
        train(config_from_arguments([*arguments, f"--model_dir={tmp_path / 'single'}"]))
        for index, process in enumerate(workers):
            assert process.wait(timeout=300) == 0, (
                tmp_path / f"resumed-{index}.log").read_text()[-3000:]
    finally:
        for process in workers:
            process.kill()

    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["resumed_from"] == {"epoch": 0, "step": common,
                                       "checkpoint": f"ckpt-{common}"}
    assert json.loads((model_dir / "config.json").read_text())["collective_timeout_seconds"] == 20
    chief = _checkpoint_weights(model_dir / "checkpoints" / "ckpt-24")
    other = _checkpoint_weights(model_dir / "checkpoints" / "worker-1" / "ckpt-24")
    assert chief.keys() == other.keys() and len(chief) >= 8
    assert all(np.array_equal(chief[name], other[name]) for name in chief)
    # The uninterrupted single worker, up to float rounding.
    assert_same_run_up_to_rounding(model_dir, tmp_path / "single")


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
        (dict(collective_timeout_seconds=-1), "collective_timeout_seconds=-1; expected an int >= 0"),
        (dict(learning_rate=-1.0), "learning_rate=-1.0; expected a float > 0"),
        (dict(pad_to=20), "pad_to=20; expected 0 or an int >= 28"),
        (dict(ksparse_k=(1, 2)), r"ksparse_k=\(1, 2\); expected three ints"),
        (dict(batch_size=2.5), "batch_size=2.5; expected an int"),
        (dict(model_dir="/proc/capskeras/run"), "model_dir='/proc/capskeras/run'; expected a directory"),
        (dict(export_dir="/proc/capskeras/export"), "export_dir='/proc/capskeras/export'"),
    ],
)
def test_bad_values_name_the_value_and_what_is_accepted(settings, message, tmp_path):
    with pytest.raises(ConfigurationError, match=message):
        train(tiny_config(tmp_path, **settings))
    assert not (tmp_path / "run").exists(), "a rejected run must not touch model_dir"


def test_a_setting_of_another_task_is_refused():
    with pytest.raises(ValueError, match=r"--encoder=ksparse with --model=capsnet; it is a "
                                         r"setting of \['study'\]"):
        config_from_arguments(["--model=capsnet", "--encoder=ksparse"])
    # Defaults of other tasks (as in flags.cfg files written before tasks) pass.
    assert config_from_arguments(["--model=capsnet", "--encoder=deep_bp"]).model == "capsnet"


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["--encoder=capsules9000"], "encoder='capsules9000'; expected one of"),
        (["--distribution_strategy=parameter_server"], "distribution_strategy"),
        (["--ksparse_k=a,b,c"], "ksparse_k=a,b,c; expected comma-separated ints"),
        (["--eval_each_epoch=mnist_shifted,svhn"], "eval_each_epoch='mnist_shifted,svhn'; "
         "expected comma-separated test set names from ['mnist', 'mnist_shifted', 'affnist', "
         "'affnist_regen']"),
        (["--data_dir={empty}", "--nodownload"], "Dataset 'mnist' is not prepared in"),
        (["--model_dir=/proc/capskeras/run"], "model_dir='/proc/capskeras/run'"),
        (["--export_dir=/proc/capskeras/export"], "export_dir='/proc/capskeras/export'"),
    ],
)
def test_command_line_rejects_bad_input_with_nonzero_exit(arguments, message, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    arguments = [argument.format(empty=empty) for argument in arguments]
    if not any(argument.startswith("--model_dir") for argument in arguments):
        arguments.append(f"--model_dir={tmp_path / 'run'}")
    finished = subprocess.run([TRAIN_CLI, *arguments], capture_output=True, text=True,
                              timeout=120)
    assert finished.returncode == 2, finished.stderr[-2000:]
    assert message in finished.stderr
    assert not (tmp_path / "run").exists()


def test_helpfull_lists_each_tasks_flags_under_its_name():
    finished = subprocess.run([TRAIN_CLI, "--helpfull"], capture_output=True, text=True,
                              timeout=120)
    sections = {}
    for block in finished.stdout.split("\n\n"):
        lines = block.strip().splitlines()
        if lines and lines[0].endswith(":"):
            sections[lines[0][:-1].strip()] = block
    assert "--encoder" in sections["capskeras-train --model=study"]
    assert "--routing_iterations" in sections["capskeras-train --model=capsnet"]
    assert "--pad_to" in sections["capskeras-train --model=lenet5"]
    assert "--checkpoint_every_steps" in sections["capskeras-train"]
    assert "--encoder" not in sections["capskeras-train --model=capsnet"]


def test_validation_digits_are_held_out_of_training_and_evaluated_every_epoch(tmp_path):
    """The last N training digits are the validation split: never in the training pipeline."""
    from capskeras.tasks import InputOptions

    config = tiny_config(tmp_path, model="lenet5", epochs=2, validation_examples=1000,
                         train_examples=0, eval_examples=128, export_dir="")
    task = config.task()
    options = InputOptions(batch_size=4096, validation_examples=1000)

    def digests(split, shuffle):
        return {image.tobytes() for images, _ in task.images(split, options, shuffle=shuffle)
                for image in (images.numpy() * 255).astype(np.uint8)}

    training, validation = digests("train", True), digests("validation", False)
    assert task.num_examples("train", options) == 59000
    assert len(validation) > 990  # MNIST repeats a few digits exactly.
    assert not training & validation
    everything = digests("train", False) | validation
    assert everything == training | validation

    metrics = train(dataclasses.replace(config, train_examples=512))
    history = metrics["history"]
    assert [sorted(key for key in record if key.startswith("val_")) for record in history] == [
        ["val_accuracy", "val_loss"]] * 2
    assert set(metrics) >= {"train", "validation", "test"}
    for split in ("train", "validation", "test"):
        assert 0.0 <= metrics[split]["accuracy"] <= 1.0
    assert metrics["validation"]["accuracy"] == history[-1]["val_accuracy"]
    saved = json.loads((tmp_path / "run" / "checkpoints" / "history.json").read_text())
    assert saved[-1]["val_accuracy"] == history[-1]["val_accuracy"]


def test_a_validation_split_as_large_as_the_training_split_is_refused(tmp_path):
    with pytest.raises(ConfigurationError, match="validation_examples=60000; expected fewer "
                                                 "than the 60000 examples"):
        train(tiny_config(tmp_path, validation_examples=60000))
    assert not (tmp_path / "run").exists()
