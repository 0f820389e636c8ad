"""Group-equivariant CNNs of Cohen and Welling's rotated-MNIST experiment: P4CNN and Z2CNN.

Both are a feature network under a single dense softmax layer
(`ClassificationHead(hidden_units=())`) inside a `StudyModel`, like the
LeNet5 baseline, so they share the trainer, serving contract and
evaluation.

Z2CNN: seven convolutions, 3x3 with 20 channels (4x4 in the last),
'valid' padding, batch normalization (momentum 0.9), ReLU and dropout 0.3 after each
but the last, and a 2x2 max-pooling after the second: 28 -> 26 -> 24 -> 12
-> 10 -> 8 -> 6 -> 4 -> 1. P4CNN: the same with every convolution a p4
convolution (the first lifting) of 20 / sqrt(4) = 10 channels, group batch
normalization, no dropout, and a max-pooling over the four rotations after
the last layer. A global spatial max-pooling then yields the feature
vector (1x1 on 28x28 digits). Every layer of P4CNN samples symmetrically
on 28x28 inputs, so its class scores are exactly invariant to quarter
turns of the input.

Serving: `model.serving_model()` returns the same model with every
`GroupConv2D` folded into a plain `Conv2D` (expanded kernel) and every
`GroupBatchNormalization` into a `BatchNormalization` (repeated
statistics). `capskeras.export` exports
`serving_model()`, so the trainer's SavedModels hold plain convolutions:

    from capskeras import export
    export.export_saved_model(model, export_dir, (28, 28, 1))  # plain Conv2D inside

Reference:
    Cohen and Welling, "Group Equivariant Convolutional Networks", ICML
    2016, section 8.1 (P4CNN 2.28% and Z2CNN 5.03% test error on MNIST-rot).
"""

import math

import keras

from capskeras.layers import GroupBatchNormalization
from capskeras.layers import GroupConv2D
from capskeras.layers import GroupPooling
from capskeras.layers import group_algebra
from capskeras.models.study import feature_classifier

Z2CNN_CHANNELS = 20
Z2CNN_DROPOUT = 0.3
NUM_LAYERS = 7
# Chainer's default, which the paper's experiments used; Keras's 0.99 leaves
# the moving statistics far from the data after a few hundred steps.
BN_MOMENTUM = 0.9


def _initializer(seed, index):
    return keras.initializers.GlorotUniform(seed=None if seed is None else seed + index)


def _dropout(rate, seed, index):
    return keras.layers.Dropout(rate, seed=None if seed is None else seed + 1000 + index,
                                name=f"dropout_{index + 1}")


def _check_dropout(dropout):
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"Received: dropout={dropout!r}; expected a float in [0, 1)")


def _seven_layers(image_shape, conv, norm, dropout, seed):
    """The shared geometry: input, 6 x (3x3 conv, norm, ReLU[, dropout]), 2x2 pool after
    the second, a final 4x4 conv. `conv(index, kernel_size)`, `norm(index)` make the layers.
    """
    stack = [keras.Input(tuple(image_shape))]
    for index in range(NUM_LAYERS - 1):
        stack += [conv(index, 3), norm(index), keras.layers.ReLU(name=f"relu_{index + 1}")]
        if dropout:
            stack.append(_dropout(dropout, seed, index))
        if index == 1:
            stack.append(keras.layers.MaxPooling2D(2, name="pool"))
    stack.append(conv(NUM_LAYERS - 1, 4))
    return stack


def gcnn_features(image_shape=(28, 28, 1), group="p4", channels=None, dropout=0.0,
                  seed=None, name=None):
    """P4CNN's (or P4M-CNN's) feature layers: images -> `[B, channels]`, invariant.

    Args:
        image_shape: `(H, W, C)` of the input images.
        group: `"p4"` or `"p4m"`.
        channels: channels per layer; defaults to `round(20 / sqrt(G))`
            (10 for p4, 7 for p4m), which keeps about Z2CNN's parameters.
        dropout: dropout rate after each hidden layer (0 in the paper).
        seed: int seeding the initializers, or None.
        name: the model's name.
    """
    order = group_algebra.check_group(group)
    _check_dropout(dropout)
    channels = channels or round(Z2CNN_CHANNELS / math.sqrt(order))

    def conv(index, kernel_size):
        return GroupConv2D(channels, kernel_size, group=group, lifting=index == 0,
                           kernel_initializer=_initializer(seed, index),
                           name=f"gconv_{index + 1}")

    def norm(index):
        return GroupBatchNormalization(group, momentum=BN_MOMENTUM, name=f"gbn_{index + 1}")

    stack = _seven_layers(image_shape, conv, norm, dropout, seed)
    stack += [GroupPooling(group, "max", name="group_pool"),
              keras.layers.GlobalMaxPooling2D(name="spatial_pool")]
    return keras.Sequential(stack, name=name or f"{group}cnn_features")


def z2cnn_features(image_shape=(28, 28, 1), channels=Z2CNN_CHANNELS, dropout=Z2CNN_DROPOUT,
                   seed=None, name="z2cnn_features"):
    """Z2CNN's feature layers: the same geometry with plain convolutions."""
    _check_dropout(dropout)

    def conv(index, kernel_size):
        return keras.layers.Conv2D(channels, kernel_size,
                                   kernel_initializer=_initializer(seed, index),
                                   name=f"conv_{index + 1}")

    def norm(index):
        return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"bn_{index + 1}")

    stack = _seven_layers(image_shape, conv, norm, dropout, seed)
    stack.append(keras.layers.GlobalMaxPooling2D(name="spatial_pool"))
    return keras.Sequential(stack, name=name)


def build_p4cnn(image_shape=(28, 28, 1), num_classes=10, seed=None, group="p4",
                channels=None, dropout=0.0):
    """P4CNN (or, with `group="p4m"`, P4M-CNN) as a classifier meeting the serving contract.

    The invariant features go through one dense layer to the class logits
    (num_classes x channels + num_classes parameters beyond the paper's
    network, which read its last layer's channels as logits).
    """
    features = gcnn_features(image_shape, group, channels, dropout, seed)
    return feature_classifier(features, num_classes, name=f"{group}cnn")


def build_z2cnn(image_shape=(28, 28, 1), num_classes=10, seed=None,
                channels=Z2CNN_CHANNELS, dropout=Z2CNN_DROPOUT):
    """Z2CNN, the paper's plain baseline, as a classifier meeting the serving contract."""
    return feature_classifier(z2cnn_features(image_shape, channels, dropout, seed), num_classes,
                              name="z2cnn")
