#!/usr/bin/env bash
# Load benchmark of `wedge serve` on loopback with wrk (`apt-get install wrk`); a benchmark,
# not a test. Prints requests/s and p50/p95/p99 for
#   (a) cache hits at concurrency 64,
#   (b) cache misses (distinct inputs, cache off) at concurrency 32, batching on and off;
# wrk keeps every connection busy (closed loop), so its latency at concurrency 64 is queueing on
# a saturated server. With oha installed (`cargo install oha`), hits are also measured open loop:
# 64 connections at a fixed offered rate (RATES, default "1000 3000 6000" requests/s).
# Usage: benches/serve-load.sh [--device cpu|gpu|auto]   (DURATION=15s THREADS=2 WEDGE=bin to change)
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cpu
if [ "${1:-}" = "--device" ]; then DEVICE=$2; fi
DURATION=${DURATION:-15s}
THREADS=${THREADS:-2}
PORT=${PORT:-18080}
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
if [ -z "${WEDGE:-}" ]; then # WEDGE=path/to/wedge: measure a binary built elsewhere
  cargo build --release -q -p wedge-cli
  WEDGE="${CARGO_TARGET_DIR:-target}/release/wedge"
fi
export WEDGE_LUA_DIR="$PWD/benches/serve"
URL="http://127.0.0.1:$PORT/v1/embeddings"

run() { # label server-flags... -- wrk-script concurrency
  local label=$1; shift
  local flags=()
  while [ "$1" != "--" ]; do flags+=("$1"); shift; done
  local script=$2 conns=$3
  "$WEDGE" serve --device "$DEVICE" --addr "127.0.0.1:$PORT" --grpc-addr "" "${flags[@]}" 2>/tmp/wedge-serve-load.log &
  local pid=$!
  for _ in $(seq 200); do
    curl -sf "http://127.0.0.1:$PORT/v2/health/ready" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -sf "$URL" -H 'content-type: application/json' \
    -d '{"model":"default","input":"How do I reset my password on the edge node?"}' >/dev/null
  local line
  line=$(wrk -t"$THREADS" -c"$conns" -d"$DURATION" -s "benches/serve/$script" "$URL" | grep '^RESULT')
  local batches
  batches=$(curl -s "http://127.0.0.1:$PORT/metrics" | awk '/^wedge_batch_size_sum/{s=$2} /^wedge_batch_size_count/{c=$2} END{if (c>0) printf "%.1f", s/c; else print "-"}')
  kill -TERM $pid; wait $pid || true
  printf '| %-34s | %4s | %s | mean batch %s |\n' "$label" "$conns" "${line#RESULT }" "$batches"
}

oha_hits() {
  command -v oha >/dev/null || { echo "(oha not installed: no open-loop figures)"; return; }
  "$WEDGE" serve --device "$DEVICE" --addr "127.0.0.1:$PORT" --grpc-addr "" 2>/tmp/wedge-serve-load.log &
  local pid=$!
  for _ in $(seq 200); do
    curl -sf "http://127.0.0.1:$PORT/v2/health/ready" >/dev/null 2>&1 && break
    sleep 0.1
  done
  local body='{"model":"default","input":"How do I reset my password on the edge node?"}'
  for rate in ${RATES:-1000 3000 6000}; do
    oha -z "$DURATION" -c 64 -q "$rate" --latency-correction --no-tui -m POST \
      -H 'content-type: application/json' -d "$body" "$URL" >/tmp/wedge-oha.txt 2>&1
    printf '| hits, open loop %6s/s (oha)       |   64 | rps=%s p50_ms=%s p95_ms=%s p99_ms=%s success=%s |\n' "$rate" \
      "$(awk '/Requests\/sec/{print $2}' /tmp/wedge-oha.txt)" \
      "$(awk '/ 50.00% in/{print $3}' /tmp/wedge-oha.txt)" \
      "$(awk '/ 95.00% in/{print $3}' /tmp/wedge-oha.txt)" \
      "$(awk '/ 99.00% in/{print $3}' /tmp/wedge-oha.txt)" \
      "$(awk '/Success rate/{print $3}' /tmp/wedge-oha.txt)"
  done
  kill -TERM $pid; wait $pid || true
}

echo "wedge serve load ($DEVICE, $(nproc) cores shared by server and wrk, $DURATION per run)"
run "hits (cache on)" -- hit.lua 64
run "misses, batching on (32, 2 ms)" --no-cache --max-batch-size 32 --max-queue-delay-us 2000 -- miss.lua 32
run "misses, batching off" --no-cache --max-batch-size 1 -- miss.lua 32
oha_hits
