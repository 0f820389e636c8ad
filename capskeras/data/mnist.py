"""MNIST through TensorFlow Datasets, as batched `tf.data` pipelines."""


from capskeras.data import pipeline
from capskeras.data import transforms
from capskeras.data.builders import prepared_builder

SPLITS = ("train", "test")
TARGETS = ("labels", "images")
IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


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
    pipeline.check_split(split, SPLITS)
    if target not in TARGETS:
        raise ValueError(f"Received: target={target!r}; expected one of {TARGETS}")
    pipeline.check_batching(batch_size, num_examples)
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

    def decode(image, label):
        image = pipeline.unit_float(image)
        if pad_to is not None:
            image = transforms.pad_to(image, pad_to)
        return image, label

    def translate(example, rng):
        image, label = example
        return transforms.random_translate(image, translate_pixels, rng), label

    steps = [pipeline.Step(decode)]
    if translate_pixels:
        steps.append(pipeline.Step(translate, random_draws=2))
    if target == "images":
        steps.append(pipeline.Step(lambda image, label: (image, image), parallel=False))
    # The cache and the shuffle buffer each hold the whole split: as uint8
    # at 28x28 that is 47 MB apiece for the training split, where float32 on
    # the 40x40 affNIST canvas would be 384 MB.
    return pipeline.batched(
        prepared_builder("mnist", data_dir=data_dir, download=download), split,
        batch_size=batch_size, read=pipeline.Step(pipeline.image_and_label, parallel=False),
        steps=steps, num_examples=num_examples, shuffle=shuffle, seed=seed,
        drop_remainder=drop_remainder)
