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

import argparse
import json
import os
import platform
import subprocess
import time

import keras
import numpy as np

from capskeras.data import load_mnist
from capskeras.models import heads
from capskeras.models.predcaps import DEFAULT_PREDCAPS_K
from capskeras.models.predcaps import PredCapsPretrainer
from capskeras.models.predcaps import predcaps_encoder


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pretrain_epochs", type=int, default=2)
    parser.add_argument("--eval_after", default="", help="comma-separated epochs; default: last")
    parser.add_argument("--head_epochs", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--train_examples", type=int, default=None)
    parser.add_argument("--test_examples", type=int, default=None)
    parser.add_argument("--head_train_examples", type=int, default=None,
                        help="training images the heads see (default: all)")
    parser.add_argument("--k", default=",".join(map(str, DEFAULT_PREDCAPS_K)))
    parser.add_argument("--feedback_iterations", type=int, default=1)
    parser.add_argument("--normalization", default="unit_total")
    parser.add_argument("--selection", default="capsule")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default="runs/predcaps_figures")
    args = parser.parse_args()
    os.makedirs(args.output_dir, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    eval_after = {int(e) for e in args.eval_after.split(",") if e} or {args.pretrain_epochs}

    encoder = predcaps_encoder(
        seed=args.seed, k=[int(v) for v in args.k.split(",")],
        feedback_iterations=args.feedback_iterations, normalization=args.normalization,
        selection=args.selection,
    )
    pretrainer = PredCapsPretrainer(encoder, name="predcaps_pretrainer")
    pretrainer.compile(keras.optimizers.Adam(args.learning_rate))
    images = load_mnist(
        "train", batch_size=args.batch_size, shuffle=True, seed=args.seed,
        num_examples=args.train_examples,
    ).map(lambda x, y: x)
    data = (_arrays("train", args.head_train_examples), _arrays("test", args.test_examples))
    results = {"args": vars(args), "cpu": _cpu(), "epochs": []}
    path = os.path.join(args.output_dir, "results.json")
    for epoch in range(1, args.pretrain_epochs + 1):
        started = time.perf_counter()
        history = pretrainer.fit(images, epochs=1, verbose=2).history
        entry = {"pretrain_epoch": epoch, "seconds": time.perf_counter() - started,
                 "local_losses": {key: values[-1] for key, values in history.items()},
                 "win_frequency": [
                     keras.ops.convert_to_numpy(layer.win_frequency).round(4).tolist()
                     for layer in encoder.pred_caps_layers]}
        encoder.save(os.path.join(args.output_dir, f"encoder_epoch_{epoch}.keras"))
        if epoch in eval_after:
            entry.update(_head_figures(encoder, data, args.head_epochs, args.seed))
        results["epochs"].append(entry)
        with open(path, "w") as file:
            json.dump(results, file, indent=2)
        print(json.dumps({k: v for k, v in entry.items() if k != "win_frequency"})[:2000],
              flush=True)


if __name__ == "__main__":
    main()
