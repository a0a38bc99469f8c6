"""Writes small vocabulary-only GGUF files, one per tokenizer wedge reads, and the token ids
llama.cpp itself gives for a set of texts with each: the known ids wedge's tokenizer is checked
against (`crates/wedge/tests/vocab.rs`).

- byte-level BPE (`tokenizer.ggml.model = gpt2`) with each `tokenizer.ggml.pre` wedge knows
  (`gpt-2`, `smollm`, `qwen2`, `llama-bpe`), over one vocabulary whose merges make the
  pre-tokenizers' differences show (digit runs, contractions in either case, runs of spaces and
  newlines);
- SentencePiece (`tokenizer.ggml.model = llama`) with scores, byte fallback and the space prefix.

    pip install gguf==0.19.0 numpy llama-cpp-python==0.3.36
    python3 tests/data/tiny/make_vocab.py          # from the repository root (it uses make_tiny.py)

Writes `tests/data/tiny/vocab_<name>.gguf` and `tests/data/tiny/vocab_ids.json`:
`{name: [{"text": ..., "ids": [...]}, ...]}` (no BOS; special tokens not parsed).
"""
import json

import gguf
import llama_cpp

from make_tiny import byte_tokens

DIR = "tests/data/tiny"

TEXTS = [
    "Hello world",
    "the cat and the hat",
    "It's 12345 o'clock, ISN'T it? 1234567",
    "  two  spaces,\n\nnew lines\n and\ttabs  ",
    "naïve café, 世界 and 🦀!",
    "<s> and <|im_start|> stay text",
    "",
    " leading space",
]


BPE_MERGES = ["Ġ t", "h e", "Ġt he", "Ġ a", "n d", "Ġa nd", "1 2", "12 3", "4 5", "' s", "' S", "Ġ Ġ", "Ċ Ċ",
              "l l", "e ll", "H ell", "Hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d", "' t", "Ġ c", "a t",
              "Ġc at", "Ġ h", "Ġh at", "c l", "cl o", "c k", "o '", "I S", "IS N"]


def header(w):
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_feed_forward_length(8)
    w.add_head_count(1)
    w.add_layer_norm_rms_eps(1e-5)


def bpe(pre):
    tokens = byte_tokens()
    for m in BPE_MERGES:
        t = m.replace(" ", "")
        if t not in tokens:
            tokens.append(t)
    tokens += ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    types = [1] * (len(tokens) - 3) + [3, 3, 3]
    path = f"{DIR}/vocab_{pre}.gguf"
    w = gguf.GGUFWriter(path, arch="llama")
    header(w)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(BPE_MERGES)
    w.add_bos_token_id(len(tokens) - 3)
    w.add_eos_token_id(len(tokens) - 3)
    w.add_add_bos_token(False)
    finish(w)
    return path


SPM_PIECES = ["▁", "e", "t", "a", "o", "l", "h", "n", "s", "d", "r", "w", "c", "i", "H", "I", "S", "N", "T",
              "▁t", "he", "▁the", "▁a", "nd", "▁and", "ll", "ell", "Hell", "Hello", "▁Hello", "▁w", "or",
              "▁wor", "ld", "▁world", "at", "▁c", "▁cat", "▁h", "▁hat", "1", "2", "3", "12", "123", "'", "s",
              "'s", "▁▁", "é", "▁caf", "▁café", ",", "?", "!", "▁new", "▁line", "ne", "in", "▁in", "▁le",
              "ad", "ing", "▁lead", "▁leading", "▁sp", "ace", "▁space", "▁spaces", "▁two", "▁st", "ay",
              "▁stay", "▁text", "ex", "<", ">", "|", "_", "▁<", "s>"]


def spm():
    # every character of a piece is a piece too, as SentencePiece's training makes sure
    pieces = list(dict.fromkeys(SPM_PIECES + sorted({c for p in SPM_PIECES for c in p})))
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    # later pieces score lower, as a SentencePiece BPE model's do; single characters lowest
    scores = [0.0, 0.0, 0.0] + [0.0] * 256 + [-float(i) if len(p) > 1 else -1000.0 - i for i, p in enumerate(pieces)]
    path = f"{DIR}/vocab_spm.gguf"
    w = gguf.GGUFWriter(path, arch="llama")
    header(w)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_scores(scores)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)
    finish(w)
    return path


def finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


out = {}
for name, path in [(p, bpe(p)) for p in ["gpt-2", "smollm", "qwen2", "llama-bpe"]] + [("spm", spm())]:
    llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    out[name] = [{"text": t, "ids": llm.tokenize(t.encode(), add_bos=False, special=False)} for t in TEXTS]
with open(f"{DIR}/vocab_ids.json", "w") as f:
    json.dump(out, f, ensure_ascii=False, indent=0)
print("wrote", f"{DIR}/vocab_ids.json")
