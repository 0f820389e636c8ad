"""Trains PredCaps locally on MNIST, then the study's heads on the frozen code.

    python tools/predcaps_figures.py --pretrain_epochs=2 --head_epochs=20 \\
        --output_dir=runs/predcaps_figures

Until the trainer's PredCaps task exists, this is the PredCaps study run:

1. local learning of the encoder (`pretrain_predcaps`) on the MNIST
   training images, no labels, `--pretrain_epochs` epochs; the encoder is
   saved after every epoch as `encoder_epoch_<n>.keras`;
2. after each epoch listed in `--eval_after` (default: the last), the
   frozen encoder's codes of the training and test images are computed
   once in inference mode (the frozen encoder under a head sees exactly
   these, as MNIST is not augmented here), and the study's `class` head
   (dense 1024-512-10) and `recon` head (dense 512-1024-784) are trained
   on them (the first `--head_train_examples` training images) for
   `--head_epochs` epochs each, keeping the best test figure and the epoch
   it came at.

Results go to `<output_dir>/results.json`, appended as they come.
"""

import json
import os
import platform
import subprocess
import sys
import time

from absl import app
from absl import flags
import keras
import numpy as np

from capskeras import cli
from capskeras.data import load_mnist
from capskeras.models import heads
from capskeras.models.predcaps import DEFAULT_PREDCAPS_K
from capskeras.models.predcaps import PredCapsPretrainer
from capskeras.models.predcaps import predcaps_encoder
from capskeras.training.flags import parse_ints

FLAGS = flags.FLAGS
SETTINGS = ("pretrain_epochs", "eval_after", "head_epochs", "batch_size", "learning_rate",
            "train_examples", "test_examples", "head_train_examples", "k",
            "feedback_iterations", "normalization", "selection", "seed", "output_dir")


def _cpu():
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _arrays(split, num_examples):
    images, labels = [], []
    for x, y in load_mnist(split, batch_size=1000, num_examples=num_examples):
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


def _codes(encoder, images, batch_size=500):
    return np.concatenate(
        [keras.ops.convert_to_numpy(encoder(images[i : i + batch_size], training=False))
         for i in range(0, len(images), batch_size)]
    )


def _head_figures(encoder, data, head_epochs, seed):
    (train_x, train_y), (test_x, test_y) = data
    started = time.perf_counter()
    train_codes, test_codes = _codes(encoder, train_x), _codes(encoder, test_x)
    results = {"code_seconds": time.perf_counter() - started,
               "code_active_fraction": float((test_codes != 0).mean())}
    for name, head, target_train, target_test, metric, better in (
        ("class", heads.ClassificationHead(10), train_y, test_y, "accuracy", max),
        ("recon", heads.ReconstructionHead((28, 28, 1)), train_x, test_x, "mse", min),
    ):
        keras.utils.set_random_seed(seed)
        model = keras.Sequential([keras.Input(train_codes.shape[1:]), head])
        model.compile(keras.optimizers.Adam(1e-3), head.default_loss(),
                      metrics=head.default_metrics())
        history = model.fit(
            train_codes, target_train, batch_size=128, epochs=head_epochs,
            validation_data=(test_codes, target_test), verbose=0,
        ).history[f"val_{metric}"]
        best = better(history)
        results[name] = {
            f"test_{metric}": history[-1], f"best_test_{metric}": best,
            "best_epoch": history.index(best) + 1, "head_epochs": head_epochs,
            f"test_{metric}_per_epoch": history,
        }
        print(name, results[name][f"test_{metric}"], "best", best, "at", history.index(best) + 1,
              flush=True)
    return results


