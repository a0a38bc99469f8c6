#!/usr/bin/env bash
# all-MiniLM-L6-v2 on this machine: onnxruntime (fp32, dynamic int8, MatMul-only per-channel int8;
# ONNX built from the same safetensors by benches/ort/export_onnx.py, no PyTorch) and then
# `wedge bench` in the same workloads, printing wedge's emb/s as ratios of onnxruntime's.
# Extra arguments go to `wedge bench` (e.g. --device cpu). Needs Python 3 and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$(models/fetch.sh minilm)
work=${WEDGE_BENCH_DIR:-$(mktemp -d)}
python3 -c 'import onnxruntime, onnx, safetensors, tokenizers, numpy' 2>/dev/null ||
  python3 -m pip install -q onnxruntime==1.32.0 onnx==1.23.2 safetensors tokenizers numpy
python3 benches/ort/export_onnx.py "$src" "$work/minilm"
python3 benches/ort/ort_bench.py "$src" "$work/minilm" tests/data/public.jsonl "$work/onnxruntime.json"
cargo run --release -p wedge-cli -- bench --model models/all-MiniLM-L6-v2.wedge --from "$src" --quant f32,q8,q8a8,q4 \
  --baseline "$work/onnxruntime.json" "$@"
