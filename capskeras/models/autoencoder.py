"""An encoder trained to reconstruct its input through a mirror decoder."""

import keras

from capskeras.models.encoders import mirror_decoder


@keras.saving.register_keras_serializable(package="capskeras")
class Autoencoder(keras.Model):
    """Wraps an encoder with a decoder and trains both on reconstruction.

    Used to train the k-sparse encoder (Makhzani and Frey) before it is
    frozen under the study's heads.

    Args:
        encoder: a model mapping images to `[B, code_dim]`.
        decoder: a model mapping codes back to images; by default the
            transposed-convolution mirror of `encoder`.

    Call arguments:
        images: `[B, H, W, C]` float images in [0, 1].
        training: Python bool.

    Returns:
        The reconstruction, `[B, H, W, C]`.

    Example:

    >>> from capskeras.models import encoders
    >>> autoencoder = Autoencoder(encoders.conv_encoder(ksparse_k=(640, 320, 32)))
    >>> autoencoder.compile("adam", "mse")

    Reference:
        Makhzani and Frey, "k-Sparse Autoencoders", ICLR 2014.
    """

    def __init__(self, encoder, decoder=None, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder or mirror_decoder(encoder)

    def call(self, images, training=False):
        return self.decoder(self.encoder(images, training=training), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def make_example(self, images, labels):
        """The `(inputs, targets)` pair: the images are their own target."""
        return images, images

    def default_loss(self):
        return keras.losses.MeanSquaredError(name="mse")

    def default_metrics(self):
        return []

    def serving_outputs(self, images):
        """`encoding` (the code) and `reconstruction`, in inference mode."""
        code = self.encoder(images, training=False)
        return {"encoding": code, "reconstruction": self.decoder(code, training=False)}

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "encoder": keras.saving.serialize_keras_object(self.encoder),
                "decoder": keras.saving.serialize_keras_object(self.decoder),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("encoder", "decoder"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
