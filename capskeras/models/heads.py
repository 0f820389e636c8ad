"""The study's heads: a dense reconstruction decoder and a dense classifier.

A head maps the encoder's code `[B, code_dim]` to its output and says how
it is trained (`target`, `loss`, `metrics`) and served (`serving_outputs`).
"""

import math

import keras
from keras import ops


# The hidden layers of the reconstruction decoder (Sabour et al. 2017).
RECONSTRUCTION_HIDDEN_UNITS = (512, 1024)


def dense_layers(hidden_units, output_units, output_activation):
    """The heads' dense stack: `(hidden, output)`, ReLU layers `hidden_units`, then one output layer.

    `ReconstructionHead` and `ClassificationHead` hold these layers, and so
    do the CapsNet and SparseCaps decoders (`capsnet.capsule_decoder`).
    """
    hidden = [
        keras.layers.Dense(int(units), activation="relu", name=f"dense_{i}")
        for i, units in enumerate(hidden_units)
    ]
    return hidden, keras.layers.Dense(output_units, activation=output_activation, name="output")


class _DenseStack(keras.layers.Layer):
    """Dense ReLU layers, then dropout (if any), then one output layer."""

    def __init__(self, hidden_units, output_units, output_activation, dropout=0.0, **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = tuple(int(units) for units in hidden_units)
        self.dropout = float(dropout)
        self.dropout_layer = keras.layers.Dropout(self.dropout, name="dropout")
        self.dense_layers, self.output_layer = dense_layers(
            self.hidden_units, output_units, output_activation)

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.dense_layers + [self.output_layer]:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)

    def _dense_forward(self, code, training=False):
        x = code
        for layer in self.dense_layers:
            x = layer(x)
        x = self.dropout_layer(x, training=training)
        return self.output_layer(x)


@keras.saving.register_keras_serializable(package="capskeras")
class ReconstructionHead(_DenseStack):
    """Decodes a code into an image: dense 512 ReLU -> 1024 ReLU -> pixels, sigmoid.

    Trained with the mean squared error between its output and the input
    image.

    Args:
        image_shape: `(H, W, C)` of the reconstructed image.
        hidden_units: sizes of the hidden ReLU layers.

    Call arguments:
        code: `[batch_size, code_dim]` tensor.

    Input shape:
        `(batch_size, code_dim)`.

    Output shape:
        `(batch_size, H, W, C)`, values in [0, 1].

    Example:

    >>> head = ReconstructionHead(image_shape=(28, 28, 1))
    >>> head(keras.ops.zeros((2, 256))).shape
    (2, 28, 28, 1)

    Reference:
        Sabour, Frosst and Hinton, "Dynamic Routing Between Capsules",
        NeurIPS 2017 (the 512-1024 decoder).
    """

    target = "images"

    def __init__(self, image_shape=(28, 28, 1), hidden_units=RECONSTRUCTION_HIDDEN_UNITS,
                 **kwargs):
        self.image_shape = tuple(int(dim) for dim in image_shape)
        super().__init__(
            hidden_units, math.prod(self.image_shape), "sigmoid", **kwargs
        )

    def call(self, code):
        pixels = self._dense_forward(code)
        return ops.reshape(pixels, (-1,) + self.image_shape)

    def compute_output_shape(self, input_shape):
        return (input_shape[0],) + self.image_shape

    def default_loss(self):
        return keras.losses.MeanSquaredError(name="mse")

    def default_metrics(self):
        return [keras.metrics.MeanSquaredError(name="mse")]

    def serving_outputs(self, reconstruction):
        return {"reconstruction": reconstruction}

    def get_config(self):
        config = super().get_config()
        config.update(
            {"image_shape": self.image_shape, "hidden_units": self.hidden_units}
        )
        return config


@keras.saving.register_keras_serializable(package="capskeras")
class ClassificationHead(_DenseStack):
    """Classifies a code: dense 1024 ReLU -> 512 ReLU -> class logits.

    Trained with softmax cross-entropy; reports accuracy.

    Args:
        num_classes: number of classes.
        hidden_units: sizes of the hidden ReLU layers; `()` for a single
            softmax layer, as on the convolutional baselines.
        dropout: dropout rate applied to the output layer's input.

    Call arguments:
        code: `[batch_size, code_dim]` tensor.

    Input shape:
        `(batch_size, code_dim)`.

    Output shape:
        `(batch_size, num_classes)` logits.

    Example:

    >>> head = ClassificationHead(num_classes=10)
    >>> head(keras.ops.zeros((2, 256))).shape
    (2, 10)

    Reference:
        Rawlinson, Ahmed and Kowadlo, "Sparse Unsupervised Capsules
        Generalize Better", 2018 (the classifier on a frozen encoder).
    """

    target = "labels"

    def __init__(self, num_classes=10, hidden_units=(1024, 512), dropout=0.0, **kwargs):
        self.num_classes = int(num_classes)
        super().__init__(hidden_units, self.num_classes, None, dropout, **kwargs)

    def call(self, code, training=False):
        return self._dense_forward(code, training=training)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def default_loss(self):
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def default_metrics(self):
        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]

    def serving_outputs(self, logits):
        logits = ops.cast(logits, "float32")
        return {
            "probabilities": ops.softmax(logits, axis=-1),
            "class_ids": ops.argmax(logits, axis=-1),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "hidden_units": self.hidden_units,
                "dropout": self.dropout,
            }
        )
        return config
