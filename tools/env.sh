# Makes the project's virtualenv, puts it on PATH and points TFDS at the
# offline MNIST copy when one sits beside the repository. Used by the README's
# commands; also safe to `source` in an interactive shell (it changes no shell
# options and no directory).
#   CAPSKERAS_TF_EXTRA=gpu bash tools/quickstart.sh   # CUDA wheel instead of CPU
CAPSKERAS_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_capskeras_setup() {
    local repo="$CAPSKERAS_REPO" python="${PYTHON:-python3.11}"
    command -v "$python" >/dev/null || python=python3
    if [ ! -x "$repo/.venv/bin/python" ]; then
        "$python" -m venv "$repo/.venv" || return 1
    fi
    if ! "$repo/.venv/bin/python" -c "import capskeras, tensorflow, pytest" 2>/dev/null \
            || [ "$repo/setup.cfg" -nt "$repo/.venv/.capskeras-installed" ]; then
        "$repo/.venv/bin/python" -m pip install --quiet --upgrade pip || return 1
        "$repo/.venv/bin/python" -m pip install --quiet -e "$repo[${CAPSKERAS_TF_EXTRA:-cpu},test]" \
            || return 1
        touch "$repo/.venv/.capskeras-installed"
    fi
    export PATH="$repo/.venv/bin:$PATH"
    if [ -z "${TFDS_DATA_DIR:-}" ] && [ -d "$repo/../shared/data/tensorflow_datasets" ]; then
        TFDS_DATA_DIR="$(cd "$repo/../shared/data/tensorflow_datasets" && pwd)"
        export TFDS_DATA_DIR
    fi
    export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
    # oneDNN's kernels, which TensorFlow leaves off on CPUs without AVX-512
    # VNNI (4x on the study models' training there); 0 keeps them off.
    export TF_ENABLE_ONEDNN_OPTS="${TF_ENABLE_ONEDNN_OPTS:-1}"
}
_capskeras_setup
