"""Tests for the smallNORB pipeline and its task (capskeras.data.smallnorb).

smallNORB cannot be downloaded here: the pipeline runs on TFDS's mock data
(`tfds.testing.mock_data`), random uint8 examples generated from the
builder's features (`image` [96, 96, 1], `label_category` in 0..4, ...),
with a metadata directory that declares N examples in each split, as a
prepared copy would.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from capskeras.data import builders
from capskeras.data import prepare
from capskeras.data import smallnorb
from capskeras.data.builders import DatasetNotFoundError
from capskeras.data.smallnorb import load_smallnorb
from capskeras.tasks import InputOptions
from capskeras.tasks import SmallNorbTask

N = 12
OFFSETS = smallnorb.RESIZED_SIZE - smallnorb.CROP_SIZE + 1  # 17 crop positions per axis


@pytest.fixture(scope="module")
def metadata_dir(tmp_path_factory):
    """A TFDS directory holding smallnorb's metadata with N examples per split."""
    root = tmp_path_factory.mktemp("smallnorb_metadata")
    builder = tfds.builder(smallnorb.NAME, data_dir=str(root))
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=split, shard_lengths=[N], num_bytes=0)
        for split in smallnorb.SPLITS
    ]))
    os.makedirs(builder.data_dir)
    builder.info.write_to_directory(builder.data_dir)
    return str(root)


@pytest.fixture
def mocked(metadata_dir):
    """TFDS serving N random smallnorb examples per split."""
    with tfds.testing.mock_data(num_examples=N, data_dir=metadata_dir):
        yield


@pytest.fixture(scope="module")
def raw(metadata_dir):
    """The mock splits' left-camera images, standardised ([N, 48, 48, 1]), and categories.

    TFDS's mock serves the same examples in every split and every pipeline.
    """
    with tfds.testing.mock_data(num_examples=N, data_dir=metadata_dir):
        builder = tfds.builder(smallnorb.NAME)
        data = tfds.as_numpy(builder.as_dataset(split="test", shuffle_files=False, batch_size=-1))
    assert data["image"].shape == (N, 96, 96, 1) and data["image"].dtype == np.uint8
    return _standardized(data["image"]), data["label_category"]


def _arrays(dataset):
    xs, ys = [], []
    for x, y in dataset:
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def _standardized(images):
    return np.stack([smallnorb.resize_and_standardize(image).numpy() for image in images])


def _match_window(crop, image48):
    """The (row, col) whose 32x32 window of `image48` `crop` is an affine map of,
    and that map's slope and offset: `crop ~ slope * window + offset`."""
    y = crop.ravel().astype("float64")
    best = None
    for row in range(OFFSETS):
        for col in range(OFFSETS):
            x = image48[row:row + 32, col:col + 32].ravel().astype("float64")
            corr = np.corrcoef(x, y)[0, 1]
            if best is None or corr > best[0]:
                best = (corr, row, col, x)
    corr, row, col, x = best
    slope, offset = np.polyfit(x, y, 1)
    return corr, (row, col), slope, offset, x.mean()


def test_resize_and_standardize_is_the_2x2_mean_then_zero_mean_unit_variance():
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 200, 96)[:, None] + rng.integers(0, 50, (96, 96))
    image = ramp.astype("uint8")[..., None]
    out = smallnorb.resize_and_standardize(image).numpy()
    assert out.shape == (48, 48, 1) and out.dtype == np.float32
    assert abs(out.mean()) < 1e-5
    assert out.std() == pytest.approx(1.0, abs=1e-4)
    blocks = image[..., 0].astype("float64").reshape(48, 2, 48, 2).mean(axis=(1, 3))
    expected = (blocks - blocks.mean()) / blocks.std()
    np.testing.assert_allclose(out[..., 0], expected, atol=1e-4)


def test_resize_and_standardize_of_a_flat_image_is_finite_zeros():
    out = smallnorb.resize_and_standardize(np.full((96, 96, 1), 77, "uint8")).numpy()
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out, np.zeros((48, 48, 1), "float32"))


def test_center_crop_is_rows_and_columns_8_to_39():
    image = np.arange(48 * 48, dtype="float32").reshape(48, 48, 1)
    np.testing.assert_array_equal(smallnorb.center_crop(tf.constant(image)).numpy(),
                                  image[8:40, 8:40])
    with pytest.raises(ValueError, match="crop size 64"):
        smallnorb.center_crop(tf.constant(image), size=64)


