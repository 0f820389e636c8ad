"""The contract every trainable capskeras model meets, declared once.

The trainer, `capskeras.export`, `capskeras.evaluation` and the tools rely
on nothing else of a model than this. Required:

- `make_example(images, labels) -> (inputs, targets)`: the pair `fit`
  and `evaluate` take for a batch of images in [0, 1] and int labels;
- `default_loss()` and `default_metrics()`: what `compile` takes;
- `serving_outputs(images) -> dict`: the inference-mode outputs served as
  the SavedModel's `serving_default` signature. Always `encoding`
  (`[B, code_dim]`); `probabilities` (`[B, classes]`, summing to 1) with
  `class_ids` (`[B]` int) for classifiers; `reconstruction` (the images'
  shape) for decoders. A model may serve more outputs beside these.

Optional, each asked for by name by what needs it (`check_supports` says
what a model lacks):

- `serving_model()`: the model to export in its place, with the same
  serving outputs in plainer layers (a study model with group
  convolutions returns one with ordinary convolutions).
- `code(images) -> [B, D]`: the model's code of a batch, in inference
  mode: the code `code_decoder()` reads, which the equivariance report
  perturbs and maps. Without it, the served `encoding` (`code_of`).
- `code_decoder()`: a function codes `[B, D]` -> images `[B, H, W, C]`
  with `decode(code(x))` the model's reconstruction of x, or None for a
  model that reconstructs nothing. Perturbation sweeps and the
  perturbation figure decode through it.
- `code_capsules`: `(count, dim)` when the code is `count` capsules of
  `dim` values, capsule-major, the longest one the winner; else None.
  Sweeps then perturb the winning capsule's dimensions, and the
  perturbation figure (Sabour et al., Fig. 4) needs it.
- `feature_responses()`: a function images `[N, H, W, C]` -> response
  maps `[N, h, w, U]` of the first learned layer that meets the image
  (before any selection of units), or None; the rotated feature families
  read it.
- `heads_encoder()`: a Keras model images -> `[B, D]` code sharing this
  model's weights, for heads trained on the frozen code
  (`tools/study_heads.py`; see `capskeras.tasks.Task.frozen_encoder`).

A family's pretraining stages (and so their run directories,
`<model_dir>/<stage>/`) are its task's `pretraining()`; the trainer
restores a finished run's weights with
`capskeras.training.loop.restore_weights`.
"""

from typing import Protocol
from typing import runtime_checkable

import keras


@runtime_checkable
class ServableModel(Protocol):
    """What the trainer, export and evaluation use of a model."""

    def make_example(self, images, labels): ...

    def default_loss(self): ...

    def default_metrics(self): ...

    def serving_outputs(self, images): ...


REQUIRED = ("make_example", "default_loss", "default_metrics", "serving_outputs")
OPTIONAL = ("serving_model", "code", "code_decoder", "code_capsules", "feature_responses",
            "heads_encoder")


def check_servable(model):
    """Raises TypeError naming the methods `model` lacks; returns it otherwise."""
    missing = [name for name in REQUIRED if not callable(getattr(model, name, None))]
    if missing:
        raise TypeError(
            f"Received: model={getattr(model, 'name', model)!r} of type "
            f"{type(model).__name__} without {missing}; expected a model following "
            "capskeras.models.contract.ServableModel"
        )
    return model


def check_supports(model, *members, purpose):
    """Returns `model`, or raises a ValueError naming the optional members it lacks.

    A member counts as missing when absent, None, or a method returning None
    (`code_decoder()`, `feature_responses()`).

    Args:
        model: a model following the contract.
        *members: names among `OPTIONAL`.
        purpose: what needs them, for the message ("the perturbation figure").
    """
    unknown = [name for name in members if name not in OPTIONAL]
    if unknown:
        raise ValueError(f"Received: members {unknown}; expected names in {list(OPTIONAL)}")
    missing = [name for name in members if member(model, name) is None]
    if missing:
        raise ValueError(
            f"Received: model={getattr(model, 'name', model)!r} of type "
            f"{type(model).__name__} without {missing}; {purpose} needs a model with "
            f"{list(members)} (capskeras.models.contract)"
        )
    return model


def member(model, name):
    """The value of optional member `name` of `model`: a method's result, or None."""
    value = getattr(model, name, None)
    if name in ("code_decoder", "feature_responses", "heads_encoder") and callable(value):
        return value()
    if name in ("serving_model", "code") and not callable(value):
        return None
    return value


def code_of(model, images):
    """`model.code(images)`, or its served `encoding`, as `[B, D]`."""
    if callable(getattr(model, "code", None)):
        return model.code(images)
    code = model.serving_outputs(images)["encoding"]
    return keras.ops.reshape(code, (keras.ops.shape(code)[0], -1))


def check_serving_outputs(outputs):
    """Raises ValueError unless `outputs` is a serving dict of the contract."""
    names = set(outputs)
    if "encoding" not in names or ("probabilities" in names) != ("class_ids" in names):
        raise ValueError(
            f"Received: serving outputs {sorted(names)}; expected 'encoding', and "
            "'probabilities' with 'class_ids' for a classifier"
        )
    return outputs
