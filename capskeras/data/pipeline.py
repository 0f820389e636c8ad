"""The one input pipeline every dataset of `capskeras.data` builds on.

    split of a TFDS builder -> take N -> map `read` -> cache -> shuffle
    -> map each `Step` -> batch -> prefetch

A dataset module says only what is its own: how an example is read (before
the cache, so the cache holds what is cheap to keep), and the steps after
the shuffle (decoding, augmentation). A `Step` with `random_draws` gets its
own stream of stateless seeds, drawn from `seed` and new every epoch.
"""

import dataclasses
from typing import Callable

import tensorflow as tf

from capskeras.checks import check_positive_int


@dataclasses.dataclass(frozen=True)
class Step:
    """One map of the pipeline.

    Args:
        fn: the function mapped over the examples; with `random_draws`,
            it takes `(example, seeds)`, `seeds` int64 `[random_draws]`.
        parallel: map with `num_parallel_calls=tf.data.AUTOTUNE` (the
            order of the examples is kept either way).
        random_draws: int >= 0; when > 0, each example comes with this
            many random int64 numbers from `tf.data.Dataset.random(seed)`,
            drawn anew each epoch.
    """

    fn: Callable
    parallel: bool = True
    random_draws: int = 0


def image_and_label(example):
    """A TFDS example's `image` (as stored) and its `label` as int32."""
    return example["image"], tf.cast(example["label"], tf.int32)


def unit_float(image):
    """uint8 pixels -> float32 in [0, 1]."""
    return tf.cast(image, tf.float32) / 255.0


def check_split(split, splits):
    """Raises a ValueError unless `split` is one of `splits` or a TFDS slice of one."""
    if split.split("[")[0] not in splits:
        raise ValueError(
            f"Received: split={split!r}; expected one of {tuple(splits)}, or a TFDS slice of one")


def check_batching(batch_size, num_examples):
    """Raises a ValueError unless `batch_size` is an int >= 1 and `num_examples` None or one."""
    check_positive_int("batch_size", batch_size)
    if num_examples is not None:
        check_positive_int("num_examples", num_examples)


def _map(dataset, step, seed):
    if step.random_draws:
        noise = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        dataset = tf.data.Dataset.zip(dataset, noise.batch(step.random_draws))
    if step.parallel:
        return dataset.map(step.fn, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.map(step.fn)


def batched(builder, split, *, batch_size, read=None, steps=(), num_examples=None,
            shuffle=False, seed=0, cache=True, max_shuffle_buffer=None, decoders=None,
            drop_remainder=False):
    """A batched, prefetched `tf.data.Dataset` of `split` of a prepared TFDS `builder`.

    Args:
        builder: a prepared TFDS builder (`builders.prepared_builder`).
        split: a split of `builder`, or a TFDS slice of one.
        batch_size: int >= 1.
        read: an optional `Step` mapped before the cache: the example as
            the cache keeps it.
        steps: `Step`s mapped after the shuffle, in order.
        num_examples: use only the first N examples of the split.
        shuffle: shuffle every epoch, reproducibly from `seed`, over a
            buffer of the whole split (the first `num_examples` of it).
        seed: int, seeds the shuffle and the steps' random draws.
        cache: cache the read examples in memory (a whole split's worth).
        max_shuffle_buffer: an optional cap on the shuffle buffer.
        decoders: TFDS `decoders` for `builder.as_dataset`.
        drop_remainder: drop the last partial batch.
    """
    dataset = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
    if num_examples is not None:
        dataset = dataset.take(num_examples)
    if read is not None:
        dataset = _map(dataset, read, seed)
    if cache:
        dataset = dataset.cache()
    if shuffle:
        size = builder.info.splits[split].num_examples
        buffer = min(size, num_examples or size)
        if max_shuffle_buffer is not None:
            buffer = min(buffer, max_shuffle_buffer)
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    for step in steps:
        dataset = _map(dataset, step, seed)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE)
