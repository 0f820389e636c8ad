"""The absl trainer: flags -> config -> task -> stages -> evaluate -> export.

    capskeras-train --flagfile=flags/enc_deep_bp_dec_class.cfg --epochs=2

`train(TrainConfig(...))` runs the same job from Python. The task named by
`--model` (`capskeras.tasks`) supplies the model, its inputs and any
pretraining stages; this module runs them with `capskeras.training.loop` and
writes to `--model_dir`: `config.json` and `flags.cfg` (the run's
settings), `checkpoints/` (resumed from automatically), `logs/`
(TensorBoard), `metrics.json`, `model.keras` and, for reconstruction
models, `reconstructions.png`; with `--export_dir` it also exports a
SavedModel. `--pretrain_only` stops after the pretraining stages. Every
check of the request runs before anything is written (`preflight`, and the
replicas' share of the batch once the strategy exists); then the trainer
takes the run directory's lock (`run_lock`), so that one trainer at a time
writes a run.

Exit codes of `capskeras-train`: 0 done; 2 a bad request (a bad value,
missing data, a run directory another trainer holds or whose checkpoints
cannot be read), before anything is written; 3 the loss became NaN or
infinite; 4 a multi-worker run lost a peer (start every worker again);
5 a checkpoint, model or export could not be written (a full disk), the
earlier ones kept.
"""

import dataclasses
import json
import math
import os
import sys
import time

from absl import app
from absl import flags as absl_flags
from absl import logging
import keras
import tensorflow as tf

from capskeras import cli
from capskeras import export
from capskeras import precision as precisions
from capskeras.data.builders import DatasetNotFoundError
from capskeras.files import WriteError
from capskeras.files import reported_as_write_error
from capskeras.files import write_text_atomically
from capskeras.models.contract import check_servable
from capskeras.settings import dtype_policy
from capskeras.tasks import InputOptions
from capskeras.training import figures
from capskeras.training import checkpoints
from capskeras.training import epoch_eval
from capskeras.training import loop
from capskeras.training import run_dir
from capskeras.training import run_lock
from capskeras.training import strategy as strategies
from capskeras.training.flags import config_from_flags
from capskeras.training.flags import define_flags


class ConfigurationError(ValueError):
    """The request is wrong: a bad value, a path, missing data, another run's model_dir."""


def train(config):
    """Trains, evaluates, saves and exports the model `config` describes.

    Resumes from the newest checkpoint in `config.model_dir`, if any.

    Returns:
        The metrics dict also written to `<model_dir>/metrics.json`.

    Raises:
        ConfigurationError: anything wrong with the request, before any work:
            also another trainer holding `model_dir`, or checkpoints there
            that cannot be read.
        loop.NonFiniteLossError: the loss became NaN or infinite.
        capskeras.files.WriteError: a checkpoint, the model or the export
            could not be written; the earlier ones are kept.
        strategy.LostWorkerError: a `multi_worker` run lost a peer worker,
            or a collective outlasted `collective_timeout_seconds`.
    """
    try:
        config, precision_reason = resolve_precision(config)
    except ValueError as error:  # An unreadable config.json.
        raise ConfigurationError(str(error)) from error
    changes = preflight(config)
    worker = strategies.worker_index() if config.distribution_strategy == "multi_worker" else 0
    try:
        lock = run_lock.acquire(config.model_dir, worker)
    except (run_lock.RunLockedError, OSError) as error:
        raise ConfigurationError(str(error)) from error
    try:
        with dtype_policy(config.precision):
            return _Run(config, changes, lock, precision_reason).run()
    except (checkpoints.UnreadableCheckpointError, loop.WorkersDisagreeError) as error:
        raise ConfigurationError(str(error)) from error
    except tf.errors.OpError as error:
        lost = config.distribution_strategy == "multi_worker" and strategies.peer_lost(
            error, config.collective_timeout_seconds)
        if lost:
            raise lost from error
        raise
    finally:
        lock.release()


