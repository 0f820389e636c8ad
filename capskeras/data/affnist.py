"""affNIST through TensorFlow Datasets: the real set, and a regenerated one.

Two TFDS builders register when `capskeras.data` is imported:

- `affnist`: the real affNIST of Tieleman (40x40 images, 32 random affine
  versions of every MNIST digit): `train` (1,600,000, from the first 50,000
  MNIST training digits), `validation` (320,000, from the other 10,000) and
  `test` (320,000, from the 10,000 MNIST test digits). It reads the
  official zips `training_batches.zip`, `validation_batches.zip` and
  `test_batches.zip` from the affNIST page, or from a `manual_dir` holding
  them (or their extracted `*_batches/` folders).
- `affnist_regen`: REGENERATED, not the original: the MNIST test digits
  centred on a 40x40 canvas and warped by random affNIST-style affine
  transforms, 32 per digit by default, deterministic from a seed, for
  machines that cannot reach the affNIST files. Its only split is `test`.

Both carry `image` (uint8 `[40, 40, 1]`), `label` and `transform`, six
float32 numbers in `TRANSFORM_FIELDS` order: the real set's
`human_readable_transform`, as the affNIST page describes it (rotation in
degrees, shear, vertical and horizontal scale, vertical and horizontal
translation in pixels), and the regenerator's own parameters in the same
order.

    import capskeras.data  # registers the builders
    import tensorflow_datasets as tfds
    tfds.builder("affnist_regen").download_and_prepare()   # ~320k images
    dataset = tfds.load("affnist_regen", split="test")

or, from the shell, `python -m capskeras.data.prepare affnist_regen
--data_dir=<dir>` (`affnist_regen/small`: 1,000 digits x 4, for quick
runs) and, for the real set, `python -m capskeras.data.prepare affnist
--data_dir=<dir> --manual_dir=<dir with the zips>`. `tfds build
--imports=capskeras.data affnist_regen` does the same where the `tfds`
command runs (TFDS 4.9's command line imports apache-beam at start).

The regenerator's ranges (`AffnistRegenConfig`) are the affNIST page's:
rotation within +-20 degrees, shear within +-0.2, each axis scaled by 0.8 to
1.2, then a uniform translation that keeps the digit's ink inside the
frame. Where the real files are at hand, `transform_statistics` measures the
real `human_readable_transform` and `fit_regen_ranges` turns the measured
extremes into an `AffnistRegenConfig`'s ranges:

    stats = transform_statistics(real_transforms("affnist", "test"))
    config = AffnistRegenConfig(name="fitted", **fit_regen_ranges(stats))

Pixel order of the real files: each column of `affNISTdata.image` (1600 x
N, uint8) holds one 40x40 image row after row (index `row * 40 + col`),
which in MATLAB is `reshape(I.', 1600, 1)`, not `I(:)`. Public loaders that
display the digits upright (the Kaggle repackaging, several PyTorch and
TFDS loaders) all read it as `image.T.reshape(N, 40, 40)`; reading the
column in MATLAB (Fortran) order instead transposes every digit.
`decode_affnist_images` is the one place this is decided.

Reference:
    T. Tieleman, "affNIST", http://www.cs.toronto.edu/~tijmen/affNIST/ ;
    Sabour, Frosst and Hinton, "Dynamic Routing Between Capsules", NeurIPS
    2017, section 5.2.
"""

import dataclasses
import math
import os

import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from capskeras.checks import check_positive_int
from capskeras.data import builders
from capskeras.data import pipeline

