#!/usr/bin/env bash
# Soak benchmark of `wedge serve`: a benchmark, not a test. Serves the bundled embedding model
# and SmolLM2 (CPU, cache on), measures the capacity of a mixed load (embeddings and short chat
# completions, each with cache hits and misses), then offers 80% of it open loop for DURATION
# seconds and prints: errors, p50/p95/p99 (all, embeddings, chat), p99 of the first and the
# last tenth of the run, the server's RSS after warm-up (the first tenth) and at the end, and
# its open files. The memory tier is bounded small (MEMORY_BYTES, 2 MiB: about 1,300
# embeddings) so that it is full within the warm-up: what RSS does after that is the node's.
# Usage: benches/soak.sh [DURATION]   (600 by default; HIT_RATIO=0.5 CHAT_RATIO=0.1
#        MEMORY_BYTES= WEDGE=bin LOAD=bin; LOAD_STRICT=1 fails on errors and leaks, see load.rs)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-600}
PORT=${PORT:-18091}
URL="http://127.0.0.1:$PORT/v1/embeddings"
export HIT_RATIO=${HIT_RATIO:-0.5} CHAT_RATIO=${CHAT_RATIO:-0.1}
GGUF=${WEDGE_SMOLLM2_GGUF:-$(models/fetch.sh smollm2)}
if [ -z "${WEDGE:-}" ] || [ -z "${LOAD:-}" ]; then
  cargo build --release -q -p wedge-cli && cargo build --release -q -p wedge-server --example load
  WEDGE="${CARGO_TARGET_DIR:-target}/release/wedge"
  LOAD="${CARGO_TARGET_DIR:-target}/release/examples/load"
fi
CONFIG=$(mktemp --suffix=.toml)
printf '[cache]\nmemory_bytes = %s\n' "${MEMORY_BYTES:-2097152}" >"$CONFIG"
"$WEDGE" serve --config "$CONFIG" --device cpu --addr "127.0.0.1:$PORT" --grpc-addr "" --model "smollm2=$GGUF" \
  2>"${TMPDIR:-/tmp}/wedge-soak.log" &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -f "$CONFIG"' EXIT
echo "== wedge serve soak: hits ${HIT_RATIO}, chat ${CHAT_RATIO}, $(nproc) cores shared with the load"
"$LOAD" soak "$URL" "$DURATION" "$PID"
