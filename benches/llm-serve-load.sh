#!/usr/bin/env bash
# Streaming chat load on SmolLM2-135M-Instruct Q4_1 (the GGUF file models/fetch.sh fetches):
# llama.cpp's OpenAI server (llama_cpp.server from llama-cpp-python, built from PyPI by pip into
# $WEDGE_BENCH_DIR/venv) first, then `wedge serve` on the CPU backend, each on the same threads
# and loopback port, at concurrency 1, 8 and 32 (benches/llm/chat_load.py: aggregate generated
# tok/s, TTFT and inter-token p50/p99, errors, 503s), once with the f32 kernels and once with
# --fast (the integer kernels). Only ratios from one run count.
# llama_cpp.server runs with --interrupt_requests False: by default a new request ends the
# running stream at once (with no tokens), which would count as served.
# THREADS (default 2), SECONDS_EACH (default 20), MAX_TOKENS (default 64), PEER=0 skips llama.cpp.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-$(models/fetch.sh smollm2)}
threads=${THREADS:-2}
secs=${SECONDS_EACH:-20}
max_tokens=${MAX_TOKENS:-64}
work=${WEDGE_BENCH_DIR:-$(mktemp -d)}
port=18181
wait_ready() {   # $1: a path that answers 200 once the model is loaded
  for _ in $(seq 1 240); do
    curl -sf "localhost:$port$1" >/dev/null && return 0
    sleep 0.5
  done
  echo "the server did not come up" >&2
  return 1
}
load() {
  for c in 1 8 32; do
    python3 benches/llm/chat_load.py "127.0.0.1:$port" "$1" "$c" "$secs" "$max_tokens" | tee -a "$work/$2.jsonl"
  done
}
rm -f "$work"/*.jsonl
if [ "${PEER:-1}" = 1 ]; then
  if [ ! -x "$work/venv/bin/python" ] || ! "$work/venv/bin/python" -c 'import llama_cpp.server' 2>/dev/null; then
    python3 -m venv "$work/venv"
    "$work/venv/bin/pip" install -q 'llama-cpp-python[server]==0.3.36'   # compiles llama.cpp: minutes
  fi
  echo "== llama_cpp.server, $threads threads"
  "$work/venv/bin/python" -m llama_cpp.server --model "$model" --n_threads "$threads" --n_ctx 2048 \
    --host 127.0.0.1 --port $port --model_alias smollm2 --interrupt_requests False >"$work/peer.log" 2>&1 &
  peer=$!
  trap 'kill $peer 2>/dev/null || true' EXIT
  wait_ready /v1/models
  load smollm2 peer
  kill $peer; wait $peer 2>/dev/null || true
fi
cargo build --release -q -p wedge-cli
for mode in "" "--fast"; do
  echo "== wedge serve $mode, $threads threads"
  RAYON_NUM_THREADS=$threads target/release/wedge serve --model "smollm2=$model" --device cpu \
    --addr "127.0.0.1:$port" --grpc-addr "" $mode >"$work/wedge$mode.log" 2>&1 &
  server=$!
  trap 'kill $server 2>/dev/null || true' EXIT
  wait_ready /v2/health/ready
  load smollm2 "wedge$mode"
  kill $server; wait $server 2>/dev/null || true
done
python3 - "$work" <<'PY'
import json, sys, pathlib
w = pathlib.Path(sys.argv[1])
rows = lambda n: [json.loads(l) for l in (w / n).read_text().splitlines()] if (w / n).exists() else []
print(f"\n{'server':<22} {'conc':>4} {'tok/s':>7} {'ttft p50':>9} {'ttft p99':>9} {'itl p50':>8} {'itl p99':>8} {'reqs':>5} {'err':>4} {'503':>4} {'empty':>5}")
servers = [("peer.jsonl", "llama_cpp.server"), ("wedge.jsonl", "wedge serve"), ("wedge--fast.jsonl", "wedge serve --fast")]
for name, label in servers:
    for r in rows(name):
        print(f"{label:<22} {r['concurrency']:>4} {r['tok_s']:7.1f} {r['ttft_p50_ms']!s:>9} {r['ttft_p99_ms']!s:>9} "
              f"{r['itl_p50_ms']!s:>8} {r['itl_p99_ms']!s:>8} {r['requests']:>5} {r['errors']:>4} {r['shed_503']:>4} {r['empty']:>5}")
peer = {r["concurrency"]: r for r in rows("peer.jsonl")}
for name, label in servers[1:]:
    wedge = {r["concurrency"]: r for r in rows(name)}
    if 1 in wedge and 8 in wedge:
        print(f"\n{label}: at 8 / at 1 {wedge[8]['tok_s'] / wedge[1]['tok_s']:.2f}x tok/s, "
              f"p99 inter-token {wedge[8]['itl_p99_ms'] / wedge[1]['itl_p99_ms']:.2f}x")
    if 8 in wedge and 8 in peer:
        print(f"{label} / llama_cpp.server at 8: {wedge[8]['tok_s'] / peer[8]['tok_s']:.2f}x tok/s")
PY
