"""Faults a long run meets: a second trainer, a stale lock, damaged checkpoints, a full disk."""

import contextlib
import errno
import hashlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from capskeras.files import WriteError
from capskeras.training.config import TrainConfig
from capskeras.training.train import ConfigurationError
from capskeras.training.train import train

TRAIN_CLI = str(pathlib.Path(sys.executable).parent / "capskeras-train")


def small_config(model_dir, export_dir="", **overrides):
    """LeNet5 on 256 digits in 4 steps of 64, a checkpoint after every step."""
    settings = dict(model="lenet5", train_examples=256, eval_examples=64, batch_size=64,
                    epochs=1, verbose=0, checkpoint_every_steps=1, deterministic=True,
                    model_dir=str(model_dir), export_dir=str(export_dir))
    settings.update(overrides)
    return TrainConfig.from_flat(**settings)


def resume_lines(model_dir):
    path = pathlib.Path(model_dir) / "resumes.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def model_weights(model_dir):
    return keras.saving.load_model(pathlib.Path(model_dir) / "model.keras").get_weights()


def digests(directory):
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(pathlib.Path(directory).iterdir()) if path.is_file()}


# One trainer per run directory.

def test_a_second_trainer_on_a_running_directory_is_refused_and_the_first_finishes(tmp_path):
    model_dir = tmp_path / "run"
    arguments = dict(train_examples=6400, epochs=2, checkpoint_every_steps=0,
                     deterministic=False)
    first = subprocess.Popen(
        [TRAIN_CLI, *small_config(model_dir, **arguments).to_flagfile().splitlines()],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lock = model_dir / "trainer.lock"
        deadline = time.monotonic() + 180
        while first.poll() is None and time.monotonic() < deadline and not (
                lock.exists() and lock.read_text()):
            time.sleep(0.01)
        assert first.poll() is None, "the first trainer ended before the second started"
        with pytest.raises(ConfigurationError) as refused:
            train(small_config(model_dir, **arguments))
        output, _ = first.communicate(timeout=300)
    finally:
        first.kill()
    assert "another trainer is using" in str(refused.value)
    assert f"process {first.pid} on host {socket.gethostname()!r}" in str(refused.value)
    assert first.returncode == 0, output[-3000:]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["resumed_from"] is None
    assert resume_lines(model_dir) == []  # The refused trainer wrote nothing.
    assert not (model_dir / "trainer.lock").exists()


def test_a_lock_left_by_an_ended_process_is_taken_over_and_recorded(tmp_path):
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    left = {"host": socket.gethostname(), "pid": ended.pid, "started": "2026-01-01T00:00:00"}
    (model_dir / "trainer.lock").write_text(json.dumps(left))

    train(small_config(model_dir, checkpoint_every_steps=0))

    (taken,) = [line for line in resume_lines(model_dir) if line.get("event")]
    assert taken["event"] == "lock_taken_over"
    assert taken["previous_holder"].startswith(f"process {ended.pid} on host")
    assert not (model_dir / "trainer.lock").exists()
    assert (model_dir / "metrics.json").exists()


def test_a_lock_of_another_host_is_not_taken_over(tmp_path):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    other = {"host": "elsewhere.example", "pid": 4242, "started": "2026-01-01T00:00:00"}
    (model_dir / "trainer.lock").write_text(json.dumps(other))
    with pytest.raises(ConfigurationError, match="process 4242 on host 'elsewhere.example'.*"
                                                 "delete the lock file"):
        train(small_config(model_dir))
    assert sorted(path.name for path in model_dir.iterdir()) == ["trainer.lock"]


def test_each_worker_of_one_run_directory_holds_its_own_lock(tmp_path):
    from capskeras.training import run_lock

    chief = run_lock.acquire(str(tmp_path), worker=0)
    worker = run_lock.acquire(str(tmp_path), worker=1)
    with pytest.raises(run_lock.RunLockedError, match=f"process {os.getpid()}"):
        run_lock.acquire(str(tmp_path), worker=1)
    worker.release()
    chief.release()
    assert list(tmp_path.iterdir()) == []


# Damaged checkpoints.

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 4-step run keeping ckpt-2, ckpt-3 and ckpt-4, and its final weights."""
    model_dir = tmp_path_factory.mktemp("finished") / "run"
    train(small_config(model_dir))
    checkpoints = sorted(path.name for path in (model_dir / "checkpoints").glob("*.index"))
    assert checkpoints == ["ckpt-2.index", "ckpt-3.index", "ckpt-4.index"]
    return model_dir


def _damage(checkpoints, how):
    data = checkpoints / "ckpt-4.data-00000-of-00001"
    if how == "random_bytes":
        with open(data, "r+b") as f:
            f.write(np.random.default_rng(0).bytes(1000))
    elif how == "truncated":
        with open(data, "r+b") as f:
            f.truncate(data.stat().st_size // 2)
    elif how == "missing_index":
        (checkpoints / "ckpt-4.index").unlink()


@pytest.mark.parametrize("how", ["random_bytes", "truncated", "missing_index"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_next_older_one(finished_run, how,
                                                                      tmp_path):
    model_dir = tmp_path / "run"
    shutil.copytree(finished_run, model_dir)
    os.remove(model_dir / "metrics.json")
    checkpoints = model_dir / "checkpoints"
    _damage(checkpoints, how)

    train(small_config(model_dir))

    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["resumed_from"]["checkpoint"] == "ckpt-3"
    assert metrics["resumed_from"]["steps_lost"] == 1
    (event,) = [line for line in resume_lines(model_dir) if line.get("event")]
    assert event["event"] == "damaged_checkpoints_skipped"
    assert event["restored"] == "ckpt-3" and event["steps_lost"] == 1
    assert [os.path.basename(entry["checkpoint"]) for entry in event["skipped"]] == ["ckpt-4"]
    # The lost step was trained again, to the weights of the undamaged run.
    for resumed, whole in zip(model_weights(model_dir), model_weights(finished_run)):
        np.testing.assert_array_equal(resumed, whole)
    # The damaged files are set aside, and the newest checkpoint reads.
    assert list(checkpoints.glob("damaged-ckpt-4.*"))
    assert tf.train.latest_checkpoint(str(checkpoints)).endswith("ckpt-4")
    tf.train.load_checkpoint(tf.train.latest_checkpoint(str(checkpoints)))


def test_no_readable_checkpoint_is_refused_by_name_and_nothing_is_overwritten(finished_run,
                                                                             tmp_path):
    model_dir = tmp_path / "run"
    shutil.copytree(finished_run, model_dir)
    checkpoints = model_dir / "checkpoints"
    for index in checkpoints.glob("ckpt-*.index"):
        index.unlink()
    before = digests(checkpoints)
    with pytest.raises(ConfigurationError, match=r"None of the 3 checkpoints in .*checkpoints "
                                                 r"can be read.*Nothing was overwritten.*"
                                                 r"new --model_dir"):
        train(small_config(model_dir, epochs=2))
    assert digests(checkpoints) == before


# A full disk.

@contextlib.contextmanager
def small_disk(path, size="32m"):
    """A tmpfs of `size` mounted at `path` (needs root, as CI and the dev machines run)."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory, leave=64 * 1024):
    """Fills `directory`'s filesystem but for `leave` bytes (a lock, a log line); returns the file."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (65536, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as error:
                assert error.errno == errno.ENOSPC
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def test_a_full_disk_stops_the_run_by_name_and_keeps_the_checkpoint_and_exports(tmp_path):
    with small_disk(tmp_path / "runs") as runs, small_disk(tmp_path / "exports") as exports:
        model_dir, export_dir = runs / "run", exports / "lenet5"
        train(small_config(model_dir, export_dir, checkpoint_every_steps=0))
        checkpoints = model_dir / "checkpoints"
        assert tf.train.latest_checkpoint(str(checkpoints)).endswith("ckpt-4")

        # The next checkpoint finds the run's disk full.
        filler = fill(runs)
        with pytest.raises(WriteError, match=r"Could not write checkpoint .*ckpt-8 .*The "
                                             r"previous checkpoint is kept: .*ckpt-4"):
            train(small_config(model_dir, export_dir, epochs=2, checkpoint_every_steps=0))
        assert tf.train.latest_checkpoint(str(checkpoints)).endswith("ckpt-4")
        tf.train.load_checkpoint(str(checkpoints / "ckpt-4"))
        assert not [path for path in checkpoints.iterdir() if "ckpt-8" in path.name]
        assert not (model_dir / "trainer.lock").exists()

        # Space again, but the export's disk is full: the earlier export stays.
        filler.unlink()
        fill(exports)
        with pytest.raises(WriteError, match=f"Could not write {export_dir}"):
            train(small_config(model_dir, export_dir, epochs=2, checkpoint_every_steps=0))
        assert sorted(path.name for path in export_dir.iterdir()) == ["1"]
        served = tf.saved_model.load(str(export_dir / "1")).signatures["serving_default"]
        assert served(images=tf.zeros((1, 28, 28, 1)))["probabilities"].shape == (1, 10)
        assert tf.train.latest_checkpoint(str(checkpoints)).endswith("ckpt-8")
