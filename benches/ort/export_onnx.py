"""Builds an ONNX graph of a Hugging Face BERT encoder (e.g. all-MiniLM-L6-v2) straight from
config.json + model.safetensors, with no PyTorch: the same graph transformers' BertModel computes
(embeddings + LayerNorm, per layer self-attention with the padding mask, erf GELU, post-LN),
output `last_hidden_state` [batch, seq, hidden], dynamic batch and sequence axes. Pooling stays
outside, as in ../shared/data/minilm/minilm_bench.py. Writes <out>_fp32.onnx and, with onnxruntime's
quantize_dynamic, <out>_int8.onnx (defaults) and <out>_int8_mm_pc.onnx (MatMul only, per channel).

    python benches/ort/export_onnx.py MODEL_DIR OUT_PREFIX
"""
import json, pathlib, sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file


def build(model_dir):
    cfg = json.loads((model_dir / "config.json").read_text())
    w = load_file(str(model_dir / "model.safetensors"))
    w = {k.removeprefix("bert."): v.astype(np.float32) for k, v in w.items()}
    H, heads, L = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
    D, eps = H // heads, cfg.get("layer_norm_eps", 1e-12)
    inits, nodes = [], []

    def init(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(op, ins, name, **attrs):
        nodes.append(helper.make_node(op, ins, [name], name=name, **attrs))
        return name

    def linear(x, prefix, name):
        wt = init(prefix + ".wt", w[prefix + ".weight"].T.copy())
        return node("Add", [node("MatMul", [x, wt], name + "_mm"), init(prefix + ".b", w[prefix + ".bias"])], name)

    def layernorm(x, prefix, name):
        return node("LayerNormalization", [x, init(prefix + ".g", w[prefix + ".weight"]),
                                           init(prefix + ".beta", w[prefix + ".bias"])], name, axis=-1, epsilon=eps)

    # embeddings
    word = node("Gather", [init("word", w["embeddings.word_embeddings.weight"]), "input_ids"], "e_word")
    typ = node("Gather", [init("type", w["embeddings.token_type_embeddings.weight"]), "token_type_ids"], "e_type")
    shape = node("Shape", ["input_ids"], "ids_shape")
    seq = node("Gather", [shape, init("one_i", np.array(1, np.int64))], "seq_len")
    pos_ids = node("Range", [init("zero_i", np.array(0, np.int64)), seq, init("step_i", np.array(1, np.int64))], "pos_ids")
    pos = node("Gather", [init("pos", w["embeddings.position_embeddings.weight"]), pos_ids], "e_pos")
    x = layernorm(node("Add", [node("Add", [word, typ], "e_wt"), pos], "e_sum"), "embeddings.LayerNorm", "e_ln")
    # additive mask [B, 1, 1, S]: 0 where attended, float min where padded (as transformers does)
    m = node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    m = node("Unsqueeze", [m, init("axes12", np.array([1, 2], np.int64))], "mask_4d")
    m = node("Mul", [node("Sub", [init("one_f", np.array(1.0, np.float32)), m], "mask_inv"),
                     init("fmin", np.array(np.finfo(np.float32).min, np.float32))], "mask_add")
    split = init("split_shape", np.array([0, 0, heads, D], np.int64))
    merge = init("merge_shape", np.array([0, 0, H], np.int64))
    scale = init("scale", np.array(1.0 / np.sqrt(D), np.float32))
    for i in range(L):
        p = f"encoder.layer.{i}."
        def heads_of(t, n):
            return node("Transpose", [node("Reshape", [t, split], f"l{i}_{n}_r")], f"l{i}_{n}_t", perm=[0, 2, 1, 3])
        q = heads_of(linear(x, p + "attention.self.query", f"l{i}_q"), "q")
        k = node("Transpose", [node("Reshape", [linear(x, p + "attention.self.key", f"l{i}_k"), split], f"l{i}_k_r")],
                 f"l{i}_k_t", perm=[0, 2, 3, 1])
        v = heads_of(linear(x, p + "attention.self.value", f"l{i}_v"), "v")
        s = node("Add", [node("Mul", [node("MatMul", [q, k], f"l{i}_qk"), scale], f"l{i}_qk_s"), m], f"l{i}_scores")
        ctx = node("MatMul", [node("Softmax", [s], f"l{i}_p", axis=-1), v], f"l{i}_ctx")
        ctx = node("Reshape", [node("Transpose", [ctx], f"l{i}_ctx_t", perm=[0, 2, 1, 3]), merge], f"l{i}_ctx_m")
        a = linear(ctx, p + "attention.output.dense", f"l{i}_ao")
        x = layernorm(node("Add", [a, x], f"l{i}_res1"), p + "attention.output.LayerNorm", f"l{i}_ln1")
        h = linear(x, p + "intermediate.dense", f"l{i}_fi")
        g = node("Erf", [node("Mul", [h, init(f"l{i}_isq2", np.array(1 / np.sqrt(2), np.float32))], f"l{i}_hs")], f"l{i}_erf")
        g = node("Mul", [node("Mul", [h, node("Add", [g, init(f"l{i}_one", np.array(1.0, np.float32))], f"l{i}_erf1")],
                              f"l{i}_g0"), init(f"l{i}_half", np.array(0.5, np.float32))], f"l{i}_gelu")
        o = linear(g, p + "output.dense", f"l{i}_fo")
        x = layernorm(node("Add", [o, x], f"l{i}_res2"), p + "output.LayerNorm", f"l{i}_ln2")
    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="out"))
    ins = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
           for n in ("input_ids", "attention_mask", "token_type_ids")]
    outs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", H])]
    graph = helper.make_graph(nodes, "bert", ins, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    # IR 8 (opset 17's own) rather than the newest the onnx package writes, so that every
    # onnxruntime loads it: onnxruntime-web 1.31 reads IR 13 at most
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main():
    model_dir, out = pathlib.Path(sys.argv[1]), sys.argv[2]
    onnx.save(build(model_dir), out + "_fp32.onnx")
    from onnxruntime.quantization import QuantType, quantize_dynamic
    quantize_dynamic(out + "_fp32.onnx", out + "_int8.onnx")
    quantize_dynamic(out + "_fp32.onnx", out + "_int8_mm_pc.onnx", op_types_to_quantize=["MatMul"],
                     per_channel=True, weight_type=QuantType.QInt8)
    print("wrote", out + "_{fp32,int8,int8_mm_pc}.onnx")


if __name__ == "__main__":
    main()
