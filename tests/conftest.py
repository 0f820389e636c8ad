"""Test set-up: the offline MNIST copy, oneDNN, and a host CPU split in two.

oneDNN is turned on (unless `TF_ENABLE_ONEDNN_OPTS` is set) and the CPU is
split into two logical devices before TensorFlow starts, so the suite runs
at the speed users get and the `mirrored` strategy runs with two real
replicas on a one-CPU machine.
"""

import os
import pathlib

SHARED_TFDS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "tensorflow_datasets"
if "TFDS_DATA_DIR" not in os.environ and SHARED_TFDS.is_dir():
    os.environ["TFDS_DATA_DIR"] = str(SHARED_TFDS)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from capskeras import onednn  # noqa: E402

onednn.enable()

import pytest  # noqa: E402

from capskeras.training.strategy import split_host_cpu  # noqa: E402

split_host_cpu(2)

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def repo_root():
    """The repository root, where `flags/` and `tools/` live."""
    return REPO


@pytest.fixture(autouse=True)
def _float32_policy():
    """Every test starts and ends under the float32 dtype policy."""
    import keras

    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")

