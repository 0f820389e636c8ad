"""The equivariance study's model: an encoder with one head on top."""

import keras

from capskeras.layers.stop_gradient import StopGradient
from capskeras.models import heads


# The methods by which a layer folds into an ordinary Keras layer computing
# the same inference (`GroupConv2D`, `GroupBatchNormalization`).
_FOLDS = ("to_conv2d", "to_batch_normalization")


def _fold(layer):
    """`layer`'s method returning its ordinary equivalent, or None."""
    return next((getattr(layer, name) for name in _FOLDS if hasattr(layer, name)), None)


@keras.saving.register_keras_serializable(package="capskeras")
class StudyModel(keras.Model):
    """An encoder followed by a head, with the encoder optionally frozen.

    The generic encoder-under-a-head model: the study's encoders under its
    class and reconstruction heads, and LeNet5, the CNN baseline, P4CNN and
    Z2CNN under a classifier. (Its name is kept because saved `.keras`
    files record it.)

    A frozen encoder is not trainable, runs in inference mode and sits
    behind a `StopGradient`, so `fit` trains the head alone and the
    encoder's weights never change.

    Args:
        encoder: a model mapping `[B, H, W, C]` images to `[B, code_dim]`.
        head: a head from `capskeras.models.heads`.
        freeze_encoder: bool, freeze the encoder under the head.

    Call arguments:
        images: `[B, H, W, C]` float images in [0, 1].
        training: Python bool.

    Returns:
        The head's output (logits or a reconstruction). `serving_outputs`
        returns the serving dict: `encoding` and the head's outputs.

    Example:

    >>> from capskeras.models import build_study_model
    >>> model = build_study_model("deep_bp", "class")
    >>> model.compile("adam", model.default_loss(), metrics=model.default_metrics())

    Reference:
        The encoder-and-head protocol of the equivariance study follows
        Rawlinson, Ahmed and Kowadlo, "Sparse Unsupervised Capsules
        Generalize Better", 2018.
    """

    def __init__(self, encoder, head, freeze_encoder=False, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.head = head
        self.freeze_encoder = bool(freeze_encoder)
        self.stop_gradient = StopGradient(name="stop_gradient")
        if self.freeze_encoder:
            self.encoder.trainable = False

    def build(self, input_shape):
        # On loading, the parts arrive already built from their own configs.
        if not self.encoder.built:
            self.encoder.build(input_shape)
        if not self.head.built:
            self.head.build(self.encoder.compute_output_shape(input_shape))

    def encode(self, images, training=False):
        if self.freeze_encoder:
            return self.stop_gradient(self.encoder(images, training=False))
        return self.encoder(images, training=training)

    def call(self, images, training=False):
        return self.head(self.encode(images, training=training), training=training)

    def make_example(self, images, labels):
        """The `(inputs, targets)` pair `fit` and `evaluate` take."""
        return (images, images) if self.head.target == "images" else (images, labels)

    def default_loss(self):
        return self.head.default_loss()

    def default_metrics(self):
        return self.head.default_metrics()

    def serving_outputs(self, images):
        """The serving dict for a batch of images, in inference mode."""
        code = self.encode(images, training=False)
        outputs = {"encoding": code}
        outputs.update(self.head.serving_outputs(self.head(code, training=False)))
        return outputs

    def code(self, images):
        """The code `[B, D]` of `images`, in inference mode (the contract's `code`)."""
        return self.encode(images, training=False)

    def code_decoder(self):
        """The reconstruction head as codes -> images, or None under another head."""
        if self.head.target != "images":
            return None
        return lambda codes: self.head(codes, training=False)

    @property
    def code_capsules(self):
        """None: the study's heads read a flat code."""
        return None

    def feature_responses(self):
        """The encoder's first-layer responses: its own `feature_responses()`, or its
        first `Conv2D`'s output; None when it has neither."""
        own = getattr(self.encoder, "feature_responses", None)
        if callable(own):
            return own()
        layer = first_convolution(self.encoder)
        return None if layer is None else (lambda images: layer(images))

    def heads_encoder(self):
        """The encoder, for heads trained on its frozen code."""
        return self.encoder

    def serving_model(self):
        """The model `capskeras.export` writes: this one, or a plain copy of it.

        When the encoder is a Sequential holding layers that fold into
        ordinary ones (`to_conv2d()` of the group convolutions,
        `to_batch_normalization()` of the group batch norms, as in P4CNN),
        returns a new `StudyModel` whose encoder has each replaced by that
        plain layer (a `Conv2D` with the expanded kernel, a
        `BatchNormalization` with repeated statistics) and every other layer
        copied with its weights: the same inference, in ordinary layers, so
        SavedModels hold plain convolutions. Otherwise returns `self`.
        """
        if not isinstance(self.encoder, keras.Sequential) or not any(
                _fold(layer) for layer in self.encoder.layers):
            return self
        copied = []
        layers = []
        for layer in self.encoder.layers:
            if _fold(layer):
                layers.append(_fold(layer)())
            else:
                layers.append(type(layer).from_config(layer.get_config()))
                copied.append((layers[-1], layer))
        input_shape = tuple(self.encoder.input_shape[1:])
        encoder = keras.Sequential([keras.Input(input_shape)] + layers, name=self.encoder.name)
        head = type(self.head).from_config(self.head.get_config())
        copied.append((head, self.head))
        model = StudyModel(encoder, head, freeze_encoder=self.freeze_encoder, name=self.name)
        model.build((None,) + input_shape)
        for clone, layer in copied:
            clone.set_weights(layer.get_weights())
        return model

    def compute_output_shape(self, input_shape):
        return self.head.compute_output_shape(
            self.encoder.compute_output_shape(input_shape)
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "encoder": keras.saving.serialize_keras_object(self.encoder),
                "head": keras.saving.serialize_keras_object(self.head),
                "freeze_encoder": self.freeze_encoder,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        config["head"] = keras.saving.deserialize_keras_object(config["head"])
        return cls(**config)


def first_convolution(model):
    """The first `Conv2D` among `model`'s layers, searched depth first; None without one."""
    for layer in getattr(model, "layers", []):
        if isinstance(layer, keras.layers.Conv2D):
            return layer
        found = first_convolution(layer)
        if found is not None:
            return found
    return None


def frozen_under_head(encoder, head, image_shape, name=None):
    """A built `StudyModel`: `encoder` frozen under `head`, for heads on a frozen code.

    Args:
        encoder: a model mapping `[B, H, W, C]` images to `[B, code_dim]`.
        head: a head from `capskeras.models.heads`.
        image_shape: `(H, W, C)` of the images.
        name: the model's name.
    """
    model = StudyModel(encoder, head, freeze_encoder=True, name=name)
    model.build((None,) + tuple(image_shape))
    return model


def feature_classifier(features, num_classes=10, dropout=0.0, name=None):
    """A `StudyModel`: `features` under one softmax layer, built.

    The convolutional baselines and the group-convolution networks are
    classifiers of this form: a features model trained with the single
    dense layer to the class logits.

    Args:
        features: a model mapping `[B, H, W, C]` images to `[B, code_dim]`,
            its input shape known.
        num_classes: number of classes.
        dropout: dropout rate before the softmax layer.
        name: the model's name.

    Returns:
        A built `StudyModel` whose head is a `ClassificationHead` without
        hidden layers.
    """
    model = StudyModel(
        features,
        heads.ClassificationHead(num_classes, hidden_units=(), dropout=dropout,
                                 name="class_head"),
        name=name,
    )
    model.build((None,) + tuple(features.input_shape[1:]))
    return model
