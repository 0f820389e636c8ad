"""Image transforms used by the training and evaluation protocols.

Shifts and padding take one image `[H, W, C]` (float32) and are meant for
`tf.data.Dataset.map`; random ones take an explicit stateless `seed` (a
`[2]` int tensor) so a pipeline is reproducible from `--seed`. `rotate`
takes a batch (or one image) and serves the rotation sweeps of
`capskeras.evaluation`.
"""

import math

import keras
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


def rotate(images, degrees):
    """Rotates images about their centre, counter-clockwise for positive `degrees`.

    Pixels are sampled bilinearly; what the rotation brings in from outside
    the image is black (zero). The centre of rotation is the centre of the
    pixel grid, `((W - 1) / 2, (H - 1) / 2)` in pixel indices, so a
    rotation by a multiple of 90 degrees of a square image permutes its
    pixels exactly, as `np.rot90` does, and a rotation by 0 returns the
    images unchanged.

    Args:
        images: `[B, H, W, C]` batch, or one `[H, W, C]` image.
        degrees: the angle in degrees, a number or scalar tensor for the
            whole batch, or a `[B]` tensor with one angle per image.

    Returns:
        float32 tensor of the shape of `images`.

    Example:

    >>> batch = tf.random.uniform((4, 28, 28, 1))
    >>> rotated = rotate(batch, 35.0)  # the digits turn 35 degrees to the left

    Reference:
        The rotated-MNIST generalization test of Sabour, Frosst and Hinton,
        "Dynamic Routing Between Capsules", NeurIPS 2017, section 5.2
        (there on affNIST; here on MNIST rotated by a single angle).
    """
    images = tf.convert_to_tensor(images, dtype=tf.float32)
    if images.shape.rank not in (3, 4):
        raise ValueError(
            f"Received: images of shape {images.shape}; expected a rank-4 batch "
            "[B, H, W, C] or a rank-3 image [H, W, C]"
        )
    single = images.shape.rank == 3
    if single:
        images = images[tf.newaxis]
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    radians = tf.cast(tf.convert_to_tensor(degrees), tf.float32) * (math.pi / 180.0)
    if radians.shape.rank not in (0, 1):
        raise ValueError(
            f"Received: degrees of shape {radians.shape}; expected a scalar or a [B] vector"
        )
    radians = tf.broadcast_to(radians, [batch])
    cos, sin = tf.cos(radians), tf.sin(radians)
    centre_x = (tf.cast(width, tf.float32) - 1.0) / 2.0
    centre_y = (tf.cast(height, tf.float32) - 1.0) / 2.0
    # The transform maps each output pixel (x, y) to the input point it samples:
    #   x_in = cos * x - sin * y + offset_x,  y_in = sin * x + cos * y + offset_y
    # which, with rows growing downwards, turns the content counter-clockwise.
    offset_x = centre_x - cos * centre_x + sin * centre_y
    offset_y = centre_y - sin * centre_x - cos * centre_y
    zeros = tf.zeros_like(cos)
    transforms = tf.stack([cos, -sin, offset_x, sin, cos, offset_y, zeros, zeros], axis=1)
    rotated = keras.ops.image.affine_transform(
        images, transforms, interpolation="bilinear", fill_mode="constant", fill_value=0.0
    )
    return rotated[0] if single else rotated