IMAGE_SIZE = 40
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 1)
NUM_CLASSES = 10
COPIES_PER_DIGIT = 32
TRANSFORM_FIELDS = (
    "rotation_degrees", "shear", "scale_vertical", "scale_horizontal",
    "translate_vertical", "translate_horizontal",
)
NAMES = ("affnist", "affnist_regen")
URL = "https://www.cs.toronto.edu/~tijmen/affNIST/"
_ZIP_URL = URL + "32x/transformed/"
_SPLIT_FOLDERS = {
    "train": "training_batches",
    "validation": "validation_batches",
    "test": "test_batches",
}
_CITATION = """@misc{tieleman2013affnist,
  author = {Tieleman, Tijmen},
  title = {affNIST},
  howpublished = {\\url{http://www.cs.toronto.edu/~tijmen/affNIST/}},
  year = {2013}
}"""
HOW_TO_PREPARE = {
    "affnist": (
        "Prepare it with `python -m capskeras.data.prepare affnist "
        "--data_dir=<dir> --manual_dir=<dir holding training_batches.zip, "
        f"validation_batches.zip and test_batches.zip from {_ZIP_URL}>` (or "
        "`tfds build --imports=capskeras.data affnist` with the same flags), or use "
        "the regenerated stand-in affnist_regen."
    ),
    "affnist_regen": (
        "Generate it from the prepared MNIST with `python -m capskeras.data.prepare "
        "affnist_regen --data_dir=<dir>` (or `tfds build --imports=capskeras.data "
        "affnist_regen --data_dir=<dir>`): 320,000 images; `affnist_regen/small` "
        "for 4,000."
    ),
}


def decode_affnist_images(columns):
    """Images from an affNIST `image` matrix: `[1600, N]` -> `[N, 40, 40, 1]` uint8.

    Each column holds one image row after row (see the module docstring).
    """
    columns = np.asarray(columns)
    if columns.ndim != 2 or columns.shape[0] != IMAGE_SIZE * IMAGE_SIZE:
        raise ValueError(
            f"Received: affNIST image matrix of shape {columns.shape}; expected "
            f"[{IMAGE_SIZE * IMAGE_SIZE}, N]"
        )
    return np.ascontiguousarray(columns.T).reshape(-1, IMAGE_SIZE, IMAGE_SIZE, 1).astype("uint8")


def read_affnist_mat(path_or_file):
    """Images, labels and transforms of one affNIST `.mat` batch file.

    Returns:
        `(images [N, 40, 40, 1] uint8, labels [N] int64, transforms [N, 6]
        float32)`.
    """
    import scipy.io  # Imported here: only the real builder needs it.

    data = scipy.io.loadmat(path_or_file)
    if "affNISTdata" not in data:
        raise ValueError(
            f"Received: a .mat file with variables {sorted(k for k in data if not k.startswith('__'))}; "
            "expected the affNIST struct 'affNISTdata'"
        )
    record = data["affNISTdata"][0, 0]
    images = decode_affnist_images(record["image"])
    labels = np.asarray(record["label_int"]).reshape(-1).astype("int64")
    transforms = np.asarray(record["human_readable_transform"], "float32")
    if transforms.shape != (len(TRANSFORM_FIELDS), len(images)):
        raise ValueError(
            f"Received: human_readable_transform of shape {transforms.shape} for "
            f"{len(images)} images; expected [{len(TRANSFORM_FIELDS)}, {len(images)}]"
        )
    if labels.shape != (len(images),):
        raise ValueError(
            f"Received: {labels.size} labels for {len(images)} images; expected one each"
        )
    return images, labels, transforms.T


def _dataset_info(builder, description):
    """The DatasetInfo both builders share: image, label, transform."""
    return builder.dataset_info_from_configs(
        description=description,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=IMAGE_SHAPE),
            "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            "transform": tfds.features.Tensor(shape=(len(TRANSFORM_FIELDS),), dtype=np.float32),
        }),
        supervised_keys=("image", "label"),
        homepage=URL,
        citation=_CITATION,
    )


