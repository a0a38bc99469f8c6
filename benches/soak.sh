#!/usr/bin/env bash
# Soak benchmark of `wedge serve`: a benchmark, not a test. Serves the bundled embedding model
# and SmolLM2 (CPU, cache on), measures the capacity of a mixed load (embeddings with cache
# hits and misses, and short chat completions), then offers 80% of it open loop for DURATION
# seconds and prints: errors, p50/p95/p99, p99 of the first and the last tenth of the run,
# the server's RSS after warm-up (the first tenth) and at the end, and its open files.
# Usage: benches/soak.sh [DURATION]   (600 by default; HIT_RATIO=0.5 CHAT_RATIO=0.1 WEDGE= LOAD=)
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
"$WEDGE" serve --device cpu --addr "127.0.0.1:$PORT" --grpc-addr "" --model "smollm2=$GGUF" 2>/tmp/wedge-soak.log &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$PORT/v2/health/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
echo "== wedge serve soak: hits ${HIT_RATIO}, chat ${CHAT_RATIO}, $(nproc) cores shared with the load"
CAP=$("$LOAD" capacity "$URL" 15 16 | tee /dev/stderr | sed -n 's/.*rps=\([0-9.]*\).*/\1/p')
echo "== ${DURATION}s at 80% of ${CAP}/s"
"$LOAD" rate "$URL" "$DURATION" "$(echo "$CAP * 0.8" | bc -l)" "$PID"