def resolve_precision(config):
    """`config` with `precision="auto"` replaced by the dtype policy it stands for.

    A new run takes `capskeras.precision.auto_precision()`'s choice for
    this machine. A run that resumes keeps the policy its `config.json`
    recorded (the choice made when it started, wherever that was): the
    policy sets the dtype of the model's variables and its arithmetic, so
    a run started under `auto` on a bfloat16 machine resumes under
    `mixed_bfloat16` on any other, and one started under `float32` stays
    there. An explicit policy that differs from the recorded one is refused
    by `preflight`, naming both. (A multi-worker run on machines of
    different kinds should name its policy: each worker resolves `auto`.)

    Returns:
        `(config, reason)`: a copy of `config` holding the policy, and in
        words why `auto` chose it; `config` itself and `None` for an
        explicit policy.
    """
    if config.precision != "auto":
        return config, None
    saved = run_dir.saved_settings(config.model_dir) if config.model_dir else None
    if saved is not None:
        # A run recorded before `precision` existed ran under the default, float32.
        policy = saved.get("precision", "float32")
        reason = f"the policy the run in {config.model_dir!r} started with"
    else:
        policy, reason = precisions.auto_precision()
    logging.info("precision=auto: %s (%s)", policy, reason)
    return dataclasses.replace(config, precision=policy), reason


def preflight(config):
    """Checks everything that can be wrong with the request; returns the resume's changes.

    Writes nothing: a rejected request leaves `model_dir` untouched.

    Raises:
        ConfigurationError: a bad setting, an unwritable directory, missing
            data, or a `model_dir` whose run these settings cannot continue.
    """
    try:
        config.validate()
        task = config.task()
        strategies.check_strategy(config.distribution_strategy)
        run_dir.check_writable("model_dir", config.model_dir)
        if config.export_dir:
            run_dir.check_writable("export_dir", config.export_dir)
        stages = task.pretraining()
        run_dir.check_checkpoint_format(config.model_dir, stages)
        changes = run_dir.changed_settings(config)
        run_dir.check_stages(config, stages)
        if config.pretrain_only and not stages:
            raise ValueError(
                f"Received: pretrain_only=True for model={config.model!r} (experiment "
                f"{config.experiment!r}), which has no pretraining stage; expected a model "
                "whose task pretrains (Task.pretraining)")
        task.check_data(_input_options(config, "train"))
        if config.eval_each_epoch:
            epoch_eval.check_request(config, task)
        task.tfds_split("train", _input_options(config, "train"))  # validation_examples fits
        if config.cpu_devices:
            strategies.split_host_cpu(config.cpu_devices)
    except (ValueError, TypeError, DatasetNotFoundError) as error:
        raise ConfigurationError(str(error)) from error
    return changes