class Affnist(tfds.core.GeneratorBasedBuilder):
    """The real affNIST (Tieleman): 40x40 affine-transformed MNIST digits.

    Splits `train` (1,600,000), `validation` (320,000) and `test`
    (320,000); features `image`, `label` and `transform` (the
    `human_readable_transform`, in `TRANSFORM_FIELDS` order).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "The 32x transformed affNIST, with its transforms."}
    URL = _ZIP_URL
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Optional: place training_batches.zip, validation_batches.zip and "
        f"test_batches.zip from {_ZIP_URL} (or their extracted *_batches/ folders) "
        "in the manual_dir; otherwise they are downloaded."
    )

    def _info(self):
        return _dataset_info(self, "affNIST: MNIST digits on a 40x40 canvas under 32 random "
                                   "affine transforms each (Tieleman).")

    def _split_generators(self, dl_manager):
        folders = _manual_folders(dl_manager)
        if folders is None:
            extracted = dl_manager.download_and_extract(
                {split: _ZIP_URL + folder + ".zip" for split, folder in _SPLIT_FOLDERS.items()}
            )
            folders = {
                split: _batch_folder(extracted[split], folder)
                for split, folder in _SPLIT_FOLDERS.items()
            }
        return {split: self._generate_examples(folder) for split, folder in folders.items()}

    def _generate_examples(self, folder):
        folder = os.fspath(folder)
        files = sorted(
            (name for name in tf.io.gfile.listdir(folder) if name.endswith(".mat")),
            key=lambda name: (len(name), name),
        )
        if not files:
            raise FileNotFoundError(f"Received: affNIST folder {folder!r} without .mat files")
        for name in files:
            with tf.io.gfile.GFile(os.path.join(folder, name), "rb") as file:
                images, labels, transforms = read_affnist_mat(file)
            stem = os.path.splitext(name)[0]
            for index in range(len(images)):
                yield f"{stem}_{index}", {
                    "image": images[index],
                    "label": int(labels[index]),
                    "transform": transforms[index],
                }


def _manual_folders(dl_manager):
    """`{split: folder of .mat files}` from the manual_dir, or None without one."""
    try:
        manual_dir = dl_manager.manual_dir
    except (AssertionError, ValueError, FileNotFoundError):
        return None
    if manual_dir is None or not tf.io.gfile.isdir(os.fspath(manual_dir)):
        return None
    manual_dir = os.fspath(manual_dir)
    folders = {}
    for split, folder in _SPLIT_FOLDERS.items():
        extracted = os.path.join(manual_dir, folder)
        archive = os.path.join(manual_dir, folder + ".zip")
        if tf.io.gfile.isdir(extracted):
            folders[split] = _batch_folder(extracted, folder)
        elif tf.io.gfile.exists(archive):
            folders[split] = _batch_folder(dl_manager.extract(archive), folder)
        else:
            return None if not folders else _missing(manual_dir, folder)
    return folders


def _missing(manual_dir, folder):
    raise FileNotFoundError(
        f"Received: manual_dir {manual_dir!r} without {folder}.zip or {folder}/; expected "
        f"all of {', '.join(f + '.zip' for f in _SPLIT_FOLDERS.values())} from {_ZIP_URL}"
    )


def _batch_folder(path, folder):
    """The folder of .mat files: `path` itself or its `folder` child (as the zips hold it)."""
    path = os.fspath(path)
    nested = os.path.join(path, folder)
    return nested if tf.io.gfile.isdir(nested) else path


@dataclasses.dataclass(eq=False)
class AffnistRegenConfig(tfds.core.BuilderConfig):
    """How `affnist_regen` warps the MNIST test digits.

    Attributes:
        copies_per_digit: transformed versions of every digit (32 as in
            affNIST).
        num_digits: use the first N MNIST test digits; 0 for all 10,000.
        seed: seeds the transforms; the same config always gives the same
            images.
        max_rotation_degrees: rotations are uniform in +-this.
        max_shear: horizontal shear factors are uniform in +-this.
        min_scale, max_scale: each axis is scaled by a uniform factor in
            this range, independently.
    """

    copies_per_digit: int = COPIES_PER_DIGIT
    num_digits: int = 0
    seed: int = 0
    max_rotation_degrees: float = 20.0
    max_shear: float = 0.2
    min_scale: float = 0.8
    max_scale: float = 1.2

    def __post_init__(self):
        check_positive_int("copies_per_digit", self.copies_per_digit)
        if not isinstance(self.num_digits, int) or self.num_digits < 0:
            raise ValueError(
                f"Received: num_digits={self.num_digits!r}; expected an int >= 0 (0 for all)"
            )
        if not 0 < self.min_scale <= self.max_scale:
            raise ValueError(
                f"Received: min_scale={self.min_scale}, max_scale={self.max_scale}; "
                "expected 0 < min_scale <= max_scale"
            )
        if self.max_rotation_degrees < 0 or self.max_shear < 0:
            raise ValueError(
                f"Received: max_rotation_degrees={self.max_rotation_degrees}, "
                f"max_shear={self.max_shear}; expected both >= 0"
            )


class AffnistRegen(tfds.core.GeneratorBasedBuilder):
    """REGENERATED affNIST-style test set: not Tieleman's images.

    The MNIST test digits centred on 40x40 and warped by
    `random_affnist_transforms` (rotation +-20 degrees, shear +-0.2, scale
    0.8-1.2 per axis, then a translation keeping the ink in the frame).
    One split, `test`; features `image`, `label`, `transform`.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Regenerated from MNIST test digits; not the original affNIST."}
    BUILDER_CONFIGS = [
        AffnistRegenConfig(
            name="default",
            description="REGENERATED (not the original affNIST): all 10,000 MNIST test "
                        "digits x 32 affNIST-style transforms, seed 0.",
        ),
        AffnistRegenConfig(
            name="small", copies_per_digit=4, num_digits=1000,
            description="REGENERATED (not the original affNIST): the first 1,000 MNIST "
                        "test digits x 4 transforms, seed 0, for quick runs.",
        ),
    ]
    DEFAULT_CONFIG_NAME = "default"

    def _info(self):
        return _dataset_info(self, "REGENERATED affNIST-style data, NOT the original affNIST: "
                                   "MNIST test digits centred on 40x40 and warped by random "
                                   "affine transforms in affNIST's ranges (capskeras).")

    def _split_generators(self, dl_manager):
        del dl_manager  # Generated from MNIST, nothing to download.
        return {"test": self._generate_examples()}

    def _generate_examples(self):
        config = self.builder_config
        images, labels = _mnist_test_digits(self.data_dir_root, config.num_digits)
        canvases = np.pad(images, ((0, 0), (6, 6), (6, 6), (0, 0)))
        rng = np.random.default_rng(config.seed)
        chunk = 256
        for start in range(0, len(canvases), chunk):
            block = canvases[start:start + chunk]
            sources = np.repeat(block, config.copies_per_digit, axis=0)
            params = random_affnist_transforms(sources, rng, config)
            warped = warp_images(sources, params)
            for offset in range(len(sources)):
                digit = start + offset // config.copies_per_digit
                copy = offset % config.copies_per_digit
                yield f"{digit:05d}_{copy:02d}", {
                    "image": warped[offset],
                    "label": int(labels[digit]),
                    "transform": params[offset],
                }


