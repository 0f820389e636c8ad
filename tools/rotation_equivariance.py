"""Measures how equivariant RotatedConv2D is, for K rotations and kernel sizes, on MNIST digits.

RotatedConv2D turns its filters by interpolation, so for K other than 1, 2
and 4 its equivariance is approximate. This prints, for each K and kernel
size, the relative error `|f(turn(x)) - turn(f(x))| / |turn(f(x))|` of a
two-layer stack (lifting, ReLU, group layer; Glorot-initialized, untrained:
noise-like filters, the hardest to turn by interpolation) under a turn by
360 / K degrees and by 90 degrees, measured on real MNIST test digits
(`capskeras.testing.equivariance.rotation_equivariance_error`), next to a
plain two-layer CNN with the same maps, and the invariance error of the
class-score-like vector after pooling over the rotations and the plane.

    python tools/rotation_equivariance.py --rotations=4,8,16 --kernel_sizes=3,5,7
"""

import sys

from absl import app
from absl import flags
import keras

from capskeras import cli
from capskeras.data import load_mnist
from capskeras.layers import GroupPooling
from capskeras.layers import RotatedConv2D
from capskeras.testing import equivariance
from capskeras.training.flags import parse_ints

FLAGS = flags.FLAGS


def digits(count):
    """`count` MNIST test digits in [0, 1], zero outside the disc inscribed in the image."""
    images, _ = next(iter(load_mnist("test", batch_size=count, num_examples=count)))
    images = keras.ops.convert_to_numpy(images)
    return images * equivariance.inscribed_disc(*images.shape[1:3], margin=0.5)[..., None]


def two_layers(rotations, kernel_size, filters, seed):
    init = keras.initializers.GlorotUniform(seed=seed)
    rotated = keras.Sequential([
        RotatedConv2D(filters, kernel_size, rotations=rotations, kernel_initializer=init),
        keras.layers.ReLU(),
        RotatedConv2D(filters, kernel_size, rotations=rotations, lifting=False,
                      kernel_initializer=init),
    ])
    plain = keras.Sequential([
        keras.layers.Conv2D(filters * rotations, kernel_size, kernel_initializer=init),
        keras.layers.ReLU(),
        keras.layers.Conv2D(filters * rotations, kernel_size, kernel_initializer=init),
    ])
    return rotated, plain


def measure(x, rotations, kernel_size, filters=4, seed=0):
    """The errors of one K and kernel size: rotated stack, plain stack, pooled invariance."""
    rotated, plain = two_layers(rotations, kernel_size, filters, seed)
    pooled = keras.Sequential([rotated, GroupPooling(f"c{rotations}", "max"),
                               keras.layers.GlobalMaxPooling2D()])
    return {
        "rotations": rotations,
        "kernel_size": kernel_size,
        "degrees": 360.0 / rotations,
        "equivariance_error": equivariance.rotation_equivariance_error(
            rotated, x, rotations),
        "quarter_turn_error": equivariance.rotation_equivariance_error(
            rotated, x, rotations, rotations // 4) if rotations % 4 == 0 else None,
        "plain_cnn_error": equivariance.rotation_equivariance_error(
            plain, x, rotations),
        "pooled_invariance_error": equivariance.rotation_equivariance_error(
            pooled, x, rotations, output_kind="invariant"),
    }


def define_flags(flag_values):
    """Defines the tool's flags on `flag_values`."""
    common = dict(flag_values=flag_values)
    flags.DEFINE_list("rotations", ["4", "8", "16"], "Numbers K of rotations, ints >= 1.",
                      **common)
    flags.DEFINE_list("kernel_sizes", ["3", "5", "7"], "Kernel sizes, odd ints >= 1.", **common)
    flags.DEFINE_integer("examples", 64, "MNIST test digits measured.", lower_bound=1, **common)
    flags.DEFINE_integer("seed", 0, "Seeds the layers' initializers.", **common)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Received unexpected arguments {argv[1:]}; expected flags only")
    try:
        all_rotations = parse_ints("rotations", FLAGS.rotations)
        kernel_sizes = parse_ints("kernel_sizes", FLAGS.kernel_sizes)
    except ValueError as error:
        print(f"rotation_equivariance.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    x = digits(FLAGS.examples)
    print(f"{FLAGS.examples} MNIST test digits, two layers of 4 channels, turns by 360 / K")
    print("| K | degrees | kernel | equivariance error | at 90 degrees | plain CNN "
          "| after pooling |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for rotations in all_rotations:
        for kernel_size in kernel_sizes:
            r = measure(x, rotations, kernel_size, seed=FLAGS.seed)
            quarter = "n/a" if r["quarter_turn_error"] is None else \
                f"{r['quarter_turn_error']:.1e}"
            print(f"| {rotations} | {r['degrees']:.1f} | {kernel_size} | "
                  f"{r['equivariance_error']:.4f} | {quarter} | {r['plain_cnn_error']:.4f} | "
                  f"{r['pooled_invariance_error']:.4f} |", flush=True)


if __name__ == "__main__":
    cli.run_command("rotation_equivariance.py", define_flags, main)
