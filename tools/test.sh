#!/usr/bin/env bash
# The README's test command: set up, then run the whole suite.
# Two pytest workers: much of a test's time is single-threaded tracing and
# XLA compilation, which the second core would otherwise sit out.
# CAPSKERAS_TEST_WORKERS=0 runs the tests in this one process.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$CAPSKERAS_REPO"
# CAPSKERAS_BACKENDS=jax,torch: tests/test_backends.py checks the layers under
# PyTorch too, after installing its CPU-only wheel (PyPI's default one brings
# gigabytes of CUDA libraries); CAPSKERAS_TORCH_PIP_ARGS says where else to get it.
if [[ ",${CAPSKERAS_BACKENDS:-}," == *",torch,"* ]] && ! python -c "import torch" 2>/dev/null; then
    # shellcheck disable=SC2086  # pip's arguments, one word each
    python -m pip install --quiet ${CAPSKERAS_TORCH_PIP_ARGS:-torch --index-url https://download.pytorch.org/whl/cpu}
fi
python -m pytest -n "${CAPSKERAS_TEST_WORKERS:-2}" "$@"
