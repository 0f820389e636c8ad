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

import tensorflow_datasets as tfds

from capskeras.data import affnist
from capskeras.data import builders
from capskeras.data import smallnorb

NAMES = affnist.NAMES + (smallnorb.NAME,)


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


def _main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m capskeras.data.prepare",
        description="Prepares the affnist, the (regenerated) affnist_regen or the smallnorb "
                    "TFDS dataset.",
    )
    parser.add_argument("name", help="affnist, affnist_regen, affnist_regen/small or smallnorb")
    parser.add_argument("--data_dir", default=None,
                        help="TFDS directory to write to; defaults to $TFDS_DATA_DIR")
    parser.add_argument("--manual_dir", default=None,
                        help="affnist: the directory holding the three *_batches.zip files")
    args = parser.parse_args(argv)
    builder = prepare(args.name, args.data_dir, args.manual_dir)
    print(f"{builder.info.full_name}: {builder.data_dir}")


if __name__ == "__main__":
    _main()
