"""Image transforms used by the training protocols: shifts and padding.

All functions take one image `[H, W, C]` (float32) and are meant for
`tf.data.Dataset.map`; random ones take an explicit stateless `seed` (a
`[2]` int tensor) so a pipeline is reproducible from `--seed`.
"""

import tensorflow as tf


def pad_to(image, size):
    """Centres `image` on a black `size x size` canvas.

    Args:
        image: `[H, W, C]` tensor with `H, W <= size`.
        size: int, the side of the canvas (40 for the affNIST protocol).
    """
    height, width = image.shape[0], image.shape[1]
    if size < height or size < width:
        raise ValueError(
            f"Received: pad_to={size} for {height}x{width} images; "
            f"expected an int >= {max(height, width)}"
        )
    top = (size - height) // 2
    left = (size - width) // 2
    return tf.image.pad_to_bounding_box(image, top, left, size, size)


def random_translate(image, max_pixels, seed):
    """Shifts `image` by up to `max_pixels` in each direction, zero-filled.

    The shift is uniform over the integers in `[-max_pixels, max_pixels]`,
    independently for rows and columns: the image is padded by `max_pixels`
    on every side and a window of the original size is cropped at random.
    With `max_pixels=2` this is the classic MNIST shift of Sabour et al.;
    with a 40x40 padded digit and `max_pixels=6` it is their affNIST
    training protocol.
    """
    if max_pixels == 0:
        return image
    height, width, channels = image.shape
    padded = tf.pad(
        image, [[max_pixels, max_pixels], [max_pixels, max_pixels], [0, 0]]
    )
    return tf.image.stateless_random_crop(
        padded, [height, width, channels], seed=seed
    )
