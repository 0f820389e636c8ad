"""The absl trainer: flags -> config -> model -> fit -> export.

    capskeras-train --flagfile=flags/enc_deep_bp_dec_class.cfg --epochs=2

`train(TrainConfig(...))` runs the same job from Python. A run writes to
`--model_dir`: `config.json` and `flags.cfg` (the resolved flags),
`checkpoints/` (one per epoch, resumed from automatically), `logs/`
(TensorBoard), `metrics.json`, `model.keras` and, for reconstruction heads,
`reconstructions.png`; with `--export_dir` it also exports a SavedModel.
"""

import json
import math
import os
import sys
import time

from absl import app
from absl import logging
import keras
import numpy as np

from capskeras import export
from capskeras.data import mnist
from capskeras.evaluation import plots
from capskeras.models import registry
from capskeras.models.autoencoder import Autoencoder
from capskeras.training import callbacks
from capskeras.training import strategy as strategies
from capskeras.training.config import TrainConfig
from capskeras.training.flags import config_from_flags

# Settings that fix the model's variables: a run cannot resume under others.
MODEL_DEFINING = ("encoder", "head", "pad_to", "ksparse_k")


class IncompatibleRunError(ValueError):
    """`model_dir` holds a run whose model differs from the requested one."""


def train(config):
    """Trains, evaluates, saves and exports the model `config` describes.

    Resumes from the newest checkpoint in `config.model_dir`, if any.

    Returns:
        The metrics dict also written to `<model_dir>/metrics.json`.
    """
    config.validate()
    if config.cpu_devices:
        strategies.split_host_cpu(config.cpu_devices)
    _check_resumable(config)
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config.precision)
    try:
        return _train(config)
    finally:
        keras.config.set_dtype_policy(previous_policy)


def _train(config):
    keras.utils.set_random_seed(config.seed)
    strategy = strategies.make_strategy(config.distribution_strategy)
    chief = strategies.is_chief()
    spec = registry.encoder_spec(config.encoder)
    head_class = registry.HEADS[config.head]
    image_shape = image_shape_of(config)
    train_data = _dataset(config, "train", head_class.target)
    test_data = _dataset(config, "test", head_class.target)
    if chief:
        os.makedirs(config.model_dir, exist_ok=True)
        _write(os.path.join(config.model_dir, "config.json"), config.to_json())
        _write(os.path.join(config.model_dir, "flags.cfg"), config.to_flagfile())
    verbose = config.verbose if config.verbose >= 0 else (1 if sys.stdout.isatty() else 2)

    results = {
        "experiment": config.experiment,
        "encoder": config.encoder,
        "head": config.head,
        "distribution_strategy": config.distribution_strategy,
        "replicas": strategy.num_replicas_in_sync,
    }
    pretrained_encoder = None
    if spec.pretrain_as_autoencoder:
        pretrained_encoder, results["pretrain"] = _pretrain_encoder(
            config, spec, image_shape, strategy, chief, verbose
        )

    with strategy.scope():
        model = build_model(config, pretrained_encoder)
    results.update(
        _fit(config, model, train_data, config.epochs, "checkpoints", chief, verbose)
    )
    results["test"] = _evaluate(model, test_data)
    results["params"] = model.count_params()
    logging.info("%s test metrics: %s", config.experiment, results["test"])

    if chief:
        if config.head == "recon" and config.plot_reconstructions:
            images = next(iter(test_data))[0][:10]
            reconstructions = model.predict_on_batch(images)
            results["reconstructions_png"] = plots.save_reconstruction_grid(
                images, reconstructions, os.path.join(config.model_dir, "reconstructions.png"),
                title=f"{config.experiment}: test digits (top) and reconstructions",
            )
        results["model"] = _save_model(model, config.model_dir)
        if config.export_dir:
            results["export"] = export.export_saved_model(model, config.export_dir, image_shape)
            logging.info("Exported SavedModel to %s", results["export"])
        _write(os.path.join(config.model_dir, "metrics.json"), json.dumps(results, indent=2))
    return results


def image_shape_of(config):
    """`(H, W, C)` of the images `config` trains on."""
    return (config.pad_to, config.pad_to, 1) if config.pad_to else mnist.IMAGE_SHAPE


def build_model(config, pretrained_encoder=None):
    """The compiled model `config` describes, as `fit` will train it.

    Call it under the strategy's scope to distribute it.
    """
    model = registry.build_study_model(
        config.encoder,
        config.head,
        image_shape=image_shape_of(config),
        seed=config.seed,
        encoder_options=_encoder_options(config, registry.encoder_spec(config.encoder)),
        pretrained_encoder=pretrained_encoder,
    )
    model.compile(
        optimizer=_optimizer(config),
        loss=model.head.default_loss(),
        metrics=model.head.default_metrics(),
        jit_compile=config.jit_compile,
    )
    return model


