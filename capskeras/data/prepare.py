"""Prepares the affNIST datasets and smallNORB from the shell.

    python -m capskeras.data.prepare affnist_regen --data_dir=<dir>
    python -m capskeras.data.prepare affnist_regen/small --data_dir=<dir>
    python -m capskeras.data.prepare affnist --data_dir=<dir> --manual_dir=<dir with the zips>
    python -m capskeras.data.prepare smallnorb --data_dir=<dir>

The same as `tfds build --imports=capskeras.data <name>`, for machines where
the `tfds` command does not start (TFDS 4.9's command line imports
apache-beam). MNIST for `affnist_regen` is read from `--data_dir` when it is
prepared there, else from `$TFDS_DATA_DIR`. smallNORB is TFDS's own builder
and downloads about 250 MB from cs.nyu.edu: run it where the internet is
reachable and copy `<dir>/smallnorb` to the machine that trains.
"""

import sys

from absl import app
from absl import flags
import tensorflow_datasets as tfds

from capskeras import cli
from capskeras.data import affnist
from capskeras.data import builders
from capskeras.data import smallnorb

NAMES = affnist.NAMES + (smallnorb.NAME,)
PROG = "python -m capskeras.data.prepare"


def prepare(name, data_dir=None, manual_dir=None):
    """Prepares `name` (`affnist`, `affnist_regen`, `affnist_regen/<config>` or `smallnorb`).

    Returns:
        The prepared builder.
    """
    base = name.split("/")[0]
    if base not in NAMES:
        raise ValueError(f"Received: name={name!r}; expected one of {NAMES} (optionally /config)")
    builder = tfds.builder(name, data_dir=builders.resolve_data_dir(data_dir))
    config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    builder.download_and_prepare(download_config=config)
    return builder


def define_flags(flag_values):
    """Defines the command's flags on `flag_values`; the dataset's name is its argument."""
    flags.DEFINE_string("data_dir", None,
                        "TFDS directory to write to; defaults to $TFDS_DATA_DIR.",
                        flag_values=flag_values)
    flags.DEFINE_string("manual_dir", None,
                        "affnist: the directory holding the three *_batches.zip files.",
                        flag_values=flag_values)


def main(argv, flag_values=flags.FLAGS):
    """Prepares the dataset named by the one argument, under the parsed `flag_values`."""
    if len(argv) != 2:
        raise app.UsageError(
            f"Received arguments {argv[1:]}; expected one dataset name, one of "
            f"{', '.join(NAMES)} or affnist_regen/<config>")
    try:
        builder = prepare(argv[1], flag_values.data_dir, flag_values.manual_dir)
    except ValueError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"{builder.info.full_name}: {builder.data_dir}")


if __name__ == "__main__":
    cli.run_command(PROG, define_flags, main)
