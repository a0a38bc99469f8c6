"""Token ids for the browser side-by-side (web/scripts/bench-ort.mjs), from the model's own
tokenizer.json: the public texts (as tests/data/public.jsonl holds them, cut at 256 tokens) and
one text of exactly 128 tokens ([CLS], 126 words, [SEP]) for the 32 x 128 workload, so that
wedge (which takes texts) and onnxruntime-web (which takes ids) do the same work.

    python benches/ort/browser_inputs.py MODEL_DIR PUBLIC_JSONL OUT_JSON
"""
import json, pathlib, sys

from tokenizers import Tokenizer


def main():
    model_dir, public, out = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.enable_truncation(256)
    tok.no_padding()
    cases = [json.loads(l) for l in open(public) if l.strip()]
    long_text = " ".join(["hello"] * 126)
    long_ids = tok.encode(long_text).ids
    assert len(long_ids) == 128, len(long_ids)
    doc = {
        "public": [{"text": c["text"], "ids": tok.encode(c["text"]).ids, "reference": c["embedding"]} for c in cases],
        "long": {"text": long_text, "ids": long_ids},
    }
    pathlib.Path(out).write_text(json.dumps(doc))


if __name__ == "__main__":
    main()
