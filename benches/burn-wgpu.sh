#!/usr/bin/env bash
# The peer benchmark of wedge-burn (not in CI): a 6-layer MiniLM-sized encoder defined in burn,
# run by burn-wgpu (f32, and burn's own int8/int4 weight quantization) and, exported with
# wedge-burn, by wedge's GPU path (f32/q8/q4) on the same adapter, batch 1/8/32: median batch
# latency, texts/s, wedge's ratio to burn, and each side's cosine to burn's f32 embeddings.
# burn with wgpu takes over half an hour to build on 2 cores: it has a target folder of its own.
# `benches/burn-wgpu.sh [ITERS]`; SEQ=128 BATCHES=1,8 override the shapes.
set -euo pipefail
cd "$(dirname "$0")/burn-wgpu"
export CARGO_TARGET_DIR="${BURN_BENCH_TARGET:-$HOME/.cache/wedge-burn-wgpu-target}"
cargo run --release --locked -- "$@"
