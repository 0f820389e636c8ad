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