def _pretrain_encoder(config, spec, image_shape, strategy, chief, verbose):
    """Trains the encoder as a (k-sparse) autoencoder; returns it and its metrics."""
    images_data = _dataset(config, "train", "images")
    with strategy.scope():
        encoder = spec.build(
            image_shape, seed=config.seed, **_encoder_options(config, spec)
        )
        autoencoder = Autoencoder(encoder, name="autoencoder")
        autoencoder.build((None,) + tuple(image_shape))
        autoencoder.compile(
            optimizer=_optimizer(config),
            loss=keras.losses.MeanSquaredError(name="mse"),
            jit_compile=config.jit_compile,
        )
    schedule = callbacks.KSparseSchedule(
        config.ksparse_initial_factor, config.ksparse_schedule_epochs
    )
    metrics = _fit(
        config, autoencoder, images_data, config.pretrain_epochs,
        os.path.join("pretrain", "checkpoints"), chief, verbose, extra_callbacks=[schedule],
    )
    callbacks.set_target_k(autoencoder)
    test_images = _dataset(config, "test", "images")
    metrics["test"] = _evaluate(autoencoder, test_images)
    return encoder, metrics


def _fit(config, model, data, epochs, checkpoint_subdir, chief, verbose, extra_callbacks=()):
    """Fits `model` for `epochs`, resuming from its newest epoch checkpoint."""
    checkpoint = callbacks.EpochCheckpoint(
        os.path.join(config.model_dir, checkpoint_subdir),
        keep=config.keep_checkpoints,
        write=chief,
    )
    initial_epoch = checkpoint.restore(model)
    if initial_epoch:
        logging.info("Resuming %s from epoch %d of %d", model.name, initial_epoch, epochs)
    fit_callbacks = [checkpoint, *extra_callbacks]
    if chief:
        log_dir = os.path.join(config.model_dir, "logs", os.path.dirname(checkpoint_subdir))
        fit_callbacks.append(keras.callbacks.TensorBoard(log_dir=log_dir))
    started = time.perf_counter()
    if initial_epoch < epochs:
        model.fit(
            data, epochs=epochs, initial_epoch=initial_epoch,
            callbacks=fit_callbacks, verbose=verbose, shuffle=False,
        )
    return {
        "epochs": max(epochs, initial_epoch),
        "resumed_from_epoch": initial_epoch,
        "fit_seconds": round(time.perf_counter() - started, 2),
        "history": checkpoint.history,
    }


def _evaluate(model, data):
    return {name: float(value) for name, value in model.evaluate(data, return_dict=True, verbose=0).items()}


def _dataset(config, split, target):
    training = split == "train"
    examples = config.train_examples if training else config.eval_examples
    data = mnist.load_mnist(
        split,
        batch_size=config.batch_size,
        data_dir=config.data_dir or None,
        download=config.download,
        target=target,
        num_examples=examples or None,
        shuffle=training,
        seed=config.seed,
        translate_pixels=config.translate_pixels if training else 0,
        pad_to=config.pad_to or None,
    )
    return strategies.shard_by_data(data)


def _optimizer(config):
    examples = config.train_examples or 60000
    steps_per_epoch = math.ceil(examples / config.batch_size)
    learning_rate = config.learning_rate
    if config.learning_rate_decay < 1.0:
        learning_rate = keras.optimizers.schedules.ExponentialDecay(
            config.learning_rate, steps_per_epoch, config.learning_rate_decay
        )
    return keras.optimizers.Adam(learning_rate)


def _encoder_options(config, spec):
    return {name: getattr(config, name) for name in spec.options}


def _check_resumable(config):
    """Refuses to resume a run whose model-defining settings differ."""
    path = os.path.join(config.model_dir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        saved = json.load(f)
    for name in MODEL_DEFINING:
        requested = getattr(config, name)
        recorded = saved.get(name)
        if isinstance(requested, tuple):
            recorded = tuple(recorded or ())
        if recorded != requested:
            raise IncompatibleRunError(
                f"Received: {name}={requested!r}, but model_dir={config.model_dir!r} "
                f"holds a run with {name}={recorded!r}; expected the same value "
                "to resume that run, or a new --model_dir"
            )


def _save_model(model, model_dir):
    path = os.path.join(model_dir, "model.keras")
    partial = os.path.join(model_dir, ".partial.model.keras")
    model.save(partial)
    os.replace(partial, path)
    return path


def _write(path, text):
    partial = path + ".partial"
    with open(partial, "w") as f:
        f.write(text)
    os.replace(partial, path)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Received unexpected arguments {argv[1:]}; expected flags only")
    try:
        config = config_from_flags().validate()
        results = train(config)
    except (ValueError, mnist.DatasetNotFoundError) as error:
        print(f"capskeras-train: error: {error}", file=sys.stderr)
        sys.exit(2)
    summary = {key: results[key] for key in ("experiment", "epochs", "test")}
    summary["model_dir"] = config.model_dir
    summary["export"] = results.get("export")
    print(json.dumps(summary, indent=2, default=float))


def run():
    """Console-script entry point of `capskeras-train`."""
    app.run(main)


if __name__ == "__main__":
    run()
