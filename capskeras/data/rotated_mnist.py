"""Rotated MNIST through TensorFlow Datasets: the MNIST-rot set, and a regenerated one.

Two TFDS builders, registered when `capskeras.data` is imported:

- `rotated_mnist`: the standard MNIST-rot set of Larochelle et al. (2007),
  used by Cohen and Welling (2016): 12,000 training digits (by convention
  the first 10,000 for training and the last 2,000 for validation:
  `split="train[:10000]"`, `"train[10000:]"`) and 50,000 test digits, each
  rotated by an angle uniform in [0, 2 pi). Read from the original `.amat`
  files, downloaded from `URL` or found in a manual directory (the zip, or
  the two `.amat` files, anywhere below it). The `.amat` pixels are floats
  in [0, 1] in row-major order; they are stored as uint8 (`round(255 v)`).
- `rotated_mnist_regen`: a regenerated stand-in for machines that cannot
  download MNIST-rot. It is NOT the MNIST-rot set: it draws 12,000
  training digits from MNIST's 60,000 training digits and 50,000 test
  digits from the other 58,000 real MNIST digits (TFDS `mnist`, train then
  test), so that a model trained on it never saw an MNIST test digit
  upright or rotated, and rotates each about its
  centre by an angle uniform in [0, 360) degrees, with bilinear sampling
  and black fill (`capskeras.data.transforms.rotate`). Digits, angles and
  images are a function of the config's `seed`; every example carries its
  `angle` and `source` (`"train/<i>"` or `"test/<i>"` in TFDS's MNIST).
  Smaller configs (`RotatedMnistRegenConfig(name=..., train_examples=...,
  test_examples=..., seed=...)`) build in seconds for tests.

    import capskeras.data
    import tensorflow_datasets as tfds
    ds = tfds.load("rotated_mnist_regen", split="train")

`load_rotated_mnist` gives batched `(images, labels)` pipelines in the
style of `load_mnist`.
"""

import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from capskeras.checks import check_non_negative_int
from capskeras.checks import check_positive_int
from capskeras.data import builders
from capskeras.data import pipeline
from capskeras.data import transforms

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
DATASETS = ("rotated_mnist_regen", "rotated_mnist")
TRAIN_FILE = "mnist_all_rotation_normalized_float_train_valid.amat"
TEST_FILE = "mnist_all_rotation_normalized_float_test.amat"
MNIST_SIZES = (("train", 60000), ("test", 10000))
SPLITS = ("train", "test")
REGEN_VERSION = "1.1.0"

_CITATION = """\
@inproceedings{larochelle2007empirical,
  title={An empirical evaluation of deep architectures on problems with many factors of variation},
  author={Larochelle, Hugo and Erhan, Dumitru and Courville, Aaron and Bergstra, James and Bengio, Yoshua},
  booktitle={ICML},
  year={2007}
}"""


def parse_amat(path):
    """Reads an `.amat` file: one digit a line, 784 floats in [0, 1] then the label.

    Returns:
        `(images, labels)`: uint8 `[N, 28, 28, 1]` (row-major pixels,
        `round(255 v)`) and int64 `[N]`.
    """
    rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
    if rows.shape[1] != 785:
        raise ValueError(
            f"Received: {path} with {rows.shape[1]} columns; expected 785 (784 pixels, a label)"
        )
    images = np.round(np.clip(rows[:, :784], 0.0, 1.0) * 255.0).astype(np.uint8)
    return images.reshape(-1, 28, 28, 1), rows[:, 784].astype(np.int64)


def _find(directory, filename):
    for root, _, files in os.walk(directory):
        if filename in files:
            return os.path.join(root, filename)
    return None


