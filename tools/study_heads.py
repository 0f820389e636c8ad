"""Trains the study's heads on the frozen code of a run's encoder, the codes computed once.

    python tools/study_heads.py --run_dir=runs/enc_predcaps_dec_class \\
        --heads=class,recon --epochs=20 --output_dir=runs/heads/predcaps

The trainer trains a head under a frozen encoder by running the encoder on
every batch of every epoch. For PredCaps (two upward passes and a downward
one through three layers per image) or SparseCaps (dynamic routing) that is
nearly all the time. When the training images are not augmented
(`--translate_pixels=0`, the study's flagfiles), the frozen encoder, in
inference mode, gives every image the same code in every epoch, so this
tool computes the training and test codes once and trains each head on
them: the same head, Adam at the run's learning rate (and decay), batch
size and seed as `capskeras-train`.

The encoder comes from `--run_dir`, a `capskeras-train` model directory
(its `config.json` says what it trained) or a flagfile (then the run's
`--model_dir` is read for checkpoints). The run's task says where
(`capskeras.tasks.Task.frozen_encoder`):

- by default, the model's `heads_encoder()` (the model contract,
  `capskeras/models/contract.py`), restored from the latest checkpoint of
  the run's training: a `sparsecaps` run gives its 256 latent values,
  unmasked;
- a `study` run whose frozen encoder has a pretraining stage (PredCaps,
  k-sparse): the stage's latest checkpoint, finished or not
  (`capskeras-train --pretrain_only` trains that stage alone);
- a `study` run whose frozen encoder has none (untrained): rebuilt from
  the run's seed, as the trainer builds it.

For every head it writes `<output_dir>/<name>/model.keras`, the frozen
encoder under the trained head as a study model (what `capskeras-eval` and
`tools/equivariance_report.py` read), and `metrics.json` with the test
metric after every epoch and the whole model's test metrics, evaluated
from the images (as `tools/results_table.py --runs_dir=<output_dir>` reads
them); `<name>` is `--names`, or `enc_<encoder>_dec_<head>` for a study
run `enc_<encoder>_dec_...`, or `<experiment>_<head>`.

`--svm` also fits Sparse Unsupervised Capsules' read-out, an RBF SVM
(C=100, gamma=0.1), on the same codes: `<output_dir>/<experiment>_svm/`
holds its `metrics.json` and the classifier as `svm.npz` and `svm.json`,
arrays and JSON that load without running code
(`capskeras.evaluation.code_svm.load_code_svm`).

`--predcaps_inference_k=8,8,16` reads a PredCaps run's code with more
winners per position at inference than it trained with, from the same
weights; `--predcaps_inference_feedback=0` reads it without the feedback
rounds at inference (one upward pass). `metrics.json` records both under
`settings_overridden`.
"""

import json
import os
import re
import sys
import time

from absl import app
from absl import flags
import keras
import numpy as np

from capskeras import export
from capskeras.evaluation import code_svm
from capskeras.files import write_text_atomically
from capskeras.models import registry
from capskeras.tasks import InputOptions
from capskeras.training import loop
from capskeras.training import run_dir as run_dirs
from capskeras.training.config import TrainConfig
from capskeras.training.flags import config_from_flagfile
from capskeras.training.flags import parse_ints

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
    """Defines the tool's flags on `flag_values`, each unless defined there already."""
    definitions = [
        ("string", "run_dir", None, "A capskeras-train model directory (with config.json), "
         "or the flagfile of a run whose encoder needs no training."),
        ("list", "heads", ["class", "recon"], "Heads to train, names in the study's HEADS."),
        ("list", "names", [], "Output names, one per head; default <experiment>_<head>."),
        ("integer", "epochs", 20, "Epochs of head training."),
        ("integer", "train_examples", 0, "Train on the first N examples; 0 for all."),
        ("integer", "eval_examples", 0, "Test on the first N examples; 0 for all."),
        ("string", "output_dir", "runs/heads", "Where the model directories go."),
        ("string", "export_dir", "", "If set, also export each model's SavedModel under "
         "<export_dir>/<name>."),
        ("string", "data_dir", "", "Prepared TFDS directory; empty for the run's."),
        ("list", "predcaps_inference_k", [], "PredCaps runs: winning capsules per position in "
         "each layer at inference, instead of the run's."),
        ("integer", "predcaps_inference_feedback", None, "PredCaps runs: down-and-up rounds at "
         "inference, instead of the run's."),
        ("bool", "svm", False, "Also fit an RBF SVM on the codes (SparseCaps' read-out; needs "
         "scikit-learn: pip install 'capskeras[svm]')."),
        ("float", "svm_c", code_svm.C, "The SVM's C."),
        ("float", "svm_gamma", code_svm.GAMMA, "The SVM's RBF gamma."),
    ]
    for kind, name, default, help_text in definitions:
        if name not in flag_values:
            getattr(flags, f"DEFINE_{kind}")(name, default, help_text, flag_values=flag_values)


