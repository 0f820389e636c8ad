"""The groups p4 and p4m acting on pixel grids and on feature maps (NumPy).

Not a layer: the bookkeeping the group layers and
`capskeras.testing.equivariance` share, and `per_group_copy`, the one
`keras.ops` function the layers share for the layout.

Elements. p4 has the four rotations by multiples of 90 degrees, p4m those
and their compositions with a mirror. Element `g` is the pair
`(s, k) = (g // 4, g % 4)` and acts on an image (an array whose first two
axes are rows and columns) as "mirror left-right `s` times, then rotate
`k` quarter turns counter-clockwise", exactly `np.rot90(np.flip(a, 1) if s
else a, k)`. Rotations about the centre of the pixel grid permute pixels,
so the action is exact on any grid.

Group law. The mirror reverses rotations (`m r = r^-1 m`), so
`(s, k) (s', k') = (s xor s', k + (-1)^s k' mod 4)`; p4 is the `s = 0`
half with indices 0..3.

Cyclic groups. `"c<K>"` names the K rotations by multiples of 360 / K
degrees, the group of `capskeras.layers.RotatedConv2D`, whose feature maps
share the layout below with `G = K`. Only `group_order` and
`check_group_channels` know them: for K other than 1, 2 and 4 their action
on a pixel grid needs interpolation, so the exact machinery here
(transforms, kernel expansion) takes p4 and p4m only.

Feature maps on the group (layout of every capskeras group layer): a
channels-last tensor `[B, H, W, C * G]` whose channel `c * G + g` holds
channel `c` at group element `g` (the group index runs fastest). An element
`h` transforms such a map by moving every plane spatially by `h` and sending
the value at group element `g` to `h g`:
`out[..., c * G + h g] = h . in[..., c * G + g]`. For p4 and a quarter turn
that is `np.rot90` of every plane with the group index rolled by one.
"""

import numpy as np
from keras import ops

GROUP_ORDERS = {"p4": 4, "p4m": 8}


def check_group(group):
    """Raises a ValueError unless `group` is "p4" or "p4m"; returns its order."""
    if group not in GROUP_ORDERS:
        raise ValueError(f"Received: group={group!r}; expected one of {sorted(GROUP_ORDERS)}")
    return GROUP_ORDERS[group]


def cyclic_group(rotations):
    """The name `"c<K>"` of the group of `rotations` rotations."""
    return f"c{rotations}"


def group_order(group):
    """The order of `"p4"`, `"p4m"` or a cyclic group `"c<K>"` (K >= 1).

    Raises a ValueError naming the value otherwise.
    """
    if group in GROUP_ORDERS:
        return GROUP_ORDERS[group]
    if isinstance(group, str) and group[:1] == "c" and group[1:].isdigit() \
            and group[1] != "0":
        return int(group[1:])
    raise ValueError(
        f"Received: group={group!r}; expected 'p4', 'p4m' or 'c<K>' (K rotations "
        "by 360 / K degrees, K >= 1, e.g. 'c16')"
    )


def per_group_copy(per_channel, order):
    """Each of `[C]` values on its channel's `order` group copies: `[C * order]`.

    The layout's channel `c * G + g` gets value `c` (as `np.repeat`, in
    three cheap ops where `ops.repeat` writes many).
    """
    copies = ops.broadcast_to(ops.expand_dims(per_channel, -1),
                              (per_channel.shape[0], order))
    return ops.reshape(copies, (-1,))


def check_group_channels(input_shape, group):
    """The channels `C` of group feature maps of `input_shape` (`C * G` on the last axis).

    Takes any group `group_order` knows. Raises a ValueError naming the
    shape unless the last axis is known and divisible by the group's order.
    """
    order = group_order(group)
    channels = input_shape[-1]
    if channels is None or channels % order:
        raise ValueError(
            f"Received: input_shape={input_shape} for group={group!r}; expected "
            f"a known channel axis divisible by {order}"
        )
    return channels // order


def multiply(a, b):
    """The index of the product `a b` of the elements indexed `a` and `b`."""
    s, k = divmod(a, 4)
    t, l = divmod(b, 4)
    return 4 * (s ^ t) + (k + (-l if s else l)) % 4


def inverse(a):
    """The index of the inverse of the element indexed `a`."""
    s, k = divmod(a, 4)
    return a if s else (-k) % 4


def transform_plane(array, g, axes=(0, 1)):
    """Moves `array`'s plane on `axes` (rows, columns) by the element `g`."""
    s, k = divmod(g, 4)
    if s:
        array = np.flip(array, axes[1])
    return np.rot90(array, k, axes=axes)


def transform_feature_map(x, group, g, lifted=True):
    """Applies element `g` to a batch of feature maps `[B, H, W, channels]`.

    With `lifted=True` the channels are `C * G` in the layout above and the
    group index moves too; with `lifted=False` the maps are plain images
    (or group-invariant maps) and only the planes move.
    """
    order = check_group(group)
    x = transform_plane(np.asarray(x), g, axes=(1, 2))
    if not lifted:
        return x
    channels = x.shape[-1]
    if channels % order:
        raise ValueError(
            f"Received: {channels} channels for group={group!r}; expected a multiple of {order}"
        )
    x = x.reshape(x.shape[:-1] + (channels // order, order))
    # out[h g] = in[g], i.e. out[j] = in[h^-1 j].
    source = [multiply(inverse(g), j) for j in range(order)]
    return x[..., source].reshape(x.shape[:-2] + (channels,))


def expansion_index(group, kernel_size, in_channels, lifting):
    """Where each entry of the expanded kernel comes from in the filter bank.

    The filter bank of one output channel is `[kh, kw, in_channels, G_in]`
    (`G_in = 1` for a lifting layer, else the group order). Its copy for
    output group element `g` is the bank moved by `g`: the plane moved
    spatially by `g` and, on the group, the value at `g^-1 h` moved to input
    element `h`. Returns int32 `[kh, kw, in_channels * G_in, G]`: the flat
    index into the bank flattened row-major.
    """
    order = check_group(group)
    kh, kw = kernel_size
    in_group = 1 if lifting else order
    bank = np.arange(kh * kw * in_channels * in_group).reshape(kh, kw, in_channels, in_group)
    copies = []
    for g in range(order):
        moved = bank
        if not lifting:
            moved = moved[..., [multiply(inverse(g), h) for h in range(order)]]
        copies.append(transform_plane(moved, g))
    stacked = np.stack(copies, axis=-1)
    return stacked.reshape(kh, kw, in_channels * in_group, order).astype("int32")


def sampling_is_symmetric(size, kernel_size, stride, padding):
    """Whether a convolution's sampling grid on one axis is symmetric about its centre.

    Rotating (or mirroring) an image about its centre commutes with a
    convolution or pooling window exactly when the windows it samples are
    placed symmetrically: the unpadded overhang `(out - 1) * stride +
    kernel_size - size` must be split evenly between both ends. With
    `"valid"` padding (nothing padded) that is `(size - kernel_size) %
    stride == 0`; with `"same"` padding TensorFlow pads the odd pixel of an
    odd overhang at the end, so the overhang must be even (odd kernels at
    stride 1 always are, even kernels at stride 1 never). For an unknown
    `size` (None) the answer is True or False where it holds for every size,
    else None.
    """
    if size is None:
        if stride == 1:
            return padding == "valid" or kernel_size % 2 == 1
        return None
    if padding == "valid":
        return (size - kernel_size) % stride == 0
    out = -(-size // stride)
    overhang = (out - 1) * stride + kernel_size - size
    return overhang >= 0 and overhang % 2 == 0
