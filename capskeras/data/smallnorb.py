"""smallNORB through TensorFlow Datasets, preprocessed as for matrix capsules.

TFDS's `smallnorb` builder (version 2.0.0 in TFDS 4.9) holds 24,300
training and 24,300 test examples: 5 toys of each of 5 categories
(four-legged animals, human figures, airplanes, trucks, cars) seen from
two cameras at 9 elevations, 18 azimuths and 6 lightings. The test split's
toys are other instances of the same categories. Each example carries two
uint8 `[96, 96, 1]` images, `image` and `image2`, the two pictures of one
stereo pair in the order of the `-dat` files (read as the left and right
camera, the usual naming), and `label_category` (0 to 4), `instance`,
`label_elevation`, `label_azimuth` and `label_lighting`.

This pipeline uses `image` only (the left camera), one image per example,
as single-image classifiers on smallNORB usually do; `image2` is not
decoded.

Preprocessing, after Hinton, Sabour and Frosst (2018), section 5: "We
downsample smallNORB to 48x48 pixels and normalize each image to have zero
mean and unit variance. During training, we randomly crop 32x32 patches and
add random brightness and contrast to the cropped images. During test, we
crop a 32x32 patch from the center of the image."

1. `resize_and_standardize`: 96x96 -> 48x48 by area averaging (each output
   pixel is the mean of a 2x2 block), then per-image standardisation
   (`tf.image.per_image_standardization`: zero mean, unit variance, the
   standard deviation floored at `1 / sqrt(pixels)` for flat images).
2. Training: `random_crop_and_jitter`, a uniformly placed 32x32 crop, then
   a brightness offset uniform in `+-brightness_delta` and a contrast
   factor uniform in `contrast_range` (about the crop's mean). The paper
   gives no amounts; the defaults are TensorFlow's usual ones (32/255 and
   0.5 to 1.5). As the jitter follows the standardisation, the offset is in
   units of the image's standard deviation.
3. Test: `center_crop`, the central 32x32 window (rows and columns 8 to 39).

smallNORB is about 250 MB to download (`cs.nyu.edu`), which these machines
cannot reach. On a machine with internet:

    python -m capskeras.data.prepare smallnorb --data_dir=<dir>

(or `tfds build smallnorb --data_dir=<dir>`), then copy `<dir>/smallnorb`
into the `--data_dir` (or `$TFDS_DATA_DIR`) of the machine that trains.

Reference:
    G. E. Hinton, S. Sabour and N. Frosst, "Matrix capsules with EM
    routing", ICLR 2018; Y. LeCun, F. J. Huang and L. Bottou, "Learning
    Methods for Generic Object Recognition with Invariance to Pose and
    Lighting", CVPR 2004.
"""

import tensorflow as tf
import tensorflow_datasets as tfds

from capskeras.data import builders
from capskeras.data import pipeline

NAME = "smallnorb"
SPLITS = ("train", "test")
RESIZED_SIZE = 48
CROP_SIZE = 32
IMAGE_SHAPE = (CROP_SIZE, CROP_SIZE, 1)
NUM_CLASSES = 5
CLASS_NAMES = ("four-legged animals", "human figures", "airplanes", "trucks", "cars")
BRIGHTNESS_DELTA = 32.0 / 255.0
CONTRAST_RANGE = (0.5, 1.5)
URL = "https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/"
HOW_TO_PREPARE = (
    f"smallNORB is downloaded from {URL} (about 250 MB). On a machine with internet, "
    "run `python -m capskeras.data.prepare smallnorb --data_dir=<dir>` (or "
    "`tfds build smallnorb --data_dir=<dir>`) and copy <dir>/smallnorb into this "
    "machine's data directory."
)


def prepared_builder(data_dir=None, download=True):
    """The prepared TFDS `smallnorb` builder.

    Raises:
        DatasetNotFoundError: smallNORB is not in `data_dir` (or
            `$TFDS_DATA_DIR`) and cannot be downloaded; the message names
            the directory searched and how to prepare the data elsewhere.
    """
    return builders.prepared_builder(NAME, data_dir=data_dir, download=download,
                                     how_to_prepare=HOW_TO_PREPARE, download_url=URL)


def resize_and_standardize(image, size=RESIZED_SIZE):
    """One `[96, 96, 1]` image -> float32 `[size, size, 1]`, zero mean, unit variance.

    The resize averages areas (a 2x2 block mean for 48 from 96); the
    standardisation is `tf.image.per_image_standardization`.
    """
    image = tf.image.resize(tf.cast(image, tf.float32), [size, size], method="area")
    return tf.image.per_image_standardization(image)


def center_crop(image, size=CROP_SIZE):
    """The central `size x size` window of `image` `[H, W, C]`."""
    height, width = image.shape[0], image.shape[1]
    if size > height or size > width:
        raise ValueError(
            f"Received: crop size {size} for {height}x{width} images; expected an int <= "
            f"{min(height, width)}"
        )
    top = (height - size) // 2
    left = (width - size) // 2
    return image[top:top + size, left:left + size, :]


