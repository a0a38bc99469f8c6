"""Writes `types.gguf`, the GGUF fixture of wedge-core's reader tests, with llama.cpp's own
Python package (`pip install gguf==0.19.0 numpy`):

- metadata of every GGUF value type, arrays of numbers, strings and arrays included;
- for every tensor type wedge reads, `<type>.q`: three rows of random blocks (every bit pattern
  of the values, finite f16 scales), and `<type>.want`: the same values as F32, dequantized by
  `gguf.quants` (llama.cpp's reference definitions in numpy).

Run from the repository root: python3 tests/data/gguf/make_fixtures.py
"""
import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

OUT = "tests/data/gguf/types.gguf"
rng = np.random.default_rng(20261204)

# byte offsets of the f16 scales (and minimums) in each block, which must stay finite
SCALES = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}

w = gguf.GGUFWriter(OUT, arch="test")
w.add_uint8("test.u8", 200)
w.add_int8("test.i8", -100)
w.add_uint16("test.u16", 60000)
w.add_int16("test.i16", -30000)
w.add_uint32("test.u32", 4_000_000_000)
w.add_int32("test.i32", -2_000_000_000)
w.add_float32("test.f32", 0.15625)
w.add_bool("test.bool", True)
w.add_string("test.string", "Grüße, 世界")
w.add_uint64("test.u64", 2**63 + 5)
w.add_int64("test.i64", -(2**62))
w.add_float64("test.f64", 1e-300)
w.add_array("test.strings", ["", "a", "ümlaut", "<|im_end|>"])
w.add_array("test.ints", [1, -2, 3])
w.add_array("test.floats", [0.5, -1.25])
w.add_array("test.nested", [[1, 2], [3]])

for ty in [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]:
    block_len, block_bytes = gguf.GGML_QUANT_SIZES[ty]
    cols = 512 if block_len == 256 else 64
    rows = 3
    if ty in SCALES:
        blocks = rng.integers(0, 256, size=(rows * cols // block_len, block_bytes), dtype=np.uint8)
        for at in SCALES[ty]:
            scale = rng.uniform(-0.05, 0.05, size=blocks.shape[0]).astype(np.float16)
            blocks[:, at:at + 2] = scale.view(np.uint8).reshape(-1, 2)
        q = blocks.reshape(rows, -1)
    else:
        q = gguf.quants.quantize(rng.standard_normal((rows, cols)).astype(np.float32) * 3, ty)
        if ty == T.F32:
            q = q.view(np.uint8)
    want = gguf.quants.dequantize(q, ty).astype(np.float32).reshape(rows, cols)
    w.add_tensor(f"{ty.name}.q", q, raw_dtype=ty)
    w.add_tensor(f"{ty.name}.want", want)

w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print(f"wrote {OUT}")
