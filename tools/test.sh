#!/usr/bin/env bash
# The README's test command: set up, then run the whole suite.
# Two pytest workers: much of a test's time is single-threaded tracing and
# XLA compilation, which the second core would otherwise sit out.
# CAPSKERAS_TEST_WORKERS=0 runs the tests in this one process.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$CAPSKERAS_REPO"
python -m pytest -n "${CAPSKERAS_TEST_WORKERS:-2}" "$@"
