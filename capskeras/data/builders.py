"""Prepared TensorFlow Datasets builders: found locally, downloaded only when possible.

Every dataset of `capskeras.data` reads its TFDS builder through
`prepared_builder`, so a missing dataset is one `DatasetNotFoundError`
naming the dataset, the directory searched and how to prepare it.
"""

import os
import socket
import urllib.parse

import tensorflow_datasets as tfds


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is not prepared locally and cannot be downloaded."""


def resolve_data_dir(data_dir=None):
    """The TFDS directory to read: `data_dir`, else `$TFDS_DATA_DIR`, else TFDS's default."""
    return data_dir or os.environ.get("TFDS_DATA_DIR") or None


def _download_host_reachable(builder, timeout=5.0, url=None):
    """Whether the dataset's download host answers, within `timeout` seconds.

    `url` defaults to the builder class's `URL` attribute; builders without
    one (TFDS's `smallnorb`) pass theirs.
    """
    url = url or getattr(type(builder), "URL", None) or ""
    host = urllib.parse.urlparse(url).hostname
    if not host:
        return True  # No known host: let TFDS try and report.
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def prepared_builder(name="mnist", data_dir=None, download=True, how_to_prepare=None,
                     download_url=None, **builder_kwargs):
    """Returns a prepared TFDS builder, downloading only when possible.

    Args:
        name: the TFDS name, optionally with `/config`.
        data_dir: a prepared TFDS directory; defaults to `$TFDS_DATA_DIR`.
        download: allow TFDS to download and prepare the data when missing.
        how_to_prepare: a sentence appended to the error, saying how this
            dataset is prepared (e.g. the command that builds it).
        download_url: a URL of the dataset's files, whose host is probed
            before downloading (defaults to the builder class's `URL`).
        **builder_kwargs: passed to `tfds.builder` (a `config`, for instance).

    Raises:
        DatasetNotFoundError: the data is not in `data_dir` and either
            `download` is False or the download host cannot be reached. The
            message names the dataset, the directory searched and how to
            point capskeras at a prepared copy.
    """
    data_dir = resolve_data_dir(data_dir)
    builder = tfds.builder(name, data_dir=data_dir, **builder_kwargs)
    if builder.is_prepared():
        return builder
    searched = builder.data_dir
    reason = "downloading is disabled (download=False)"
    if download:
        if _download_host_reachable(builder, url=download_url):
            builder.download_and_prepare()
            return builder
        reason = "its download host cannot be reached from this machine"
    raise DatasetNotFoundError(
        f"Dataset {name!r} is not prepared in {searched} and {reason}. "
        "Point --data_dir (or the TFDS_DATA_DIR environment variable) at a "
        f"directory holding a prepared TFDS copy, i.e. one containing "
        f"{builder.info.full_name}/dataset_info.json."
        + (f" {how_to_prepare}" if how_to_prepare else "")
    )
