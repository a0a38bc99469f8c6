"""Writes the tiny random-weight decoders of wedge's model tests, and their float64 logits.

What no model on PyPI covers is checked on these: `qwen2` (q/k/v biases, NeoX RoPE pairs, a
tied head), RoPE scaling (`linear`, and the `rope_freqs` divisors that llama.cpp's converter
writes for Llama 3), a separate output head, grouped-query attention, and weights in Q8_0 and
every other tensor type a real file holds (BF16, Q4_1, Q5_0, Q5_1,
Q8_0, Q4_K, Q6_K) beside F32. Each model is a GGUF file written with llama.cpp's own Python package, and its
logits for a fixed token sequence come from a float64 numpy forward pass of llama.cpp's
definitions (weights as `gguf.quants` dequantizes them), here in this script.

    pip install gguf==0.19.0 numpy
    python3 tests/data/tiny/make_tiny.py          # from the repository root

Two Hugging Face folders check that form (`config.json`, `model.safetensors`, `tokenizer.json`,
`tokenizer_config.json`): `qwen2_linear_hf/` holds the `qwen2_linear` model's weights as F32 (so
it has the same logits), `llama3_hf/` a llama in BF16 with `rope_scaling` of type `llama3`.

Writes `tests/data/tiny/<name>.gguf`, the two folders and `tests/data/tiny/logits.json`:
`{name: {"ids": [...], "logits": [[...vocab] per position]}}` (rounded to 1e-6).
"""
import os
import json

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

DIR = "tests/data/tiny"


def byte_tokens():
    """GPT-2's byte-to-character map: the 256 base tokens of a byte-level BPE vocabulary."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "o n", "e r", "Ġ s"]


def vocabulary():
    tokens = byte_tokens()
    for m in MERGES:
        tokens.append(m.replace(" ", ""))
    tokens += ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    types = [1] * (len(tokens) - 3) + [3, 3, 3]
    return tokens, types


def rms_norm(x, g, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def rope(x, pos, inv_freq, neox):
    """x [tokens, heads, d]: pairs (i, i + d/2) for NeoX (qwen2), (2i, 2i + 1) otherwise (llama)."""
    d = x.shape[-1]
    ang = pos[:, None] * inv_freq[None, :]  # [tokens, d/2]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    if neox:
        a, b = x[..., : d // 2], x[..., d // 2:]
    else:
        a, b = x[..., 0::2], x[..., 1::2]
    ra, rb = a * c - b * s, a * s + b * c
    out = np.empty_like(x)
    if neox:
        out[..., : d // 2], out[..., d // 2:] = ra, rb
    else:
        out[..., 0::2], out[..., 1::2] = ra, rb
    return out


def llama3_inv_freq(inv, factor, low_freq_factor, high_freq_factor, original_max_position_embeddings):
    """transformers' `_compute_llama3_parameters`."""
    low_wavelen = original_max_position_embeddings / low_freq_factor
    high_wavelen = original_max_position_embeddings / high_freq_factor
    wavelen = 2 * np.pi / inv
    out = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, out)


def forward(m, w, ids):
    """llama.cpp's llama/qwen2 graph in float64; `w` holds the dequantized tensors by GGUF name."""
    nh, nkv, d = m["heads"], m["kv_heads"], m["head_dim"]
    x = w["token_embd.weight"][ids]
    n = len(ids)
    pos = np.arange(n, dtype=np.float64)
    inv = m["base"] ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    if m.get("linear"):
        inv = inv / m["linear"]
    if m.get("freqs") is not None:
        inv = inv / m["freqs"].astype(np.float64)
    if m.get("llama3"):
        inv = llama3_inv_freq(inv, **m["llama3"])
    # GGUF's llama weights are permuted for adjacent pairs; qwen2 and Hugging Face folders keep halves
    neox = m["arch"] == "qwen2" or m.get("hf", False)
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for l in range(m["layers"]):
        p = lambda k: w[f"blk.{l}.{k}"]
        h = rms_norm(x, p("attn_norm.weight"), m["eps"])
        q, k, v = h @ p("attn_q.weight").T, h @ p("attn_k.weight").T, h @ p("attn_v.weight").T
        if m["arch"] == "qwen2":
            q, k, v = q + p("attn_q.bias"), k + p("attn_k.bias"), v + p("attn_v.bias")
        q = rope(q.reshape(n, nh, d), pos, inv, neox)
        k = rope(k.reshape(n, nkv, d), pos, inv, neox)
        v = v.reshape(n, nkv, d)
        out = np.empty((n, nh, d))
        for hd in range(nh):
            kv = hd // (nh // nkv)
            s = q[:, hd, :] @ k[:, kv, :].T / np.sqrt(d) + mask
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            out[:, hd, :] = (s / s.sum(axis=-1, keepdims=True)) @ v[:, kv, :]
        x = x + out.reshape(n, nh * d) @ p("attn_output.weight").T
        h = rms_norm(x, p("ffn_norm.weight"), m["eps"])
        g, u = h @ p("ffn_gate.weight").T, h @ p("ffn_up.weight").T
        x = x + (g / (1 + np.exp(-g)) * u) @ p("ffn_down.weight").T
    x = rms_norm(x, w["output_norm.weight"], m["eps"])
    head = w.get("output.weight", w["token_embd.weight"])
    return x @ head.T


