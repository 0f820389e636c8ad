"""Tests for the affNIST builders (capskeras.data.affnist), on fixtures written here."""

import os
import zipfile

from absl import flags
import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds

import capskeras.data  # noqa: F401  Registers the builders, as users do.
from capskeras.data import affnist
from capskeras.data import prepare
from capskeras.data import transforms
from capskeras.data.builders import DatasetNotFoundError
from capskeras.data.mnist import load_mnist

SIZE = affnist.IMAGE_SIZE


def _l_shape():
    """An upright 'L' on 40x40: a bar down the left, a foot along the bottom."""
    image = np.zeros((SIZE, SIZE), "uint8")
    image[8:32, 10:14] = 255  # the stem, left
    image[28:32, 10:26] = 255  # the foot, bottom
    return image


def _as_affnist_column(image):
    """`image` [40, 40] as affNIST stores it: one column holding the rows in turn.

    In MATLAB this column is `reshape(I.', 1600, 1)`: the file's bytes are
    the transposed image in MATLAB's column-major order.
    """
    return image.reshape(SIZE * SIZE)


def _write_mat(path, images, labels, transforms_):
    """One affNIST batch file: the `affNISTdata` struct with its fields."""
    count = len(images)
    one_of_n = np.zeros((10, count), "uint8")
    one_of_n[labels, np.arange(count)] = 1
    struct = {
        "image": np.stack([_as_affnist_column(image) for image in images], axis=1),
        "label_int": np.asarray(labels, "uint8")[None, :],
        "label_one_of_n": one_of_n,
        "human_readable_transform": np.asarray(transforms_, "float64").T,
        "index": np.arange(1, count + 1, dtype="float64")[None, :],
    }
    scipy.io.savemat(path, {"affNISTdata": struct})


@pytest.fixture(scope="module")
def mnist_digits():
    images, labels = next(iter(load_mnist("test", batch_size=6, num_examples=6)))
    canvases = np.pad((images.numpy()[..., 0] * 255).round().astype("uint8"), ((0, 0), (6, 6), (6, 6)))
    return canvases, labels.numpy()


@pytest.fixture(scope="module")
def prepared_affnist(tmp_path_factory, mnist_digits):
    """The real builder prepared from a manual_dir of fixture .mat files."""
    root = tmp_path_factory.mktemp("affnist")
    manual = root / "manual"
    canvases, labels = mnist_digits
    images = np.concatenate([_l_shape()[None], canvases])
    all_labels = np.concatenate([[7], labels]).astype("int64")
    rng = np.random.default_rng(3)
    all_transforms = np.stack([
        rng.uniform(-20, 20, len(images)), rng.uniform(-0.2, 0.2, len(images)),
        rng.uniform(0.8, 1.2, len(images)), rng.uniform(0.8, 1.2, len(images)),
        rng.uniform(-6, 6, len(images)), rng.uniform(-6, 6, len(images)),
    ], axis=1)
    # Two batch files for test (read in numeric order), one each for train and validation;
    # validation comes as a zip the way the official download does.
    for folder in ("training_batches", "test_batches"):
        os.makedirs(manual / folder)
    _write_mat(manual / "training_batches" / "1.mat", images[:3], all_labels[:3], all_transforms[:3])
    _write_mat(manual / "test_batches" / "1.mat", images[:4], all_labels[:4], all_transforms[:4])
    _write_mat(manual / "test_batches" / "2.mat", images[4:], all_labels[4:], all_transforms[4:])
    staging = root / "staging" / "validation_batches"
    os.makedirs(staging)
    _write_mat(staging / "1.mat", images[2:5], all_labels[2:5], all_transforms[2:5])
    with zipfile.ZipFile(manual / "validation_batches.zip", "w") as archive:
        archive.write(staging / "1.mat", "validation_batches/1.mat")
    data_dir = root / "tfds"
    # As from the shell: python -m capskeras.data.prepare affnist --data_dir=... --manual_dir=...
    flag_values = flags.FlagValues()
    prepare.define_flags(flag_values)
    prepare.main(flag_values(["prepare", "affnist", f"--data_dir={data_dir}",
                              f"--manual_dir={manual}"]), flag_values)
    return str(data_dir), images, all_labels, all_transforms.astype("float32")


