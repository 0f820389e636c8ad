"""The contract every trainable capskeras model meets, declared once.

The trainer, `capskeras.export` and `capskeras.evaluation` rely on nothing
else of a model than this:

- `make_example(images, labels) -> (inputs, targets)`: the pair `fit`
  and `evaluate` take for a batch of images in [0, 1] and int labels;
- `default_loss()` and `default_metrics()`: what `compile` takes;
- `serving_outputs(images) -> dict`: the inference-mode outputs served as
  the SavedModel's `serving_default` signature. Always `encoding`
  (`[B, code_dim]`); `probabilities` (`[B, classes]`, summing to 1) with
  `class_ids` (`[B]` int) for classifiers; `reconstruction` (the images'
  shape) for decoders. A model may serve more outputs beside these.

Optionally, `serving_model()` returns the model to export in its place,
with the same serving outputs in plainer layers (a `StudyModel` with group
convolutions returns one with ordinary convolutions).

`check_servable(model)` says, once, what a model lacks.
"""

from typing import Protocol
from typing import runtime_checkable


@runtime_checkable
class ServableModel(Protocol):
    """What the trainer, export and evaluation use of a model."""

    def make_example(self, images, labels): ...

    def default_loss(self): ...

    def default_metrics(self): ...

    def serving_outputs(self, images): ...


def check_servable(model):
    """Raises TypeError naming the methods `model` lacks; returns it otherwise."""
    missing = [name for name in ("make_example", "default_loss", "default_metrics",
                                 "serving_outputs") if not callable(getattr(model, name, None))]
    if missing:
        raise TypeError(
            f"Received: model={getattr(model, 'name', model)!r} of type "
            f"{type(model).__name__} without {missing}; expected a model following "
            "capskeras.models.contract.ServableModel"
        )
    return model


def check_serving_outputs(outputs):
    """Raises ValueError unless `outputs` is a serving dict of the contract."""
    names = set(outputs)
    if "encoding" not in names or ("probabilities" in names) != ("class_ids" in names):
        raise ValueError(
            f"Received: serving outputs {sorted(names)}; expected 'encoding', and "
            "'probabilities' with 'class_ids' for a classifier"
        )
    return outputs
