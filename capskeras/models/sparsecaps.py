"""Sparse Unsupervised Capsules (Rawlinson, Ahmed and Kowadlo 2018)."""

import keras
from keras import ops

from capskeras import losses
from capskeras.layers.capsule_dense import CapsuleDense
from capskeras.layers.primary_capsules import PrimaryCapsules
from capskeras.layers.rank_mask import RankMask
from capskeras.models.capsnet import capsule_decoder


@keras.saving.register_keras_serializable(package="capskeras")
class SparseCaps(keras.Model):
    """CapsNet without labels: latent capsules trained to reconstruct, sparse by rank.

    Conv 9x9 256 ReLU -> primary capsules 9x9 stride 2, 32 types x 8D ->
    `latent_capsules` capsules of `latent_dim` by dynamic routing
    (`routing_iterations`) -> `RankMask` (the latent capsules weighted by
    the rank of their routing support, boosted for lifetime sparsity) ->
    decoder dense 512 ReLU -> 1024 ReLU -> pixels, sigmoid. The loss is the
    per-image sum of squared reconstruction errors; no labels are used.

    The code is the 256-element flattened latent capsules (unmasked);
    `encoder()` gives it as a model for the study's heads, sharing this
    model's layers.

    Args:
        image_shape: `(H, W, C)`; 28x28x1 for MNIST, 40x40x1 for affNIST.
        latent_capsules: int, `J` (16 in the paper).
        latent_dim: int (16).
        routing_iterations: int (3).

    Call arguments:
        images: `[B, H, W, C]` floats in [0, 1].
        training: Python bool.

    Returns:
        The reconstruction `[B, H, W, C]`.

    Example:

    >>> model = SparseCaps()
    >>> model.compile("adam", model.default_loss(), metrics=model.default_metrics())

    Reference:
        Rawlinson, Ahmed and Kowadlo, "Sparse Unsupervised Capsules
        Generalize Better", 2018. https://arxiv.org/abs/1804.06094
    """

    def __init__(self, image_shape=(28, 28, 1), latent_capsules=16, latent_dim=16,
                 routing_iterations=3, **kwargs):
        super().__init__(**kwargs)
        self.image_shape = tuple(int(dim) for dim in image_shape)
        self.latent_capsules = int(latent_capsules)
        self.latent_dim = int(latent_dim)
        self.routing_iterations = int(routing_iterations)
        self.conv = keras.layers.Conv2D(256, 9, activation="relu", name="conv1")
        self.primary = PrimaryCapsules(32, 8, 9, strides=2, name="primary_capsules")
        self.latent = CapsuleDense(self.latent_capsules, self.latent_dim,
                                   routing_iterations=self.routing_iterations,
                                   name="latent_capsules")
        self.rank_mask = RankMask(input_types=32, name="rank_mask")
        self.decoder = capsule_decoder(self.latent_capsules * self.latent_dim, self.image_shape)

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in (self.conv, self.primary):
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        primary_shape = shape
        self.latent.build(primary_shape)
        self.rank_mask.build(
            self.latent.compute_output_shape(primary_shape),
            (None, primary_shape[1], self.latent_capsules),
        )

    def _latent(self, images, training=False):
        features = self.conv(images)
        return self.latent(self.primary(features), training=training, return_couplings=True)

    def call(self, images, training=False):
        capsules, couplings = self._latent(images, training=training)
        masked = self.rank_mask(capsules, couplings, training=training)
        return self.decoder(self._flatten(masked))

    def encode(self, images, training=False):
        """The 256-element code: the flattened latent capsules, unmasked."""
        capsules, _ = self._latent(images, training=training)
        return self._flatten(capsules)

    def decoder_input(self, images):
        """What the decoder reads: the rank-masked latent capsules, flattened (inference)."""
        capsules, couplings = self._latent(images, training=False)
        return self._flatten(self.rank_mask(capsules, couplings, training=False))

    def _flatten(self, capsules):
        return ops.reshape(capsules, (-1, self.latent_capsules * self.latent_dim))

    def encoder(self, name="sparsecaps_encoder"):
        """A model images -> code sharing this model's layers (freeze it under a head)."""
        return keras.Sequential(
            [keras.Input(self.image_shape), self.conv, self.primary, self.latent,
             keras.layers.Flatten(name="code")],
            name=name,
        )

    def make_example(self, images, labels):
        """The `(inputs, targets)` pair `fit` and `evaluate` take: no labels."""
        return images, images

    def default_loss(self):
        return losses.ReconstructionLoss(scale=1.0, name="sum_squared_error")

    def default_metrics(self):
        return [keras.metrics.MeanSquaredError(name="mse")]

    def serving_outputs(self, images):
        """`encoding` (the 256 latent values) and the rank-masked `reconstruction`."""
        capsules, couplings = self._latent(images, training=False)
        masked = self.rank_mask(capsules, couplings, training=False)
        return {"encoding": self._flatten(capsules),
                "reconstruction": self.decoder(self._flatten(masked))}

    def code(self, images):
        """The code the decoder reads: the rank-masked latent capsules, flattened.

        The unmasked code (`encoding`) cannot be decoded without the image's
        routing ranks, so sweeps and maps read this one.
        """
        return self.decoder_input(images)

    def code_decoder(self):
        return lambda codes: self.decoder(codes, training=False)

    @property
    def code_capsules(self):
        """`(latent_capsules, latent_dim)`."""
        return (self.latent_capsules, self.latent_dim)

    def feature_responses(self):
        """The first convolution's output."""
        return lambda images: self.conv(images)

    def heads_encoder(self):
        """`encoder()`: the 256 latent values, unmasked."""
        return self.encoder()

    def compute_output_shape(self, input_shape):
        return (input_shape[0],) + self.image_shape

    def get_config(self):
        config = super().get_config()
        config.update({
            "image_shape": self.image_shape, "latent_capsules": self.latent_capsules,
            "latent_dim": self.latent_dim, "routing_iterations": self.routing_iterations,
        })
        return config