def _by_index(data_dir, split="test"):
    """The split's examples in fixture order (TFDS shuffles on write)."""
    examples = list(tfds.as_numpy(tfds.load("affnist", split=split, data_dir=data_dir)))
    return examples


def _match(examples, images):
    """For each fixture image, the example holding it."""
    found = []
    for image in images:
        hits = [e for e in examples if np.array_equal(e["image"][..., 0], image)]
        assert len(hits) == 1, "a fixture image is missing or was transposed"
        found.append(hits[0])
    return found


def test_decoded_l_shape_is_upright(prepared_affnist):
    data_dir, images, labels, transforms_ = prepared_affnist
    examples = _by_index(data_dir)
    assert len(examples) == len(images)
    l_example = _match(examples, images[:1])[0]
    decoded = l_example["image"][..., 0]
    # Upright: the stem is on the left and the foot at the bottom, the corner bottom-left.
    assert decoded[8:32, 10:14].min() == 255 and decoded[28:32, 10:26].min() == 255
    assert decoded[:8].max() == 0 and decoded[:, 26:].max() == 0
    assert decoded[10:26, 16:].max() == 0
    # Read the other way round (MATLAB's column order), the 'L' would lie on its side.
    column = _as_affnist_column(images[0])
    assert not np.array_equal(column.reshape(SIZE, SIZE, order="F"), images[0])


def test_real_digits_labels_and_transforms_survive(prepared_affnist):
    data_dir, images, labels, transforms_ = prepared_affnist
    examples = _match(_by_index(data_dir), images)
    for example, label, transform in zip(examples, labels, transforms_):
        assert example["label"] == label
        np.testing.assert_allclose(example["transform"], transform, rtol=1e-6)
    builder = tfds.builder("affnist", data_dir=data_dir)
    assert {name: split.num_examples for name, split in builder.info.splits.items()} == {
        "train": 3, "validation": 3, "test": len(images)}


def test_load_affnist_pipeline(prepared_affnist):
    data_dir, images, labels, transforms_ = prepared_affnist
    batches = list(affnist.load_affnist("test", batch_size=4, data_dir=data_dir,
                                        with_transforms=True))
    assert [len(b[0]) for b in batches] == [4, 3]
    images_out = np.concatenate([b[0].numpy() for b in batches])
    assert images_out.shape == (7, 40, 40, 1) and images_out.dtype == np.float32
    assert images_out.max() == pytest.approx(1.0) and images_out.min() == 0.0
    assert batches[0][1].dtype.name == "int32"
    assert batches[0][2].shape == (4, 6)
    with pytest.raises(ValueError, match="split='bogus'"):
        affnist.load_affnist("bogus", batch_size=4, data_dir=data_dir)


def test_transform_statistics_and_fitted_ranges(prepared_affnist):
    data_dir, images, labels, transforms_ = prepared_affnist
    measured = affnist.real_transforms("affnist", "test", data_dir=data_dir)
    stats = affnist.transform_statistics(measured)
    for index, field in enumerate(affnist.TRANSFORM_FIELDS):
        assert stats[field]["min"] == pytest.approx(transforms_[:, index].min(), rel=1e-6)
        assert stats[field]["max"] == pytest.approx(transforms_[:, index].max(), rel=1e-6)
        assert stats[field]["mean"] == pytest.approx(transforms_[:, index].mean(), rel=1e-5)
    ranges = affnist.fit_regen_ranges(stats)
    assert ranges["max_rotation_degrees"] == pytest.approx(np.abs(transforms_[:, 0]).max(), rel=1e-6)
    assert ranges["max_shear"] == pytest.approx(np.abs(transforms_[:, 1]).max(), rel=1e-6)
    assert ranges["min_scale"] == pytest.approx(transforms_[:, 2:4].min(), rel=1e-6)
    assert ranges["max_scale"] == pytest.approx(transforms_[:, 2:4].max(), rel=1e-6)
    affnist.AffnistRegenConfig(name="fitted", **ranges)  # The ranges make a valid config.


