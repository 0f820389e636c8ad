#!/usr/bin/env bash
# The README's test command: set up, then run the whole suite.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$CAPSKERAS_REPO"
python -m pytest "$@"
