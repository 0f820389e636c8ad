"""The training loop: distributed steps, exact checkpoints and resume.

Keras 3's `fit` cannot run `MultiWorkerMirroredStrategy` across workers
(keras-team/keras#20585) and its `BackupAndRestore` does not save the input
pipeline's position, so the trainer runs its own loop on the same pieces:
the model's own `train_step` under `strategy.run` (Keras scales the loss per
replica and the optimizer all-reduces the gradients), Keras callbacks for
progress and TensorBoard, and `tf.train.CheckpointManager` over every
weight of the model (trainable or not), the optimizer, the seed generators,
the step counters and the `tf.data` iterator itself. A resumed run therefore continues with the same examples
in the same order with the same random shifts: its weights equal an
uninterrupted run's (bit for bit under `--deterministic`).

Input is sharded by rows of the global batch: every worker reads the same
pipeline (same seed, same order) and keeps its own slice of each global
batch, which it splits among its local replicas. The union of the replicas'
batches is then exactly the global batch a single worker would see, so a
run's result does not depend on the cluster's shape beyond float rounding.
(`tf.distribute`'s own distributed iterators cannot be checkpointed.)
With several replicas the last partial batch of an epoch is dropped, so
that no replica gets an empty one.

Checkpoints are written at the end of every epoch and every
`checkpoint_every_steps` steps. Under several workers every worker writes
one (its iterator's position is its own): the chief into `directory`,
worker i into `directory/worker-i`; restarted, they all resume from the
newest checkpoint every one of them holds.
"""

import json
import math
import os

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from capskeras.files import reported_as_write_error
from capskeras.files import write_text_atomically
from capskeras.training import checkpoints

HISTORY_FILE = "history.json"


