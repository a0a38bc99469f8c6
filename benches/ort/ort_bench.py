"""onnxruntime side by side with `wedge bench`: the same workloads and protocol (2 warm-up calls,
then >= 5 calls and >= 2 s; emb/s = batch / median call time), 2 intra-op threads, pooling and
normalization included, tokenization excluded. First checks each ONNX file against the PyTorch
reference embeddings (cosine), then writes a baseline file for `wedge bench --baseline`.

    python benches/ort/ort_bench.py MODEL_DIR ONNX_PREFIX PUBLIC_JSONL OUT_JSON [--min-seconds S]
"""
import json, pathlib, statistics, sys, time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer


def main():
    model_dir, prefix, public, out = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    min_time = float(sys.argv[sys.argv.index("--min-seconds") + 1]) if "--min-seconds" in sys.argv else 2.0
    cases = [json.loads(l) for l in open(public) if l.strip()]
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.enable_truncation(256)
    tok.no_padding()
    encs = [tok.encode(c["text"]).ids for c in cases]

    def arrays(rows, length=None):
        length = length or max(len(r) for r in rows)
        ids = np.zeros((len(rows), length), np.int64)
        am = np.zeros_like(ids)
        for i, r in enumerate(rows):
            n = min(len(r), length)
            ids[i, :n] = r[:n]
            am[i, :n] = 1
            if n < len(r):
                ids[i, n - 1] = r[-1]  # keep [SEP] last when cut
        return ids, am, np.zeros_like(ids)

    figures = []
    for engine in ("ort_fp32", "ort_int8", "ort_int8_mm_pc"):
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = 2, 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(f"{prefix}_{engine[4:]}.onnx", so, providers=["CPUExecutionProvider"])

        def run(ids, am, tt):
            h = sess.run(None, {"input_ids": ids, "attention_mask": am, "token_type_ids": tt})[0]
            m = am[:, :, None].astype(np.float32)
            v = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
            return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

        got = np.concatenate([run(*arrays([e])) for e in encs])
        ref = np.array([c["embedding"] for c in cases], np.float32)
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        print(f"{engine}: cosine to PyTorch fp32 min {cos.min():.6f} mean {cos.mean():.6f}", file=sys.stderr)
        workloads = [(f"fixed128_b{b}", b, [arrays([encs[i % len(encs)] for i in range(b)], 128)]) for b in (1, 8, 32)]
        workloads += [("public32_b1", 1, [arrays([e]) for e in encs]), ("public32_b32", len(encs), [arrays(encs)])]
        for name, batch, inputs in workloads:
            for i in range(2):
                run(*inputs[i % len(inputs)])
            ts, end = [], time.perf_counter() + min_time
            while len(ts) < max(5, 2 * len(inputs) if len(inputs) > 1 else 5) or time.perf_counter() < end:
                t0 = time.perf_counter()
                run(*inputs[len(ts) % len(inputs)])
                ts.append(time.perf_counter() - t0)
            p50 = statistics.median(ts)
            figures.append({"engine": engine, "workload": name, "emb_per_s": batch / p50, "p50_ms": p50 * 1e3})
            print(f"{engine} {name}: {batch / p50:.1f} emb/s, p50 {p50 * 1e3:.2f} ms", file=sys.stderr)
    src = f"onnxruntime {ort.__version__} measured on this machine just before, same workloads, 2 threads"
    pathlib.Path(out).write_text(json.dumps({"source": src, "figures": figures}, indent=1) + "\n")


if __name__ == "__main__":
    main()
