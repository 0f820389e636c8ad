"""Tests for the MNIST pipeline and its transforms (capskeras.data)."""

import os
import time

import numpy as np
import pytest

from capskeras.data import builders
from capskeras.data.builders import DatasetNotFoundError
from capskeras.data.mnist import load_mnist

# Small slices of the real (offline) MNIST test split keep these tests fast.
N = 24


def _arrays(dataset):
    """Concatenates a batched `(x, y)` dataset into two NumPy arrays."""
    xs, ys = [], []
    for x, y in dataset:
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def _shift(image, dy, dx):
    """`image` [H, W, C] shifted by (dy, dx) pixels, zero-filled."""
    height, width = image.shape[:2]
    pad = max(abs(dy), abs(dx))
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    return padded[pad - dy:pad - dy + height, pad - dx:pad - dx + width]


def _find_shift(original, shifted, max_pixels):
    for dy in range(-max_pixels, max_pixels + 1):
        for dx in range(-max_pixels, max_pixels + 1):
            if np.array_equal(_shift(original, dy, dx), shifted):
                return dy, dx
    return None


@pytest.fixture(scope="module")
def originals():
    """The first N test images and labels, untransformed."""
    return _arrays(load_mnist("test", batch_size=N, num_examples=N))


def test_images_and_labels_shapes_dtypes_ranges():
    images, labels = _arrays(load_mnist("test", batch_size=5, num_examples=12))
    assert images.shape == (12, 28, 28, 1)
    assert images.dtype == np.float32
    assert labels.shape == (12,)
    assert labels.dtype == np.int32
    assert images.min() >= 0.0 and images.max() <= 1.0
    # Real digits, not an all-zero or unscaled tensor.
    assert images.max() == pytest.approx(1.0)
    assert set(labels.tolist()) <= set(range(10))
    assert len(set(labels.tolist())) > 1


def test_batching_and_num_examples():
    dataset = load_mnist("test", batch_size=4, num_examples=10)
    assert [x.shape[0] for x, _ in dataset] == [4, 4, 2]
    dropped = load_mnist("test", batch_size=4, num_examples=10, drop_remainder=True)
    assert [x.shape[0] for x, _ in dropped] == [4, 4]


def test_train_split_differs_from_test_split(originals):
    train_images, _ = _arrays(load_mnist("train", batch_size=N, num_examples=N))
    assert train_images.shape == originals[0].shape
    assert not np.array_equal(train_images, originals[0])


def test_target_images_yields_image_pairs(originals):
    for x, y in load_mnist("test", batch_size=8, num_examples=8, target="images"):
        assert y.shape == x.shape == (8, 28, 28, 1)
        assert y.dtype == x.dtype
        np.testing.assert_array_equal(y.numpy(), x.numpy())
    np.testing.assert_array_equal(x.numpy(), originals[0][:8])


def test_shuffle_is_reproducible_from_seed(originals):
    def order(seed):
        return _arrays(
            load_mnist("test", batch_size=N, num_examples=N, shuffle=True, seed=seed)
        )

    images_a, labels_a = order(seed=1)
    images_b, labels_b = order(seed=1)
    images_c, _ = order(seed=2)
    np.testing.assert_array_equal(images_a, images_b)
    np.testing.assert_array_equal(labels_a, labels_b)
    assert not np.array_equal(images_a, images_c)
    assert not np.array_equal(images_a, originals[0])
    # A shuffle is a permutation of the same examples.
    np.testing.assert_array_equal(np.sort(labels_a), np.sort(originals[1]))
    np.testing.assert_allclose(images_a.sum(), originals[0].sum(), rtol=1e-6)


def test_translation_is_reproducible_from_seed():
    def shifted(seed):
        return _arrays(
            load_mnist("test", batch_size=N, num_examples=N, translate_pixels=2, seed=seed)
        )[0]

    np.testing.assert_array_equal(shifted(3), shifted(3))
    assert not np.array_equal(shifted(3), shifted(4))


def test_translation_is_redrawn_every_epoch():
    dataset = load_mnist("test", batch_size=N, num_examples=N, translate_pixels=2, seed=5)
    first, _ = _arrays(dataset)
    second, _ = _arrays(dataset)
    assert not np.array_equal(first, second)


def test_translate_pixels_shifts_each_image_by_at_most_two(originals):
    images, labels = _arrays(
        load_mnist("test", batch_size=N, num_examples=N, translate_pixels=2, seed=7)
    )
    np.testing.assert_array_equal(labels, originals[1])
    shifts = []
    for index, (original, image) in enumerate(zip(originals[0], images)):
        shift = _find_shift(original, image, max_pixels=2)
        assert shift is not None, f"image {index} is not a <=2 pixel shift of the original"
        shifts.append(shift)
    # The shift is random: over N images it is not always the same one.
    assert len(set(shifts)) > 1
    assert any(shift != (0, 0) for shift in shifts)


