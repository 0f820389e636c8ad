# Sourced by the README's commands: makes the project's virtualenv and points
# TFDS at the offline MNIST copy when one sits beside the repository.
#   CAPSKERAS_TF_EXTRA=gpu bash tools/quickstart.sh   # CUDA wheel instead of CPU
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import capskeras, tensorflow, pytest" 2>/dev/null \
        || [ setup.cfg -nt .venv/.capskeras-installed ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[${CAPSKERAS_TF_EXTRA:-cpu},test]"
    touch .venv/.capskeras-installed
fi
export PATH="$REPO/.venv/bin:$PATH"
if [ -z "${TFDS_DATA_DIR:-}" ] && [ -d "$REPO/../shared/data/tensorflow_datasets" ]; then
    export TFDS_DATA_DIR="$(cd "$REPO/../shared/data/tensorflow_datasets" && pwd)"
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