class WorkersDisagreeError(RuntimeError):
    """The workers of a cluster hold no checkpoint of a common step to resume from."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""


def train_model(model, dataset, *, strategy, batch_size, steps_per_epoch, epochs, directory,
                checkpoint_every_steps=0, keep=3, worker_id=0, restore_input=True,
                callbacks=(), verbose=0, jit_compile=False, validate=None):
    """Trains a compiled `model` on `dataset` for `epochs`, resuming from `directory`.

    Args:
        model: a compiled Keras model, built under `strategy.scope()`.
        dataset: a finite batched `tf.data.Dataset` of one epoch of
            `(inputs, targets)`, the global batch size per element.
        strategy: the `tf.distribute` strategy the model was built under.
        batch_size: the global batch size of `dataset`, a multiple of the
            number of replicas.
        steps_per_epoch: batches in one epoch of `dataset`.
        epochs: train until this many epochs are done.
        directory: the checkpoint directory of this stage.
        checkpoint_every_steps: also save every N steps; 0 for epoch ends only.
        keep: checkpoints kept.
        worker_id: this worker's index; 0 writes `directory` itself.
        restore_input: restore the input position; False when settings
            changed since the checkpoint: the current epoch then starts over
            in a fresh pipeline.
        callbacks: Keras callbacks (`on_epoch_*`, `on_train_batch_end`, ...).
        verbose: 0 silent, 1 progress bar, 2 a line per epoch.
        jit_compile: compile the per-replica step with XLA.
        validate: `() -> dict` of metrics computed at every epoch's end
            (a held-out split's as `val_<name>`, test sets' accuracies) and
            logged under the names it gives; None for none.

    Returns:
        A dict: `epochs`, `resumed_from` (None, or `{"epoch", "step",
        "checkpoint"}`, plus `skipped_damaged` and `steps_lost` when damaged
        newer checkpoints were set aside) and `history` (one record of
        metrics per epoch).

    Raises:
        NonFiniteLossError: the loss became non-finite; nothing was saved
            after the last finite step.
        checkpoints.UnreadableCheckpointError: no checkpoint in `directory`
            can be read; nothing was overwritten.
        checkpoints.CheckpointWriteError: a checkpoint could not be written
            (a full disk); the previous one is kept.
    """
    if worker_id:
        directory = os.path.join(directory, f"worker-{worker_id}")
    with strategy.scope():
        model.optimizer.build(model.trainable_variables)
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
    iterator = iter(_worker_batches(dataset, strategy, batch_size, worker_id).repeat())
    state = dict(model_state(model), optimizer=model.optimizer, epoch=epoch, step=step)
    def make_manager():
        return tf.train.CheckpointManager(
            tf.train.Checkpoint(**state, input=iterator), directory, max_to_keep=keep)

    manager = make_manager()
    resumed_from = None
    history = []
    restored = tf.train.Checkpoint(**state, **({"input": iterator} if restore_input else {}))
    workers, _ = replicas_per_worker(strategy)
    common = _common_checkpoint(strategy, manager, worker_id, keep) if workers > 1 else None
    path, skipped = checkpoints.restore_newest_readable(restored, manager, newest=common)
    if path:
        if skipped:
            manager = make_manager()  # Its list no longer holds the damaged ones.
        if not restore_input:
            step.assign(0)  # The current epoch starts over in a fresh pipeline.
        resumed_from = {"epoch": int(epoch.numpy()), "step": int(step.numpy()),
                        "checkpoint": os.path.basename(path)}
        if skipped:
            newest = max(checkpoints.checkpoint_number(entry["checkpoint"]) for entry in skipped)
            resumed_from["skipped_damaged"] = skipped
            resumed_from["steps_lost"] = newest - checkpoints.checkpoint_number(path)
        history = [record for record in _read_history(directory)
                   if record["epoch"] <= resumed_from["epoch"]]
        logging.info("Resuming %s from epoch %d, step %d of %d (%s)", model.name,
                     resumed_from["epoch"], resumed_from["step"], steps_per_epoch, path)
    _check_workers_agree(strategy, int(epoch.numpy()) * steps_per_epoch + int(step.numpy()))

    train_step = _train_function(model, strategy, jit_compile, worker_id)
    callback_list = keras.callbacks.CallbackList(
        list(callbacks), add_history=False, add_progbar=verbose != 0, model=model,
        verbose=verbose, epochs=epochs, steps=steps_per_epoch,
    )

    def save(finished_epoch, finished_step):
        _check_finite_weights(model, finished_epoch, finished_step)
        checkpoints.save(manager, int(epoch.numpy()) * steps_per_epoch + int(step.numpy()))

    callback_list.on_train_begin()
    while int(epoch.numpy()) < epochs:
        current = int(epoch.numpy())
        if int(step.numpy()) == 0:
            model.reset_metrics()
        callback_list.on_epoch_begin(current)
        logs = {}
        while int(step.numpy()) < steps_per_epoch:
            batch = int(step.numpy())
            callback_list.on_train_batch_begin(batch)
            train_step(iterator)
            logs = _results(model)
            if not math.isfinite(logs.get("loss", 0.0)):
                raise NonFiniteLossError(
                    f"The loss became {logs['loss']} at epoch {current + 1}, step {batch + 1} "
                    f"of {model.name}; training stopped. The last good checkpoint is kept: "
                    f"{manager.latest_checkpoint or 'none yet'}"
                )
            step.assign_add(1)
            callback_list.on_train_batch_end(batch, logs)
            done = int(step.numpy())
            if checkpoint_every_steps and done % checkpoint_every_steps == 0 \
                    and done < steps_per_epoch:
                save(current + 1, done)
        epoch.assign_add(1)
        step.assign(0)
        if validate is not None:
            logs = {**logs, **validate()}
        callback_list.on_epoch_end(current, logs)
        history.append({"epoch": current + 1, **logs})
        save(current + 1, steps_per_epoch)
        if worker_id == 0:
            history_file = os.path.join(directory, HISTORY_FILE)
            with reported_as_write_error(history_file):
                write_text_atomically(history_file, json.dumps(history, indent=2))
    callback_list.on_train_end(history[-1] if history else {})
    return {"epochs": int(epoch.numpy()), "resumed_from": resumed_from, "history": history}


def replicas_per_worker(strategy):
    """`(workers, local replicas)` of `strategy`."""
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    workers = max(1, len(spec.get("worker", [])) + len(spec.get("chief", [])))
    return workers, strategy.num_replicas_in_sync // workers


def _worker_batches(dataset, strategy, batch_size, worker_id):
    """This worker's rows of every full global batch of `dataset`."""
    if strategy.num_replicas_in_sync == 1:
        return dataset
    workers, _ = replicas_per_worker(strategy)
    size = batch_size // workers

    def full(*batch):
        return tf.shape(tf.nest.flatten(batch)[0])[0] == batch_size

    def rows(*batch):
        return tf.nest.map_structure(lambda t: t[worker_id * size:(worker_id + 1) * size], batch)

    return dataset.filter(full).map(rows)


def _train_function(model, strategy, jit_compile, worker_id):
    replica_step = model.train_step
    if jit_compile:
        replica_step = tf.function(replica_step, jit_compile=True)
    replicas = strategy.num_replicas_in_sync
    _, local_replicas = replicas_per_worker(strategy)
    first_local = worker_id * local_replicas

    @tf.function
    def capskeras_train_step(iterator):  # The name capskeras.xla knows.
        batch = next(iterator)
        if replicas == 1:
            strategy.run(replica_step, args=(batch,))
            return
        size = tf.shape(tf.nest.flatten(batch)[0])[0] // local_replicas

        def replica_rows(context):
            local = context.replica_id_in_sync_group - first_local
            return tf.nest.map_structure(lambda t: t[local * size:(local + 1) * size], batch)

        per_replica = strategy.experimental_distribute_values_from_function(replica_rows)
        strategy.run(replica_step, args=(per_replica,))

    return capskeras_train_step


def _results(model):
    """The model's running metrics as floats (reduced over replicas)."""
    return {name: float(value) for name, value in model.get_metrics_result().items()}


