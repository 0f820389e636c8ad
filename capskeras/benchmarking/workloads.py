"""What the benchmark steps: compiled models and their synthetic batches.

A workload is a compiled Keras model and how to make its `(inputs,
targets)` from images and labels. `BENCHMARKS` names the ones that are not
trainer experiments; `experiment_workload` builds an experiment's model
from its flagfile, the one place the benchmark uses the trainer.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from capskeras.layers import CapsuleLength
from capskeras.losses import MarginLoss
from capskeras.models import em_capsnet
from capskeras.models.capsnet import capsule_encoder
from capskeras.settings import dtype_policy


@dataclasses.dataclass
class Workload:
    """A compiled model and the batches it is stepped on.

    Attributes:
        model: a compiled `keras.Model`.
        image_shape: `(H, W, C)` of its input images (or whatever its
            inputs are, without the batch dimension).
        make_example: `make_example(images, labels) -> (inputs, targets)`,
            the pair `train_on_batch` takes.
        batch_size: images per step.
        num_classes: number of classes of the synthetic labels.
        precision: the Keras dtype policy it was built under.
        jit_compile: what its `compile(jit_compile=...)` was given.
        description: where the model comes from, for the report.
    """

    model: keras.Model
    image_shape: tuple
    make_example: object
    batch_size: int
    num_classes: int = 10
    precision: str = "float32"
    jit_compile: bool = False
    description: str = ""


@dataclasses.dataclass
class BenchmarkOverrides:
    """What the command line overrides in a benchmark's model, batch and seed.

    `None` leaves an experiment's flagfile value (and, for registered
    benchmarks, the default in brackets).
    """

    batch_size: int = None  # [100]
    learning_rate: float = None  # [0.001]
    jit_compile: bool = None  # [False]
    precision: str = None  # ["float32"]
    seed: int = None  # [0]

    def resolved(self, name, default):
        value = getattr(self, name)
        return default if value is None else value


def synthetic_batch(workload, seed=0):
    """The workload's `(inputs, targets)` for images uniform in [0, 1] and random labels."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 1.0, (workload.batch_size,) + tuple(workload.image_shape))
    labels = rng.integers(0, workload.num_classes, (workload.batch_size,))
    return workload.make_example(tf.constant(images, tf.float32), tf.constant(labels, tf.int32))


def _compiled(model, loss, overrides):
    model.compile(
        optimizer=keras.optimizers.Adam(overrides.resolved("learning_rate", 1e-3)),
        loss=loss,
        jit_compile=overrides.resolved("jit_compile", False),
    )
    return model


def _registered(model, image_shape, loss, overrides, description):
    return Workload(
        model=_compiled(model, loss, overrides),
        image_shape=tuple(image_shape),
        make_example=lambda inputs, labels: (inputs, labels),
        batch_size=overrides.resolved("batch_size", 100),
        precision=overrides.resolved("precision", "float32"),
        jit_compile=bool(overrides.resolved("jit_compile", False)),
        description=description,
    )


def capsnet_conv_stack(overrides):
    """CapsNet's encoder up to its primary capsules, the floor of CapsNet's cost.

    CapsNet's own `conv1` (256 9x9, ReLU) and `primary_capsules` (256 9x9,
    stride 2, regrouped and squashed), taken from `capsule_encoder`, on
    28x28 images, trained on a loss that costs next to nothing: global
    average pooling, a 10-way dense layer and cross-entropy. `capsnet_mnist`'s
    throughput over this one's is the share of CapsNet's time left to the
    convolutions.
    """
    encoder = capsule_encoder((28, 28, 1))
    primary = encoder.get_layer("primary_capsules")
    capsules = primary.output  # [B, 1152, 8]
    pooled = keras.layers.GlobalAveragePooling1D(name="pool")(capsules)
    logits = keras.layers.Dense(10, name="logits")(pooled)
    model = keras.Model(encoder.inputs, logits, name="capsnet_conv_stack")
    return _registered(
        model, (28, 28, 1), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        overrides, "CapsNet's conv1 and primary capsules, pooled to a 10-way softmax",
    )


