#!/usr/bin/env bash
# SmolLM2-135M-Instruct Q4_1 (the GGUF file models/fetch.sh fetches) on this machine: llama.cpp
# through llama-cpp-python (built from PyPI by pip, into $WEDGE_BENCH_DIR/venv) measured first,
# then `wedge bench --llm` on the CPU backend (f32 and --fast), each on the same threads, in one
# run: prompt tok/s (128-token prompt), time to first token, decode tok/s (64 tokens), wedge's
# aggregate decode with 4 and 16 sequences, and peak RSS. Only ratios from one run count: the
# machines differ by session. THREADS (default 2) sets both engines' threads.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-$(models/fetch.sh smollm2)}
threads=${THREADS:-2}
work=${WEDGE_BENCH_DIR:-$(mktemp -d)}
if [ ! -x "$work/venv/bin/python" ]; then
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install -q llama-cpp-python==0.3.36 numpy   # compiles llama.cpp: minutes
fi
cargo build --release -q -p wedge-cli
echo "== llama.cpp, $threads threads"
"$work/venv/bin/python" benches/llm/llamacpp_bench.py "$model" "$threads" 5 | tee "$work/llamacpp.json"
for mode in "" "--fast"; do
  echo "== wedge $mode, $threads threads"
  RAYON_NUM_THREADS=$threads target/release/wedge bench --llm "$model" --device cpu $mode --repeats 5 --json |
    tee "$work/wedge$mode.json"
done
python3 - "$work" <<'PY'
import json, sys, pathlib
w = pathlib.Path(sys.argv[1])
ref = json.loads((w / "llamacpp.json").read_text())
print(f"\n{'engine':<34} {'pp128':>8} {'ttft ms':>8} {'tg64':>7} {'4 seqs':>8} {'16 seqs':>8} {'RSS MB':>7}")
print(f"{ref['engine']:<34} {ref['prompt_tok_s']:8.1f} {ref['ttft_ms']:8.1f} {ref['decode_tok_s']:7.1f} {'':>8} {'':>8} {ref['peak_rss_mb']:7.0f}")
for name in ["wedge.json", "wedge--fast.json"]:
    r = json.loads((w / name).read_text())
    agg = dict((n, v) for n, v in r["aggregate"])
    label = "wedge cpu" + (" --fast" if "fast" in name else " (f32)")
    print(f"{label:<34} {r['prompt_tok_s']:8.1f} {r['ttft_ms']:8.1f} {r['decode_tok_s']:7.1f} {agg[4]:8.1f} {agg[16]:8.1f} {r['peak_rss_mb']:7.0f}")
    print(f"{'  ratio to llama.cpp':<34} {r['prompt_tok_s']/ref['prompt_tok_s']:8.2f} {ref['ttft_ms']/r['ttft_ms']:8.2f} "
          f"{r['decode_tok_s']/ref['decode_tok_s']:7.2f} {'':>8} {agg[16]/r['decode_tok_s']:7.1f}x {r['peak_rss_mb']/ref['peak_rss_mb']:7.2f}")
PY
