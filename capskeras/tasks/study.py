"""The equivariance study's task: one encoder under one head.

Encoders and heads come from `capskeras.models.registry`; an encoder
registered with a `pretraining` model gets a `pretrain` stage that trains
it so (the k-sparse autoencoder with its k schedule, PredCaps' local
learning) before it is frozen under the head.
"""

import dataclasses

import keras

from capskeras.layers.k_sparse import KSparse
from capskeras.models import predcaps
from capskeras.models import registry
from capskeras.settings import MODEL
from capskeras.settings import at_least
from capskeras.settings import setting
from capskeras.tasks.base import FrozenEncoder
from capskeras.tasks.base import Stage
from capskeras.tasks.base import register_task
from capskeras.tasks.capsnet import routing_iterations_setting
from capskeras.tasks.mnist import MnistTask


def _three_positive_ints(value):
    return len(value) == 3 and all(isinstance(k, int) and k >= 1 for k in value)


@register_task("study")
class StudyTask(MnistTask):
    """An encoder of the study (`--encoder`) under a head (`--head`)."""

    @dataclasses.dataclass
    class Settings(MnistTask.Settings):
        encoder: str = setting(
            "deep_bp", "Encoder, a name in capskeras.models.ENCODERS.", resume=MODEL
        )
        head: str = setting("class", "Head, a name in capskeras.models.HEADS.", resume=MODEL)
        pretrain_epochs: int = setting(
            1, "Epochs of autoencoder pretraining, for encoders that need it.",
            check=at_least(1),
        )
        ksparse_k: tuple = setting(
            (640, 320, 32), "k-sparse encoder: units kept per sample in each of the three layers.",
            check=(_three_positive_ints, "three ints >= 1"), resume=MODEL,
        )
        ksparse_alpha: float = setting(
            1.0, "k-sparse encoder: inference keeps alpha * k units.", check=at_least(1.0)
        )
        ksparse_initial_factor: float = setting(
            1.0, "k-sparse encoder: k starts at this multiple and falls linearly to k.",
            check=at_least(1.0),
        )
        ksparse_schedule_epochs: int = setting(
            0, "k-sparse encoder: pretraining epochs over which k falls to its target.",
            check=at_least(0),
        )
        routing_iterations: int = routing_iterations_setting()
        predcaps_k: tuple = setting(
            predcaps.DEFAULT_PREDCAPS_K, "PredCaps: winning capsules per position in each layer.",
            check=(_three_positive_ints, "three ints >= 1"), resume=MODEL,
        )
        predcaps_inference_k: tuple = setting(
            (), "PredCaps: winning capsules per position in each layer at inference; "
            "empty for predcaps_k.",
            check=(lambda value: value == () or _three_positive_ints(value),
                   "empty or three ints >= 1"),
        )
        feedback_iterations: int = setting(
            predcaps.DEFAULT_FEEDBACK_ITERATIONS,
            "PredCaps: down-and-up rounds after the first upward pass.", check=at_least(0),
            resume=MODEL,
        )
        predcaps_inference_feedback: int = setting(
            -1, "PredCaps: down-and-up rounds at inference; -1 for feedback_iterations.",
            check=at_least(-1),
        )
        normalization: str = setting(
            "unit_total", "PredCaps: competition by unit_total (zero-sum) or layer_norm.",
            choices=("unit_total", "layer_norm"), resume=MODEL,
        )
        selection: str = setting(
            "capsule", "PredCaps: top-k whole capsules, or single units (unit).",
            choices=("capsule", "unit"), resume=MODEL,
        )

        def validate(self):
            super().validate()
            registry.encoder_spec(self.encoder)
            if self.head not in registry.HEADS:
                raise ValueError(
                    f"Received: head={self.head!r}; expected one of {sorted(registry.HEADS)}"
                )
            return self

    @classmethod
    def default_experiment(cls, settings):
        return f"enc_{settings.encoder}_dec_{settings.head}"

    def _encoder(self, seed):
        spec = registry.encoder_spec(self.settings.encoder)
        options = {name: getattr(self.settings, name) for name in spec.options}
        return spec.build(self.image_shape(), seed=seed, **options)

    def pretraining(self):
        spec = registry.encoder_spec(self.settings.encoder)
        if spec.pretraining is None:
            return []

        def build_pretraining_model():
            model = spec.pretraining(self._encoder(self.seed), name="pretraining")
            model.build((None,) + self.image_shape())
            return model

        def trained_encoder(model):
            set_target_k(model)
            return model.encoder

        schedule = lambda: [KSparseSchedule(  # noqa: E731
            self.settings.ksparse_initial_factor, self.settings.ksparse_schedule_epochs
        )]
        return [Stage("pretrain", self.settings.pretrain_epochs, build_pretraining_model,
                      trained_encoder, schedule)]

    def build_model(self, pretrained):
        return self._study_model(self.settings.head, pretrained.get("pretrain"))

    def _study_model(self, head, encoder):
        settings = self.settings
        spec = registry.encoder_spec(settings.encoder)
        return registry.build_study_model(
            settings.encoder, head, self.image_shape(), seed=self.seed,
            encoder_options={name: getattr(settings, name) for name in spec.options},
            pretrained_encoder=encoder,
        )

    def frozen_encoder(self):
        """The pretraining stage's encoder, or, for an encoder never trained, none (the
        seeded one); refused for an encoder that trains through its head."""
        encoder = self.settings.encoder
        if not registry.encoder_spec(encoder).frozen:
            raise ValueError(f"Received: encoder={encoder!r}, which trains through its "
                             "head; expected a frozen encoder")
        stages = self.pretraining()
        if not stages:
            return FrozenEncoder(encoder)
        stage = stages[0]
        return FrozenEncoder(encoder, stage.name, stage.build_model, stage.result)

    def heads_model(self, encoder, head, encoder_name=None):
        """The study model of this run's encoder (`encoder`, or the seeded one when None)
        under `head`."""
        return self._study_model(head, encoder)


class KSparseSchedule(keras.callbacks.Callback):
    """Lowers k of every `KSparse` layer linearly over the first epochs.

    Makhzani and Frey start with a large k so that every unit is used early
    on, and lower it to the target k, which avoids dead units. At epoch e,
    each layer keeps `round(k * (f + (1 - f) * min(e / epochs, 1)))` units,
    with `f = initial_factor`.

    Args:
        initial_factor: float >= 1, k's multiple at the first epoch.
        epochs: int >= 0, epochs over which k falls; 0 keeps k constant.
    """

    def __init__(self, initial_factor, epochs):
        super().__init__()
        self.initial_factor = initial_factor
        self.epochs = epochs

    def k_at(self, layer, epoch):
        progress = 1.0 if self.epochs == 0 else min(epoch / self.epochs, 1.0)
        factor = self.initial_factor + (1.0 - self.initial_factor) * progress
        return min(layer.num_units, max(1, round(layer.k * factor)))

    def on_epoch_begin(self, epoch, logs=None):
        for layer in _ksparse_layers(self.model):
            layer.current_k.assign(self.k_at(layer, epoch))

    def on_train_end(self, logs=None):
        set_target_k(self.model)


def set_target_k(model):
    """Sets every `KSparse` layer of `model` back to its target k."""
    for layer in _ksparse_layers(model):
        layer.current_k.assign(layer.k)


def _ksparse_layers(layer):
    found = [layer] if isinstance(layer, KSparse) else []
    for sublayer in getattr(layer, "layers", []):
        found.extend(_ksparse_layers(sublayer))
    return found