def _mnist_test_digits(data_dir_root, num_digits):
    """The first `num_digits` MNIST test images (uint8 `[N, 28, 28, 1]`) and labels."""
    # MNIST beside the new dataset if it is there, else $TFDS_DATA_DIR.
    root = os.fspath(data_dir_root) if data_dir_root else None
    source = root if root and tfds.builder("mnist", data_dir=root).is_prepared() else None
    builder = builders.prepared_builder("mnist", data_dir=source)
    split = f"test[:{num_digits}]" if num_digits else "test"
    data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
    return data["image"], data["label"]


def random_affnist_transforms(images, rng, config=None):
    """One random affNIST-style transform per image, as `TRANSFORM_FIELDS` rows.

    Rotation, shear and per-axis scale are drawn uniformly from `config`'s
    ranges; the translation is then drawn uniformly from those that keep
    every ink pixel (value > 0) of the transformed image inside the canvas
    (centred when none does).

    Args:
        images: `[N, H, W, 1]` canvases with the digits centred.
        rng: a `numpy.random.Generator`.
        config: an `AffnistRegenConfig`; its defaults when None.

    Returns:
        float32 `[N, 6]`.
    """
    config = config or AffnistRegenConfig(name="defaults")
    images = np.asarray(images)
    count, height, width = images.shape[:3]
    rotation = rng.uniform(-config.max_rotation_degrees, config.max_rotation_degrees, count)
    shear = rng.uniform(-config.max_shear, config.max_shear, count)
    scale_v = rng.uniform(config.min_scale, config.max_scale, count)
    scale_h = rng.uniform(config.min_scale, config.max_scale, count)
    uniform = rng.uniform(0.0, 1.0, (count, 2))
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    params = np.zeros((count, len(TRANSFORM_FIELDS)), "float32")
    for index in range(count):
        linear = linear_part(rotation[index], shear[index], scale_v[index], scale_h[index])
        rows, cols = np.nonzero(images[index, :, :, 0] > 0)
        if len(rows):
            points = np.stack([cols, rows], axis=1) - centre  # (x, y) about the centre
            moved = points @ linear.T + centre
            low, high = moved.min(axis=0), moved.max(axis=0)
        else:
            low, high = centre, centre
        # Shifts keeping [low, high] + shift inside [0, size - 1], per axis (x, y).
        lowest = -low
        highest = np.array([width - 1, height - 1]) - high
        shift = np.where(
            lowest <= highest, lowest + uniform[index] * (highest - lowest), (lowest + highest) / 2
        )
        params[index] = (
            rotation[index], shear[index], scale_v[index], scale_h[index], shift[1], shift[0]
        )
    return params