class RotatedMnist(tfds.core.GeneratorBasedBuilder):
    """MNIST-rot (Larochelle et al. 2007): 12k training and 50k test rotated digits."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "The .amat files of mnist_rotation_new.zip."}
    URL = "http://www.iro.umontreal.ca/~lisa/icml2007data/mnist_rotation_new.zip"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Download {URL} and place the zip, or the extracted {TRAIN_FILE} and "
        f"{TEST_FILE}, in the manual directory (`<data_dir>/downloads/manual/` or "
        "`DownloadConfig(manual_dir=...)`)."
    )

    def _info(self):
        return self.dataset_info_from_configs(
            description=(
                "MNIST-rot: MNIST digits rotated by angles uniform in [0, 2 pi), 12,000 "
                "for training (10,000 + 2,000 validation) and 50,000 for testing."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=IMAGE_SHAPE),
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                }
            ),
            supervised_keys=("image", "label"),
            # The files' order: "train[:10000]" is MNIST-rot's training part.
            disable_shuffling=True,
            homepage="https://web.archive.org/web/2018/http://www.iro.umontreal.ca/~lisa/twiki/bin/view.cgi/Public/MnistVariations",
            citation=_CITATION,
        )

    def _manual_files(self, dl_manager):
        try:
            directory = os.fspath(dl_manager.manual_dir)
        except AssertionError:
            return None
        found = [_find(directory, TRAIN_FILE), _find(directory, TEST_FILE)]
        if all(found):
            return found
        for name in sorted(os.listdir(directory)):
            if name.endswith(".zip"):
                extracted = os.fspath(dl_manager.extract(os.path.join(directory, name)))
                found = [_find(extracted, TRAIN_FILE), _find(extracted, TEST_FILE)]
                if all(found):
                    return found
        return None

    def _split_generators(self, dl_manager):
        files = self._manual_files(dl_manager)
        if files is None:
            extracted = os.fspath(dl_manager.download_and_extract(self.URL))
            files = [_find(extracted, TRAIN_FILE), _find(extracted, TEST_FILE)]
            if not all(files):
                raise FileNotFoundError(
                    f"{self.URL} did not hold {TRAIN_FILE} and {TEST_FILE}"
                )
        return {"train": self._generate_examples(files[0]),
                "test": self._generate_examples(files[1])}

    def _generate_examples(self, path):
        images, labels = parse_amat(path)
        for index, (image, label) in enumerate(zip(images, labels)):
            yield index, {"image": image, "label": int(label)}


class RotatedMnistRegenConfig(tfds.core.BuilderConfig):
    """Which digits and angles the regenerated set draws.

    Args:
        train_examples: int >= 1, training digits (12,000 as MNIST-rot),
            at most MNIST's 60,000 training digits.
        test_examples: int >= 1, test digits (50,000 as MNIST-rot);
            `train_examples + test_examples <= 70,000`.
        seed: int, seeds the choice of digits and their angles.
        **kwargs: `name`, `description` of the config.
    """

    def __init__(self, *, train_examples=12000, test_examples=50000, seed=0, **kwargs):
        check_positive_int("train_examples", train_examples)
        check_positive_int("test_examples", test_examples)
        total = sum(size for _, size in MNIST_SIZES)
        if train_examples > MNIST_SIZES[0][1]:
            raise ValueError(
                f"Received: train_examples={train_examples}; expected at most "
                f"{MNIST_SIZES[0][1]}, MNIST's training digits")
        if train_examples + test_examples > total:
            raise ValueError(
                f"Received: train_examples={train_examples}, test_examples={test_examples}; "
                f"expected at most {total} digits together (all of MNIST)"
            )
        check_non_negative_int("seed", seed)
        super().__init__(version=REGEN_VERSION, **kwargs)
        self.train_examples = train_examples
        self.test_examples = test_examples
        self.seed = seed


class RotatedMnistRegen(tfds.core.GeneratorBasedBuilder):
    """Rotated MNIST regenerated from real MNIST (not the MNIST-rot files)."""

    VERSION = tfds.core.Version(REGEN_VERSION)
    RELEASE_NOTES = {
        "1.0.0": "Bilinear rotations of TFDS mnist 3.0.1 digits.",
        REGEN_VERSION: "Training digits drawn from MNIST's training split only.",
    }
    BUILDER_CONFIGS = [
        RotatedMnistRegenConfig(
            name="seed0",
            description="12,000 training and 50,000 test digits, seed 0, as MNIST-rot's sizes.",
        )
    ]
    ROTATION_BATCH = 5000

    def _info(self):
        return self.dataset_info_from_configs(
            description=(
                "Rotated MNIST REGENERATED from the real MNIST digits with angles uniform in "
                "[0, 360) degrees, deterministic by seed; a stand-in for MNIST-rot "
                "(Larochelle et al. 2007), not the same images."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=IMAGE_SHAPE),
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                    "angle": tfds.features.Scalar(
                        dtype=np.float32, doc="counter-clockwise rotation in degrees"),
                    "source": tfds.features.Text(doc="the MNIST digit: '<split>/<index>'"),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
        )

    def _mnist_builder(self):
        """MNIST from this builder's data_dir, else `$TFDS_DATA_DIR`, else downloaded."""
        for directory in (os.fspath(self.data_dir_root), builders.resolve_data_dir(None)):
            if directory and tfds.builder("mnist", data_dir=directory).is_prepared():
                return tfds.builder("mnist", data_dir=directory)
        return builders.prepared_builder("mnist", data_dir=os.fspath(self.data_dir_root))

    def _split_generators(self, dl_manager):
        del dl_manager  # Generated from TFDS MNIST, nothing to download.
        config = self.builder_config
        source = self._mnist_builder()
        encoded, labels, sources = [], [], []
        for split, size in MNIST_SIZES:
            # PNG bytes: only the chosen digits are decoded, so small configs build fast.
            data = source.as_dataset(split=split, shuffle_files=False,
                                     decoders={"image": tfds.decode.SkipDecoding()})
            data = next(iter(tfds.as_numpy(data.batch(size))))
            encoded.append(data["image"])
            labels.append(data["label"])
            sources += [f"{split}/{index}" for index in range(size)]
        encoded = np.concatenate(encoded)
        labels = np.concatenate(labels)
        chosen, angles = regenerated_draw(config.seed, config.train_examples,
                                          config.test_examples)
        return {
            split: self._generate_examples(encoded[chosen[split]], labels[chosen[split]],
                                           [sources[i] for i in chosen[split]], angles[split])
            for split in ("train", "test")
        }

    def _generate_examples(self, encoded, labels, sources, angles):
        for start in range(0, len(encoded), self.ROTATION_BATCH):
            stop = start + self.ROTATION_BATCH
            images = np.stack([tf.io.decode_png(png, channels=1).numpy()
                               for png in encoded[start:stop]])
            rotated = rotate_digits(images, angles[start:stop])
            for offset, image in enumerate(rotated):
                index = start + offset
                yield index, {"image": image, "label": int(labels[index]),
                              "angle": angles[index], "source": sources[index]}