def random_crop_and_jitter(image, seeds, size=CROP_SIZE, brightness_delta=BRIGHTNESS_DELTA,
                           contrast_range=CONTRAST_RANGE):
    """A random `size x size` crop of `image`, then random brightness and contrast.

    Every random draw is stateless, from `seeds`, so the result is a
    function of the image and the seeds.

    Args:
        image: float32 `[H, W, C]`, already standardised.
        seeds: int `[3, 2]`: the crop's, the brightness's and the contrast's
            stateless seeds.
        size: the crop's side.
        brightness_delta: float >= 0; adds a uniform offset in
            `[-brightness_delta, brightness_delta]` (0 for none).
        contrast_range: `(lower, upper)`, 0 <= lower <= upper; scales the
            crop's deviations from its mean by a uniform factor in this
            range (`(1, 1)` for none).
    """
    channels = image.shape[-1]
    image = tf.image.stateless_random_crop(image, [size, size, channels], seed=seeds[0])
    if brightness_delta:
        image = tf.image.stateless_random_brightness(image, brightness_delta, seed=seeds[1])
    lower, upper = contrast_range
    if (lower, upper) != (1.0, 1.0):
        image = tf.image.stateless_random_contrast(image, lower, upper, seed=seeds[2])
    return image


def _check_jitter(brightness_delta, contrast_range):
    if (not isinstance(brightness_delta, (int, float)) or isinstance(brightness_delta, bool)
            or brightness_delta < 0):
        raise ValueError(
            f"Received: brightness_delta={brightness_delta!r}; expected a float >= 0"
        )
    try:
        lower, upper = (float(value) for value in contrast_range)
    except (TypeError, ValueError):
        lower, upper = -1.0, -1.0
    if not 0 <= lower <= upper:
        raise ValueError(
            f"Received: contrast_range={contrast_range!r}; expected (lower, upper) with "
            "0 <= lower <= upper"
        )
    return float(brightness_delta), (lower, upper)


def load_smallnorb(
    split,
    *,
    batch_size,
    data_dir=None,
    download=True,
    num_examples=None,
    shuffle=False,
    seed=0,
    augment=None,
    brightness_delta=BRIGHTNESS_DELTA,
    contrast_range=CONTRAST_RANGE,
    drop_remainder=False,
):
    """A batched smallNORB pipeline of `(images, labels)`, preprocessed as in the paper.

    Images are float32 `[32, 32, 1]`: the left camera's image resized to
    48x48 and standardised per image, then a random crop with brightness
    and contrast jitter (`augment`) or the centre crop. Labels are int32
    categories in 0..4 (`CLASS_NAMES`).

    Args:
        split: `"train"` or `"test"`.
        batch_size: int >= 1, the global batch size.
        data_dir: a prepared TFDS directory; defaults to `$TFDS_DATA_DIR`.
        download: allow TFDS to download when the data is missing (needs
            `cs.nyu.edu`; a clear error where it cannot be reached).
        num_examples: use only the first N examples of the split.
        shuffle: shuffle every epoch, reproducibly from `seed`.
        seed: int, seeds the shuffle and the crops and jitter; the same seed
            gives the same batches, and each epoch draws new crops.
        augment: random crops and jitter (True) or centre crops (False);
            None for random on `"train"`, centre on `"test"`.
        brightness_delta: float >= 0, the largest brightness offset, in
            standard deviations of the standardised image.
        contrast_range: `(lower, upper)` of the contrast factor.
        drop_remainder: drop the last partial batch.

    Raises:
        DatasetNotFoundError: smallNORB is not prepared and cannot be
            downloaded; the message says how to prepare it.

    Example:

    >>> dataset = load_smallnorb("train", batch_size=32, shuffle=True, seed=1)
    >>> images, labels = next(iter(dataset))  # [32, 32, 32, 1] float32, [32] int32
    """
    pipeline.check_split(split, SPLITS)
    pipeline.check_batching(batch_size, num_examples)
    brightness_delta, contrast_range = _check_jitter(brightness_delta, contrast_range)
    if augment is None:
        augment = split.startswith("train")

    def standardized(example):
        return (resize_and_standardize(example["image"]),
                tf.cast(example["label_category"], tf.int32))

    def crop(example, rng):
        image, label = example
        seeds = tf.reshape(rng, [3, 2])
        return random_crop_and_jitter(image, seeds, brightness_delta=brightness_delta,
                                      contrast_range=contrast_range), label

    if augment:
        step = pipeline.Step(crop, random_draws=6)
    else:
        step = pipeline.Step(lambda image, label: (center_crop(image), label))
    # The cache holds the standardised 48x48 images, 9 KiB apiece: 224 MB
    # for a whole split of 24,300, the same as the raw 96x96 uint8 images.
    return pipeline.batched(
        prepared_builder(data_dir=data_dir, download=download), split,
        batch_size=batch_size, decoders={"image2": tfds.decode.SkipDecoding()},
        read=pipeline.Step(standardized), steps=[step], num_examples=num_examples,
        shuffle=shuffle, seed=seed, drop_remainder=drop_remainder)
