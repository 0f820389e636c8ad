"""RotatedConv2D: a convolution with K rotated copies of each filter, by interpolation."""

import math

import keras
import numpy as np
from keras import ops

from capskeras.checks import check_positive_int
from capskeras.layers import group_algebra
from capskeras.layers.group_conv2d import GroupConv2D


def rotation_matrix(kernel_size, degrees):
    """The bilinear rotation of a square `kernel_size` x `kernel_size` filter.

    Returns float64 `[n * n, n * n]` (`n = kernel_size`): row `p` holds the
    weights of the source pixels of output pixel `p` (row-major), the
    filter turned counter-clockwise by `degrees` about its centre, as
    `np.rot90` turns it at 90. Pixels outside the disc of radius `n / 2`
    (the square's corners, which a rotation moves out of the square) are
    zero, as sources and as outputs, so the disc-shaped filters the layer
    learns rotate without losing mass at the corners. Turns a quarter turn
    apart sample the same points (turned by exactly 90 degrees, and rounded
    to 1e-9 pixel), so their matrices are exact `np.rot90`s of each other.
    """
    centre = (kernel_size - 1) / 2.0
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    rows, cols = np.meshgrid(np.arange(kernel_size) - centre,
                             np.arange(kernel_size) - centre, indexing="ij")
    in_disc = (rows**2 + cols**2 <= (kernel_size / 2.0) ** 2).reshape(-1)
    matrix = np.zeros((kernel_size * kernel_size,) * 2)
    for p, (y, x) in enumerate(zip(rows.reshape(-1), cols.reshape(-1))):
        if not in_disc[p]:
            continue
        # The source of (y, x) under a counter-clockwise turn (rows point down).
        source_y, source_x = cos * y + sin * x, -sin * y + cos * x
        # Rounded so that exact quarter turns land exactly on pixels.
        source_y, source_x = round(source_y + centre, 9), round(source_x + centre, 9)
        top, left = math.floor(source_y), math.floor(source_x)
        for row, weight_y in ((top, 1.0 - (source_y - top)), (top + 1, source_y - top)):
            for col, weight_x in ((left, 1.0 - (source_x - left)), (left + 1, source_x - left)):
                if 0 <= row < kernel_size and 0 <= col < kernel_size and weight_y * weight_x:
                    matrix[p, row * kernel_size + col] += weight_y * weight_x
    return matrix * in_disc[None, :] * in_disc[:, None]


@keras.saving.register_keras_serializable(package="capskeras")
class RotatedConv2D(GroupConv2D):
    """A convolution approximately equivariant to rotations by multiples of 360 / K degrees.

    Each output channel has one filter bank, turned to `K` angles
    (`k * 360 / K` degrees counter-clockwise, `k = 0 .. K - 1`) by bilinear
    interpolation inside the disc inscribed in the kernel, and on rotation
    inputs (`lifting=False`) with the input's rotation axis shifted by `k`,
    the group law of the cyclic group `"c<K>"`. All copies run in a single
    `conv2d` call with the expanded kernel, as in `GroupConv2D`, whose
    layout, bias sharing, geometry rules and `to_conv2d()` folding this
    layer keeps: channel `c * K + k` is channel `c` at angle `k`, so
    `GroupPooling(f"c{K}")` and `GroupBatchNormalization(f"c{K}")` follow
    it.

    Rotations by multiples of 90 degrees move pixels onto pixels, so with
    K = 4 (or 1, 2) the layer is exactly the p4 (or its subgroups')
    convolution on kernels whose corners lie inside the disc (3x3). For K
    divisible by 4 the layer stays exactly equivariant to quarter turns
    (copies a quarter turn apart are exact `np.rot90`s of each other); finer
    turns interpolate both the filters and any turned input, and their
    equivariance is approximate: `capskeras.testing.equivariance.
    rotation_equivariance_error` measures it.

    Args:
        filters: int >= 1, output channels (each becomes `K` feature maps).
        kernel_size: int or tuple of 2 equal ints.
        rotations: int >= 1, the number K of angles.
        lifting: bool, True for images in, False for `[B, H, W, C * K]`
            rotation feature maps in.
        **kwargs: the other arguments of `GroupConv2D` (`strides`,
            `padding`, `activation`, `use_bias`, initializers,
            regularizers, constraints) and base `Layer` arguments.

    Input shape:
        `(batch, H, W, C)` when lifting, `(batch, H, W, C * K)` otherwise.

    Output shape:
        `(batch, H', W', filters * K)`.

    Example:

    >>> x = keras.ops.ones((2, 9, 9, 1))
    >>> RotatedConv2D(4, 5, rotations=16)(x).shape
    (2, 5, 5, 64)

    Reference:
        Cohen and Welling, "Group Equivariant Convolutional Networks",
        ICML 2016; the rotated filter copies of Olah et al., "Naturally
        Occurring Equivariance in Neural Networks", Distill 2020
        (its equivariant InceptionV1 used 16 rotations).
    """

    def __init__(self, filters, kernel_size, rotations=16, lifting=True, **kwargs):
        check_positive_int("rotations", rotations)
        self.rotations = rotations
        super().__init__(filters, kernel_size, group=group_algebra.cyclic_group(rotations),
                         lifting=lifting, **kwargs)

    def _group_order(self, group):
        """K: the cyclic group `"c<K>"`, acting on the kernel by interpolation."""
        return self.rotations

    def _build_expansion(self):
        """One matmul turns the banks (`_turns`), one gather lays them out."""
        size, order, in_channels = self.kernel_size[0], self.rotations, self.in_channels
        turns = np.concatenate(
            [rotation_matrix(size, 360.0 * k / order) for k in range(order)]
        ).astype("float32")
        in_group = self.in_group_order
        # turned[k, p, c, h, f] sits at flat position
        # (((k * n^2 + p) * C + c) * G_in + h) * F + f; expanded[p, c * G_in + h, f * K + k]
        # takes the bank at input angle h - k (mod K).
        k, p, c, h, f = np.meshgrid(np.arange(order), np.arange(size * size),
                                    np.arange(in_channels), np.arange(in_group),
                                    np.arange(self.filters), indexing="ij")
        source_h = (h - k) % in_group if not self.lifting else h
        flat = (((k * size * size + p) * in_channels + c) * in_group + source_h) \
            * self.filters + f
        self._turns = turns
        self._expansion_index = np.transpose(flat, (1, 2, 3, 4, 0)).reshape(-1).astype("int32")

    def expanded_kernel(self):
        """The kernel of the equivalent `Conv2D`: `[kh, kw, C_in, filters * K]`."""
        kh, kw = self.kernel_size
        bank = ops.reshape(self.kernel, (kh * kw, -1))
        turned = ops.matmul(ops.convert_to_tensor(self._turns), bank)
        copies = ops.take(ops.reshape(turned, (-1,)), ops.convert_to_tensor(self._expansion_index))
        return ops.reshape(
            copies, (kh, kw, self.in_channels * self.in_group_order,
                     self.filters * self.group_order)
        )

    def get_config(self):
        config = super().get_config()
        config.pop("group")
        config["rotations"] = self.rotations
        return config
