"""Every Python block of README.md runs, as a reader would run it.

The blocks run in order in one fresh Python process on the TensorFlow
backend, sharing one namespace (a block may use what an earlier one
defined or saved), in a temporary working directory. A block that sets
`KERAS_BACKEND` runs alone in a process of that backend. MNIST comes from
TFDS (`$TFDS_DATA_DIR`), as for the rest of the suite; its IDX files (the
JAX example) from `$MNIST_IDX_DIR`, else written from the TFDS copy.
"""

import gzip
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# Digits of each split written as IDX files when $MNIST_IDX_DIR is unset.
IDX_EXAMPLES = 1000
BACKEND = re.compile(r"""os\.environ\[["']KERAS_BACKEND["']\]\s*=\s*["'](\w+)["']""")

# Runs the block files named on its command line in one namespace; a
# traceback names the block's README line.
RUNNER = """
import sys
namespace = {"__name__": "__main__"}
for path in sys.argv[1:]:
    with open(path) as f:
        exec(compile(f.read(), path, "exec"), namespace)
"""


def readme_blocks():
    """`(first line, code)` of every ```python block of README.md."""
    readme = (REPO / "README.md").read_text()
    return [(readme.count("\n", 0, match.start(1)) + 1, match.group(1))
            for match in re.finditer(r"^```python\n(.*?)^```", readme, re.DOTALL | re.MULTILINE)]


def _write_idx(path, array):
    """`array` (uint8) as a gzipped IDX file, MNIST's original format."""
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def _mnist_idx_dir(directory):
    """`$MNIST_IDX_DIR`, or a folder of IDX files written from TFDS's MNIST."""
    if os.environ.get("MNIST_IDX_DIR"):
        return os.environ["MNIST_IDX_DIR"]
    from capskeras.data import load_mnist

    directory.mkdir()
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = next(iter(load_mnist(split, batch_size=IDX_EXAMPLES,
                                              num_examples=IDX_EXAMPLES)))
        _write_idx(directory / f"{prefix}-images-idx3-ubyte.gz",
                   np.round(images.numpy()[..., 0] * 255).astype(np.uint8))
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels.numpy().astype(np.uint8))
    return str(directory)


def _run(blocks, directory, backend, mnist_idx_dir=""):
    paths = []
    for line, code in blocks:
        path = directory / f"README.md-line-{line}.py"
        path.write_text(code)
        paths.append(str(path))
    env = dict(os.environ, KERAS_BACKEND=backend,
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    if mnist_idx_dir:
        env["MNIST_IDX_DIR"] = mnist_idx_dir
    result = subprocess.run([sys.executable, "-c", RUNNER, *paths], env=env, cwd=directory,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def test_the_readme_has_python_blocks_for_each_backend():
    blocks = readme_blocks()
    assert len(blocks) >= 3
    assert {match.group(1) for _, code in blocks for match in BACKEND.finditer(code)} == {"jax"}


def test_the_tensorflow_blocks_run_in_order(tmp_path):
    blocks = [(line, code) for line, code in readme_blocks() if not BACKEND.search(code)]
    _run(blocks, tmp_path, "tensorflow")
    # The Keras example saves its model; the serving example exports it.
    assert (tmp_path / "deep_bp_class.keras").is_file()
    assert (tmp_path / "saved_models" / "deep_bp_class" / "1" / "saved_model.pb").is_file()


OTHER_BACKEND_BLOCKS = [block for block in readme_blocks() if BACKEND.search(block[1])]


@pytest.mark.parametrize("line,code", OTHER_BACKEND_BLOCKS,
                         ids=[f"line{line}" for line, _ in OTHER_BACKEND_BLOCKS])
def test_a_block_of_another_backend_runs_and_saves_for_tensorflow(line, code, tmp_path):
    _run([(line, code)], tmp_path, BACKEND.search(code).group(1),
         _mnist_idx_dir(tmp_path / "mnist_idx"))
    # What it saves (the JAX example: its CapsNet) loads here under TensorFlow.
    import keras

    import capskeras.layers  # noqa: F401  Register the classes the .keras file names.
    import capskeras.losses  # noqa: F401

    for path in tmp_path.glob("*.keras"):
        model = keras.saving.load_model(path)
        images = np.zeros((2,) + tuple(model.input_shape[1:]), "float32")
        scores = keras.ops.convert_to_numpy(model(images))
        assert np.all(np.isfinite(scores)), (path, scores)