def test_pad_to_centres_the_digit(originals):
    images, labels = _arrays(load_mnist("test", batch_size=N, num_examples=N, pad_to=40))
    assert images.shape == (N, 40, 40, 1)
    assert images.dtype == np.float32
    np.testing.assert_array_equal(labels, originals[1])
    # (40 - 28) / 2 = 6 pixels of black on every side.
    np.testing.assert_array_equal(images[:, 6:34, 6:34], originals[0])
    border = images.copy()
    border[:, 6:34, 6:34] = 0.0
    assert not border.any()
    np.testing.assert_allclose(
        images.sum(axis=(1, 2, 3)), originals[0].sum(axis=(1, 2, 3)), rtol=1e-6
    )


def test_pad_then_translate_keeps_the_digit_on_the_canvas(originals):
    images, _ = _arrays(
        load_mnist("test", batch_size=N, num_examples=N, pad_to=40, translate_pixels=6, seed=0)
    )
    assert images.shape == (N, 40, 40, 1)
    # A <=6 pixel shift of a digit centred with a 6 pixel margin loses nothing.
    np.testing.assert_allclose(
        images.sum(axis=(1, 2, 3)), originals[0].sum(axis=(1, 2, 3)), rtol=1e-5
    )


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"split": "validation"}, "split='validation'"),
        ({"target": "logits"}, "target='logits'"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"batch_size": 2.5}, "batch_size=2.5"),
        ({"batch_size": True}, "batch_size=True"),
        ({"num_examples": 0}, "num_examples=0"),
        ({"translate_pixels": -1}, "translate_pixels=-1"),
        ({"translate_pixels": 1.5}, "translate_pixels=1.5"),
        ({"pad_to": 20}, "pad_to=20"),
        ({"pad_to": -40}, "pad_to=-40"),
    ],
    ids=lambda value: str(value) if isinstance(value, str) else None,
)
def test_bad_arguments_raise_value_error_naming_the_value(kwargs, named):
    arguments = {"split": "test", "batch_size": 4, "num_examples": 4}
    arguments.update(kwargs)
    split = arguments.pop("split")
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        load_mnist(split, **arguments)


def test_pad_to_zero_is_rejected_not_silently_ignored():
    # A canvas of side 0 cannot hold a 28x28 digit; it must not quietly
    # fall back to unpadded images.
    with pytest.raises(ValueError, match="pad_to=0"):
        load_mnist("test", batch_size=4, num_examples=4, pad_to=0)


def _assert_helpful_not_found(error, directory):
    message = str(error)
    assert "mnist" in message
    assert str(directory) in message
    assert "TFDS_DATA_DIR" in message
    assert "--data_dir" in message


def test_missing_dataset_without_download_raises(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist("test", batch_size=4, data_dir=str(tmp_path), download=False)
    _assert_helpful_not_found(info.value, tmp_path)
    assert isinstance(info.value, FileNotFoundError)
    # Nothing was downloaded or prepared in the directory searched.
    assert not any(
        name.endswith(".tfrecord") or "tfrecord-" in name
        for _, _, files in os.walk(tmp_path)
        for name in files
    )


def test_missing_dataset_found_through_env_var_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist("test", batch_size=4, download=False)
    _assert_helpful_not_found(info.value, tmp_path)


def test_unreachable_download_host_is_reported_without_a_download(tmp_path, monkeypatch):
    calls = []

    def unreachable(builder, timeout=5.0, url=None):
        calls.append(builder)
        return False

    monkeypatch.setattr(builders, "_download_host_reachable", unreachable)
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist("test", batch_size=4, data_dir=str(tmp_path), download=True)
    assert calls, "load_mnist did not check the download host"
    _assert_helpful_not_found(info.value, tmp_path)
    assert "reached" in str(info.value)


def test_download_host_reachable_is_false_fast_for_invalid_host():
    class InvalidHostBuilder:
        URL = "https://storage.capskeras-test.invalid/mnist/"

    start = time.monotonic()
    assert builders._download_host_reachable(InvalidHostBuilder(), timeout=2.0) is False
    assert time.monotonic() - start < 5.0


def test_prepared_builder_returns_the_prepared_dataset():
    builder = builders.prepared_builder("mnist", download=False)
    assert builder.is_prepared()
    assert builder.info.splits["test"].num_examples == 10000
