"""A layer that blocks gradients, for frozen baselines."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="capskeras")
class StopGradient(keras.layers.Layer):
    """Passes its input through and stops the gradient behind it.

    Placed on top of an encoder whose `trainable` is False, it makes the
    freeze explicit in the graph as well as in the optimizer: nothing below
    this layer receives a gradient, as in the original TensorFlow baselines
    that wrapped a frozen encoder in `tf.stop_gradient`.

    Call arguments:
        inputs: Any tensor.

    Input shape:
        Any shape.

    Output shape:
        Same as the input.

    Example:

    >>> frozen_code = StopGradient()(keras.ops.ones((2, 256)))

    Reference:
        Rawlinson, Ahmed and Kowadlo, "Sparse Unsupervised Capsules
        Generalize Better", 2018 (the untrained, frozen encoder baseline).
    """

    def call(self, inputs):
        return ops.stop_gradient(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape
