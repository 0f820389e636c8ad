"""2D convolution in the formulations that TensorFlow's CPU kernels run fastest.

Three rewrites, each exact up to float rounding:

- A convolution whose kernel covers its whole unpadded input (the study
  encoders' 5x5 stride-5 layer on 5x5 maps) is one matmul of the flattened
  input and kernel. TensorFlow's convolution kernels ran it 4x slower,
  forward and backward together (59 ms against 14 ms per batch of 128 on a
  2-core AMD EPYC, AVX2, oneDNN on).
- Its transposed convolution, from a single position, is one matmul too
  (`conv2d_transpose`, the decoder of such a layer).
- The filter gradient as a forward convolution, on request. TensorFlow's
  CPU kernel for a strided convolution's filter gradient
  (`Conv2DBackpropFilter`) runs far below the machine's matmul speed on the
  wide strided convolutions of capsule networks: on the same machine,
  CapsNet's primary-capsule convolution (9x9, stride 2, 256 to 256 channels
  on 20x20) took 1.0 s per batch of 100 for its filter gradient against
  0.37 s for its forward pass, at the same FLOPs. The gradient

      dW[i, j, c, f] = sum_{b, y, x} X[b, s*y + i, s*x + j, c] dY[b, y, x, f]

  is the valid convolution of the image `X^T[c, :, :, b]` (batch `c`,
  channels `b`) with the filter `dY^T[y, x, b, f]` dilated by the stride
  `s`, which the same CPU runs at its forward-convolution speed (0.33 s,
  3.1x faster; 1.3x with oneDNN off). `conv2d(...,
  filter_gradient="forward_conv")` computes the forward pass and the input
  gradient as before and only the filter gradient this way; `"native"`
  leaves all three to TensorFlow. On smaller strided convolutions it gained
  nothing or lost (the study encoders' 6x6 stride-3 layer on one input
  channel ran 3x slower), so it is a layer's choice, not the rule.

All three are TensorFlow's: on the TensorFlow backend `conv2d` and
`conv2d_transpose` choose among them; on every other backend (JAX, PyTorch)
they are `keras.ops.conv` and `keras.ops.conv_transpose`, the backend's own
kernels and gradients, and this module imports no TensorFlow. One exception,
JAX on CPU: XLA's CPU input gradient of a strided convolution is a
transposed convolution with a dilated input, which it runs as a slow loop
(CapsNet's primary capsules, 9x9 stride 2, 256 to 256 channels on 20x20, at
batch 32 on a 2-core AMD EPYC: 41 s, against 0.9 s forward). There a strided
convolution runs as a stride-1 one on the space-to-depth input
(`strided_as_stride_one`: the kernel zero-padded to a multiple of the
stride, so 23% more multiplies for 9x9 stride 2), whose gradients are
stride-1 convolutions.
"""

import keras

FILTER_GRADIENTS = ("native", "forward_conv")


def check_filter_gradient(filter_gradient):
    """Raises `ValueError` unless `filter_gradient` is one of `FILTER_GRADIENTS`."""
    if filter_gradient not in FILTER_GRADIENTS:
        raise ValueError(
            f"Received: filter_gradient={filter_gradient!r}; expected one of "
            f"{', '.join(repr(name) for name in FILTER_GRADIENTS)}"
        )