class _Run:
    """One run of `train`: its strategy, its stages and what it writes."""

    def __init__(self, config, changes, lock, precision_reason=None):
        self.config = config
        self.precision_reason = precision_reason
        self.changes = changes
        self.lock = lock
        self.task = config.task()
        multi_worker = config.distribution_strategy == "multi_worker"
        # TF_CONFIG speaks only for multi_worker runs; any other run is its own chief.
        self.chief = strategies.is_chief() if multi_worker else True
        self.worker = strategies.worker_index() if multi_worker else 0
        self.verbose = config.verbose if config.verbose >= 0 else (
            1 if sys.stdout.isatty() else 2)

    def run(self):
        config = self.config
        if config.deterministic:
            tf.config.experimental.enable_op_determinism()
        keras.utils.set_random_seed(config.seed)
        self.strategy = strategies.make_strategy(
            config.distribution_strategy, config.collective_timeout_seconds)
        self.steps_per_epoch = self._steps_per_epoch()
        if self.chief:
            run_dir.record_start(config, self.changes)
        if self.lock.taken_over:
            run_dir.record_event(config.model_dir, "lock_taken_over", lock=self.lock.path,
                                 previous_holder=self.lock.taken_over.describe())
        results = {
            "experiment": config.experiment,
            "model": config.model,
            "settings": self.task.settings.to_dict(),
            "distribution_strategy": config.distribution_strategy,
            "replicas": self.strategy.num_replicas_in_sync,
            "precision": config.precision,
        }
        if self.precision_reason:
            results["precision_auto"] = self.precision_reason
        pretrained = {}
        for stage in self.task.pretraining():
            model, results[stage.name] = self._train(
                stage.build_model, stage.epochs, stage.name, stage.callbacks())
            pretrained[stage.name] = stage.result(model)
        if config.pretrain_only:
            if self.chief:
                metrics_file = os.path.join(config.model_dir, "metrics.json")
                with reported_as_write_error(metrics_file):
                    write_text_atomically(metrics_file, json.dumps(results, indent=2))
            return results
        model, trained = self._train(lambda: self.task.build_model(pretrained), config.epochs)
        results.update(trained)
        results["params"] = model.count_params()
        if self.chief:
            self._finish(model, results)
        return results

    def _train(self, build_model, epochs, stage_name=None, callbacks=()):
        """Builds, trains and evaluates one stage's model; returns it and its metrics."""
        config = self.config
        options = _input_options(config, "train")
        steps_per_epoch = self.steps_per_epoch
        with self.strategy.scope():
            model = _built(check_servable(build_model()), self.task.image_shape())
            model = _compile(model, config, steps_per_epoch)
        data = self.task.images("train", options, shuffle=True).map(model.make_example)
        callbacks = list(callbacks)
        evaluations = []  # Each `(local model) -> {name: value}`, after every epoch.
        if self.chief and config.validation_examples:
            validation = self._data(model, "validation")
            evaluations.append(lambda local: {
                f"val_{name}": value for name, value in _evaluate(local, validation).items()})
        if self.chief and config.eval_each_epoch and stage_name is None:
            try:
                evaluations.append(epoch_eval.EpochEvaluation(config, self.task, model))
            except ImportError as error:
                raise ConfigurationError(str(error)) from error
        validate = None
        if evaluations:

            def validate():
                local = self._local(model)
                return {name: value for evaluate in evaluations
                        for name, value in evaluate(local).items()}
        if self.chief:
            log_dir = os.path.join(config.model_dir, "logs", stage_name or "")
            callbacks.append(keras.callbacks.TensorBoard(log_dir=log_dir, write_graph=False))
        started = time.perf_counter()
        trained = loop.train_model(
            model, data,
            strategy=self.strategy,
            batch_size=config.batch_size,
            steps_per_epoch=steps_per_epoch,
            epochs=epochs,
            directory=run_dir.stage_directory(config.model_dir, stage_name),
            checkpoint_every_steps=config.checkpoint_every_steps,
            keep=config.keep_checkpoints,
            worker_id=self.worker,
            restore_input=not self.changes,
            callbacks=callbacks,
            verbose=self.verbose if self.chief else 0,
            jit_compile=config.jit_compile,
            validate=validate,
        )
        resumed = trained["resumed_from"]
        if resumed and resumed.get("skipped_damaged"):
            run_dir.record_event(
                config.model_dir, "damaged_checkpoints_skipped", stage=stage_name or "model",
                worker=self.worker, restored=resumed["checkpoint"],
                skipped=resumed["skipped_damaged"], steps_lost=resumed["steps_lost"])
        metrics = {
            "epochs": trained["epochs"],
            "resumed_from": resumed,
            "resumed_from_epoch": resumed["epoch"] if resumed else 0,
            "fit_seconds": round(time.perf_counter() - started, 2),
            "history": trained["history"],
        }
        if self.chief:
            local = self._local(model)
            # The model's figures on each split in inference mode (the
            # training split unshuffled and unaugmented, not the running
            # average of the last epoch); a pretraining stage's on test only.
            splits = ["test"] if stage_name else ["train", "validation", "test"]
            for split in splits:
                if split != "validation" or config.validation_examples:
                    metrics[split] = _evaluate(local, self._data(model, split))
            logging.info("%s %s metrics: %s", config.experiment, stage_name or "model",
                         {split: metrics[split] for split in splits if split in metrics})
        return model, metrics

    def _steps_per_epoch(self):
        """Steps in an epoch; refuses a batch the replicas cannot share, before any write."""
        config = self.config
        examples = self.task.num_examples("train", _input_options(config, "train"))
        replicas = self.strategy.num_replicas_in_sync
        if config.batch_size % replicas or (replicas > 1 and examples < config.batch_size):
            raise ConfigurationError(
                f"Received: batch_size={config.batch_size} for {replicas} replicas and "
                f"{examples} training examples; expected a multiple of the number of "
                "replicas, at most the number of examples"
            )
        # Several replicas drop the last partial batch (see loop.py).
        rounding = math.ceil if replicas == 1 else math.floor
        return max(1, rounding(examples / config.batch_size))

    def _local(self, model):
        """`model` itself, or under a strategy a copy of it with plain variables."""
        if self.config.distribution_strategy == "default":
            return model
        copy = model.__class__.from_config(model.get_config())
        copy.build((None,) + self.task.image_shape())
        copy.set_weights(model.get_weights())
        copy.compile(loss=copy.default_loss(), metrics=copy.default_metrics())
        return copy

    def _data(self, model, split):
        """`split` unshuffled and unaugmented, as `model` takes it."""
        options = _input_options(self.config, split)
        return self.task.images(split, options, shuffle=False).map(model.make_example)

    def _finish(self, model, results):
        """The chief's files: the figure, `model.keras`, the export, `metrics.json`."""
        config = self.config
        model = self._local(model)
        if config.plot_reconstructions:
            options = InputOptions(batch_size=10, num_examples=10, data_dir=config.data_dir or None,
                                   download=config.download)
            images, _ = next(iter(self.task.images("test", options, shuffle=False)))
            outputs = model.serving_outputs(images)
            if "reconstruction" in outputs:
                results["reconstructions_png"] = figures.save_reconstruction_grid(
                    images, outputs["reconstruction"],
                    os.path.join(config.model_dir, "reconstructions.png"),
                    title=f"{config.experiment}: test digits (top) and reconstructions",
                )
        results["model_file"] = _save_model(model, config.model_dir)
        if config.export_dir:
            with reported_as_write_error(config.export_dir):
                results["export"] = export.export_saved_model(
                    model, config.export_dir, self.task.image_shape())
            logging.info("Exported SavedModel to %s", results["export"])
        metrics_file = os.path.join(config.model_dir, "metrics.json")
        with reported_as_write_error(metrics_file):
            write_text_atomically(metrics_file, json.dumps(results, indent=2))


