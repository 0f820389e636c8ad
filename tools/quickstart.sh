#!/usr/bin/env bash
# The README's main job: set up, train on real MNIST, evaluate, export, draw.
# Extra arguments override the flagfile, e.g. --epochs=1.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$CAPSKERAS_REPO"
capskeras-train --flagfile=flags/quickstart.cfg "$@"
echo
echo "Serving signature of the newest export:"
latest="$(ls -d saved_models/quickstart/*/ | sort -t/ -k3 -n | tail -1)"
saved_model_cli show --dir "$latest" --tag_set serve --signature_def serving_default
echo
echo "Test digits beside their reconstructions: reconstructions.png in the run's --model_dir (runs/quickstart by default)"
