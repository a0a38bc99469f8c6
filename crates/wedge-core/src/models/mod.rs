//! Graph builders for the model families wedge runs, from the configuration a
//! `.wedge` package carries. Weight names follow the Hugging Face checkpoints.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::graph::{Activation, BinaryOp, Dim, Elem, Graph, Op, RopeMode};
use crate::quant::Weight;

/// A graph together with the shape of every weight it refers to.
#[derive(Clone, Debug)]
pub struct ModelGraph {
    /// The graph.
    pub graph: Graph,
    /// Expected shape of each entry of `graph.weights`.
    pub weight_shapes: Vec<Vec<usize>>,
}

/// Pooling of a sentence encoder's token states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Masked mean over tokens.
    Mean,
    /// The first token's state.
    Cls,
}

/// A BERT-style encoder (post-norm, learned positions, token types).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EncoderConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// FFN size.
    pub intermediate_size: usize,
    /// Learned positions.
    pub max_position_embeddings: usize,
    /// Token type vocabulary.
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f32,
    /// FFN activation.
    pub activation: Activation,
    /// Sentence pooling.
    pub pooling: Pooling,
    /// L2-normalize the pooled embedding.
    pub normalize: bool,
}

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

impl ModelGraph {
    /// Orders `tensors` as the graph's weight list, checking that each is present with the
    /// expected shape. Tensors the graph does not use are dropped.
    pub fn take_weights(&self, tensors: Vec<Weight>) -> Result<Vec<Weight>> {
        let mut by_name: std::collections::HashMap<String, Weight> =
            tensors.into_iter().map(|t| (t.name.clone(), t)).collect();
        self.graph
            .weights
            .iter()
            .zip(&self.weight_shapes)
            .map(|(name, shape)| {
                let w =
                    by_name.remove(name).ok_or_else(|| Error::Config(format!("the package has no tensor `{name}`")))?;
                if &w.shape != shape {
                    return Err(Error::Config(format!(
                        "tensor `{name}` has shape {:?}, the model needs {shape:?}",
                        w.shape
                    )));
                }
                Ok(w)
            })
            .collect()
    }
}

/// The graph for a package's architecture and config.
pub fn build(architecture: &str, config: &serde_json::Value) -> Result<ModelGraph> {
    let parse_err = |e: serde_json::Error| Error::Config(format!("{architecture} config: {e}"));
    match architecture {
        ENCODER => serde_json::from_value::<EncoderConfig>(config.clone()).map_err(parse_err)?.build(),
        DECODER => serde_json::from_value::<DecoderConfig>(config.clone()).map_err(parse_err)?.build(),
        other => {
            Err(Error::Config(format!("architecture `{other}` is not supported (supported: {ENCODER}, {DECODER})")))
        }
    }
}

/// Architecture name of [`EncoderConfig`] models.
pub const ENCODER: &str = "bert-encoder";
/// Architecture name of [`DecoderConfig`] models.
pub const DECODER: &str = "llama-decoder";

fn dims() -> Vec<Dim> {
    vec![Dim::Var("batch".into()), Dim::Var("seq".into())]
}

struct Builder {
    g: Graph,
    shapes: Vec<Vec<usize>>,
}

impl Builder {
    fn w(&mut self, name: &str, shape: &[usize]) -> crate::graph::WeightId {
        let id = self.g.weight(name);
        if self.shapes.len() <= id.0 as usize {
            self.shapes.push(shape.to_vec());
        }
        id
    }

    fn linear(&mut self, x: crate::ValueId, prefix: &str, n: usize, k: usize, bias: bool) -> crate::ValueId {
        let weight = self.w(&format!("{prefix}.weight"), &[n, k]);
        let bias = bias.then(|| self.w(&format!("{prefix}.bias"), &[n]));
        self.g.push(Op::MatMul { weight, bias, act: Activation::None }, &[x])
    }

    fn layernorm(&mut self, x: crate::ValueId, prefix: &str, d: usize, eps: f32) -> crate::ValueId {
        let gamma = self.w(&format!("{prefix}.weight"), &[d]);
        let beta = self.w(&format!("{prefix}.bias"), &[d]);
        self.g.push(Op::LayerNorm { gamma, beta, eps }, &[x])
    }
}

fn check(cond: bool, msg: &str) -> Result<()> {
    if cond { Ok(()) } else { Err(Error::Config(msg.to_string())) }
}