def define_flags(flag_values):
    """Defines the tool's flags on `flag_values`."""
    common = dict(flag_values=flag_values)
    flags.DEFINE_integer("pretrain_epochs", 2, "Epochs of PredCaps' local learning.",
                         lower_bound=1, **common)
    flags.DEFINE_list("eval_after", [], "Pretraining epochs after which the heads train; "
                      "empty for the last.", **common)
    flags.DEFINE_integer("head_epochs", 20, "Epochs of each head.", lower_bound=1, **common)
    flags.DEFINE_integer("batch_size", 64, "Images per step.", lower_bound=1, **common)
    flags.DEFINE_float("learning_rate", 1e-3, "Adam's learning rate of the local learning.",
                       lower_bound=0.0, **common)
    flags.DEFINE_integer("train_examples", None, "Pretrain on the first N training images; "
                         "default all.", lower_bound=1, **common)
    flags.DEFINE_integer("test_examples", None, "Test the heads on the first N test images; "
                         "default all.", lower_bound=1, **common)
    flags.DEFINE_integer("head_train_examples", None, "Training images the heads see; "
                         "default all.", lower_bound=1, **common)
    flags.DEFINE_list("k", [str(k) for k in DEFAULT_PREDCAPS_K],
                      "Winning capsules per position in each PredCaps layer.", **common)
    flags.DEFINE_integer("feedback_iterations", 1, "PredCaps' down-and-up rounds.",
                         lower_bound=0, **common)
    flags.DEFINE_string("normalization", "unit_total", "PredCaps' normalization.", **common)
    flags.DEFINE_string("selection", "capsule", "PredCaps' selection.", **common)
    flags.DEFINE_integer("seed", 0, "Seeds the weights and the shuffles.", **common)
    flags.DEFINE_string("output_dir", "runs/predcaps_figures",
                        "Where results.json and the encoders go.", **common)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Received unexpected arguments {argv[1:]}; expected flags only")
    args = {name: FLAGS[name].value for name in SETTINGS}
    try:
        k = list(parse_ints("k", FLAGS.k))
        eval_after = set(parse_ints("eval_after", FLAGS.eval_after)) or {FLAGS.pretrain_epochs}
        keras.utils.set_random_seed(FLAGS.seed)
        encoder = predcaps_encoder(
            seed=FLAGS.seed, k=k, feedback_iterations=FLAGS.feedback_iterations,
            normalization=FLAGS.normalization, selection=FLAGS.selection,
        )
    except ValueError as error:
        print(f"predcaps_figures.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    pretrainer = PredCapsPretrainer(encoder, name="predcaps_pretrainer")
    pretrainer.compile(keras.optimizers.Adam(FLAGS.learning_rate))
    images = load_mnist(
        "train", batch_size=FLAGS.batch_size, shuffle=True, seed=FLAGS.seed,
        num_examples=FLAGS.train_examples,
    ).map(lambda x, y: x)
    data = (_arrays("train", FLAGS.head_train_examples), _arrays("test", FLAGS.test_examples))
    results = {"args": args, "cpu": _cpu(), "epochs": []}
    path = os.path.join(FLAGS.output_dir, "results.json")
    for epoch in range(1, FLAGS.pretrain_epochs + 1):
        started = time.perf_counter()
        history = pretrainer.fit(images, epochs=1, verbose=2).history
        entry = {"pretrain_epoch": epoch, "seconds": time.perf_counter() - started,
                 "local_losses": {key: values[-1] for key, values in history.items()},
                 "win_frequency": [
                     keras.ops.convert_to_numpy(layer.win_frequency).round(4).tolist()
                     for layer in encoder.pred_caps_layers]}
        encoder.save(os.path.join(FLAGS.output_dir, f"encoder_epoch_{epoch}.keras"))
        if epoch in eval_after:
            entry.update(_head_figures(encoder, data, FLAGS.head_epochs, FLAGS.seed))
        results["epochs"].append(entry)
        with open(path, "w") as file:
            json.dump(results, file, indent=2)
        print(json.dumps({k: v for k, v in entry.items() if k != "win_frequency"})[:2000],
              flush=True)


if __name__ == "__main__":
    cli.run_command("predcaps_figures.py", define_flags, main)
