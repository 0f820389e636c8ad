"""capskeras's layers, losses and ops on JAX (and PyTorch), against TensorFlow.

This process (the TensorFlow backend) writes the reference: every case of
`capskeras.testing.backend_checks` saved to `.keras`, with its outputs and
gradients. One subprocess per other backend loads them and checks itself
(outputs and gradients to float32 rounding, `.keras` round trips, the routing's
NumPy reference, exact group equivariance, `fit` under `jit_compile`), after
checking that importing capskeras imported no TensorFlow.

JAX is always checked. PyTorch is checked when it is importable, or when
`CAPSKERAS_BACKENDS` names it (`CAPSKERAS_BACKENDS=jax,torch`; the test
fails then if it is missing): `CAPSKERAS_BACKENDS=jax,torch bash tools/test.sh
tests/test_backends.py` installs the CPU-only wheel first.
"""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

from capskeras.testing import backend_checks

REPO = pathlib.Path(__file__).resolve().parents[1]


def _backends():
    requested = os.environ.get("CAPSKERAS_BACKENDS")
    if requested:
        return [name.strip() for name in requested.split(",") if name.strip()]
    return ["jax"] + (["torch"] if importlib.util.find_spec("torch") else [])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    directory = tmp_path_factory.mktemp("backend_reference")
    backend_checks.write_reference(str(directory))
    return directory


def _run(backend, *args, timeout=600):
    env = dict(os.environ, KERAS_BACKEND=backend,
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("backend", _backends())
def test_layers_losses_and_ops_match_tensorflow(backend, reference):
    if backend not in ("jax", "torch"):
        pytest.fail(f"Received: CAPSKERAS_BACKENDS names {backend!r}; expected 'jax' or 'torch'")
    result = _run(backend, "-m", "capskeras.testing.backend_checks", "check", str(reference))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert f'"backend": "{backend}"' in result.stdout, result.stdout[-3000:]


MNIST_IDX = REPO.parent / "shared" / "data" / "mnist_idx"
EXAMPLE_SETTINGS = {
    'mnist = os.environ.get("MNIST_IDX_DIR", "mnist_idx")': f"mnist = {str(MNIST_IDX)!r}",
    "train_examples, test_examples = 60000, 10000": "train_examples, test_examples = 256, 100",
}


def _readme_backends_example():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("#### Backends"):]
    block = section[section.index("```python\n") + len("```python\n"):]
    return block[:block.index("```")]


@pytest.mark.skipif(not (MNIST_IDX / "train-images-idx3-ubyte.gz").exists(),
                    reason=f"MNIST's IDX files are not in {MNIST_IDX}")
def test_readme_jax_example_trains_a_capsnet_and_saves_it(tmp_path):
    """The README's JAX example, as written but on 256 training digits."""
    code = _readme_backends_example()
    for line, small in EXAMPLE_SETTINGS.items():
        assert code.count(line) == 1, f"the README example no longer has {line!r}"
        code = code.replace(line, small)
    script = tmp_path / "example.py"
    script.write_text(code)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("KERAS_BACKEND", None)
    result = subprocess.run([sys.executable, str(script)], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert "'sparse_categorical_accuracy'" in result.stdout, result.stdout[-3000:]

    # Saved under JAX, loaded here under TensorFlow.
    import keras
    import numpy as np

    model = keras.saving.load_model(tmp_path / "capsnet_jax.keras")
    scores = keras.ops.convert_to_numpy(model(np.zeros((2, 28, 28, 1), "float32")))
    assert scores.shape == (2, 10) and np.all((scores >= 0) & (scores <= 1)), scores