def load_run_config(path, overrides=None):
    """The `TrainConfig` of the run in model directory `path`, or of flagfile `path`.

    `overrides` maps setting names to values that replace the run's.
    """
    if os.path.isfile(path):
        values = config_from_flagfile(path).to_flat()
    else:
        file = os.path.join(path, "config.json")
        if not os.path.exists(file):
            raise ValueError(f"Received: run_dir={path!r}; expected a capskeras-train model "
                             "directory holding config.json, or a flagfile")
        with open(file) as f:
            values = json.load(f)
        values["model_dir"] = path
    values.update(overrides or {})
    values = {name: tuple(value) if isinstance(value, list) else value
              for name, value in values.items()}
    return TrainConfig.from_flat(**values).validate()


def frozen_encoder(config):
    """The run's trained, frozen encoder; its name; and where its weights came from.

    The run's task says where the encoder comes from
    (`capskeras.tasks.Task.frozen_encoder`); its weights are restored with
    `capskeras.training.loop.restore_weights` from that stage's latest
    checkpoint (the model's own training's when the stage is None).

    Returns:
        `(encoder or None, encoder_name, source)`: None means the encoder is
        built from the run's seed (it is never trained).
    """
    spec = config.task().frozen_encoder()
    if spec.build_model is None:
        return None, spec.name, {"untrained_seed": config.seed}
    model = spec.build_model()
    restored = loop.restore_weights(model, run_dirs.stage_directory(config.model_dir, spec.stage))
    source = {"checkpoint_epoch": restored["epoch"], "checkpoint_step": restored["step"]}
    if spec.stage is not None:
        source = {"stage": spec.stage, **source}
    return spec.result(model), spec.name, source


def build_model(config, encoder, encoder_name, head):
    """A built study model: `encoder` (or the run's seeded one) frozen under a new `head`."""
    return config.task().heads_model(encoder, head, encoder_name)


def split_arrays(config, split, num_examples, data_dir):
    """All `(images, labels)` of `split` as arrays, in the task's fixed order."""
    task = config.task()
    options = InputOptions(batch_size=1000, num_examples=num_examples or None, seed=config.seed,
                           data_dir=data_dir or config.data_dir or None,
                           download=config.download,
                           validation_examples=config.validation_examples)
    images, labels = [], []
    for x, y in task.images(split, options, shuffle=False):
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


def codes_of(model, images, batch_size=500):
    """The frozen encoder's codes of `images`, in inference mode."""
    return np.concatenate([
        keras.ops.convert_to_numpy(model.encode(images[i:i + batch_size], training=False))
        for i in range(0, len(images), batch_size)])


def train_head(model, config, train_codes, train_targets, monitor_codes, monitor_targets,
               epochs):
    """Trains `model.head` on codes; returns the per-epoch metrics on the monitored codes
    (the validation split's; the test split's for a run without one)."""
    keras.utils.set_random_seed(config.seed)
    steps_per_epoch = int(np.ceil(len(train_codes) / config.batch_size))
    learning_rate = config.learning_rate
    if config.learning_rate_decay < 1.0:
        learning_rate = keras.optimizers.schedules.ExponentialDecay(
            learning_rate, steps_per_epoch, config.learning_rate_decay)
    head_model = keras.Sequential([keras.Input(train_codes.shape[1:]), model.head])
    head_model.compile(keras.optimizers.Adam(learning_rate), model.default_loss(),
                       metrics=model.default_metrics())
    history = head_model.fit(
        train_codes, train_targets, batch_size=config.batch_size, epochs=epochs, shuffle=True,
        validation_data=(monitor_codes, monitor_targets), verbose=2,
    ).history
    return {name[len("val_"):]: [float(v) for v in values]
            for name, values in history.items() if name.startswith("val_")}


