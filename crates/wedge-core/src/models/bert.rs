//! BERT-style sentence encoders (learned positions, token types), with the Hugging Face
//! checkpoint's weight names: BERT's post-norm layers with LayerNorm, and the variants other
//! trainers make of the same stack (burn's `TransformerEncoder`): pre-norm layers, RMSNorm, no
//! norm on the embeddings, a norm after the last layer.

use serde::{Deserialize, Serialize};

use super::{Builder, ModelGraph, check, dims};
use crate::error::Result;
use crate::graph::{Activation, BinaryOp, Elem, Op};

/// The encoder input that CLS pooling reads: `[batch]` u32, the row of each sequence's first
/// token in the flattened `[batch·seq, hidden]` states (`i·seq` for sequence `i`).
pub const CLS_ROWS: &str = "cls_rows";

/// Pooling of a sentence encoder's token states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Masked mean over tokens.
    Mean,
    /// The first token's state (BERT's `[CLS]`).
    Cls,
}

/// A normalization of an encoder: of its layers, of its summed embeddings, after its last
/// layer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// LayerNorm: scale (`.weight`) and shift (`.bias`).
    #[default]
    Layer,
    /// RMSNorm: scale (`.weight`) only.
    Rms,
    /// None (not for the layers).
    None,
}

/// A BERT-style encoder (learned positions, token types; by default post-norm with
/// LayerNorm, as BERT). With `norm_first`, each layer normalizes the input of its attention
/// (with the `attention.output.LayerNorm` weights) and of its FFN (`output.LayerNorm`) and adds
/// the block's output to the unnormalized residual.
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
    /// The layers' norms: LayerNorm (BERT) or RMSNorm.
    #[serde(default)]
    pub norm: NormKind,
    /// Pre-norm layers instead of BERT's post-norm.
    #[serde(default)]
    pub norm_first: bool,
    /// The norm of the summed embeddings (`embeddings.LayerNorm`; BERT's is a LayerNorm).
    #[serde(default)]
    pub embedding_norm: NormKind,
    /// A norm of the last layer's output (`encoder.final_norm`), as pre-norm stacks often
    /// have; none by default.
    #[serde(default = "no_norm")]
    pub final_norm: NormKind,
}

fn no_norm() -> NormKind {
    NormKind::None
}

impl EncoderConfig {
    /// Builds the encoder graph. Inputs: `input_ids`, `token_type_ids`, `position_ids`,
    /// `attention_mask` (all `[batch, seq]` u32) and, with CLS pooling, [`CLS_ROWS`].
    /// Outputs: `last_hidden_state` and `embedding` `[batch, hidden]`.
    pub fn build(&self) -> Result<ModelGraph> {
        let (h, nh) = (self.hidden_size, self.num_heads);
        check(h > 0 && nh > 0 && h % nh == 0, "hidden_size must be a positive multiple of num_heads")?;
        check(self.vocab_size > 0 && self.num_layers > 0, "vocab_size and num_layers must be positive")?;
        check(self.num_layers <= super::MAX_LAYERS, "num_layers is over 1024")?;
        check(self.norm != NormKind::None, "the layers' norm must be layer or rms")?;
        let tables = [self.vocab_size, self.max_position_embeddings, self.type_vocab_size, self.intermediate_size, h];
        check(
            tables.iter().all(|&n| super::fits(&[n, h])),
            "sizes too large: a weight (vocab_size, max_position_embeddings, type_vocab_size, \
             intermediate_size or hidden_size by hidden_size) would pass 2^40 elements",
        )?;
        let d = h / nh;
        let mut b = Builder::new();
        let ids = b.g.input("input_ids", Elem::U32, dims());
        let types = b.g.input("token_type_ids", Elem::U32, dims());
        let pos = b.g.input("position_ids", Elem::U32, dims());
        let mask = b.g.input("attention_mask", Elem::U32, dims());
        let cls_rows = (self.pooling == Pooling::Cls).then(|| b.g.input(CLS_ROWS, Elem::U32, vec![dims()[0].clone()]));
        let we = b.w("embeddings.word_embeddings.weight", &[self.vocab_size, h]);
        let pe = b.w("embeddings.position_embeddings.weight", &[self.max_position_embeddings, h]);
        let te = b.w("embeddings.token_type_embeddings.weight", &[self.type_vocab_size, h]);
        let x = b.g.push(Op::Embedding { table: we }, &[ids]);
        let p = b.g.push(Op::Embedding { table: pe }, &[pos]);
        let t = b.g.push(Op::Embedding { table: te }, &[types]);
        let x = b.g.push(Op::Binary(BinaryOp::Add), &[x, p]);
        let x = b.g.push(Op::Binary(BinaryOp::Add), &[x, t]);
        let eps = self.layer_norm_eps;
        let mut x = b.norm(self.embedding_norm, x, "embeddings.LayerNorm", h, eps);
        for l in 0..self.num_layers {
            let pre = format!("encoder.layer.{l}");
            let (attn_norm, ffn_norm) =
                (format!("{pre}.attention.output.LayerNorm"), format!("{pre}.output.LayerNorm"));
            let a_in = if self.norm_first { b.norm(self.norm, x, &attn_norm, h, eps) } else { x };
            let q = b.linear(a_in, &format!("{pre}.attention.self.query"), h, h, true);
            let k = b.linear(a_in, &format!("{pre}.attention.self.key"), h, h, true);
            let v = b.linear(a_in, &format!("{pre}.attention.self.value"), h, h, true);
            let att =
                Op::Attention { heads: nh, kv_heads: nh, head_dim: d, causal: false, scale: 1.0 / (d as f32).sqrt() };
            let a = b.g.push(att, &[q, k, v, mask]);
            let a = b.linear(a, &format!("{pre}.attention.output.dense"), h, h, true);
            let a = b.g.push(Op::Binary(BinaryOp::Add), &[a, x]);
            x = if self.norm_first { a } else { b.norm(self.norm, a, &attn_norm, h, eps) };
            let f_in = if self.norm_first { b.norm(self.norm, x, &ffn_norm, h, eps) } else { x };
            let f = b.linear(f_in, &format!("{pre}.intermediate.dense"), self.intermediate_size, h, true);
            let f = b.g.push(Op::Act(self.activation), &[f]);
            let f = b.linear(f, &format!("{pre}.output.dense"), h, self.intermediate_size, true);
            let f = b.g.push(Op::Binary(BinaryOp::Add), &[f, x]);
            x = if self.norm_first { f } else { b.norm(self.norm, f, &ffn_norm, h, eps) };
        }
        x = b.norm(self.final_norm, x, "encoder.final_norm", h, eps);
        b.g.output("last_hidden_state", x);
        let pooled = match cls_rows {
            None => b.g.push(Op::MeanPool, &[x, mask]),
            Some(rows) => {
                let flat = b.g.push(Op::Reshape(vec![-1, h as i64]), &[x]);
                b.g.push(Op::SelectRows, &[flat, rows])
            }
        };
        let e = if self.normalize { b.g.push(Op::L2Normalize { eps: 1e-12 }, &[pooled]) } else { pooled };
        b.g.output("embedding", e);
        Ok(b.finish())
    }
}
