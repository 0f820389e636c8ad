"""Equivariance checks for layers and models, and the p4 / p4m transforms they use.

A function `f` is equivariant when transforming its input transforms its
output in a known way: `f(T_in(x)) == T_out(f(x))`; invariant when `T_out`
is the identity. The group transforms act on channels-last batches: plain
images `[B, H, W, C]` (the planes move) or group feature maps
`[B, H, W, C * G]` in the layout of `capskeras.layers.GroupConv2D` (the
planes move and the group index is permuted, see
`capskeras.layers.group_algebra`).

    from capskeras.testing import equivariance
    equivariance.assert_group_equivariant(layer, x, "p4", input_lifted=False)
"""

import functools

import keras
import numpy as np

from capskeras.layers import group_algebra

# For the models: images in, invariant outputs (class scores) out.
PLANE = "plane"        # plain images or invariant maps: only the planes move
GROUP = "group"        # group feature maps: planes move, group axis permutes
INVARIANT = "invariant"  # vectors (scores): nothing moves
KINDS = (PLANE, GROUP, INVARIANT)


def transform(x, group, element, kind):
    """Applies the group `element` (an index, see `group_algebra`) to `x` of `kind`."""
    if kind not in KINDS:
        raise ValueError(f"Received: kind={kind!r}; expected one of {KINDS}")
    if kind == INVARIANT:
        return np.asarray(x)
    return group_algebra.transform_feature_map(x, group, element, lifted=kind == GROUP)


def rotate90(x, quarter_turns=1, group="p4", kind=GROUP):
    """Turns `x` by `quarter_turns` x 90 degrees counter-clockwise (rolls a group axis)."""
    return transform(x, group, quarter_turns % 4, kind)


def mirror(x, kind=GROUP):
    """Mirrors `x` left-right; on p4m feature maps the group axis permutes too."""
    return transform(x, "p4m", 4, kind)


def assert_equivariant(fn, x, input_transform, output_transform, atol=1e-5, rtol=0.0):
    """Asserts `fn(input_transform(x)) == output_transform(fn(x))` elementwise.

    Args:
        fn: a layer, model or function of one batch.
        x: the batch (NumPy or tensor).
        input_transform: function of a NumPy batch, the transform of inputs.
        output_transform: function of a NumPy batch, the expected transform of
            outputs.
        atol: absolute tolerance; float32 round-off of a few layers is ~1e-5.
        rtol: relative tolerance.

    Returns:
        The largest absolute deviation seen.
    """
    x = keras.ops.convert_to_numpy(x)
    expected = output_transform(keras.ops.convert_to_numpy(fn(x)))
    actual = keras.ops.convert_to_numpy(fn(input_transform(x)))
    np.testing.assert_allclose(actual, expected, atol=atol, rtol=rtol)
    return float(np.max(np.abs(actual.astype("float64") - expected))) if actual.size else 0.0


def assert_group_equivariant(fn, x, group, input_kind=GROUP, output_kind=GROUP,
                             elements=None, atol=1e-5, rtol=0.0):
    """`assert_equivariant` for every element of `group` (or the given `elements`).

    Args:
        fn: a layer, model or function of one batch.
        x: the batch.
        group: `"p4"` or `"p4m"`.
        input_kind, output_kind: `"plane"`, `"group"` or `"invariant"`: how
            the element acts on the inputs and outputs.
        elements: the element indices to check; defaults to all but the
            identity.
        atol, rtol: tolerances.

    Returns:
        `{element: largest deviation}`.
    """
    order = group_algebra.check_group(group)
    elements = range(1, order) if elements is None else elements
    deviations = {}
    for element in elements:
        deviations[element] = assert_equivariant(
            fn, x,
            functools.partial(transform, group=group, element=element, kind=input_kind),
            functools.partial(transform, group=group, element=element, kind=output_kind),
            atol=atol, rtol=rtol,
        )
    return deviations


def inscribed_disc(height, width, margin=0.0):
    """Boolean `[height, width]`: the pixels within `(min(height, width) - 1) / 2 - margin`
    of the grid's centre, which no turn about the centre moves out of the plane.

    Multiply a batch by it (`images * inscribed_disc(28, 28, 0.5)[..., None]`)
    to zero what a turn would cut off.
    """
    radius = (min(height, width) - 1) / 2.0 - margin
    if radius < 0:
        raise ValueError(
            f"Received: margin={margin!r} for a {height}x{width} grid; expected at most "
            f"{(min(height, width) - 1) / 2.0}, which leaves the centre pixel"
        )
    rows, cols = np.meshgrid(np.arange(height) - (height - 1) / 2.0,
                             np.arange(width) - (width - 1) / 2.0, indexing="ij")
    return rows**2 + cols**2 <= radius**2


def rotation_equivariance_error(fn, x, rotations, steps=1, input_kind=PLANE,
                                output_kind=GROUP, margin=1):
    """How far `fn` is from equivariance to a turn by `steps * 360 / rotations` degrees.

    For the approximate rotation layers (`capskeras.layers.RotatedConv2D`),
    whose equivariance is measured, not exact. Compares `fn(turn(x))` with
    `turn(fn(x))`: planes turned counter-clockwise about their centre
    (bilinear, black fill, `capskeras.data.transforms.rotate`) and, on
    group maps of the cyclic group `"c<rotations>"`, the rotation axis
    rolled by `steps`. Only the disc of output pixels within
    `(min(H, W) - 1) / 2 - margin` of the centre counts (`inscribed_disc`),
    which no turn moves out of the plane; inputs should be zero outside
    their own inscribed disc (as rotated digits are), or what a turn cuts
    off their corners counts as error.

    Args:
        fn: a layer, model or function of one batch.
        x: the batch, `[B, H, W, C]` (or `[B, H, W, C * rotations]` group maps).
        rotations: int, the K of the angles `360 / K`.
        steps: the turn in steps of `360 / rotations` degrees.
        input_kind, output_kind: `"plane"`, `"group"` or `"invariant"`.
        margin: pixels left out at the rim of the disc.

    Returns:
        The relative error `|fn(turn(x)) - turn(fn(x))| / |turn(fn(x))|`
        (Euclidean norms over the disc): 0 for an exactly equivariant `fn`.
    """
    from capskeras.data import transforms  # Deferred: TensorFlow Datasets is heavy.

    degrees = 360.0 * steps / rotations

    def turn(batch, kind):
        batch = np.asarray(batch, dtype="float32")
        if kind == INVARIANT:
            return batch
        if kind not in KINDS:
            raise ValueError(f"Received: kind={kind!r}; expected one of {KINDS}")
        batch = keras.ops.convert_to_numpy(transforms.rotate(batch, degrees))
        if kind == GROUP:
            shape = batch.shape
            grouped = batch.reshape(shape[:-1] + (shape[-1] // rotations, rotations))
            batch = np.roll(grouped, steps, axis=-1).reshape(shape)
        return batch

    x = keras.ops.convert_to_numpy(x)
    expected = turn(keras.ops.convert_to_numpy(fn(x)), output_kind)
    actual = keras.ops.convert_to_numpy(fn(turn(x, input_kind))).astype("float32")
    if output_kind != INVARIANT:
        disc = inscribed_disc(*expected.shape[1:3], margin=margin)[None, :, :, None]
        expected, actual = expected * disc, actual * disc
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))