def default_name(experiment, head):
    """`enc_<encoder>_dec_<head>` for a study experiment `enc_<encoder>_dec_<any>`, else
    `<experiment>_<head>`."""
    match = re.fullmatch(r"(.+)_dec_[a-z_]+", experiment)
    return f"{match.group(1)}_dec_{head}" if match else f"{experiment}_{head}"


def run(run_dir, heads, epochs, output_dir, names=(), train_examples=0, eval_examples=0,
        export_dir="", data_dir="", predcaps_inference_k=(), predcaps_inference_feedback=None,
        svm=False, svm_c=code_svm.C, svm_gamma=code_svm.GAMMA):
    """Trains `heads` (and with `svm`, an RBF SVM) on the frozen code of the run in
    `run_dir`; returns their metrics by output name."""
    if not heads and not svm:
        raise ValueError("Received: no heads and svm=False; expected at least one read-out")
    if svm:
        code_svm.check_request(svm_c, svm_gamma)
    if names and len(names) != len(heads):
        raise ValueError(f"Received: names={list(names)} for heads={list(heads)}; expected one "
                         "name per head")
    for head in heads:
        if head not in registry.HEADS:
            raise ValueError(f"Received: head={head!r}; expected one of {sorted(registry.HEADS)}")
    overrides = {}
    if predcaps_inference_k:
        overrides["predcaps_inference_k"] = parse_ints(
            "predcaps_inference_k", [str(k) for k in predcaps_inference_k])
    if predcaps_inference_feedback is not None:
        overrides["predcaps_inference_feedback"] = predcaps_inference_feedback
    config = load_run_config(run_dir, overrides)
    if getattr(config.settings, "translate_pixels", 0):
        raise ValueError(f"Received: a run with translate_pixels="
                         f"{config.settings.translate_pixels}; expected 0: augmented images "
                         "change the codes from epoch to epoch, so they cannot be computed once")
    encoder, encoder_name, source = frozen_encoder(config)
    arrays = {"train": split_arrays(config, "train", train_examples, data_dir),
              "test": split_arrays(config, "test", eval_examples, data_dir)}
    if config.validation_examples:
        arrays["validation"] = split_arrays(config, "validation", eval_examples, data_dir)
    # Per-epoch figures watch the validation split where the run holds one out.
    monitored = "validation" if "validation" in arrays else "test"
    started = time.perf_counter()
    first = build_model(config, encoder, encoder_name, heads[0] if heads else "class")
    codes = {split: codes_of(first, x) for split, (x, _) in arrays.items()}
    code_seconds = time.perf_counter() - started
    (train_x, train_y), (test_x, test_y) = arrays["train"], arrays["test"]
    results = {}
    for index, head in enumerate(heads):
        name = names[index] if names else default_name(config.experiment, head)
        model = first if index == 0 else build_model(config, encoder, encoder_name, head)
        position = {"images": 0, "labels": 1}[model.head.target]
        targets = {split: pair[position] for split, pair in arrays.items()}
        started = time.perf_counter()
        per_epoch = train_head(model, config, codes["train"], targets["train"],
                               codes[monitored], targets[monitored], epochs)
        fit_seconds = time.perf_counter() - started
        model.compile(loss=model.default_loss(), metrics=model.default_metrics())
        scores = {split: {key: float(value) for key, value in model.evaluate(
            x, targets[split], batch_size=500, return_dict=True, verbose=0).items()}
            for split, (x, _) in arrays.items()}
        directory = os.path.join(output_dir, name)
        os.makedirs(directory, exist_ok=True)
        model.save(os.path.join(directory, "model.keras"))
        metrics = {
            "experiment": name, "run_dir": run_dir, "encoder": encoder_name, "head": head,
            "encoder_source": source, "epochs": epochs, "train_examples": len(train_x),
            "test_examples": len(test_x), "batch_size": config.batch_size,
            "learning_rate": config.learning_rate, "code_seconds": round(code_seconds, 2),
            "fit_seconds": round(fit_seconds, 2), f"{monitored}_per_epoch": per_epoch,
            **scores,
        }
        if "stage" in source:
            metrics[source["stage"]] = {"epochs": source["checkpoint_epoch"]}
        if overrides:
            metrics["settings_overridden"] = overrides
        if export_dir:
            metrics["export"] = export.export_saved_model(
                model, os.path.join(export_dir, name), config.task().image_shape())
        write_text_atomically(os.path.join(directory, "metrics.json"),
                              json.dumps(metrics, indent=2))
        print(json.dumps({"experiment": name, "test": metrics["test"],
                          "fit_seconds": metrics["fit_seconds"],
                          "code_seconds": metrics["code_seconds"]}), flush=True)
        results[name] = metrics
    if svm:
        name = default_name(config.experiment, "svm")
        labelled = {split: (codes[split], arrays[split][1]) for split in arrays}
        results[name] = _fit_svm(name, os.path.join(output_dir, name), run_dir, encoder_name,
                                 source, labelled, svm_c, svm_gamma)
    return results


