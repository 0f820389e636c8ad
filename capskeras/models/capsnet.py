"""CapsNet, the MNIST network of Sabour, Frosst and Hinton (2017)."""

import math

import keras
from keras import ops

from capskeras import losses
from capskeras.layers.capsule_dense import CapsuleDense
from capskeras.layers.capsule_length import CapsuleLength
from capskeras.layers.capsule_mask import CapsuleMask
from capskeras.layers.primary_capsules import PrimaryCapsules
from capskeras.models import heads


def capsule_encoder(image_shape=(28, 28, 1), num_classes=10, routing_iterations=3,
                    flatten=False, name="capsule_encoder"):
    """CapsNet's capsule stack, images -> `[B, num_classes, 16]` digit capsules.

    Conv 9x9 256 ReLU -> primary capsules 9x9 stride 2, 32 types x 8D ->
    `num_classes` digit capsules of 16D routed by agreement. With `flatten`,
    the output is the `[B, num_classes * 16]` code the study's heads take.
    """
    layers = [
        keras.Input(shape=tuple(image_shape)),
        keras.layers.Conv2D(256, 9, activation="relu", name="conv1"),
        PrimaryCapsules(32, 8, 9, strides=2, name="primary_capsules"),
        CapsuleDense(num_classes, 16, routing_iterations=routing_iterations,
                     name="digit_capsules"),
    ]
    if flatten:
        layers.append(keras.layers.Flatten(name="code"))
    return keras.Sequential(layers, name=name)


def capsule_decoder(code_dim, image_shape, name="decoder"):
    """CapsNet's reconstruction decoder: `ReconstructionHead`'s dense stack, as a Sequential.

    Dense 512 ReLU -> 1024 ReLU -> pixels, sigmoid, reshaped to
    `image_shape`. A Sequential, not a `ReconstructionHead`: CapsNet's and
    SparseCaps' `.keras` files and checkpoints hold its weights in a
    Sequential's layout.
    """
    hidden, pixels = heads.dense_layers(
        heads.RECONSTRUCTION_HIDDEN_UNITS, math.prod(image_shape), "sigmoid")
    return keras.Sequential(
        [keras.Input(shape=(code_dim,)), *hidden, pixels,
         keras.layers.Reshape(tuple(image_shape), name="image")],
        name=name,
    )


@keras.saving.register_keras_serializable(package="capskeras")
class CapsNet(keras.Model):
    """CapsNet with its reconstruction decoder.

    The digit capsules' lengths are the class scores. The decoder (dense
    512 ReLU -> 1024 ReLU -> H*W sigmoid) reconstructs the image from the
    digit capsules with all but one masked: the labelled one when labels
    are given (training), the longest otherwise (inference).

    Args:
        image_shape: `(H, W, C)`; 28x28x1 for MNIST, 40x40x1 for affNIST.
        num_classes: number of digit capsules.
        routing_iterations: int >= 1, routing-by-agreement iterations.
        reconstruction_scale: weight of the sum-of-squares reconstruction
            loss (0.0005 in the paper, so it does not dominate the margin
            loss).

    Call arguments:
        inputs: images `[B, H, W, C]`, or a dict with `"images"` and
            optionally `"labels"` (int `[B]` or one-hot `[B, num_classes]`)
            to mask the decoder's input by label.
        training: Python bool.

    Returns:
        A dict: `"lengths"` `[B, num_classes]` and `"reconstruction"`
        `[B, H, W, C]`.

    Example:

    >>> model = CapsNet()
    >>> model.compile("adam", model.default_loss(), metrics=model.default_metrics())

    Reference:
        Sabour, Frosst and Hinton, "Dynamic Routing Between Capsules",
        NeurIPS 2017.
    """

    def __init__(self, image_shape=(28, 28, 1), num_classes=10, routing_iterations=3,
                 reconstruction_scale=0.0005, **kwargs):
        super().__init__(**kwargs)
        self.image_shape = tuple(int(dim) for dim in image_shape)
        self.num_classes = int(num_classes)
        self.routing_iterations = int(routing_iterations)
        self.reconstruction_scale = float(reconstruction_scale)
        self.encoder = capsule_encoder(self.image_shape, self.num_classes, self.routing_iterations)
        self.lengths = CapsuleLength(name="lengths")
        self.mask = CapsuleMask(name="mask")
        self.decoder = capsule_decoder(self.num_classes * 16, self.image_shape)

    def build(self, input_shape):
        # Both parts are built by their Input layers; nothing else holds state.
        self.built = True

    def call(self, inputs, training=False):
        labels = None
        if isinstance(inputs, dict):
            labels = inputs.get("labels")
            inputs = inputs["images"]
        capsules = self.encoder(inputs, training=training)
        return {
            "lengths": self.lengths(capsules),
            "reconstruction": self.decoder(self.mask(capsules, labels)),
        }

    def make_example(self, images, labels):
        """The `(inputs, targets)` pair `fit` and `evaluate` take."""
        return (
            {"images": images, "labels": labels},
            {"lengths": labels, "reconstruction": images},
        )

    def default_loss(self):
        return {
            "lengths": losses.MarginLoss(),
            "reconstruction": losses.ReconstructionLoss(scale=self.reconstruction_scale),
        }

    def default_metrics(self):
        return {"lengths": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]}

    def serving_outputs(self, images):
        """`encoding` (the 160 digit-capsule values), class scores and the reconstruction.

        `probabilities` are the capsule lengths normalized to sum to 1;
        `capsule_lengths` are the raw lengths.
        """
        capsules = self.encoder(images, training=False)
        lengths = ops.cast(self.lengths(capsules), "float32")
        return {
            "encoding": ops.reshape(capsules, (-1, self.num_classes * 16)),
            "capsule_lengths": lengths,
            "probabilities": lengths / ops.sum(lengths, axis=-1, keepdims=True),
            "class_ids": ops.argmax(lengths, axis=-1),
            "reconstruction": self.decoder(self.mask(capsules)),
        }

    def code(self, images):
        """The flattened digit capsules `[B, num_classes * 16]`, in inference mode."""
        return ops.reshape(self.encoder(images, training=False), (-1, self.num_classes * 16))

    def code_decoder(self):
        """codes -> images through the model's own mask: the longest capsule is decoded."""
        def decode(codes):
            capsules = ops.reshape(codes, (-1, self.num_classes, 16))
            return self.decoder(self.mask(capsules), training=False)

        return decode

    @property
    def code_capsules(self):
        """`(num_classes, 16)`: the code is the digit capsules."""
        return (self.num_classes, 16)

    def feature_responses(self):
        """The first convolution's output."""
        layer = self.encoder.get_layer("conv1")
        return lambda images: layer(images)

    def heads_encoder(self):
        """images -> the flattened digit capsules, sharing this model's encoder."""
        return keras.Sequential([keras.Input(self.image_shape), self.encoder,
                                 keras.layers.Flatten(name="code")], name="capsnet_encoder")

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, dict):
            input_shape = input_shape["images"]
        batch = input_shape[0]
        return {"lengths": (batch, self.num_classes), "reconstruction": (batch,) + self.image_shape}

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "image_shape": self.image_shape,
                "num_classes": self.num_classes,
                "routing_iterations": self.routing_iterations,
                "reconstruction_scale": self.reconstruction_scale,
            }
        )
        return config