def _input_options(config, split):
    training = split == "train"
    return InputOptions(
        batch_size=config.batch_size,
        num_examples=(config.train_examples if training else config.eval_examples) or None,
        seed=config.seed,
        data_dir=config.data_dir or None,
        download=config.download,
        validation_examples=config.validation_examples,
    )


def _evaluate(model, data):
    """Test metrics as floats; `accuracy` also names an output's accuracy."""
    metrics = model.evaluate(data, return_dict=True, verbose=0)
    metrics = {name: float(value) for name, value in metrics.items()}
    per_output = [name for name in metrics if name.endswith("_accuracy")]
    if "accuracy" not in metrics and len(per_output) == 1:
        metrics["accuracy"] = metrics[per_output[0]]
    return metrics


def compiled_model(config, steps_per_epoch=1):
    """The model `config` trains, compiled as the trainer compiles it.

    Pretraining stages are skipped: a model with a pretrained encoder gets
    a freshly initialized one. For benchmarks and experiments in code.
    """
    config.validate()
    task = config.task()
    return _compile(_built(task.build_model({}), task.image_shape()), config, steps_per_epoch)


def _built(model, image_shape):
    """`model`, built for `image_shape` if its builder left that to the first call."""
    if not model.built:
        model.build((None,) + tuple(image_shape))
    return model


def _compile(model, config, steps_per_epoch):
    model.compile(
        optimizer=_optimizer(config, steps_per_epoch),
        loss=model.default_loss(),
        metrics=model.default_metrics(),
        jit_compile=config.jit_compile,
    )
    return model


def _optimizer(config, steps_per_epoch):
    """Adam, its learning rate decayed per epoch of the real dataset size."""
    learning_rate = config.learning_rate
    if config.learning_rate_decay < 1.0:
        learning_rate = keras.optimizers.schedules.ExponentialDecay(
            config.learning_rate, steps_per_epoch, config.learning_rate_decay
        )
    return keras.optimizers.Adam(learning_rate)


def _save_model(model, model_dir):
    path = os.path.join(model_dir, "model.keras")
    partial = os.path.join(model_dir, ".partial.model.keras")
    with reported_as_write_error(path):
        try:
            model.save(partial)
        except BaseException:
            if os.path.exists(partial):
                os.remove(partial)
            raise
    os.replace(partial, path)
    return path


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Received unexpected arguments {argv[1:]}; expected flags only")
    try:
        config = config_from_flags(absl_flags.FLAGS)
    except ValueError as error:
        _fail(error, 2)
    try:
        results = train(config)
    except ConfigurationError as error:
        _fail(error, 2)
    except loop.NonFiniteLossError as error:
        _fail(error, 3)
    except strategies.LostWorkerError as error:
        _fail(error, 4)
    except WriteError as error:
        _fail(error, 5)
    if config.pretrain_only:
        stages = [stage.name for stage in config.task().pretraining()]
        summary = {"experiment": results["experiment"]} | {
            name: {key: results[name].get(key) for key in ("epochs", "test")} for name in stages}
    else:
        summary = {key: results[key] for key in ("experiment", "epochs", "train", "validation",
                                                 "test") if key in results}
    summary["model_dir"] = config.model_dir
    summary["export"] = results.get("export")
    print(json.dumps(summary, indent=2, default=float))


def _fail(error, exit_code):
    print(f"capskeras-train: error: {error}", file=sys.stderr)
    sys.exit(exit_code)


def run(argv=None):
    """Console-script entry point of `capskeras-train`."""
    cli.run_command("capskeras-train", define_flags, main, argv)


if __name__ == "__main__":
    run()