def _fit_svm(name, directory, run_dir, encoder_name, source, labelled, c, gamma):
    """Fits the SVM read-out on `labelled["train"]`, scores it on every split of `labelled`;
    writes `metrics.json` and the classifier (`svm.npz`, `svm.json`)."""
    fitted = code_svm.fit_code_svm(*labelled["train"], *labelled["test"], c=c, gamma=gamma)
    classifier = fitted.pop("classifier")
    code_svm.save_code_svm(classifier, directory)
    scores = {split: {"accuracy": fitted[f"{split}_accuracy"]} for split in ("train", "test")}
    if "validation" in labelled:
        codes, labels = labelled["validation"]
        scores["validation"] = {"accuracy": float(classifier.score(codes, labels))}
    metrics = {"experiment": name, "run_dir": run_dir, "encoder": encoder_name,
               "read_out": "rbf_svm", "encoder_source": source,
               "train_examples": len(labelled["train"][0]),
               "test_examples": len(labelled["test"][0]), **fitted, **scores}
    write_text_atomically(os.path.join(directory, "metrics.json"), json.dumps(metrics, indent=2))
    print(json.dumps({"experiment": name, "test": metrics["test"],
                      "fit_seconds": metrics["fit_seconds"]}), flush=True)
    return metrics


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Received unexpected arguments {argv[1:]}; expected flags only")
    if not FLAGS.run_dir:
        raise app.UsageError("Received: no --run_dir; expected a capskeras-train model "
                             "directory or a run's flagfile")
    run(FLAGS.run_dir, FLAGS.heads, FLAGS.epochs, FLAGS.output_dir, names=FLAGS.names,
        train_examples=FLAGS.train_examples, eval_examples=FLAGS.eval_examples,
        export_dir=FLAGS.export_dir, data_dir=FLAGS.data_dir,
        predcaps_inference_k=FLAGS.predcaps_inference_k,
        predcaps_inference_feedback=FLAGS.predcaps_inference_feedback, svm=FLAGS.svm,
        svm_c=FLAGS.svm_c,
        svm_gamma=FLAGS.svm_gamma)


def _parse_flags(argv):
    """The flags of `argv` alone (earlier parses forgotten); a bad one exits with status 2."""
    FLAGS.unparse_flags()
    try:
        return FLAGS(argv)
    except flags.Error as error:
        print(f"study_heads: error: {error}", file=sys.stderr)
        sys.exit(2)


def main(argv=None):
    """Defines the flags, parses `argv` (default `sys.argv`), trains the heads; exits with
    the status."""
    define_flags()
    app.run(_main, argv=argv, flags_parser=_parse_flags)


if __name__ == "__main__":
    main()
