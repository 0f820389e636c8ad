"""The study's encoder geometry and its variants.

Every encoder has one fixed geometry, input 28x28x1:

| layer | receptive field | stride | filters            | output    |
|-------|-----------------|--------|--------------------|-----------|
| 1     | 6x6             | 3      | 64 (16 groups x 4) | 10x10x64  |
| 2     | 5x5             | 2      | 256 (16 x 16)      | 5x5x256   |
| 3     | 5x5             | 5      | 256 (16 x 16)      | 1x1x256   |

and emits the flattened deepest layer, the 256-element code. The variants
differ in how the layers are trained; see `capskeras.models.registry`.
"""

import keras

from capskeras.layers.fast_conv2d import FastConv2D
from capskeras.layers.k_sparse import KSparse

# (filters, kernel_size, strides) of the three layers.
STUDY_GEOMETRY = ((64, 6, 3), (256, 5, 2), (256, 5, 5))
DEFAULT_KSPARSE_K = (640, 320, 32)


def conv_encoder(image_shape=(28, 28, 1), ksparse_k=None, ksparse_alpha=1.0,
                 seed=None, name="encoder"):
    """The study's three ReLU convolutions, optionally k-sparse after each.

    The convolutions are `FastConv2D`s: the third, whose 5x5 kernel covers
    its 5x5 input, runs as a matmul.

    Args:
        image_shape: `(H, W, C)` of the input images.
        ksparse_k: None for a dense encoder, or three ints: the number of
            units each layer keeps per sample (`KSparse`).
        ksparse_alpha: inference multiplier of k (see `KSparse`).
        seed: int seeding the kernel initializers, so a frozen random
            encoder is reproducible.
        name: the model's name.

    Returns:
        A `keras.Sequential` mapping `[B, H, W, C]` images to `[B, code_dim]`.
    """
    if ksparse_k is not None and len(ksparse_k) != len(STUDY_GEOMETRY):
        raise ValueError(
            f"Received: ksparse_k={list(ksparse_k)}; expected "
            f"{len(STUDY_GEOMETRY)} ints, one per encoder layer"
        )
    layers = [keras.Input(shape=tuple(image_shape))]
    for index, (filters, kernel_size, strides) in enumerate(STUDY_GEOMETRY):
        layer_seed = None if seed is None else seed + index
        layers.append(
            FastConv2D(
                filters,
                kernel_size,
                strides=strides,
                padding="same",
                activation="relu",
                kernel_initializer=keras.initializers.GlorotUniform(layer_seed),
                name=f"conv_{index + 1}",
            )
        )
        if ksparse_k is not None:
            layers.append(
                KSparse(int(ksparse_k[index]), ksparse_alpha, name=f"ksparse_{index + 1}")
            )
    layers.append(keras.layers.Flatten(name="code"))
    return keras.Sequential(layers, name=name)


def mirror_decoder(encoder, name="mirror_decoder"):
    """Transposed convolutions that undo `encoder`'s geometry, for autoencoding.

    Each convolution of the encoder is mirrored by a `Conv2DTranspose` with
    its kernel and stride, in reverse order; the last one is linear with the
    encoder's input channels, and the result is cropped to the input size.
    A sigmoid output would saturate: mostly-black digits pull it towards 0
    within the first steps at Adam's usual 1e-3, and the decoder then stays
    black (MSE stuck at the mean of x^2).

    Returns:
        A `keras.Sequential` mapping `[B, code_dim]` codes to images.
    """
    convs = [layer for layer in encoder.layers if isinstance(layer, keras.layers.Conv2D)]
    height, width, channels = encoder.input_shape[1:]
    code_shape = encoder.get_layer("code").input.shape[1:]
    layers = [keras.Input(shape=(encoder.output_shape[-1],)), keras.layers.Reshape(code_shape)]
    out_height, out_width = code_shape[0], code_shape[1]
    for index, conv in enumerate(reversed(convs)):
        last = index == len(convs) - 1
        below = None if last else convs[len(convs) - 2 - index].filters
        layers.append(
            keras.layers.Conv2DTranspose(
                channels if last else below,
                conv.kernel_size,
                strides=conv.strides,
                padding="same",
                activation=None if last else "relu",
                name=f"deconv_{len(convs) - index}",
            )
        )
        out_height *= conv.strides[0]
        out_width *= conv.strides[1]
    crop_rows, crop_cols = out_height - height, out_width - width
    layers.append(
        keras.layers.Cropping2D(
            ((crop_rows // 2, crop_rows - crop_rows // 2),
             (crop_cols // 2, crop_cols - crop_cols // 2)),
            name="crop",
        )
    )
    return keras.Sequential(layers, name=name)
