#!/usr/bin/env bash
# Overload benchmark of `wedge serve` (embeddings, cache misses, CPU): a benchmark, not a
# test. It measures the node's capacity (closed loop), its latency unloaded (open loop at a
# fifth of capacity), then offers 5x capacity for a while and 1/2 capacity right after, and
# prints for each: the admitted requests' p50/p95/p99, the 503s (how many carry Retry-After,
# and how fast they came back), the server's RSS and open files.
# The server sheds by expected wait (--max-queue-wait-ms, here half the unloaded p99: a
# request admitted waits at most about that, then runs in a batch that fits in it)
# so that admitted requests keep their latency.
# Usage: benches/overload.sh     (PHASE_SECONDS=10 WAIT_MS=... WEDGE=bin LOAD=bin to change)
set -euo pipefail
cd "$(dirname "$0")/.."
PHASE=${PHASE_SECONDS:-10}
PORT=${PORT:-18090}
URL="http://127.0.0.1:$PORT/v1/embeddings"
if [ -z "${WEDGE:-}" ] || [ -z "${LOAD:-}" ]; then
  cargo build --release -q -p wedge-cli && cargo build --release -q -p wedge-server --example load
  WEDGE="${CARGO_TARGET_DIR:-target}/release/wedge"
  LOAD="${CARGO_TARGET_DIR:-target}/release/examples/load"
fi

start() { # server flags...
  "$WEDGE" serve --device cpu --addr "127.0.0.1:$PORT" --grpc-addr "" --no-cache "$@" 2>/tmp/wedge-overload.log &
  PID=$!
  for _ in $(seq 300); do
    curl -sf "http://127.0.0.1:$PORT/v2/health/ready" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -sf "$URL" -H 'content-type: application/json' -d '{"input":"warm up"}' >/dev/null
}
stop() { kill -TERM "$PID"; wait "$PID" || true; }

echo "== wedge serve overload ($(nproc) cores shared by the server and the load, ${PHASE}s a phase)"
start
CAP=$("$LOAD" capacity "$URL" "$PHASE" 32 | tee /dev/stderr | sed -n 's/.*rps=\([0-9.]*\).*/\1/p')
UNLOADED=$("$LOAD" rate "$URL" "$PHASE" "$(echo "$CAP / 5" | bc -l)" "$PID" | tee /dev/stderr)
stop
P99=$(echo "$UNLOADED" | sed -n 's/^rate .*p99_ms=\([0-9.]*\).*/\1/p')
WAIT_MS=${WAIT_MS:-$(printf "%.0f" "$(echo "$P99 / 2" | bc -l)")}
echo "== capacity ${CAP}/s, unloaded p99 ${P99} ms: shedding past an expected wait of ${WAIT_MS} ms"
start --max-queue-wait-ms "$WAIT_MS"
echo "-- 5x capacity"
"$LOAD" rate "$URL" "$PHASE" "$(echo "$CAP * 5" | bc -l)" "$PID"
echo "-- right after: 1/2 capacity"
"$LOAD" rate "$URL" "$PHASE" "$(echo "$CAP / 2" | bc -l)" "$PID"
stop
