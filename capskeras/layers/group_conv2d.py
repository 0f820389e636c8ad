"""GroupConv2D: the p4 and p4m group convolutions of Cohen and Welling."""

import keras
import numpy as np
from keras import ops

from capskeras.checks import check_positive_int
from capskeras.checks import check_positive_int_pair
from capskeras.layers import group_algebra


@keras.saving.register_keras_serializable(package="capskeras")
class GroupConv2D(keras.layers.Layer):
    """A convolution equivariant to 90-degree rotations (p4) and mirrors (p4m).

    Each output channel has one filter bank. The layer moves that bank by
    every element of the group (rotating and mirroring it spatially and, on
    group inputs, permuting its group axis by the group law) and applies all
    copies in a single `conv2d` call with the expanded kernel. Rotating (or
    mirroring) the input then rotates every output plane and permutes the
    group axis, exactly.

    Channel layout, the same in every capskeras group layer: channels-last
    `[B, H, W, C * G]` with channel `c * G + g` holding channel `c` at group
    element `g` (the group index runs fastest; `G = 4` for p4, 8 for p4m;
    element `g = 4 s + k` mirrors left-right `s` times, then turns `k`
    quarter turns counter-clockwise). Ordinary spatial layers
    (`MaxPooling2D`, `Dropout`, activations) keep this layout as it is.

    A lifting layer (`lifting=True`) takes plain images `[B, H, W, C]`; a
    group layer (`lifting=False`) takes group feature maps
    `[B, H, W, C * G]`. Both return `[B, H', W', filters * G]`. There is one
    bias per output channel, shared by its `G` copies.

    Exact equivariance needs the convolution's sampling grid to be
    symmetric about the image centre: `"valid"` padding at stride 1 (any
    kernel), `"same"` padding with an odd kernel at stride 1, and at stride
    `s` sizes with `(size - kernel_size) % s == 0` ("valid") or an even
    overhang `(ceil(size / s) - 1) * s + kernel_size - size` ("same"). The
    layer refuses other combinations with a ValueError when it sees the
    input size (in `build`, or on the first call for a dynamic size).
    `MaxPooling2D` obeys the same rule: 2x2 pooling at stride 2 needs even
    sizes.

    `to_conv2d()` folds the layer into an ordinary `keras.layers.Conv2D`
    with the expanded kernel and repeated bias, giving the same outputs, so
    exported SavedModels can hold plain convolutions.

    Args:
        filters: int >= 1, output channels (each becomes `G` feature maps).
        kernel_size: int or tuple of 2 equal ints (the kernel is square).
        group: `"p4"` (rotations) or `"p4m"` (rotations and mirrors).
        lifting: bool, True for images in (plane to group), False for
            group feature maps in (group to group).
        strides: int or tuple of 2 ints. Defaults to 1.
        padding: `"valid"` or `"same"`.
        activation: activation applied to the outputs, or None.
        use_bias: bool, add one bias per output channel.
        kernel_initializer: initializer of the filter banks (their fan-in
            counts the input group axis).
        bias_initializer: initializer of the biases.
        kernel_regularizer: optional regularizer of the filter banks.
        bias_regularizer: optional regularizer of the biases.
        kernel_constraint: optional constraint of the filter banks.
        bias_constraint: optional constraint of the biases.
        **kwargs: Base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: a 4D channels-last tensor.

    Input shape:
        `(batch, H, W, C)` when lifting, `(batch, H, W, C * G)` otherwise.

    Output shape:
        `(batch, H', W', filters * G)`.

    Example:

    >>> x = keras.ops.ones((2, 9, 9, 1))
    >>> lifted = GroupConv2D(8, 3, group="p4", lifting=True)(x)
    >>> lifted.shape
    (2, 7, 7, 32)
    >>> GroupConv2D(8, 3, group="p4", lifting=False)(lifted).shape
    (2, 5, 5, 32)

    Reference:
        Cohen and Welling, "Group Equivariant Convolutional Networks",
        ICML 2016. https://arxiv.org/abs/1602.07576
    """

    def __init__(
        self,
        filters,
        kernel_size,
        group="p4",
        lifting=True,
        strides=1,
        padding="valid",
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("filters", filters)
        self.filters = filters
        self.kernel_size = check_positive_int_pair("kernel_size", kernel_size)
        if self.kernel_size[0] != self.kernel_size[1]:
            raise ValueError(
                f"Received: kernel_size={kernel_size!r}; expected a square kernel "
                "(quarter turns map a kh x kw window onto a kw x kh one)"
            )
        self.group = group
        self.group_order = self._group_order(group)
        if not isinstance(lifting, bool):
            raise ValueError(f"Received: lifting={lifting!r}; expected a bool")
        self.lifting = lifting
        self.strides = check_positive_int_pair("strides", strides)
        if padding not in ("valid", "same"):
            raise ValueError(f"Received: padding={padding!r}; expected 'valid' or 'same'")
        self.padding = padding
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.input_spec = keras.layers.InputSpec(ndim=4)
        self._check_geometry((None, None))

    def _group_order(self, group):
        """The order of `group`, one whose action on the kernel is exact."""
        if group not in group_algebra.GROUP_ORDERS:
            raise ValueError(
                f"Received: group={group!r}; expected 'p4' or 'p4m' (for K rotations by "
                "interpolated filters, use RotatedConv2D(rotations=K))"
            )
        return group_algebra.GROUP_ORDERS[group]

    @property
    def in_group_order(self):
        """Group copies per input channel: 1 when lifting, else `G`."""
        return 1 if self.lifting else self.group_order

    def _check_geometry(self, sizes):
        for axis, size in enumerate(sizes):
            if self.padding == "valid" and size is not None and size < self.kernel_size[axis]:
                raise ValueError(
                    f"Received: inputs of size {size} on spatial axis {axis}; expected at "
                    f"least kernel_size={self.kernel_size[axis]} with 'valid' padding"
                )
            symmetric = group_algebra.sampling_is_symmetric(
                size, self.kernel_size[axis], self.strides[axis], self.padding
            )
            if symmetric is False:
                size_text = "any size" if size is None else f"size {size}"
                raise ValueError(
                    f"Received: kernel_size={self.kernel_size}, strides={self.strides}, "
                    f"padding={self.padding!r} on spatial axis {axis} of {size_text}; "
                    "the sampling grid is not symmetric about the image centre, so "
                    "the layer would not be equivariant. Expected 'valid' padding with "
                    "(size - kernel_size) % stride == 0, or 'same' padding with an "
                    "even overhang (an odd kernel at stride 1)."
                )

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                f"GroupConv2D needs a known channel axis. Received: input_shape={input_shape}"
            )
        if channels % self.in_group_order:
            raise ValueError(
                f"Received: input_shape={input_shape} for a group layer of group="
                f"{self.group!r}; expected channels divisible by {self.group_order} "
                "(channel c * G + g is channel c at group element g)"
            )
        self._check_geometry(tuple(input_shape[1:3]))
        self.in_channels = channels // self.in_group_order
        kh, kw = self.kernel_size
        bank_shape = (kh, kw, self.in_channels, self.filters)
        if not self.lifting:
            bank_shape = (kh, kw, self.in_channels, self.group_order, self.filters)
        self.kernel = self.add_weight(
            name="kernel",
            shape=bank_shape,
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.filters,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        else:
            self.bias = None
        self._build_expansion()
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: channels})

    def _build_expansion(self):
        """Where each entry of the expanded kernel sits in the flattened filter banks.

        A constant of the layer's configuration, not a weight, so that one
        gather builds the expanded kernel in its final layout.
        """
        per_bank = group_algebra.expansion_index(
            self.group, self.kernel_size, self.in_channels, self.lifting
        )
        filters = np.arange(self.filters, dtype="int32")
        self._expansion_index = (per_bank[..., None, :] * self.filters
                                 + filters[:, None]).reshape(-1)

    def expanded_kernel(self):
        """The kernel of the equivalent `Conv2D`: `[kh, kw, C_in, filters * G]`."""
        kh, kw = self.kernel_size
        copies = ops.take(ops.reshape(self.kernel, (-1,)),
                          ops.convert_to_tensor(self._expansion_index))
        return ops.reshape(
            copies, (kh, kw, self.in_channels * self.in_group_order,
                     self.filters * self.group_order)
        )

    def expanded_bias(self):
        """The bias of the equivalent `Conv2D`: each channel's bias `G` times."""
        return group_algebra.per_group_copy(self.bias, self.group_order)

    def call(self, inputs):
        self._check_geometry(tuple(inputs.shape[1:3]))
        outputs = ops.conv(
            inputs,
            ops.cast(self.expanded_kernel(), self.compute_dtype),
            strides=self.strides,
            padding=self.padding,
            data_format="channels_last",
        )
        if self.use_bias:
            # ops.add writes a BiasAdd, which oneDNN fuses into the convolution.
            outputs = ops.add(outputs, ops.cast(self.expanded_bias(), self.compute_dtype))
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def compute_output_shape(self, input_shape):
        sizes = []
        for axis in range(2):
            size = input_shape[1 + axis]
            if size is None:
                sizes.append(None)
            elif self.padding == "same":
                sizes.append(-(-size // self.strides[axis]))
            else:
                sizes.append((size - self.kernel_size[axis]) // self.strides[axis] + 1)
        return (input_shape[0], sizes[0], sizes[1], self.filters * self.group_order)

    def to_conv2d(self, name=None):
        """An ordinary `Conv2D` computing the same function, built and loaded.

        It has `filters * G` filters (the expanded kernel), the repeated
        bias, and this layer's strides, padding, activation and dtype
        policy. Use it to export plain convolutions for serving.
        """
        if not self.built:
            raise ValueError(f"Layer {self.name!r} is not built; call it on inputs first")
        conv = keras.layers.Conv2D(
            self.filters * self.group_order,
            self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            activation=self.activation,
            use_bias=self.use_bias,
            dtype=self.dtype_policy,
            name=name or self.name,
        )
        conv.build((None, None, None, self.in_channels * self.in_group_order))
        weights = [ops.convert_to_numpy(self.expanded_kernel())]
        if self.use_bias:
            weights.append(ops.convert_to_numpy(self.expanded_bias()))
        conv.set_weights(weights)
        return conv

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "group": self.group,
                "lifting": self.lifting,
                "strides": self.strides,
                "padding": self.padding,
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
                "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
                "bias_constraint": keras.constraints.serialize(self.bias_constraint),
            }
        )
        return config