MODELS = [
    # llama with Llama 3's per-frequency divisors, a separate head, and a different tensor type for
    # nearly every matrix
    dict(name="llama_rope_freqs", arch="llama", pre="llama-bpe", hidden=256, heads=4, kv_heads=2, head_dim=64,
         ffn=256, layers=1, base=500000.0, eps=1e-5, tied=False, seed=1,
         freqs=np.concatenate([np.ones(12), np.linspace(1.0, 8.0, 8), np.full(12, 8.0)]).astype(np.float32),
         quant={"token_embd.weight": T.Q8_0, "output.weight": T.Q6_K, "attn_q.weight": T.Q8_0,
                "attn_k.weight": T.Q5_0, "attn_v.weight": T.Q5_1, "attn_output.weight": T.BF16,
                "ffn_gate.weight": T.Q4_1, "ffn_up.weight": T.Q4_K, "ffn_down.weight": T.Q6_K}),
    # qwen2: q/k/v biases, NeoX pairs, tied head, linear RoPE scaling
    dict(name="qwen2_linear", arch="qwen2", pre="qwen2", hidden=64, heads=4, kv_heads=2, head_dim=16,
         ffn=96, layers=2, base=1000000.0, eps=1e-6, tied=True, seed=2, linear=4.0,
         quant={"ffn_gate.weight": T.Q8_0, "attn_k.weight": T.Q5_0}),
]

# k-quants have no quantizer in `gguf.quants`: random blocks, with f16 scales (byte offset, range)
# that keep the weights near 1/sqrt(cols)
K_SCALES = {T.Q4_K: [(0, 2e-4), (2, 2e-4)], T.Q6_K: [(208, 6e-5)]}


def random_blocks(rng, ty, shape):
    block_len, block_bytes = gguf.GGML_QUANT_SIZES[ty]
    blocks = rng.integers(0, 256, size=(shape[0] * shape[1] // block_len, block_bytes), dtype=np.uint8)
    for at, top in K_SCALES[ty]:
        scale = rng.uniform(0 if ty == T.Q4_K else -top, top, size=blocks.shape[0]).astype(np.float16)
        blocks[:, at:at + 2] = scale.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(shape[0], -1)


HF_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
            "output.weight": "lm_head.weight"}
HF_LAYER = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
            "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
            "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def hf_name(name):
    if name in HF_NAMES:
        return HF_NAMES[name]
    _, layer, part, kind = name.split(".")
    return f"model.layers.{layer}.{HF_LAYER[part]}.{kind}"


def to_bf16(a):
    """Round-to-nearest-even f32 -> bf16 bits."""
    u = a.astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def write_safetensors(path, tensors):
    """tensors: {name: (dtype, array)}, dtype "F32" (float32 array) or "BF16" (uint16 bits)."""
    header, blobs, at = {}, [], 0
    for name, (dtype, a) in tensors.items():
        b = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [at, at + len(b)]}
        blobs.append(b)
        at += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h + b"".join(blobs))


CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def write_hf(m, values, folder):
    """A Hugging Face folder of model `m` with the float64 `values` (by GGUF name)."""
    os.makedirs(folder, exist_ok=True)
    tokens, types = vocabulary()
    cfg = {
        "architectures": ["Qwen2ForCausalLM" if m["arch"] == "qwen2" else "LlamaForCausalLM"],
        "model_type": m["arch"], "vocab_size": len(tokens), "hidden_size": m["hidden"],
        "intermediate_size": m["ffn"], "num_hidden_layers": m["layers"], "num_attention_heads": m["heads"],
        "num_key_value_heads": m["kv_heads"], "rms_norm_eps": m["eps"], "rope_theta": m["base"],
        "tie_word_embeddings": m["tied"], "max_position_embeddings": 128, "torch_dtype": m["dtype"].lower(),
        "rope_scaling": ({"type": "linear", "factor": m["linear"]} if m.get("linear")
                         else {"rope_type": "llama3", **m["llama3"]} if m.get("llama3") else None),
    }
    with open(f"{folder}/config.json", "w") as f:
        json.dump(cfg, f, indent=1)
    st = {}
    for name, a in values.items():
        st[hf_name(name)] = ("BF16", to_bf16(a)) if m["dtype"] == "BF16" else ("F32", a.astype(np.float32))
    write_safetensors(f"{folder}/model.safetensors", st)
    vocab = {t: i for i, t in enumerate(tokens)}
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 3]
    tok = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": MERGES},
    }
    with open(f"{folder}/tokenizer.json", "w") as f:
        json.dump(tok, f, ensure_ascii=False)
    with open(f"{folder}/tokenizer_config.json", "w") as f:
        json.dump({"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "add_bos_token": False,
                   "chat_template": CHATML}, f, indent=1)