def _tensorflow():
    """The `tensorflow` module on the TensorFlow backend, else `None` (nothing imported)."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf  # Only on the TensorFlow backend.

    return tf


def same_padding(size, kernel, stride):
    """TensorFlow's `"same"` padding `(before, after)` along one axis."""
    output = -(-size // stride)
    total = max((output - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _filter_gradient_by_forward_conv(inputs, output_gradient, kernel_size, strides, padding):
    """The filter gradient of `conv2d` as one valid forward convolution (see module doc)."""
    tf = _tensorflow()
    (kernel_h, kernel_w), (stride_h, stride_w) = kernel_size, strides
    if padding == "same":
        pad_h = same_padding(inputs.shape[1], kernel_h, stride_h)
        pad_w = same_padding(inputs.shape[2], kernel_w, stride_w)
        inputs = tf.pad(inputs, [[0, 0], pad_h, pad_w, [0, 0]])
    out_h, out_w = output_gradient.shape[1], output_gradient.shape[2]
    # Rows and columns no output reads (a valid stride that does not divide the input).
    inputs = inputs[:, :stride_h * (out_h - 1) + kernel_h, :stride_w * (out_w - 1) + kernel_w, :]
    image = tf.transpose(inputs, [3, 1, 2, 0])
    dilated_filter = tf.transpose(output_gradient, [1, 2, 0, 3])
    gradient = tf.nn.conv2d(image, dilated_filter, strides=1, padding="VALID",
                            dilations=[stride_h, stride_w])
    return tf.transpose(gradient, [1, 2, 0, 3])


def _jax_on_cpu():
    if keras.backend.backend() != "jax":
        return False
    import jax  # Only on the JAX backend.

    return jax.default_backend() == "cpu"


def strided_as_stride_one(inputs, kernel, strides, padding):
    """A strided `channels_last` convolution as a stride-1 one; the same values.

    With strides `(s, t)` the input is cut into `s x t` phases stacked on the
    channel axis (space to depth) and the kernel, zero-padded to multiples
    of the strides, likewise: output `y` reads input rows `s*y + s*a + p`
    through kernel row `s*a + p`, that is phase `p` of the new input's row
    `y + a` through row `a` of the new kernel.

    Args:
        inputs: `[batch, height, width, in_channels]`, height, width and
            channels known.
        kernel: `[kernel_h, kernel_w, in_channels, filters]`.
        strides: tuple of 2 ints.
        padding: `"valid"` or `"same"` (TensorFlow's, `same_padding`).

    Returns:
        `[batch, out_h, out_w, filters]`, as `keras.ops.conv`.
    """
    ops = keras.ops
    (kernel_h, kernel_w), (stride_h, stride_w) = tuple(kernel.shape[:2]), strides
    _, height, width, channels = inputs.shape
    filters = kernel.shape[3]
    if padding == "same":
        pad_h, pad_w = same_padding(height, kernel_h, stride_h), same_padding(width, kernel_w, stride_w)
        inputs = ops.pad(inputs, ((0, 0), pad_h, pad_w, (0, 0)))
        height, width = height + sum(pad_h), width + sum(pad_w)
    out_h, out_w = (height - kernel_h) // stride_h + 1, (width - kernel_w) // stride_w + 1
    taps_h, taps_w = -(-kernel_h // stride_h), -(-kernel_w // stride_w)
    rows, cols = (out_h + taps_h - 1) * stride_h, (out_w + taps_w - 1) * stride_w
    # Drop what no output reads; pad zeros that meet only the kernel's zero padding.
    inputs = inputs[:, :min(rows, height), :min(cols, width), :]
    inputs = ops.pad(inputs, ((0, 0), (0, max(rows - height, 0)), (0, max(cols - width, 0)),
                              (0, 0)))
    phases = stride_h * stride_w * channels
    inputs = ops.reshape(inputs, (-1, rows // stride_h, stride_h, cols // stride_w, stride_w,
                                  channels))
    inputs = ops.reshape(ops.transpose(inputs, (0, 1, 3, 2, 4, 5)),
                         (-1, rows // stride_h, cols // stride_w, phases))
    kernel = ops.pad(kernel, ((0, taps_h * stride_h - kernel_h), (0, taps_w * stride_w - kernel_w),
                              (0, 0), (0, 0)))
    kernel = ops.reshape(kernel, (taps_h, stride_h, taps_w, stride_w, channels, filters))
    kernel = ops.reshape(ops.transpose(kernel, (0, 2, 1, 3, 4, 5)),
                         (taps_h, taps_w, phases, filters))
    return ops.conv(inputs, kernel, strides=1, padding="valid")


def covers_whole_input(input_shape, kernel_size, strides, padding):
    """Whether a convolution's kernel spans its whole input with no padding (a matmul)."""
    height, width = input_shape[1], input_shape[2]
    if (height, width) != tuple(kernel_size):
        return False
    # "same" pads nothing and outputs one position only when each stride
    # reaches past the input.
    return padding == "valid" or all(s >= k for s, k in zip(strides, kernel_size))


def conv2d(inputs, kernel, strides, padding, filter_gradient="native"):
    """`channels_last` 2D convolution in the fastest of its exact formulations.

    On the TensorFlow backend, a kernel that covers the whole unpadded input
    is applied as one matmul (see `covers_whole_input`); otherwise
    `filter_gradient` picks the filter gradient's kernel. On other backends
    it is `keras.ops.conv`, whatever `filter_gradient` says (on JAX on CPU,
    `strided_as_stride_one` for strides above 1).

    Args:
        inputs: `[batch, height, width, in_channels]` tensor; the rewrites
            need its height and width static, and without them it runs
            TensorFlow's convolution.
        kernel: `[kernel_h, kernel_w, in_channels, filters]` tensor.
        strides: tuple of 2 ints.
        padding: `"valid"` or `"same"`.
        filter_gradient: `"native"` (TensorFlow's `Conv2DBackpropFilter`)
            or `"forward_conv"` (the module doc's forward convolution); only
            the TensorFlow backend reads it.

    Returns:
        `[batch, out_h, out_w, filters]`, the same as `keras.ops.conv`.
    """
    check_filter_gradient(filter_gradient)
    strides = tuple(int(s) for s in strides)
    tf = _tensorflow()
    if tf is None:
        spatial_known = None not in tuple(inputs.shape[1:])
        if strides != (1, 1) and spatial_known and _jax_on_cpu():
            return strided_as_stride_one(inputs, kernel, strides, padding)
        return keras.ops.conv(inputs, kernel, strides=strides, padding=padding)
    # Tensors, not variables: a custom gradient must not read a variable.
    inputs, kernel = tf.convert_to_tensor(inputs), tf.convert_to_tensor(kernel)
    kernel_size = tuple(kernel.shape[:2])
    padding_name = padding.upper()
    spatial_known = inputs.shape[1] is not None and inputs.shape[2] is not None
    if spatial_known and covers_whole_input(inputs.shape, kernel_size, strides, padding):
        flat = tf.reshape(inputs, [-1, kernel_size[0] * kernel_size[1] * inputs.shape[3]])
        outputs = tf.matmul(flat, tf.reshape(kernel, [flat.shape[1], kernel.shape[3]]))
        return tf.reshape(outputs, [-1, 1, 1, kernel.shape[3]])
    if filter_gradient == "native" or not spatial_known:
        return tf.nn.conv2d(inputs, kernel, strides=strides, padding=padding_name)

    @tf.custom_gradient
    def convolve(inputs, kernel):
        outputs = tf.nn.conv2d(inputs, kernel, strides=strides, padding=padding_name)

        def gradient(output_gradient):
            input_gradient = tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(inputs), filter=kernel, out_backprop=output_gradient,
                strides=[1, *strides, 1], padding=padding_name)
            kernel_gradient = _filter_gradient_by_forward_conv(
                inputs, output_gradient, kernel_size, strides, padding)
            return input_gradient, kernel_gradient

        return outputs, gradient

    return convolve(inputs, kernel)


def conv2d_transpose(inputs, kernel, strides):
    """`"valid"` `channels_last` transposed convolution; one matmul from a single position.

    Args:
        inputs: `[batch, height, width, in_channels]` tensor.
        kernel: `[kernel_h, kernel_w, out_channels, in_channels]` tensor,
            the layout of `keras.ops.conv_transpose`.
        strides: tuple of 2 ints.

    Returns:
        `[batch, (height - 1) * stride_h + kernel_h, ..., out_channels]`,
        the same as `keras.ops.conv_transpose(..., padding="valid")`. From a
        1x1 input that is the kernel weighted by the input's channels, a
        matmul (the decoder of a whole-input convolution) on the TensorFlow
        backend; elsewhere it is `keras.ops.conv_transpose` throughout.
    """
    strides = tuple(int(s) for s in strides)
    tf = _tensorflow()
    if tf is None:
        return keras.ops.conv_transpose(inputs, kernel, strides=strides, padding="valid")
    inputs, kernel = tf.convert_to_tensor(inputs), tf.convert_to_tensor(kernel)
    kernel_h, kernel_w, out_channels, in_channels = kernel.shape
    if inputs.shape[1] == 1 and inputs.shape[2] == 1:
        flat_kernel = tf.reshape(kernel, [kernel_h * kernel_w * out_channels, in_channels])
        outputs = tf.matmul(tf.reshape(inputs, [-1, in_channels]), flat_kernel, transpose_b=True)
        return tf.reshape(outputs, [-1, kernel_h, kernel_w, out_channels])
    return keras.ops.conv_transpose(inputs, kernel, strides=strides, padding="valid")
