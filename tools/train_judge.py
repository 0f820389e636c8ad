"""Trains the judge network that scores perturbed decodings as digits.

    python tools/train_judge.py --output_dir=runs/judge

The recipe is fixed (`capskeras.evaluation.judge.RECIPE`: a small CNN, MNIST
with rotation/translation/zoom augmentation, Adam 1e-3, batch 128, 3 epochs,
seed 0); `--epochs` and `--train_examples` only shorten it for smoke runs,
and the JSON written beside the model records what was used and the judge's
MNIST test accuracy. The judge never sees an encoder's output.
"""

import sys

from absl import app
from absl import flags

from capskeras import cli
from capskeras.evaluation import judge

FLAGS = flags.FLAGS


def define_flags(flag_values):
    """Defines the tool's flags on `flag_values`."""
    flags.DEFINE_string("output_dir", "runs/judge", "Where judge.keras and judge.json go.",
                        flag_values=flag_values)
    flags.DEFINE_integer("epochs", judge.RECIPE["epochs"], "Epochs (the recipe: 3).",
                         flag_values=flag_values)
    flags.DEFINE_integer("train_examples", judge.RECIPE["train_examples"],
                         "MNIST training digits (the recipe: all 60,000).",
                         flag_values=flag_values)
    flags.DEFINE_integer("seed", judge.RECIPE["seed"], "Seed (the recipe: 0).",
                         flag_values=flag_values)
    flags.DEFINE_string("data_dir", "", "Prepared TFDS directory; empty for $TFDS_DATA_DIR.",
                        flag_values=flag_values)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Received unexpected arguments {argv[1:]}; expected flags only")
    if FLAGS.epochs < 1 or FLAGS.train_examples < 1:
        print(f"train_judge: error: Received: epochs={FLAGS.epochs}, train_examples="
              f"{FLAGS.train_examples}; expected ints >= 1", file=sys.stderr)
        sys.exit(2)
    _, summary = judge.train_judge(FLAGS.output_dir, FLAGS.epochs, FLAGS.train_examples,
                                   FLAGS.seed, FLAGS.data_dir or None)
    print(f"judge: MNIST test accuracy {100 * summary['mnist_test_accuracy']:.2f}%, "
          f"saved in {FLAGS.output_dir}")


if __name__ == "__main__":
    cli.run_command("train_judge.py", define_flags, main)
