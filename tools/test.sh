#!/usr/bin/env bash
# The README's test command: set up, then run the whole suite.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
python -m pytest "$@"