def capsnet_routing(overrides):
    """CapsNet's digit-capsule layer alone: routing by agreement, timed apart.

    CapsNet's own `digit_capsules` (10 capsules of 16D routed from its 1,152
    primary capsules of 8D) on inputs uniform in [0, 1], trained on the
    margin loss of the capsule lengths. Where `capsnet_conv_stack` is CapsNet
    without its capsules, this is its capsules without the convolutions.
    """
    encoder = capsule_encoder((28, 28, 1))
    digit_capsules = encoder.get_layer("digit_capsules")
    capsules_shape = tuple(encoder.get_layer("primary_capsules").output.shape[1:])
    inputs = keras.Input(capsules_shape)
    lengths = CapsuleLength(name="lengths")(digit_capsules(inputs))
    model = keras.Model(inputs, lengths, name="capsnet_routing")
    return _registered(
        model, capsules_shape, MarginLoss(), overrides,
        "CapsNet's digit capsules alone, on inputs of its primary capsules' shape",
    )


def _em_capsnet(sizes, description, **options):
    def build(overrides):
        model = em_capsnet.EmCapsNet((32, 32, 1), 5, **sizes, **options)
        model.build((None, 32, 32, 1))
        model.compile(
            optimizer=keras.optimizers.Adam(overrides.resolved("learning_rate", 1e-3)),
            loss=model.default_loss(),
            jit_compile=overrides.resolved("jit_compile", False),
        )
        return Workload(
            model=model, image_shape=(32, 32, 1), make_example=model.make_example,
            batch_size=overrides.resolved("batch_size", 32), num_classes=5,
            precision=overrides.resolved("precision", "float32"),
            jit_compile=bool(overrides.resolved("jit_compile", False)), description=description,
        )

    return build


# Benchmarks that are not trainer experiments, consulted before `flags/`:
# `name: builder`, with `builder(overrides) -> Workload`. The EM networks are
# the sizes the public EM reimplementations are compared at: 32x32 inputs,
# 5 classes, 3 EM iterations, batch 32.
BENCHMARKS = {
    "capsnet_conv_stack": capsnet_conv_stack,
    "capsnet_routing": capsnet_routing,
    "em_capsnet_small": _em_capsnet(
        em_capsnet.SMALL, "EM matrix capsules, A=64, B=8, C=D=16, on 32x32 smallNORB-sized crops"),
    "em_capsnet_large": _em_capsnet(
        em_capsnet.LARGE, "EM matrix capsules, the paper's A=B=C=D=32, on 32x32 crops"),
    "em_capsnet_large_recompute": _em_capsnet(
        em_capsnet.LARGE, "em_capsnet_large with recompute_routing=True, "
        "routing_chunk_size=8", recompute_routing=True, routing_chunk_size=8),
}


def registered_workload(name, overrides=BenchmarkOverrides()):
    """The `Workload` of `BENCHMARKS[name]`, built under its precision and seed."""
    precision = overrides.resolved("precision", "float32")
    keras.utils.set_random_seed(overrides.resolved("seed", 0))
    with dtype_policy(precision):
        return BENCHMARKS[name](overrides)


# ----------------------------------------------------------------------------
# THE TRAINER INTERFACE: the only function here that uses capskeras.training.
# It builds an experiment's compiled model from its flagfile exactly as the
# trainer does. Adapt it (and nothing else) when the trainer changes.
# ----------------------------------------------------------------------------
def experiment_workload(flagfile, overrides=BenchmarkOverrides()):
    """The `Workload` of the trainer experiment in `flagfile`, `overrides` overriding it.

    Raises:
        ValueError: the flagfile or a setting is bad, naming it.
    """
    from capskeras.training.flags import config_from_flagfile
    from capskeras.training.train import compiled_model

    overrides = [
        f"--{field.name}={getattr(overrides, field.name)}"
        for field in dataclasses.fields(overrides) if getattr(overrides, field.name) is not None
    ]
    config = config_from_flagfile(str(flagfile), overrides)
    config.validate()
    keras.utils.set_random_seed(config.seed)
    with dtype_policy(config.precision):
        model = compiled_model(config)
    head = getattr(model, "head", None)
    described = {"model": config.model, **config.settings.to_dict()}
    names = ("model", "encoder", "head") if config.model == "study" else ("model",)
    return Workload(
        model=model,
        image_shape=tuple(config.task().image_shape()),
        make_example=model.make_example,
        batch_size=config.batch_size,
        num_classes=getattr(head, "num_classes", 10),
        precision=config.precision,
        jit_compile=bool(config.jit_compile),
        description=", ".join(f"{name}={described[name]}" for name in names),
    )
