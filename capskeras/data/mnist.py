"""MNIST through TensorFlow Datasets, as batched `tf.data` pipelines."""

import os
import socket
import urllib.parse

import tensorflow as tf
import tensorflow_datasets as tfds

from capskeras.checks import check_positive_int
from capskeras.data import transforms

SPLITS = ("train", "test")
TARGETS = ("labels", "images")
IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is not prepared locally and cannot be downloaded."""


def resolve_data_dir(data_dir=None):
    """The TFDS directory to read: `data_dir`, else `$TFDS_DATA_DIR`, else TFDS's default."""
    return data_dir or os.environ.get("TFDS_DATA_DIR") or None


def _download_host_reachable(builder, timeout=5.0, url=None):
    """Whether the dataset's download host answers, within `timeout` seconds.

    `url` defaults to the builder class's `URL` attribute; builders without
    one (TFDS's `smallnorb`) pass theirs.
    """
    url = url or getattr(type(builder), "URL", None) or ""
    host = urllib.parse.urlparse(url).hostname
    if not host:
        return True  # No known host: let TFDS try and report.
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def prepared_builder(name="mnist", data_dir=None, download=True, how_to_prepare=None,
                     download_url=None, **builder_kwargs):
    """Returns a prepared TFDS builder, downloading only when possible.

    `builder_kwargs` go to `tfds.builder` (a `config`, for instance);
    `how_to_prepare` is a sentence appended to the error, saying how this
    dataset is prepared (e.g. the command that builds it); `download_url`
    is a URL of the dataset's files, whose host is probed before
    downloading (defaults to the builder class's `URL`).

    Raises:
        DatasetNotFoundError: the data is not in `data_dir` and either
            `download` is False or the download host cannot be reached. The
            message names the dataset, the directory searched and how to
            point capskeras at a prepared copy.
    """
    data_dir = resolve_data_dir(data_dir)
    builder = tfds.builder(name, data_dir=data_dir, **builder_kwargs)
    if builder.is_prepared():
        return builder
    searched = builder.data_dir
    reason = "downloading is disabled (download=False)"
    if download:
        if _download_host_reachable(builder, url=download_url):
            builder.download_and_prepare()
            return builder
        reason = "its download host cannot be reached from this machine"
    raise DatasetNotFoundError(
        f"Dataset {name!r} is not prepared in {searched} and {reason}. "
        "Point --data_dir (or the TFDS_DATA_DIR environment variable) at a "
        f"directory holding a prepared TFDS copy, i.e. one containing "
        f"{builder.info.full_name}/dataset_info.json."
        + (f" {how_to_prepare}" if how_to_prepare else "")
    )


def load_mnist(
    split,
    *,
    batch_size,
    data_dir=None,
    download=True,
    target="labels",
    num_examples=None,
    shuffle=False,
    seed=0,
    translate_pixels=0,
    pad_to=None,
    drop_remainder=False,
):
    """A batched MNIST pipeline of `(images, targets)`.

    Images are float32 in [0, 1] of shape `[28, 28, 1]` (or
    `[pad_to, pad_to, 1]`).

    Args:
        split: `"train"` or `"test"`, or a TFDS slice of one
            (`"train[:55000]"`, `"train[55000:]"`).
        batch_size: int >= 1, the global batch size.
        data_dir: a prepared TFDS directory; defaults to `$TFDS_DATA_DIR`.
        download: allow TFDS to download when the data is missing.
        target: `"labels"` (int32 class ids) or `"images"` (the input
            itself, for reconstruction).
        num_examples: use only the first N examples of the split.
        shuffle: shuffle every epoch, reproducibly from `seed`.
        seed: int, seeds the shuffle and the random translations.
        translate_pixels: random shift of up to this many pixels in each
            direction (2 is the classic MNIST protocol, 6 the affNIST one).
        pad_to: centre the digits on a black canvas of this side first
            (40 for the affNIST protocol).
        drop_remainder: drop the last partial batch.
    """
    if split.split("[")[0] not in SPLITS:
        raise ValueError(
            f"Received: split={split!r}; expected one of {SPLITS}, or a TFDS slice of one")
    if target not in TARGETS:
        raise ValueError(f"Received: target={target!r}; expected one of {TARGETS}")
    check_positive_int("batch_size", batch_size)
    if num_examples is not None:
        check_positive_int("num_examples", num_examples)
    if pad_to is not None and (
        not isinstance(pad_to, int) or isinstance(pad_to, bool) or pad_to < IMAGE_SHAPE[0]
    ):
        raise ValueError(
            f"Received: pad_to={pad_to!r}; expected None or an int >= {IMAGE_SHAPE[0]}"
        )
    if not isinstance(translate_pixels, int) or translate_pixels < 0:
        raise ValueError(
            f"Received: translate_pixels={translate_pixels!r}; expected an int >= 0"
        )

    builder = prepared_builder("mnist", data_dir=data_dir, download=download)
    dataset = builder.as_dataset(split=split, shuffle_files=False)
    if num_examples is not None:
        dataset = dataset.take(num_examples)

    def raw(example):
        return example["image"], tf.cast(example["label"], tf.int32)

    def decode(image, label):
        image = tf.cast(image, tf.float32) / 255.0
        if pad_to is not None:
            image = transforms.pad_to(image, pad_to)
        return image, label

    # The cache and the shuffle buffer each hold the whole split: as uint8
    # at 28x28 that is 47 MB apiece for the training split, where float32 on
    # the 40x40 affNIST canvas would be 384 MB.
    dataset = dataset.map(raw).cache()
    if shuffle:
        size = builder.info.splits[split].num_examples
        dataset = dataset.shuffle(
            min(size, num_examples or size), seed=seed, reshuffle_each_iteration=True
        )
    dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    if translate_pixels:
        noise = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        dataset = tf.data.Dataset.zip(dataset, noise.batch(2))

        def translate(example, rng):
            image, label = example
            return transforms.random_translate(image, translate_pixels, rng), label

        dataset = dataset.map(translate, num_parallel_calls=tf.data.AUTOTUNE)
    if target == "images":
        dataset = dataset.map(lambda image, label: (image, image))
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE)