def test_random_crop_and_jitter_is_an_affine_map_of_a_window_within_the_ranges():
    image = np.random.default_rng(1).standard_normal((48, 48, 1)).astype("float32")
    positions = set()
    for index in range(6):
        seeds = tf.constant([[index, 1], [index, 2], [index, 3]], tf.int64)
        out = smallnorb.random_crop_and_jitter(tf.constant(image), seeds, brightness_delta=0.3,
                                               contrast_range=(0.5, 1.5)).numpy()
        assert out.shape == (32, 32, 1)
        again = smallnorb.random_crop_and_jitter(tf.constant(image), seeds, brightness_delta=0.3,
                                                 contrast_range=(0.5, 1.5)).numpy()
        np.testing.assert_array_equal(out, again)
        corr, position, slope, offset, window_mean = _match_window(out, image)
        assert corr > 0.99999
        assert 0.5 <= slope <= 1.5
        # crop = slope * window + (1 - slope) * mean(window) + brightness.
        brightness = offset - (1.0 - slope) * window_mean
        assert abs(brightness) <= 0.3 + 1e-4
        positions.add(position)
    assert len(positions) > 1


def test_shapes_dtypes_and_labels(mocked, raw):
    for split in smallnorb.SPLITS:
        images, labels = _arrays(load_smallnorb(split, batch_size=5))
        assert images.shape == (N, 32, 32, 1)
        assert images.dtype == np.float32
        assert labels.dtype == np.int32
        assert set(labels.tolist()) <= set(range(smallnorb.NUM_CLASSES))
        # Unshuffled, the labels are the split's categories in order.
        np.testing.assert_array_equal(labels, raw[1])
        assert np.all(np.isfinite(images))


def test_test_split_is_the_deterministic_centre_crop(mocked, raw):
    dataset = load_smallnorb("test", batch_size=5)
    first, _ = _arrays(dataset)
    second, _ = _arrays(dataset)
    np.testing.assert_array_equal(first, second)
    expected = raw[0][:, 8:40, 8:40]
    np.testing.assert_allclose(first, expected, atol=1e-5)


def test_training_crops_are_jittered_windows_that_move_between_positions_and_epochs(mocked, raw):
    dataset = load_smallnorb("train", batch_size=N, seed=3)
    first, _ = _arrays(dataset)
    second, _ = _arrays(dataset)
    assert not np.array_equal(first, second)
    standardized = raw[0]
    positions = []
    for crops in (first, second):
        for crop, image48 in zip(crops, standardized):
            corr, position, slope, _, _ = _match_window(crop, image48)
            assert corr > 0.9999
            assert 0.5 - 1e-3 <= slope <= 1.5 + 1e-3
            positions.append(position)
    assert len(set(positions[:N])) > 1  # positions differ within an epoch
    assert positions[:N] != positions[N:]  # and between epochs
    # Jitter on: the crops are not plain windows of the standardised image.
    assert not np.allclose(first[0], standardized[0][positions[0][0]:positions[0][0] + 32,
                                                     positions[0][1]:positions[0][1] + 32])


def test_without_jitter_training_crops_are_exact_windows(mocked, raw):
    images, _ = _arrays(load_smallnorb("train", batch_size=N, seed=0, brightness_delta=0.0,
                                       contrast_range=(1.0, 1.0)))
    for crop, image48 in zip(images, raw[0]):
        _, (row, col), _, _, _ = _match_window(crop, image48)
        np.testing.assert_allclose(crop, image48[row:row + 32, col:col + 32], atol=1e-5)


def test_same_seed_same_batches(mocked):
    def batches(seed):
        return _arrays(load_smallnorb("train", batch_size=4, shuffle=True, seed=seed))

    images_a, labels_a = batches(7)
    images_b, labels_b = batches(7)
    images_c, _ = batches(8)
    np.testing.assert_array_equal(images_a, images_b)
    np.testing.assert_array_equal(labels_a, labels_b)
    assert not np.array_equal(images_a, images_c)


def test_num_examples_limits_the_split(mocked):
    dataset = load_smallnorb("test", batch_size=2, num_examples=5)
    assert [x.shape[0] for x, _ in dataset] == [2, 2, 1]
    dropped = load_smallnorb("train", batch_size=2, num_examples=5, drop_remainder=True)
    assert [x.shape[0] for x, _ in dropped] == [2, 2]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="split='validation'"):
        load_smallnorb("validation", batch_size=4)
    with pytest.raises(ValueError, match="contrast_range"):
        load_smallnorb("train", batch_size=4, contrast_range=(1.5, 0.5))
    with pytest.raises(ValueError, match="brightness_delta"):
        load_smallnorb("train", batch_size=4, brightness_delta=-0.1)


def _assert_helpful_not_found(error, directory):
    message = str(error)
    assert "'smallnorb'" in message
    assert str(directory) in message
    assert "python -m capskeras.data.prepare smallnorb --data_dir=" in message
    assert "internet" in message


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_smallnorb("train", batch_size=4, data_dir=str(tmp_path), download=False)
    _assert_helpful_not_found(info.value, tmp_path)
    assert "download=False" in str(info.value)
    task = SmallNorbTask()
    with pytest.raises(DatasetNotFoundError):
        task.check_data(InputOptions(batch_size=4, data_dir=str(tmp_path), download=False))


