"""Callbacks of the trainer: resumable epoch checkpoints and the k schedule."""

import json
import os

import keras

from capskeras.files import write_text_atomically
from capskeras.layers.k_sparse import KSparse

STATE_FILE = "latest.json"


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves weights and optimizer state after every epoch, atomically.

    Each epoch writes `epoch-NNNN.weights.h5` (model and optimizer
    variables) and then replaces `latest.json`, which names that file and
    holds the per-epoch history so far. A run killed at any moment leaves
    `latest.json` pointing at a complete checkpoint; `restore` reloads it
    and returns the epoch to resume from.

    Args:
        directory: where the checkpoints go.
        keep: how many epoch checkpoints to keep.
        write: False on non-chief workers, which save nothing.
    """

    def __init__(self, directory, keep=3, write=True):
        super().__init__()
        self.directory = directory
        self.keep = keep
        self.write = write
        self.history = []

    def state(self):
        """The saved state dict, or None when nothing was saved yet."""
        path = os.path.join(self.directory, STATE_FILE)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    def restore(self, model):
        """Loads the newest checkpoint into `model`; returns its epoch (0 if none)."""
        state = self.state()
        if state is None:
            return 0
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(os.path.join(self.directory, state["weights"]))
        self.history = state["history"]
        return state["epoch"]

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1}
        record.update({name: float(value) for name, value in (logs or {}).items()})
        self.history.append(record)
        if not self.write:
            return
        os.makedirs(self.directory, exist_ok=True)
        weights = f"epoch-{epoch + 1:04d}.weights.h5"
        partial = os.path.join(self.directory, f".partial-{weights}")
        self.model.save_weights(partial, overwrite=True)
        os.replace(partial, os.path.join(self.directory, weights))
        write_text_atomically(
            os.path.join(self.directory, STATE_FILE),
            json.dumps({"epoch": epoch + 1, "weights": weights, "history": self.history}, indent=2),
        )
        self._prune(keep_name=weights)

    def _prune(self, keep_name):
        saved = sorted(
            name for name in os.listdir(self.directory)
            if name.startswith("epoch-") and name.endswith(".weights.h5")
        )
        for name in saved[: -self.keep]:
            if name != keep_name:
                os.remove(os.path.join(self.directory, name))


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