def test_missing_dataset_names_how_to_prepare(tmp_path):
    for name, command in (("affnist", "python -m capskeras.data.prepare affnist "),
                          ("affnist_regen", "python -m capskeras.data.prepare affnist_regen ")):
        with pytest.raises(DatasetNotFoundError) as error:
            affnist.load_affnist("test", batch_size=2, name=name, data_dir=str(tmp_path))
        assert name in str(error.value) and command in str(error.value)
        assert str(tmp_path) in str(error.value)


def test_warp_matches_rotation_and_moves_right_points_up():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (2, SIZE, SIZE, 1)).astype("float32")
    params = np.array([[20, 0, 1, 1, 0, 0], [0, 0, 1, 1, 3, -2]], "float32")
    warped = affnist.warp_images(images, params)
    np.testing.assert_allclose(warped[0], transforms.rotate(images[0], 20.0).numpy(), atol=1e-4)
    # Shifted 3 down and 2 left.
    np.testing.assert_allclose(warped[1, 8:, :-7], images[1, 5:-3, 2:-5], atol=1e-6)
    # A positive rotation turns counter-clockwise: a point right of the centre goes up.
    dot = np.zeros((1, SIZE, SIZE, 1), "float32")
    dot[0, 20, 34] = 1.0
    turned = affnist.warp_images(dot, np.array([[90, 0, 1, 1, 0, 0]], "float32"))[0, :, :, 0]
    row, col = np.unravel_index(np.argmax(turned), turned.shape)
    assert row < 10 and 15 <= col <= 24


def test_regen_is_deterministic_in_range_and_keeps_digits_inside(tmp_path, mnist_digits):
    config = affnist.AffnistRegenConfig(name="tiny", copies_per_digit=3, num_digits=6, seed=5)
    datasets = []
    for run in ("a", "b"):
        builder = tfds.builder("affnist_regen", config=config, data_dir=str(tmp_path / run))
        builder.download_and_prepare()
        datasets.append(sorted(
            tfds.as_numpy(builder.as_dataset(split="test")),
            key=lambda e: e["transform"].tobytes()))
    assert len(datasets[0]) == 18
    for first, second in zip(*datasets):
        np.testing.assert_array_equal(first["image"], second["image"])
        np.testing.assert_array_equal(first["transform"], second["transform"])
    # Loadable by name once prepared, as any TFDS dataset.
    loaded = list(tfds.load("affnist_regen/tiny", split="test", data_dir=str(tmp_path / "a")))
    assert len(loaded) == 18
    canvases, labels = mnist_digits
    transforms_ = np.stack([e["transform"] for e in datasets[0]])
    assert np.abs(transforms_[:, 0]).max() <= 20 and np.abs(transforms_[:, 1]).max() <= 0.2
    assert transforms_[:, 2:4].min() >= 0.8 and transforms_[:, 2:4].max() <= 1.2
    assert len(np.unique(transforms_[:, 0])) == 18  # every copy its own transform
    for example in datasets[0]:
        # The stored parameters regenerate the stored image from its MNIST digit.
        digit = [i for i, label in enumerate(labels) if label == example["label"]]
        candidates = [affnist.warp_images(canvases[i][None, :, :, None], example["transform"][None])[0]
                      for i in digit]
        errors = [np.abs(c.astype(int) - example["image"].astype(int)).max() for c in candidates]
        assert min(errors) <= 1
        # On a canvas twice as large the same warp leaves (almost) no ink outside
        # the middle 40x40: the translation kept the digit inside the frame.
        big = np.pad(canvases[digit[int(np.argmin(errors))]], 20)[None, :, :, None]
        warped = affnist.warp_images(big.astype("float32"), example["transform"][None])[0, :, :, 0]
        outside = warped.sum() - warped[20:60, 20:60].sum()
        assert outside <= 0.02 * warped.sum()
