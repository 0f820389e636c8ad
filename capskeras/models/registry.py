"""Models, encoders and heads by name, so a new variant is one registration.

    from capskeras.models import registry

    @registry.register_encoder("my_encoder", frozen=True)
    def my_encoder(image_shape, seed=None):
        return ...  # a keras model: images -> [B, code_dim]

    @registry.register_model("my_model", options=("routing_iterations",))
    def my_model(image_shape, num_classes=10, seed=None, routing_iterations=3):
        return ...  # a model following the protocol below

Every model has `make_example(images, labels)` (the `(inputs, targets)`
pair it trains on), `default_loss()`, `default_metrics()` and
`serving_outputs(images)` (the serving dict, with at least `encoding`).
"""

import dataclasses
from typing import Callable

from capskeras.models import baselines
from capskeras.models import capsnet
from capskeras.models import encoders
from capskeras.models import heads
from capskeras.models.study import StudyModel


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """How an encoder is built and trained.

    Attributes:
        build: `build(image_shape, seed=None, **options) -> keras.Model`.
        frozen: the encoder is frozen under its heads.
        pretrain_as_autoencoder: before the heads, the trainer trains the
            encoder as an autoencoder with `encoders.mirror_decoder`.
        options: the keyword options `build` accepts beyond image_shape/seed.
    """

    build: Callable
    frozen: bool
    pretrain_as_autoencoder: bool = False
    options: tuple = ()


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How a whole model is built.

    Attributes:
        build: `build(image_shape, num_classes=10, seed=None, **options)`.
        options: the trainer settings `build` takes as keyword options.
    """

    build: Callable
    options: tuple = ()


ENCODERS = {}
MODELS = {}
HEADS = {
    "recon": heads.ReconstructionHead,
    "class": heads.ClassificationHead,
}


def register_encoder(name, frozen, pretrain_as_autoencoder=False, options=()):
    """Decorator registering an encoder builder under `name`."""

    def decorate(build):
        if name in ENCODERS:
            raise ValueError(f"Received: encoder name {name!r}; it is already registered")
        ENCODERS[name] = EncoderSpec(build, frozen, pretrain_as_autoencoder, tuple(options))
        return build

    return decorate


def register_model(name, options=()):
    """Decorator registering a model builder under `name`."""

    def decorate(build):
        if name in MODELS:
            raise ValueError(f"Received: model name {name!r}; it is already registered")
        MODELS[name] = ModelSpec(build, tuple(options))
        return build

    return decorate


@register_encoder("untrained", frozen=True)
def untrained(image_shape, seed=None):
    """Random convolutions, never trained: the baseline of the study."""
    return encoders.conv_encoder(image_shape, seed=seed, name="untrained_encoder")


@register_encoder("deep_bp", frozen=False)
def deep_bp(image_shape, seed=None):
    """The same convolutions trained end to end with the head."""
    return encoders.conv_encoder(image_shape, seed=seed, name="deep_bp_encoder")


@register_encoder(
    "ksparse", frozen=True, pretrain_as_autoencoder=True,
    options=("ksparse_k", "ksparse_alpha"),
)
def ksparse(image_shape, seed=None, ksparse_k=encoders.DEFAULT_KSPARSE_K, ksparse_alpha=1.0):
    """The convolutions trained first as a k-sparse autoencoder, then frozen."""
    return encoders.conv_encoder(
        image_shape, ksparse_k=ksparse_k, ksparse_alpha=ksparse_alpha, seed=seed,
        name="ksparse_encoder",
    )


@register_encoder("capsnet", frozen=False, options=("routing_iterations",))
def capsnet_encoder(image_shape, seed=None, routing_iterations=3):
    """CapsNet's digit capsules as a 160-element code, trained through the head."""
    return capsnet.capsule_encoder(
        image_shape, routing_iterations=routing_iterations, flatten=True,
        name="capsnet_encoder",
    )


def encoder_spec(name):
    """The `EncoderSpec` registered under `name`; a clear error otherwise."""
    if name not in ENCODERS:
        raise ValueError(f"Received: encoder={name!r}; expected one of {sorted(ENCODERS)}")
    return ENCODERS[name]