def regenerated_draw(seed, train_examples, test_examples):
    """Which MNIST digits (indices into train then test) each split takes, and their angles.

    Training digits come from MNIST's training split alone; test digits
    from the digits left, of either split.

    Returns:
        `(chosen, angles)`: dicts by split of int indices into the 70,000
        digits (disjoint between splits) and float32 angles in [0, 360).
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(sum(size for _, size in MNIST_SIZES))
    from_training = order < MNIST_SIZES[0][1]
    train = order[from_training][:train_examples]
    rest = order[~np.isin(order, train)]
    chosen = {"train": train, "test": rest[:test_examples]}
    angles = {split: rng.uniform(0.0, 360.0, len(chosen[split])).astype(np.float32)
              for split in ("train", "test")}
    return chosen, angles


def rotate_digits(images, degrees):
    """uint8 digits `[N, 28, 28, 1]` rotated by `degrees` `[N]`, back as uint8 (rounded)."""
    rotated = transforms.rotate(tf.cast(images, tf.float32), tf.constant(degrees, tf.float32))
    return np.round(np.clip(rotated.numpy(), 0.0, 255.0)).astype(np.uint8)


def load_rotated_mnist(
    split,
    *,
    batch_size,
    dataset="rotated_mnist_regen",
    config=None,
    data_dir=None,
    download=True,
    manual_dir=None,
    num_examples=None,
    shuffle=False,
    seed=0,
    drop_remainder=False,
):
    """A batched rotated-MNIST pipeline of `(images, labels)`.

    Images are float32 `[28, 28, 1]` in [0, 1], labels int32.

    Args:
        split: `"train"` or `"test"`, or a TFDS slice of one
            (`"train[:10000]"`, `"train[10000:]"` for MNIST-rot's validation).
        batch_size: int >= 1.
        dataset: `"rotated_mnist_regen"` (regenerated from MNIST, prepared
            on first use) or `"rotated_mnist"` (the MNIST-rot files).
        config: a `RotatedMnistRegenConfig` or config name; defaults to the
            dataset's default (`seed0` for the regenerated set).
        data_dir: a TFDS directory; defaults to `$TFDS_DATA_DIR`.
        download: allow preparing the dataset when it is missing.
        manual_dir: a directory holding MNIST-rot's zip or `.amat` files.
        num_examples: use only the first N examples of the split.
        shuffle: shuffle every epoch, reproducibly from `seed`.
        seed: int, seeds the shuffle.
        drop_remainder: drop the last partial batch.
    """
    if dataset not in DATASETS:
        raise ValueError(f"Received: dataset={dataset!r}; expected one of {DATASETS}")
    pipeline.check_split(split, SPLITS)
    pipeline.check_batching(batch_size, num_examples)
    data_dir = builders.resolve_data_dir(data_dir)
    kwargs = {} if config is None else {"config": config}
    builder = tfds.builder(dataset, data_dir=data_dir, **kwargs)
    if not builder.is_prepared():
        default_manual = os.path.join(os.fspath(builder.data_dir_root), "downloads", "manual")
        if manual_dir is None and dataset == "rotated_mnist" and os.path.isdir(default_manual) \
                and os.listdir(default_manual):
            manual_dir = default_manual
        if manual_dir is not None:
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
        else:
            builder = builders.prepared_builder(dataset, data_dir=data_dir,
                                                download=download, **kwargs)
    return pipeline.batched(
        builder, split, batch_size=batch_size,
        read=pipeline.Step(pipeline.image_and_label, parallel=False),
        steps=[pipeline.Step(lambda image, label: (pipeline.unit_float(image), label))],
        num_examples=num_examples, shuffle=shuffle, seed=seed, drop_remainder=drop_remainder)