def linear_part(rotation_degrees, shear, scale_vertical, scale_horizontal):
    """The 2x2 map of image coordinates `(x right, y down)`: rotate . shear . scale.

    A positive rotation turns the digit counter-clockwise as displayed (as
    `capskeras.data.transforms.rotate` does); a positive shear moves the
    lower rows to the right (`x += shear * y`).
    """
    theta = math.radians(float(rotation_degrees))
    rotate = np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])
    shear_matrix = np.array([[1.0, float(shear)], [0.0, 1.0]])
    scale = np.diag([float(scale_horizontal), float(scale_vertical)])
    return rotate @ shear_matrix @ scale


def warp_images(images, params):
    """Applies `TRANSFORM_FIELDS` transforms about the canvas centre; bilinear, zero fill.

    Args:
        images: `[N, H, W, C]` uint8 or float images.
        params: `[N, 6]` as `random_affnist_transforms` returns.

    Returns:
        Images of `images`' dtype and shape (uint8 rounded).
    """
    images = np.asarray(images)
    params = np.asarray(params, "float64")
    height, width = images.shape[1:3]
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    rows = []
    for rotation, shear, scale_v, scale_h, shift_y, shift_x in params:
        inverse = np.linalg.inv(linear_part(rotation, shear, scale_v, scale_h))
        # Output point p samples input point inverse @ (p - centre - shift) + centre.
        offset = centre - inverse @ (centre + np.array([shift_x, shift_y]))
        rows.append([inverse[0, 0], inverse[0, 1], offset[0],
                     inverse[1, 0], inverse[1, 1], offset[1], 0.0, 0.0])
    warped = keras.ops.image.affine_transform(
        keras.ops.convert_to_tensor(images.astype("float32")),
        keras.ops.convert_to_tensor(np.asarray(rows, "float32")),
        interpolation="bilinear", fill_mode="constant", fill_value=0,
        data_format="channels_last",
    )
    warped = keras.ops.convert_to_numpy(warped)
    if images.dtype == np.uint8:
        return np.clip(np.round(warped), 0, 255).astype("uint8")
    return warped.astype(images.dtype)


def transform_statistics(transforms):
    """Per-field statistics of `[N, 6]` transforms (`TRANSFORM_FIELDS` order).

    Returns:
        `{field: {"min", "max", "mean", "std", "p01", "p99"}}` (floats).
    """
    transforms = np.asarray(transforms, "float64")
    if transforms.ndim != 2 or transforms.shape[1] != len(TRANSFORM_FIELDS) or not len(transforms):
        raise ValueError(
            f"Received: transforms of shape {transforms.shape}; expected [N >= 1, "
            f"{len(TRANSFORM_FIELDS)}]"
        )
    stats = {}
    for index, field in enumerate(TRANSFORM_FIELDS):
        column = transforms[:, index]
        stats[field] = {
            "min": float(column.min()), "max": float(column.max()),
            "mean": float(column.mean()), "std": float(column.std()),
            "p01": float(np.percentile(column, 1)), "p99": float(np.percentile(column, 99)),
        }
    return stats


