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

from capskeras import export
from capskeras.data import mnist
from capskeras.evaluation import plots
from capskeras.files import write_text_atomically
from capskeras.models import registry
from capskeras.models.autoencoder import Autoencoder
from capskeras.training import callbacks
from capskeras.training import strategy as strategies
from capskeras.training.flags import config_from_flags

# Settings that fix the model's variables: a run cannot resume under others.
MODEL_DEFINING = ("model", "encoder", "head", "pad_to", "ksparse_k", "routing_iterations")


class IncompatibleRunError(ValueError):
    """`model_dir` holds a run whose model differs from the requested one."""


def train(config):
    """Trains, evaluates, saves and exports the model `config` describes.

    Resumes from the newest checkpoint in `config.model_dir`, if any.

    Returns:
        The metrics dict also written to `<model_dir>/metrics.json`.
    """
    preflight(config)
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config.precision)
    try:
        return _train(config)
    finally:
        keras.config.set_dtype_policy(previous_policy)


def preflight(config):
    """Checks everything that can be wrong with the request, before any work.

    Raises:
        ValueError: a bad setting, or a `model_dir` holding another model.
        DatasetNotFoundError: MNIST is neither prepared nor downloadable.
    """
    config.validate()
    strategies.check_strategy(config.distribution_strategy)
    if config.cpu_devices:
        strategies.split_host_cpu(config.cpu_devices)
    _check_resumable(config)
    mnist.prepared_builder("mnist", data_dir=config.data_dir or None, download=config.download)


def _train(config):
    keras.utils.set_random_seed(config.seed)
    strategy = strategies.make_strategy(config.distribution_strategy)
    chief = strategies.is_chief()
    if chief:
        os.makedirs(config.model_dir, exist_ok=True)
        write_text_atomically(os.path.join(config.model_dir, "config.json"), config.to_json())
        write_text_atomically(os.path.join(config.model_dir, "flags.cfg"), config.to_flagfile())
    verbose = config.verbose if config.verbose >= 0 else (1 if sys.stdout.isatty() else 2)
    results = {
        "experiment": config.experiment,
        "model": config.model,
        "distribution_strategy": config.distribution_strategy,
        "replicas": strategy.num_replicas_in_sync,
    }
    if config.model == "study":
        results.update(encoder=config.encoder, head=config.head)

    pretrained_encoder = None
    if config.model == "study" and registry.encoder_spec(config.encoder).pretrain_as_autoencoder:
        pretrained_encoder, results["pretrain"] = _pretrain_encoder(config, strategy, chief, verbose)
    with strategy.scope():
        model = build_model(config, pretrained_encoder)
    train_data = _examples(config, "train", model)
    test_data = _examples(config, "test", model)

    results.update(_fit(config, model, train_data, config.epochs, "checkpoints", chief, verbose))
    results["test"] = _evaluate(model, test_data)
    results["params"] = model.count_params()
    logging.info("%s test metrics: %s", config.experiment, results["test"])

    if chief:
        image_shape = image_shape_of(config)
        if config.plot_reconstructions:
            images = next(iter(_images(config, "test", batch_size=10, num_examples=10)))
            outputs = model.serving_outputs(images)
            if "reconstruction" in outputs:
                results["reconstructions_png"] = plots.save_reconstruction_grid(
                    images, outputs["reconstruction"],
                    os.path.join(config.model_dir, "reconstructions.png"),
                    title=f"{config.experiment}: test digits (top) and reconstructions",
                )
        results["model_file"] = _save_model(model, config.model_dir)
        if config.export_dir:
            results["export"] = export.export_saved_model(model, config.export_dir, image_shape)
            logging.info("Exported SavedModel to %s", results["export"])
        write_text_atomically(os.path.join(config.model_dir, "metrics.json"), json.dumps(results, indent=2))
    return results


def image_shape_of(config):
    """`(H, W, C)` of the images `config` trains on."""
    return (config.pad_to, config.pad_to, 1) if config.pad_to else mnist.IMAGE_SHAPE


def build_model(config, pretrained_encoder=None):
    """The compiled model `config` describes, as `fit` will train it.

    Call it under the strategy's scope to distribute it.
    """
    spec = registry.model_spec(config.model)
    options = {name: getattr(config, name) for name in spec.options}
    if pretrained_encoder is not None:
        options["pretrained_encoder"] = pretrained_encoder
    model = registry.build_model(
        config.model, image_shape_of(config), seed=config.seed, **options
    )
    model.compile(
        optimizer=_optimizer(config),
        loss=model.default_loss(),
        metrics=model.default_metrics(),
        jit_compile=config.jit_compile,
    )
    return model


def _pretrain_encoder(config, strategy, chief, verbose):
    """Trains the encoder as a (k-sparse) autoencoder; returns it and its metrics."""
    spec = registry.encoder_spec(config.encoder)
    image_shape = image_shape_of(config)
    with strategy.scope():
        encoder = spec.build(
            image_shape, seed=config.seed, **{name: getattr(config, name) for name in spec.options}
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
    autoencode = lambda images: (images, images)  # noqa: E731
    metrics = _fit(
        config, autoencoder, _images(config, "train").map(autoencode), config.pretrain_epochs,
        os.path.join("pretrain", "checkpoints"), chief, verbose, extra_callbacks=[schedule],
    )
    callbacks.set_target_k(autoencoder)
    metrics["test"] = _evaluate(autoencoder, _images(config, "test").map(autoencode))
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
    """Test metrics as floats; `accuracy` also names an output's accuracy."""
    metrics = model.evaluate(data, return_dict=True, verbose=0)
    metrics = {name: float(value) for name, value in metrics.items()}
    per_output = [name for name in metrics if name.endswith("_accuracy")]
    if "accuracy" not in metrics and len(per_output) == 1:
        metrics["accuracy"] = metrics[per_output[0]]
    return metrics


def _images(config, split, batch_size=None, num_examples=None):
    """Batches of images alone, as the model sees them."""
    data = _mnist(config, split, batch_size, num_examples)
    return data.map(lambda images, labels: images)


def _examples(config, split, model):
    """Batches of the model's `(inputs, targets)` pairs."""
    return _mnist(config, split).map(model.make_example)


def _mnist(config, split, batch_size=None, num_examples=None):
    training = split == "train"
    if num_examples is None:
        num_examples = config.train_examples if training else config.eval_examples
    data = mnist.load_mnist(
        split,
        batch_size=batch_size or config.batch_size,
        data_dir=config.data_dir or None,
        download=config.download,
        num_examples=num_examples or None,
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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Received unexpected arguments {argv[1:]}; expected flags only")
    # Only bad input is reported as a usage error; a failure during training
    # keeps its traceback.
    try:
        config = config_from_flags()
        preflight(config)
    except (ValueError, mnist.DatasetNotFoundError) as error:
        print(f"capskeras-train: error: {error}", file=sys.stderr)
        sys.exit(2)
    results = train(config)
    summary = {key: results[key] for key in ("experiment", "epochs", "test")}
    summary["model_dir"] = config.model_dir
    summary["export"] = results.get("export")
    print(json.dumps(summary, indent=2, default=float))


def run():
    """Console-script entry point of `capskeras-train`."""
    app.run(main)


if __name__ == "__main__":
    run()