def random_values(m, rng):
    """Float64 weights by GGUF name for the Hugging Face-only model (BF16-rounded)."""
    tokens, _ = vocabulary()
    values = {}
    for name, shape in shapes_of(m, len(tokens)).items():
        a = random_tensor(name, shape, rng)
        values[name] = (to_bf16(a).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return values


IDS = [100, 265, 40, 72, 264, 3, 250, 33, 90, 266, 12, 200, 47, 263, 118, 5]


def shapes_of(m, vocab):
    hd, nh, nkv, d = m["hidden"], m["heads"], m["kv_heads"], m["head_dim"]
    shapes = {"token_embd.weight": (vocab, hd), "output_norm.weight": (hd,)}
    if not m["tied"]:
        shapes["output.weight"] = (vocab, hd)
    for l in range(m["layers"]):
        b = f"blk.{l}."
        shapes.update({
            b + "attn_norm.weight": (hd,), b + "attn_q.weight": (nh * d, hd), b + "attn_k.weight": (nkv * d, hd),
            b + "attn_v.weight": (nkv * d, hd), b + "attn_output.weight": (hd, nh * d), b + "ffn_norm.weight": (hd,),
            b + "ffn_gate.weight": (m["ffn"], hd), b + "ffn_up.weight": (m["ffn"], hd),
            b + "ffn_down.weight": (hd, m["ffn"]),
        })
        if m["arch"] == "qwen2":
            shapes.update({b + "attn_q.bias": (nh * d,), b + "attn_k.bias": (nkv * d,), b + "attn_v.bias": (nkv * d,)})
    return shapes


def random_tensor(name, shape, rng):
    if len(shape) == 1:
        a = (1.0 + 0.1 * rng.standard_normal(shape)) if name.endswith("norm.weight") else 0.3 * rng.standard_normal(shape)
    else:
        a = rng.standard_normal(shape) / np.sqrt(shape[1])
        if name == "token_embd.weight":
            a = a * 4.0
    return a.astype(np.float32)


def write(m):
    rng = np.random.default_rng(m["seed"])
    tokens, types = vocabulary()
    vocab, hd, nh, nkv = len(tokens), m["hidden"], m["heads"], m["kv_heads"]
    shapes = shapes_of(m, vocab)
    w = gguf.GGUFWriter(f"{DIR}/{m['name']}.gguf", arch=m["arch"])
    w.add_name(m["name"])
    w.add_context_length(128)
    w.add_embedding_length(hd)
    w.add_feed_forward_length(m["ffn"])
    w.add_block_count(m["layers"])
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_layer_norm_rms_eps(m["eps"])
    w.add_rope_freq_base(m["base"])
    if m.get("linear"):
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(m["linear"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(m["pre"])
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(vocab - 3)
    w.add_eos_token_id(vocab - 3)
    values = {}
    for name, shape in shapes.items():
        a = random_tensor(name, shape, rng)
        ty = m["quant"].get(name.split(".", 2)[2] if name.startswith("blk.") else name, T.F32)
        if ty == T.F32:
            w.add_tensor(name, a)
            values[name] = a.astype(np.float64)
        else:
            q = random_blocks(rng, ty, shape) if ty in K_SCALES else gguf.quants.quantize(a, ty)
            w.add_tensor(name, q, raw_dtype=ty)
            values[name] = gguf.quants.dequantize(q, ty).astype(np.float64).reshape(shape)
    if m.get("freqs") is not None:
        w.add_tensor("rope_freqs.weight", m["freqs"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if m["name"] == "qwen2_linear":
        write_hf(dict(m, dtype="F32"), values, f"{DIR}/qwen2_linear_hf")
    return logits_of(m, values)


def logits_of(m, values):
    logits = forward(m, values, np.array(IDS))
    return {"ids": IDS, "logits": [[round(float(v), 6) for v in row] for row in logits]}


# a llama only in Hugging Face form: BF16, llama3 RoPE scaling whose three bands all occur
# (original context 64: wavelengths under 16 kept, over 64 stretched 8-fold, the rest blended)
LLAMA3 = dict(name="llama3_hf", arch="llama", hf=True, dtype="BF16", hidden=64, heads=4, kv_heads=2, head_dim=16,
              ffn=96, layers=2, base=500000.0, eps=1e-5, tied=False,
              llama3=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64))

if __name__ == "__main__":
    out = {m["name"]: write(m) for m in MODELS}
    llama3_values = random_values(LLAMA3, np.random.default_rng(3))
    write_hf(LLAMA3, llama3_values, f"{DIR}/llama3_hf")
    out["llama3_hf"] = logits_of(LLAMA3, llama3_values)
    with open(f"{DIR}/logits.json", "w") as f:
        json.dump(out, f, separators=(",", ":"))
    print("wrote", ", ".join(f"{DIR}/{m['name']}.gguf" for m in MODELS), f"and {DIR}/logits.json")
