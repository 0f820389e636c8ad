"""Trains P4CNN or Z2CNN on rotated MNIST with a plain Keras fit, and reports the test error.

A stand-in until the trainer's tasks take these models (flagfiles
`flags/p4cnn_rotated_mnist.cfg`, `flags/z2cnn_rotated_mnist.cfg`):

    python tools/train_rotated_mnist.py --model=p4cnn --epochs=5 --output=runs/p4cnn_rot.json \
        --save_dir=runs/p4cnn_rot
    python tools/train_rotated_mnist.py --model=z2cnn --epochs=5 --output=runs/z2cnn_rot.json \
        --save_dir=runs/z2cnn_rot
    capskeras-eval --models=runs/p4cnn_rot,runs/z2cnn_rot --output_dir=runs/rotation_sweep

Data: `rotated_mnist_regen` (regenerated from real MNIST, 12,000 training and
50,000 test digits) unless `--dataset=rotated_mnist`. Adam, softmax
cross-entropy, the whole training split every epoch; the JSON holds the
settings, the per-epoch history and seconds, and the test error. With
`--save_dir` the trained model is saved there as `model.keras` (what
`capskeras-eval` reads) and exported for serving, group convolutions
folded into plain ones, as `saved_model/<version>/`.
"""

import argparse
import json
import os
import platform
import time

import keras

from capskeras import export
from capskeras.data import load_rotated_mnist
from capskeras.models import build_p4cnn
from capskeras.models import build_z2cnn
from capskeras.models import fold_for_serving

BUILDERS = {"p4cnn": build_p4cnn, "p4mcnn": lambda **kw: build_p4cnn(group="p4m", **kw),
            "z2cnn": build_z2cnn}


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(BUILDERS), required=True)
    parser.add_argument("--dataset", default="rotated_mnist_regen",
                        choices=("rotated_mnist_regen", "rotated_mnist"))
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train_examples", type=int, default=None)
    parser.add_argument("--test_examples", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dropout", type=float, default=None,
                        help="dropout after each hidden layer; default the model's "
                             "(Z2CNN 0.3, P4CNN 0)")
    parser.add_argument("--output", required=True, help="the JSON report")
    parser.add_argument("--save_dir", default=None,
                        help="save model.keras and a folded SavedModel export here")
    args = parser.parse_args()

    keras.utils.set_random_seed(args.seed)
    train = load_rotated_mnist("train", batch_size=args.batch_size, dataset=args.dataset,
                               data_dir=args.data_dir, num_examples=args.train_examples,
                               shuffle=True, seed=args.seed)
    test = load_rotated_mnist("test", batch_size=1000, dataset=args.dataset,
                              data_dir=args.data_dir, num_examples=args.test_examples)
    options = {} if args.dropout is None else {"dropout": args.dropout}
    model = BUILDERS[args.model](seed=args.seed, **options)
    model.compile(keras.optimizers.Adam(args.learning_rate), model.default_loss(),
                  metrics=model.default_metrics(), jit_compile=False)
    epoch_seconds = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_seconds.append(time.perf_counter() - self.start)

    history = model.fit(train, epochs=args.epochs, callbacks=[Timer()], verbose=2)
    start = time.perf_counter()
    results = model.evaluate(test, return_dict=True, verbose=0)
    report = {
        "model": args.model,
        "parameters": model.count_params(),
        "dataset": args.dataset,
        "epochs": args.epochs,
        "train_examples": args.train_examples or "all",
        "test_examples": args.test_examples or "all",
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "dropout": args.dropout,
        "history": {key: [float(v) for v in values] for key, values in history.history.items()},
        "epoch_seconds": epoch_seconds,
        "test_seconds": time.perf_counter() - start,
        "test_accuracy": float(results["accuracy"]),
        "test_error_percent": 100.0 * (1.0 - float(results["accuracy"])),
        "cpu": _cpu_name(),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump(report, handle, indent=2)
    if args.save_dir:
        os.makedirs(args.save_dir, exist_ok=True)
        model.save(os.path.join(args.save_dir, "model.keras"))
        export.export_saved_model(fold_for_serving(model),
                                  os.path.join(args.save_dir, "saved_model"), (28, 28, 1))
    print(json.dumps({k: report[k] for k in ("model", "epochs", "test_error_percent")}))


if __name__ == "__main__":
    main()
