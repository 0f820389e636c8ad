"""The study's encoders and heads by name, so a new encoder is one registration.

    from capskeras.models import registry

    @registry.register_encoder("my_encoder", frozen=True)
    def my_encoder(image_shape, seed=None):
        return ...  # a keras model: images -> [B, code_dim]

`build_study_model(encoder, head)` puts any of them together; the trainer
reaches them through the `study` task (`capskeras.tasks.study`), whose
settings carry the encoders' options.
"""

import dataclasses
from typing import Callable

from capskeras.models import capsnet
from capskeras.models import predcaps
from capskeras.models.autoencoder import Autoencoder
from capskeras.models import encoders
from capskeras.models import heads
from capskeras.models.study import StudyModel


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """How an encoder is built and trained.

    Attributes:
        build: `build(image_shape, seed=None, **options) -> keras.Model`.
        frozen: the encoder is frozen under its heads.
        pretraining: None, or `pretraining(encoder) -> keras.Model`, a model
            whose training (before the heads) trains the encoder, found
            afterwards as its `.encoder`: `Autoencoder` (the k-sparse
            encoder) or `PredCapsPretrainer` (PredCaps' local learning).
        options: the keyword options `build` accepts beyond image_shape/seed.
    """

    build: Callable
    frozen: bool
    pretraining: Callable = None
    options: tuple = ()


ENCODERS = {}
HEADS = {
    "recon": heads.ReconstructionHead,
    "class": heads.ClassificationHead,
}


def register_encoder(name, frozen, pretraining=None, options=()):
    """Decorator registering an encoder builder under `name`."""

    def decorate(build):
        if name in ENCODERS:
            raise ValueError(f"Received: encoder name {name!r}; it is already registered")
        ENCODERS[name] = EncoderSpec(build, frozen, pretraining, tuple(options))
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
    "ksparse", frozen=True, pretraining=Autoencoder,
    options=("ksparse_k", "ksparse_alpha"),
)
def ksparse(image_shape, seed=None, ksparse_k=encoders.DEFAULT_KSPARSE_K, ksparse_alpha=1.0):
    """The convolutions trained first as a k-sparse autoencoder, then frozen."""
    return encoders.conv_encoder(
        image_shape, ksparse_k=ksparse_k, ksparse_alpha=ksparse_alpha, seed=seed,
        name="ksparse_encoder",
    )


@register_encoder(
    "predcaps", frozen=True, pretraining=predcaps.PredCapsPretrainer,
    options=("predcaps_k", "predcaps_inference_k", "feedback_iterations",
             "predcaps_inference_feedback", "normalization", "selection"),
)
def predcaps_encoder(image_shape, seed=None, predcaps_k=predcaps.DEFAULT_PREDCAPS_K,
                     predcaps_inference_k=(),
                     feedback_iterations=predcaps.DEFAULT_FEEDBACK_ITERATIONS,
                     predcaps_inference_feedback=-1, normalization="unit_total",
                     selection="capsule"):
    """PredCaps: every layer learns locally and at once, then frozen under the heads.

    An empty `predcaps_inference_k` keeps `predcaps_k` winners at inference, and
    `predcaps_inference_feedback=-1` keeps `feedback_iterations` rounds.
    """
    return predcaps.predcaps_encoder(
        image_shape, seed=seed, k=predcaps_k, feedback_iterations=feedback_iterations,
        normalization=normalization, selection=selection,
        inference_k=tuple(predcaps_inference_k) or None,
        inference_feedback_iterations=(
            None if predcaps_inference_feedback < 0 else predcaps_inference_feedback),
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