def test_unreachable_download_host_is_a_clear_error(tmp_path, monkeypatch):
    probed = []

    def unreachable(builder, timeout=5.0, url=None):
        probed.append(url)
        return False

    monkeypatch.setattr(builders, "_download_host_reachable", unreachable)
    with pytest.raises(DatasetNotFoundError) as info:
        load_smallnorb("test", batch_size=4, data_dir=str(tmp_path), download=True)
    assert probed == [smallnorb.URL]
    _assert_helpful_not_found(info.value, tmp_path)
    assert "cannot be reached" in str(info.value)


def test_task_shapes_sizes_and_pipelines(mocked, raw):
    task = SmallNorbTask()
    assert task.image_shape() == (32, 32, 1)
    options = InputOptions(batch_size=4, seed=2)
    task.check_data(options)
    assert task.num_examples("train", options) == N
    assert task.num_examples("test", InputOptions(batch_size=4, num_examples=5)) == 5
    assert task.num_examples("test", InputOptions(batch_size=4, num_examples=10 * N)) == N
    test_images, test_labels = _arrays(task.images("test", options, shuffle=False))
    np.testing.assert_allclose(test_images, raw[0][:, 8:40, 8:40], atol=1e-5)
    np.testing.assert_array_equal(test_labels, raw[1])
    train = task.images("train", options, shuffle=True)
    train_images, train_labels = _arrays(train)
    assert train_images.shape == (N, 32, 32, 1)
    np.testing.assert_array_equal(np.sort(train_labels), np.sort(raw[1]))
    assert not np.array_equal(train_images, _arrays(train)[0])


def test_task_settings_reach_the_pipeline(mocked, raw):
    settings = SmallNorbTask.Settings(brightness_delta=0.0, contrast_lower=1.0, contrast_upper=1.0)
    images, _ = _arrays(SmallNorbTask(settings).images("train", InputOptions(batch_size=N),
                                                       shuffle=False))
    for crop, image48 in zip(images, raw[0]):
        _, (row, col), _, _, _ = _match_window(crop, image48)
        np.testing.assert_allclose(crop, image48[row:row + 32, col:col + 32], atol=1e-5)
    with pytest.raises(ValueError, match="contrast_lower=2.0"):
        SmallNorbTask(SmallNorbTask.Settings(contrast_lower=2.0, contrast_upper=1.0))
    with pytest.raises(ValueError, match="brightness_delta=-1"):
        SmallNorbTask(SmallNorbTask.Settings(brightness_delta=-1.0))


def test_prepare_accepts_smallnorb(mocked, tmp_path):
    builder = prepare.prepare("smallnorb", data_dir=str(tmp_path))
    assert builder.name == "smallnorb"
    with pytest.raises(ValueError, match="smallnorb"):
        prepare.prepare("norb", data_dir=str(tmp_path))


def test_a_registered_subclass_trains_and_exports_through_the_trainer(mocked, tmp_path):
    import dataclasses

    import keras

    from capskeras import tasks
    from capskeras.models import ClassificationHead
    from capskeras.models import StudyModel
    from capskeras.settings import MODEL
    from capskeras.settings import at_least
    from capskeras.settings import setting
    from capskeras.training.flags import config_from_arguments
    from capskeras.training.train import train

    @tasks.register_task("tiny_norb")
    class TinyNorb(SmallNorbTask):
        @dataclasses.dataclass
        class Settings(SmallNorbTask.Settings):
            filters: int = setting(4, "Filters of the convolution.", check=at_least(1),
                                   resume=MODEL)

        def build_model(self, pretrained):
            features = keras.Sequential([
                keras.Input(self.image_shape()),
                keras.layers.Conv2D(self.settings.filters, 5, strides=2, activation="relu"),
                keras.layers.GlobalMaxPooling2D(),
            ])
            return StudyModel(features, ClassificationHead(hidden_units=(),
                                                           num_classes=smallnorb.NUM_CLASSES))

    try:
        config = config_from_arguments([
            "--model=tiny_norb", "--brightness_delta=0.25", "--batch_size=4", "--verbose=0",
            f"--model_dir={tmp_path / 'run'}", f"--export_dir={tmp_path / 'export'}",
        ])
        assert config.settings == TinyNorb.Settings(brightness_delta=0.25)
        flagfile = tmp_path / "tiny_norb.cfg"
        flagfile.write_text(config.to_flagfile())
        assert config_from_arguments([f"--flagfile={flagfile}"]) == config
        results = train(config)
        assert 0.0 <= results["test"]["accuracy"] <= 1.0
        served = tf.saved_model.load(results["export"]).signatures["serving_default"]
        outputs = served(images=tf.zeros((2, 32, 32, 1)))
        assert outputs["probabilities"].shape == (2, smallnorb.NUM_CLASSES)
    finally:
        del tasks.TASKS["tiny_norb"]