def model_spec(name):
    """The `ModelSpec` registered under `name`; a clear error otherwise."""
    if name not in MODELS:
        raise ValueError(f"Received: model={name!r}; expected one of {sorted(MODELS)}")
    return MODELS[name]


def build_head(name, image_shape=(28, 28, 1), num_classes=10):
    """The head registered under `name`, for images of `image_shape`."""
    if name not in HEADS:
        raise ValueError(f"Received: head={name!r}; expected one of {sorted(HEADS)}")
    if name == "recon":
        return HEADS[name](image_shape=image_shape, name="recon_head")
    return HEADS[name](num_classes=num_classes, name="class_head")


def build_study_model(encoder, head, image_shape=(28, 28, 1), num_classes=10,
                      seed=None, encoder_options=None, pretrained_encoder=None):
    """Builds the study model `encoder` + `head`.

    Args:
        encoder: a registered encoder name (see `ENCODERS`).
        head: a registered head name (see `HEADS`).
        image_shape: `(H, W, C)` of the input images.
        num_classes: classes of the classification head.
        seed: seeds the encoder's initializers.
        encoder_options: extra keyword options of the encoder's builder.
        pretrained_encoder: an already trained encoder model to use instead
            of a freshly built one (the k-sparse autoencoder's).

    Returns:
        A built `StudyModel`.
    """
    spec = encoder_spec(encoder)
    options = dict(encoder_options or {})
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(
            f"Received: encoder options {unknown} for encoder={encoder!r}; "
            f"expected a subset of {list(spec.options)}"
        )
    encoder_model = pretrained_encoder or spec.build(tuple(image_shape), seed=seed, **options)
    model = StudyModel(
        encoder_model,
        build_head(head, image_shape, num_classes),
        freeze_encoder=spec.frozen,
        name=f"enc_{encoder}_dec_{head}",
    )
    model.build((None,) + tuple(image_shape))
    return model


@register_model(
    "study", options=("encoder", "head", "ksparse_k", "ksparse_alpha", "routing_iterations")
)
def study(image_shape, num_classes=10, seed=None, encoder="deep_bp", head="class",
          pretrained_encoder=None, **settings):
    """An encoder of the equivariance study under one of its heads."""
    spec = encoder_spec(encoder)
    return build_study_model(
        encoder, head, image_shape, num_classes, seed,
        encoder_options={name: settings[name] for name in spec.options if name in settings},
        pretrained_encoder=pretrained_encoder,
    )


@register_model("capsnet", options=("routing_iterations",))
def capsnet_model(image_shape, num_classes=10, seed=None, routing_iterations=3):
    """CapsNet with its reconstruction decoder (Sabour et al. 2017)."""
    model = capsnet.CapsNet(image_shape, num_classes, routing_iterations, name="capsnet")
    model.build((None,) + tuple(image_shape))
    return model


@register_model("lenet5")
def lenet5(image_shape, num_classes=10, seed=None):
    """LeNet5 (ReLU, average pooling) under a softmax layer."""
    return _baseline(baselines.lenet5_features(image_shape), num_classes, 0.0, "lenet5")


@register_model("cnn_baseline")
def cnn_baseline(image_shape, num_classes=10, seed=None):
    """The plain CNN Sabour et al. compare CapsNet with, dropout before its softmax."""
    return _baseline(baselines.cnn_baseline_features(image_shape), num_classes, 0.5,
                     "cnn_baseline")


def _baseline(features, num_classes, dropout, name):
    model = StudyModel(
        features,
        heads.ClassificationHead(num_classes, hidden_units=(), dropout=dropout,
                                 name="class_head"),
        name=name,
    )
    model.build((None,) + tuple(features.input_shape[1:]))
    return model


def build_model(name, image_shape=(28, 28, 1), num_classes=10, seed=None, **options):
    """Builds the model registered under `name` with its keyword `options`."""
    spec = model_spec(name)
    unknown = sorted(set(options) - set(spec.options) - {"pretrained_encoder"})
    if unknown:
        raise ValueError(
            f"Received: options {unknown} for model={name!r}; "
            f"expected a subset of {list(spec.options)}"
        )
    return spec.build(tuple(image_shape), num_classes=num_classes, seed=seed, **options)