def fit_regen_ranges(stats):
    """`AffnistRegenConfig` ranges that cover the measured transforms.

    Rotation and shear ranges are symmetric about zero at the largest
    measured magnitude; the scale range spans both axes' measured extremes.
    Translations are not fitted: the regenerator draws them from whatever
    keeps the digit inside the frame.

    Args:
        stats: `transform_statistics` of real `transform` features.

    Returns:
        A dict of `max_rotation_degrees`, `max_shear`, `min_scale` and
        `max_scale`, for `AffnistRegenConfig(name=..., **ranges)`.
    """
    def magnitude(field):
        return max(abs(stats[field]["min"]), abs(stats[field]["max"]))

    return {
        "max_rotation_degrees": magnitude("rotation_degrees"),
        "max_shear": magnitude("shear"),
        "min_scale": min(stats["scale_vertical"]["min"], stats["scale_horizontal"]["min"]),
        "max_scale": max(stats["scale_vertical"]["max"], stats["scale_horizontal"]["max"]),
    }


def real_transforms(name="affnist", split="test", data_dir=None, num_examples=None):
    """The `transform` features of a prepared builder's split, `[N, 6]` float32."""
    builder = _prepared(name, data_dir, download=False)
    split_name = f"{split}[:{num_examples}]" if num_examples else split
    dataset = builder.as_dataset(split=split_name, shuffle_files=False)
    dataset = dataset.map(lambda example: example["transform"]).batch(4096)
    blocks = [np.asarray(block) for block in tfds.as_numpy(dataset)]
    return np.concatenate(blocks) if blocks else np.zeros((0, len(TRANSFORM_FIELDS)), "float32")


def _prepared(name, data_dir, download):
    base = name.split("/")[0]
    if base not in NAMES:
        raise ValueError(f"Received: name={name!r}; expected one of {NAMES} (optionally /config)")
    return builders.prepared_builder(
        name, data_dir=data_dir, download=download, how_to_prepare=HOW_TO_PREPARE[base]
    )


def load_affnist(split="test", *, batch_size, name="affnist", data_dir=None, download=False,
                 num_examples=None, shuffle=False, seed=0, with_transforms=False,
                 drop_remainder=False):
    """A batched affNIST pipeline of `(images, labels)` (or with transforms).

    Images are float32 in [0, 1] of shape `[40, 40, 1]`.

    Args:
        split: `"train"`, `"validation"` or `"test"` for `affnist`; `"test"`
            for `affnist_regen`.
        batch_size: int >= 1.
        name: `"affnist"` (the real set) or `"affnist_regen"` (regenerated;
            `"affnist_regen/small"` for its small config).
        data_dir: a prepared TFDS directory; defaults to `$TFDS_DATA_DIR`.
        download: let TFDS download the real files (about 2 GB) or generate
            the regenerated set when missing; off by default, so a missing
            dataset is a clear `DatasetNotFoundError` naming how to
            prepare it.
        num_examples: use only the first N examples of the split.
        shuffle: shuffle every epoch, reproducibly from `seed`.
        seed: int, seeds the shuffle.
        with_transforms: yield `(images, labels, transforms)` with the
            `[B, 6]` float32 transform parameters.
        drop_remainder: drop the last partial batch.

    Raises:
        DatasetNotFoundError: the dataset is not prepared (and not
            downloaded); the message says how to prepare it.
    """
    pipeline.check_batching(batch_size, num_examples)
    builder = _prepared(name, data_dir, download)
    splits = tuple(builder.info.splits)
    if split not in splits:
        raise ValueError(f"Received: split={split!r} for {name!r}; expected one of {splits}")

    def decode(example):
        image, label = pipeline.image_and_label(example)
        if with_transforms:
            return pipeline.unit_float(image), label, example["transform"]
        return pipeline.unit_float(image), label

    # No cache: the real training split is 1,600,000 images; the shuffle
    # buffer holds at most 100,000 undecoded examples.
    return pipeline.batched(
        builder, split, batch_size=batch_size, steps=[pipeline.Step(decode)],
        num_examples=num_examples, shuffle=shuffle, seed=seed, cache=False,
        max_shuffle_buffer=100_000, drop_remainder=drop_remainder)
