"""Tests for the rotated-MNIST builders and pipeline (capskeras.data.rotated_mnist)."""

import os
import zipfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import capskeras.data  # noqa: F401  (registers the builders)
from capskeras.data import RotatedMnistRegenConfig
from capskeras.data import load_rotated_mnist
from capskeras.data import rotated_mnist
from capskeras.data import transforms

RNG = np.random.default_rng(3)


def _write_amat(path, count):
    """An .amat fixture: row-major pixels in [0, 1], a bright pixel at (row 2, col 5)."""
    pixels = RNG.uniform(0.0, 0.5, size=(count, 28, 28))
    pixels[:, 2, 5] = 1.0
    labels = np.arange(count) % 10
    with open(path, "w") as handle:
        for image, label in zip(pixels, labels):
            values = list(image.reshape(-1)) + [float(label)]
            handle.write("  ".join(f"{v:.8e}" for v in values) + "\n")
    return pixels, labels


@pytest.mark.parametrize("packed", ["amat", "zip"])
def test_mnist_rot_builder_reads_the_amat_files(tmp_path, packed):
    manual = tmp_path / "manual"
    manual.mkdir()
    source = tmp_path / "files" if packed == "zip" else manual
    source.mkdir(exist_ok=True)
    train_pixels, train_labels = _write_amat(source / rotated_mnist.TRAIN_FILE, 6)
    _write_amat(source / rotated_mnist.TEST_FILE, 4)
    if packed == "zip":
        with zipfile.ZipFile(manual / "mnist_rotation_new.zip", "w") as archive:
            for name in (rotated_mnist.TRAIN_FILE, rotated_mnist.TEST_FILE):
                archive.write(source / name, name)
    dataset = load_rotated_mnist("train", batch_size=6, dataset="rotated_mnist",
                                 data_dir=str(tmp_path / "tfds"), manual_dir=str(manual))
    images, labels = next(iter(dataset))
    np.testing.assert_array_equal(labels.numpy(), train_labels)
    assert images.shape == (6, 28, 28, 1) and images.dtype == tf.float32
    # uint8 storage: within half a grey level, and rows stay rows.
    np.testing.assert_allclose(images.numpy()[..., 0], train_pixels, atol=0.5 / 255 + 1e-6)
    assert np.all(images.numpy()[:, 2, 5, 0] == 1.0)
    builder = tfds.builder("rotated_mnist", data_dir=str(tmp_path / "tfds"))
    assert builder.info.splits["test"].num_examples == 4
    validation = load_rotated_mnist("train[4:]", batch_size=8, dataset="rotated_mnist",
                                    data_dir=str(tmp_path / "tfds"))
    np.testing.assert_array_equal(next(iter(validation))[1].numpy(), train_labels[4:])


def test_mnist_rot_parse_rejects_other_files(tmp_path):
    path = tmp_path / "bad.amat"
    path.write_text("0.5 0.5 3\n")
    with pytest.raises(ValueError, match="expected 785"):
        rotated_mnist.parse_amat(str(path))


@pytest.fixture(scope="module")
def regen_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("regen"))


TINY = dict(train_examples=40, test_examples=24)


def _examples(data_dir, config, split):
    builder = tfds.builder("rotated_mnist_regen", config=config, data_dir=data_dir)
    builder.download_and_prepare()
    return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


def test_regenerated_set_rotates_real_mnist_digits(regen_dir):
    config = RotatedMnistRegenConfig(name="tiny_seed3", seed=3, **TINY)
    train = _examples(regen_dir, config, "train")
    test = _examples(regen_dir, config, "test")
    assert (len(train), len(test)) == (40, 24)
    sources = [e["source"] for e in train + test]
    assert len(set(sources)) == 64  # no digit in both splits
    assert all(0.0 <= e["angle"] < 360.0 for e in train + test)
    mnist = tfds.builder("mnist")  # the prepared copy in $TFDS_DATA_DIR
    for example in train[:3]:
        split, index = example["source"].decode().split("/")
        digit = next(iter(tfds.as_numpy(
            mnist.as_dataset(split=f"{split}[{index}:{int(index) + 1}]"))))
        assert digit["label"] == example["label"]
        expected = rotated_mnist.rotate_digits(digit["image"][None], [example["angle"]])[0]
        np.testing.assert_array_equal(example["image"], expected)
    description = tfds.builder("rotated_mnist_regen", config=config,
                               data_dir=regen_dir).info.description
    assert "REGENERATED" in description


def test_regenerated_set_is_deterministic_by_seed(regen_dir, tmp_path):
    first = _examples(regen_dir, RotatedMnistRegenConfig(name="tiny_seed3", seed=3, **TINY),
                      "test")
    again = _examples(str(tmp_path), RotatedMnistRegenConfig(name="tiny_seed3", seed=3, **TINY),
                      "test")
    assert [e["source"] for e in first] == [e["source"] for e in again]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["image"], b["image"])
        assert a["angle"] == b["angle"]
    chosen, angles = rotated_mnist.regenerated_draw(3, **TINY)
    other, other_angles = rotated_mnist.regenerated_draw(4, **TINY)
    np.testing.assert_array_equal(angles["test"], [e["angle"] for e in first])
    assert not np.array_equal(chosen["test"], other["test"])
    assert all(e["source"].startswith(b"train/") for e in _examples(
        regen_dir, RotatedMnistRegenConfig(name="tiny_seed3", seed=3, **TINY), "train"))
    assert not np.array_equal(angles["train"], other_angles["train"])


def test_pipeline_and_tfds_load_after_import(regen_dir):
    config = RotatedMnistRegenConfig(name="tiny_seed3", seed=3, **TINY)
    dataset = load_rotated_mnist("train", batch_size=16, config=config, data_dir=regen_dir,
                                 shuffle=True, seed=1, num_examples=32, drop_remainder=True)
    batches = list(dataset)
    assert len(batches) == 2
    images, labels = batches[0]
    assert images.shape == (16, 28, 28, 1) and labels.dtype == tf.int32
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
    loaded = tfds.load("rotated_mnist_regen", split="test", data_dir=regen_dir,
                       builder_kwargs={"config": config}, download=False)
    assert len(list(loaded)) == 24
    default = tfds.builder("rotated_mnist_regen", data_dir=regen_dir).builder_config
    assert (default.name, default.train_examples, default.test_examples) == (
        "seed0", 12000, 50000)


def test_bad_arguments():
    with pytest.raises(ValueError, match="split='validation'"):
        load_rotated_mnist("validation", batch_size=2)
    with pytest.raises(ValueError, match="dataset='mnist_rot'"):
        load_rotated_mnist("train", batch_size=2, dataset="mnist_rot")
    with pytest.raises(ValueError, match="at most 70000"):
        RotatedMnistRegenConfig(name="big", train_examples=60000, test_examples=20000)
    with pytest.raises(ValueError, match="train_examples=60001; expected at most 60000"):
        RotatedMnistRegenConfig(name="big", train_examples=60001, test_examples=10)
    with pytest.raises(ValueError, match="seed=-1"):
        RotatedMnistRegenConfig(name="bad", seed=-1)


def test_the_regenerated_training_digits_are_never_mnist_test_digits():
    chosen, _ = rotated_mnist.regenerated_draw(0, 12000, 50000)
    assert chosen["train"].max() < 60000
    assert not set(chosen["train"]) & set(chosen["test"])
    assert len(chosen["train"]) == 12000 and len(chosen["test"]) == 50000
    # Every MNIST test digit not drawn for testing is simply unused.
    assert (chosen["test"] >= 60000).sum() <= 10000
