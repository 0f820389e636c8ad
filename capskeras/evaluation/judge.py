"""The judge: a small MNIST classifier that scores decoded images as digits.

The perturbation study asks whether an encoder's perturbed decodings still
look like digits. The judge answers with numbers: a separate CNN, trained
here on MNIST with augmentation and never on any encoder's output, scores
every decoding; a decoding "is a confident digit" when the judge's top
probability is at least `CONFIDENT` (0.9), and the judge's entropy (nats,
at most ln 10 = 2.30) measures how unsure it is.

The recipe is fixed (`RECIPE`), so judges trained on different machines
agree up to floating-point noise:

- input 28x28x1 in [0, 1]; conv 3x3 32 ReLU -> conv 3x3 64 ReLU -> max-pool
  2 -> dropout 0.25 -> dense 128 ReLU -> dropout 0.5 -> dense 10 softmax;
- augmentation, training only: random rotation up to +-15 degrees, random
  translation up to +-10% (2.8 px) each way, random zoom +-10%, so a
  slightly displaced or turned digit is still judged a digit;
- Adam, learning rate 1e-3, batch 128, 3 epochs over the 60,000 MNIST
  training digits, seed 0; test accuracy is written beside the model.

    python tools/train_judge.py --output_dir=runs/judge

Decodings larger than 28x28 (40x40 models) are resized to 28x28
(antialiased bilinear) before judging.
"""

import json
import os

import keras
import numpy as np

RECIPE = {
    "architecture": "conv3x3x32-relu, conv3x3x64-relu, maxpool2, dropout0.25, dense128-relu, "
                    "dropout0.5, dense10-softmax",
    "augmentation": "rotation +-15 deg, translation +-10%, zoom +-10% (training only)",
    "optimizer": "adam",
    "learning_rate": 1e-3,
    "batch_size": 128,
    "epochs": 3,
    "train_examples": 60000,
    "seed": 0,
}
CONFIDENT = 0.9
JUDGE_FILE = "judge.keras"
RECIPE_FILE = "judge.json"
IMAGE_SHAPE = (28, 28, 1)


def build_judge(seed=0):
    """The judge network of `RECIPE`, untrained."""
    keras.utils.set_random_seed(seed)
    augment = keras.Sequential([
        keras.layers.RandomRotation(15 / 360, fill_mode="constant", seed=seed),
        keras.layers.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=seed + 1),
        keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 2),
    ], name="augment")
    return keras.Sequential([
        keras.Input(IMAGE_SHAPE),
        augment,
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.Conv2D(64, 3, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Dropout(0.25, seed=seed),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dropout(0.5, seed=seed),
        keras.layers.Dense(10, activation="softmax"),
    ], name="judge")


def train_judge(output_dir, epochs=RECIPE["epochs"], train_examples=RECIPE["train_examples"],
                seed=RECIPE["seed"], data_dir=None, verbose=2):
    """Trains the judge by `RECIPE` and saves it in `output_dir`.

    Returns:
        `(model, summary)`: the summary (the recipe actually used and the
        MNIST test accuracy) is also written to `output_dir/judge.json`.
    """
    from capskeras.data import mnist  # Data only when training.

    train = mnist.load_mnist("train", batch_size=RECIPE["batch_size"], data_dir=data_dir,
                             num_examples=train_examples or None, shuffle=True, seed=seed)
    test = mnist.load_mnist("test", batch_size=512, data_dir=data_dir)
    model = build_judge(seed)
    model.compile(keras.optimizers.Adam(RECIPE["learning_rate"]),
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train, epochs=epochs, verbose=verbose)
    _, accuracy = model.evaluate(test, verbose=0)
    os.makedirs(output_dir, exist_ok=True)
    model.save(os.path.join(output_dir, JUDGE_FILE))
    summary = dict(RECIPE, epochs=epochs, train_examples=train_examples, seed=seed,
                   mnist_test_accuracy=float(accuracy))
    with open(os.path.join(output_dir, RECIPE_FILE), "w") as file:
        json.dump(summary, file, indent=2)
    return model, summary


def load_judge(path):
    """The judge saved at `path` (its directory or the `.keras` file)."""
    file = os.path.join(path, JUDGE_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise ValueError(
            f"Received: judge path {path!r} without {JUDGE_FILE}; expected the output "
            "directory of tools/train_judge.py"
        )
    return keras.saving.load_model(file, safe_mode=True)


def judge_probabilities(judge, images, batch_size=512):
    """The judge's class probabilities `[N, 10]` for images `[N, H, W]` or `[N, H, W, 1]`."""
    images = np.asarray(images, "float32")
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[1:3] != IMAGE_SHAPE[:2]:
        images = keras.ops.convert_to_numpy(
            keras.ops.image.resize(images, IMAGE_SHAPE[:2], antialias=True))
    images = np.clip(images, 0.0, 1.0)
    return np.asarray(judge.predict(images, batch_size=batch_size, verbose=0), "float64")


def entropy(probabilities):
    """Entropy in nats of each row of `probabilities`."""
    probabilities = np.clip(np.asarray(probabilities, "float64"), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(probabilities > 0, probabilities * np.log(probabilities), 0.0)
    return -np.sum(terms, axis=-1)


def plausibility(probabilities, threshold=CONFIDENT):
    """`{"confident_fraction", "mean_entropy"}` of a batch of judge probabilities."""
    probabilities = np.asarray(probabilities, "float64")
    return {
        "confident_fraction": float(np.mean(probabilities.max(axis=-1) >= threshold)),
        "mean_entropy": float(np.mean(entropy(probabilities))),
    }