def model_state(model):
    """What a checkpoint holds of `model`: `weights` and `seeds`, each by position.

    Every weight, trainable or not, and the state of every random seed
    generator (dropout). Positions, not paths: auto-generated names
    (`conv2d_1`, `seed_generator_8`) depend on what the process built
    before, while the model's settings fix the order of its weights.
    """
    return {"weights": {f"{index:04d}": weight for index, weight in enumerate(model.weights)},
            "seeds": _seed_states(model)}


def restore_weights(model, directory):
    """Restores `model`'s weights from the newest readable checkpoint the loop wrote in `directory`.

    For a finished (or stopped) run: `model` is built as the task built the
    trained one; the optimizer and input position are not read. Damaged
    newer checkpoints are set aside as a resume would.

    Returns:
        `{"epoch", "step", "checkpoint"}`: whole epochs done, steps into the
        next, and the checkpoint's file prefix.

    Raises:
        ValueError: `directory` holds no checkpoint.
        checkpoints.UnreadableCheckpointError: none of them can be read.
    """
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
    checkpoint = tf.train.Checkpoint(**model_state(model), epoch=epoch, step=step)
    manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=None)
    path, _ = checkpoints.restore_newest_readable(checkpoint, manager, partial=True)
    if path is None:
        raise ValueError(f"Received: checkpoint directory {directory!r} without a checkpoint; "
                         "expected a run that has trained at least one checkpoint interval")
    return {"epoch": int(epoch.numpy()), "step": int(step.numpy()),
            "checkpoint": os.path.basename(path)}


def _seed_states(model):
    """The state variables of the model's random seed generators (dropout), by position."""
    states = [variable for variable in model.variables
              if variable.path.endswith("seed_generator_state")]
    return {f"{index:02d}": variable for index, variable in enumerate(states)}


def _common_checkpoint(strategy, manager, worker_id, keep):
    """The newest checkpoint of `manager` that every worker holds; None if none holds any.

    A worker lost mid-run may have missed the last checkpoint its peers
    wrote, or written one they missed: all then resume from the newest step
    they share, if each still keeps it (the newest `keep`).

    Raises:
        WorkersDisagreeError: the workers hold checkpoints, but no step in common.
    """
    workers, local_replicas = replicas_per_worker(strategy)
    paths = {checkpoints.checkpoint_number(path): path for path in manager.checkpoints}
    steps = sorted(paths)[-keep:]
    # Every worker fills its own row (steps + 1, 0 for none): their SUM is all rows.
    rows = np.zeros((workers, keep), np.int64)
    rows[worker_id, :len(steps)] = np.asarray(steps, np.int64) + 1
    value = tf.constant(rows.ravel())
    per_replica = strategy.run(lambda: tf.identity(value))
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy()
    rows = total.reshape(workers, keep) // local_replicas
    held = [{int(v) - 1 for v in row if v} for row in rows]
    common = set.intersection(*held)
    if common:
        step = max(common)
        if paths[step] != manager.latest_checkpoint:
            logging.warning("Worker %d resumes from %s, the newest step every worker holds, "
                            "not from its newer %s", worker_id, paths[step],
                            manager.latest_checkpoint)
        return paths[step]
    if not any(held):
        return None
    raise WorkersDisagreeError(
        "The workers hold no checkpoint of a common step (their steps, by worker: "
        f"{[sorted(steps) for steps in held]}); every worker must resume from the same one. "
        "Expected the same --model_dir with all workers' checkpoints, or a new --model_dir"
    )


def _check_workers_agree(strategy, position):
    """Raises unless every worker resumes from the same step (all start together)."""
    workers, _ = replicas_per_worker(strategy)
    if workers == 1:
        return
    # ReduceOp has SUM and MEAN only: the positions are all equal exactly when
    # (sum x)^2 == n * sum x^2, which every worker computes alike.
    value = tf.constant([position, position * position, 1], tf.int64)
    per_replica = strategy.run(lambda: tf.identity(value))
    total, squares, count = (int(v) for v in strategy.reduce(
        tf.distribute.ReduceOp.SUM, per_replica, axis=None))
    if total * total != count * squares:
        raise WorkersDisagreeError(
            f"The workers' checkpoints are at different steps (this one at {position}); "
            "every worker must resume from the same one. Expected the same --model_dir with "
            "all workers' checkpoints, or a new --model_dir"
        )


def _check_finite_weights(model, epoch, step):
    """Raises before a save when a weight is NaN or infinite (epoch counted from 1)."""
    for variable in model.trainable_variables:
        if not np.all(np.isfinite(keras.ops.convert_to_numpy(variable.value))):
            raise NonFiniteLossError(
                f"Weight {variable.path} became non-finite at epoch {epoch}, step {step} "
                f"of {model.name}; training stopped before saving it"
            )


def _read_history(directory):
    path = os.path.join(directory, HISTORY_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)