impl EncoderConfig {
    /// Builds the encoder graph. Inputs: `input_ids`, `token_type_ids`, `position_ids`,
    /// `attention_mask` (all `[batch, seq]` u32). Outputs: `last_hidden_state` and,
    /// with pooling, `embedding` `[batch, hidden]`.
    pub fn build(&self) -> Result<ModelGraph> {
        let (h, nh) = (self.hidden_size, self.num_heads);
        check(h > 0 && nh > 0 && h % nh == 0, "hidden_size must be a positive multiple of num_heads")?;
        check(self.vocab_size > 0 && self.num_layers > 0, "vocab_size and num_layers must be positive")?;
        let d = h / nh;
        let mut b = Builder { g: Graph::default(), shapes: Vec::new() };
        let ids = b.g.input("input_ids", Elem::U32, dims());
        let types = b.g.input("token_type_ids", Elem::U32, dims());
        let pos = b.g.input("position_ids", Elem::U32, dims());
        let mask = b.g.input("attention_mask", Elem::U32, dims());
        let we = b.w("embeddings.word_embeddings.weight", &[self.vocab_size, h]);
        let pe = b.w("embeddings.position_embeddings.weight", &[self.max_position_embeddings, h]);
        let te = b.w("embeddings.token_type_embeddings.weight", &[self.type_vocab_size, h]);
        let x = b.g.push(Op::Embedding { table: we }, &[ids]);
        let p = b.g.push(Op::Embedding { table: pe }, &[pos]);
        let t = b.g.push(Op::Embedding { table: te }, &[types]);
        let x = b.g.push(Op::Binary(BinaryOp::Add), &[x, p]);
        let x = b.g.push(Op::Binary(BinaryOp::Add), &[x, t]);
        let mut x = b.layernorm(x, "embeddings.LayerNorm", h, self.layer_norm_eps);
        for l in 0..self.num_layers {
            let pre = format!("encoder.layer.{l}");
            let q = b.linear(x, &format!("{pre}.attention.self.query"), h, h, true);
            let k = b.linear(x, &format!("{pre}.attention.self.key"), h, h, true);
            let v = b.linear(x, &format!("{pre}.attention.self.value"), h, h, true);
            let att =
                Op::Attention { heads: nh, kv_heads: nh, head_dim: d, causal: false, scale: 1.0 / (d as f32).sqrt() };
            let a = b.g.push(att, &[q, k, v, mask]);
            let a = b.linear(a, &format!("{pre}.attention.output.dense"), h, h, true);
            let a = b.g.push(Op::Binary(BinaryOp::Add), &[a, x]);
            x = b.layernorm(a, &format!("{pre}.attention.output.LayerNorm"), h, self.layer_norm_eps);
            let f = b.linear(x, &format!("{pre}.intermediate.dense"), self.intermediate_size, h, true);
            let f = b.g.push(Op::Act(self.activation), &[f]);
            let f = b.linear(f, &format!("{pre}.output.dense"), h, self.intermediate_size, true);
            let f = b.g.push(Op::Binary(BinaryOp::Add), &[f, x]);
            x = b.layernorm(f, &format!("{pre}.output.LayerNorm"), h, self.layer_norm_eps);
        }
        b.g.output("last_hidden_state", x);
        let pooled = match self.pooling {
            Pooling::Mean => b.g.push(Op::MeanPool, &[x, mask]),
            Pooling::Cls => {
                return Err(Error::Config("cls pooling is not supported yet; use mean".into()));
            }
        };
        let e = if self.normalize { b.g.push(Op::L2Normalize { eps: 1e-12 }, &[pooled]) } else { pooled };
        b.g.output("embedding", e);
        Ok(ModelGraph { graph: b.g, weight_shapes: b.shapes })
    }
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
        let mut b = Builder { g: Graph::default(), shapes: Vec::new() };
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
        Ok(ModelGraph { graph: b.g, weight_shapes: b.shapes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Plan, WeightInfo};
    use crate::quant::Format;

    #[test]
    fn encoder_and_decoder_plan() {
        let enc = EncoderConfig {
            vocab_size: 50,
            hidden_size: 32,
            num_layers: 2,
            num_heads: 4,
            intermediate_size: 64,
            max_position_embeddings: 16,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            activation: Activation::GeluErf,
            pooling: Pooling::Mean,
            normalize: true,
        };
        let m = enc.build().unwrap();
        let infos: Vec<_> =
            m.weight_shapes.iter().map(|s| WeightInfo { shape: s.clone(), format: Format::F32 }).collect();
        let p = Plan::compile(&m.graph, &infos, &vec![vec![2, 5]; 4]).unwrap();
        assert_eq!(p.fused_activations, 2);
        assert!(p.peak_activation_bytes < p.unplanned_activation_bytes);

        let dec = DecoderConfig {
            vocab_size: 40,
            hidden_size: 24,
            intermediate_size: 48,
            num_layers: 2,
            num_heads: 6,
            num_kv_heads: 2,
            head_dim: 4,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_mode: RopeMode::Interleaved,
            tie_word_embeddings: true,
        };
        let m = dec.build().unwrap();
        let infos: Vec<_> =
            m.weight_shapes.iter().map(|s| WeightInfo { shape: s.clone(), format: Format::F32 }).collect();
        let p = Plan::compile(&m.graph, &infos, &vec![vec![1, 7]; 3]).unwrap();
        assert_eq!(p.fused_activations, 2);
    }
}
