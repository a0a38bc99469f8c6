//! Decoders of the llama family (llama, SmolLM2, TinyLlama, Llama-3.x; qwen2 with its q/k/v
//! biases): pre-norm RMSNorm, rotary positions, SwiGLU, grouped KV heads.

use serde::{Deserialize, Serialize};

use super::{Builder, ModelGraph, check, dims};
use crate::error::Result;
use crate::graph::{Activation, BinaryOp, Elem, Op, RopeMode};

/// A llama-style decoder (pre-norm RMSNorm, rotary positions, SwiGLU, grouped KV heads).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecoderConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// FFN size.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Head size.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE frequency base.
    pub rope_theta: f32,
    /// RoPE pairing.
    pub rope_mode: RopeMode,
    /// Output head shares the token embedding.
    pub tie_word_embeddings: bool,
}

impl DecoderConfig {
    /// Builds the decoder graph over a whole sequence (causal). Inputs: `input_ids`,
    /// `positions`, `attention_mask` (all `[batch, seq]` u32). Output: `logits`
    /// `[batch, seq, vocab]`.
    pub fn build(&self) -> Result<ModelGraph> {
        let (h, nh, nkv, d) = (self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim);
        check(nh > 0 && nkv > 0 && nh % nkv == 0, "num_heads must be a positive multiple of num_kv_heads")?;
        check(d > 0 && d % 2 == 0, "head_dim must be even")?;
        check(self.vocab_size > 0 && self.num_layers > 0 && h > 0, "sizes must be positive")?;
        let mut b = Builder::new();
        let ids = b.g.input("input_ids", Elem::U32, dims());
        let pos = b.g.input("positions", Elem::U32, dims());
        let mask = b.g.input("attention_mask", Elem::U32, dims());
        let emb = b.w("model.embed_tokens.weight", &[self.vocab_size, h]);
        let mut x = b.g.push(Op::Embedding { table: emb }, &[ids]);
        let eps = self.rms_norm_eps;
        for l in 0..self.num_layers {
            let pre = format!("model.layers.{l}");
            let g1 = b.w(&format!("{pre}.input_layernorm.weight"), &[h]);
            let n = b.g.push(Op::RmsNorm { gamma: g1, eps }, &[x]);
            let q = b.linear(n, &format!("{pre}.self_attn.q_proj"), nh * d, h, false);
            let k = b.linear(n, &format!("{pre}.self_attn.k_proj"), nkv * d, h, false);
            let v = b.linear(n, &format!("{pre}.self_attn.v_proj"), nkv * d, h, false);
            let rope = |heads| Op::Rope { heads, head_dim: d, base: self.rope_theta, mode: self.rope_mode };
            let q = b.g.push(rope(nh), &[q, pos]);
            let k = b.g.push(rope(nkv), &[k, pos]);
            let att =
                Op::Attention { heads: nh, kv_heads: nkv, head_dim: d, causal: true, scale: 1.0 / (d as f32).sqrt() };
            let a = b.g.push(att, &[q, k, v, mask]);
            let a = b.linear(a, &format!("{pre}.self_attn.o_proj"), h, nh * d, false);
            x = b.g.push(Op::Binary(BinaryOp::Add), &[x, a]);
            let g2 = b.w(&format!("{pre}.post_attention_layernorm.weight"), &[h]);
            let n = b.g.push(Op::RmsNorm { gamma: g2, eps }, &[x]);
            let gate = b.linear(n, &format!("{pre}.mlp.gate_proj"), self.intermediate_size, h, false);
            let gate = b.g.push(Op::Act(Activation::Silu), &[gate]);
            let up = b.linear(n, &format!("{pre}.mlp.up_proj"), self.intermediate_size, h, false);
            let f = b.g.push(Op::Binary(BinaryOp::Mul), &[gate, up]);
            let f = b.linear(f, &format!("{pre}.mlp.down_proj"), h, self.intermediate_size, false);
            x = b.g.push(Op::Binary(BinaryOp::Add), &[x, f]);
        }
        let gn = b.w("model.norm.weight", &[h]);
        let x = b.g.push(Op::RmsNorm { gamma: gn, eps }, &[x]);
        let head = if self.tie_word_embeddings { "model.embed_tokens" } else { "lm_head" };
        let logits = b.linear(x, head, self.vocab_size, h, false);
        b.g.output("logits", logits);
        Ok(b.finish())
    }
}

