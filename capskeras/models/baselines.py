"""The convolutional baselines capsule networks are compared with.

Each is a feature network (an encoder, images -> `[B, features]`) under a
single dense softmax layer, so it shares the study's training, serving and
evaluation.
"""

import keras


def lenet5_features(image_shape=(28, 28, 1), name="lenet5_features"):
    """LeNet5's feature layers: conv 6@5x5, avg-pool, conv 16@5x5, avg-pool, dense 120, 84.

    The first convolution pads its input ("same"), as LeNet5 saw 32x32
    digits; ReLU activations replace the original scaled tanh.

    Reference:
        LeCun, Bottou, Bengio and Haffner, "Gradient-Based Learning Applied
        to Document Recognition", Proc. IEEE 1998.
    """
    return keras.Sequential(
        [
            keras.Input(shape=tuple(image_shape)),
            keras.layers.Conv2D(6, 5, padding="same", activation="relu", name="conv_1"),
            keras.layers.AveragePooling2D(2, name="pool_1"),
            keras.layers.Conv2D(16, 5, activation="relu", name="conv_2"),
            keras.layers.AveragePooling2D(2, name="pool_2"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(120, activation="relu", name="dense_1"),
            keras.layers.Dense(84, activation="relu", name="dense_2"),
        ],
        name=name,
    )


def cnn_baseline_features(image_shape=(40, 40, 1), name="cnn_baseline_features"):
    """The plain CNN of Sabour et al.: conv 256, 256, 128 (5x5, stride 1), dense 328, 192.

    With 40x40 affNIST-protocol inputs it has the paper's 35.4M parameters
    (with its 10-way softmax layer).

    Reference:
        Sabour, Frosst and Hinton, "Dynamic Routing Between Capsules",
        NeurIPS 2017, section 5.
    """
    return keras.Sequential(
        [
            keras.Input(shape=tuple(image_shape)),
            keras.layers.Conv2D(256, 5, activation="relu", name="conv_1"),
            keras.layers.Conv2D(256, 5, activation="relu", name="conv_2"),
            keras.layers.Conv2D(128, 5, activation="relu", name="conv_3"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(328, activation="relu", name="dense_1"),
            keras.layers.Dense(192, activation="relu", name="dense_2"),
        ],
        name=name,
    )
