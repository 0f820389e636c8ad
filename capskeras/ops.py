"""Capsule math as pure `keras.ops` functions: norms, squash, lengths, the longest.

All functions are backend-agnostic and keep the dtype of their input. Half
precision inputs (`float16`, `bfloat16`) are upcast to `float32` for the
reduction and the square root, then cast back: a sum of squares overflows
`float16` for vectors of norm above ~256, and `epsilon=1e-7` is subnormal in
`float16`.
"""

import keras
from keras import ops

_HALF_DTYPES = ("float16", "bfloat16")


def _upcast(x):
    """Returns `(x_as_float, original_dtype)`, with half precision upcast."""
    x = ops.convert_to_tensor(x)
    dtype = keras.backend.standardize_dtype(x.dtype)
    if dtype in _HALF_DTYPES:
        return ops.cast(x, "float32"), dtype
    if "float" not in dtype:
        # Integer input: compute (and return) in float32.
        return ops.cast(x, "float32"), "float32"
    return x, dtype


def _scaled(x, axis):
    """`(x / m, 1 / m)`, `m = max(max |x|, 1)` over `axis`, a constant for the gradient.

    Mathematically `f(x) = g(x / m, m)` for every `m`, so dividing by a
    constant leaves the gradient exact; `m = 1` for entries up to 1
    leaves their arithmetic untouched. NaN and inf entries make `m`
    non-finite, and `x / m` NaN.
    """
    largest = ops.stop_gradient(ops.max(ops.abs(x), axis=axis, keepdims=True))
    inverse = 1.0 / ops.maximum(largest, 1.0)
    return x * inverse, inverse


def safe_norm(x, axis=-1, keepdims=False, epsilon=1e-7):
    """Euclidean norm `sqrt(sum(x**2) + epsilon)` along `axis`.

    The epsilon sits inside the square root, so both the value and the
    gradient are finite at the zero vector (the gradient there is 0). The
    price is a floor of `sqrt(epsilon)` on the returned norm.

    Args:
        x: Tensor.
        axis: Axis (or tuple of axes) to reduce over. Defaults to `-1`.
        keepdims: Whether to keep the reduced axis with length 1.
        epsilon: Small positive constant added under the square root.

    Returns:
        Tensor of norms, in the dtype of `x`.

    Example:

    ```python
    safe_norm([3.0, 4.0])  # 5.0 (up to epsilon)
    safe_norm([0.0, 0.0])  # sqrt(1e-7), gradient [0, 0]
    ```
    """
    x, dtype = _upcast(x)
    # |x| = m sqrt(sum (x / m)^2 + epsilon / m^2).
    x, inverse = _scaled(x, axis)
    squared = ops.sum(ops.square(x), axis=axis, keepdims=True)
    norm = ops.sqrt(squared + epsilon * ops.square(inverse)) / inverse
    if not keepdims:
        norm = ops.squeeze(norm, axis=axis)
    return ops.cast(norm, dtype)


def squash(x, axis=-1, epsilon=1e-7):
    """Capsule non-linearity of Sabour et al. (2017).

    `v = |s|^2 / (1 + |s|^2) * s / |s|`: short vectors shrink to almost
    zero length, long vectors to a length just below 1, and the direction is
    kept. `|s|` is `safe_norm(s)`, so the value and the gradient are finite
    (both 0) at the zero vector.

    Args:
        x: Tensor of capsule vectors `s`.
        axis: The capsule (vector) axis. Defaults to `-1`.
        epsilon: Small positive constant inside the square root.

    Returns:
        Tensor of the same shape and dtype as `x`.

    Example:

    ```python
    squash([3.0, 4.0])  # 25/26 * [0.6, 0.8] = [0.5769..., 0.7692...]
    ```

    Reference:
        Sabour, Frosst & Hinton, "Dynamic Routing Between Capsules",
        NeurIPS 2017, eq. 1. https://arxiv.org/abs/1710.09829
    """
    x, dtype = _upcast(x)
    # With t = s / m and q = |t|^2: v = q / (1 / m^2 + q) / sqrt(q + epsilon / m^2) t.
    x, inverse = _scaled(x, axis)
    inverse_squared = ops.square(inverse)
    squared = ops.sum(ops.square(x), axis=axis, keepdims=True)
    scale = squared / (inverse_squared + squared) / ops.sqrt(squared + epsilon * inverse_squared)
    return ops.cast(scale * x, dtype)


def capsule_lengths(capsules, epsilon=1e-7):
    """Lengths of capsule vectors: `[batch, num_capsules, dim] -> [batch, num_capsules]`.

    Args:
        capsules: Tensor of shape `(..., num_capsules, capsule_dim)`.
        epsilon: Small positive constant inside the square root.

    Returns:
        Tensor of shape `(..., num_capsules)`: `safe_norm` over the last axis.
    """
    return safe_norm(capsules, axis=-1, keepdims=False, epsilon=epsilon)


def longest_capsule(capsules):
    """The index of the longest capsule: `[batch, num_capsules, dim] -> [batch]`.

    The capsule `CapsuleMask` keeps without labels, the one a CapsNet's
    decoder reconstructs from at inference.

    Args:
        capsules: Tensor of shape `(..., num_capsules, capsule_dim)`.

    Returns:
        Integer tensor of shape `(...)`.
    """
    return ops.argmax(capsule_lengths(capsules), axis=-1)
