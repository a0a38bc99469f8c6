//! The model families wedge runs. Each family has one home that owns its config type, the
//! names of its weights in each source format, and its graph: [`bert`] (sentence encoders)
//! and [`llama`] (decoders: llama and qwen2). Graphs name weights as the Hugging Face
//! checkpoints do; a family maps other sources' names (GGUF) onto those.

pub mod bert;
pub mod llama;

pub use bert::{CLS_ROWS, EncoderConfig, NormKind, Pooling};
pub use llama::DecoderConfig;

use crate::error::{Error, Result};
use crate::graph::{Activation, Dim, Graph, Op};
use crate::quant::Weight;

/// A graph together with the shape of every weight it refers to.
#[derive(Clone, Debug)]
pub struct ModelGraph {
    /// The graph.
    pub graph: Graph,
    /// Expected shape of each entry of `graph.weights`.
    pub weight_shapes: Vec<Vec<usize>>,
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

pub(crate) fn dims() -> Vec<Dim> {
    vec![Dim::Var("batch".into()), Dim::Var("seq".into())]
}

/// Most layers a config may ask for: far past any released model (126 at most), far below
/// a graph that a config's number alone could make the loader spend minutes or gigabytes on.
pub const MAX_LAYERS: usize = 1024;

/// Most elements one weight may have (2^40 where `usize` allows): a config's sizes are checked
/// against it before any shape is multiplied out, so that no size computation overflows.
pub const MAX_WEIGHT_ELEMENTS: u64 = if (usize::MAX as u64) < (1 << 43) { usize::MAX as u64 / 8 } else { 1 << 40 };

/// Whether a weight of these dimensions stays within [`MAX_WEIGHT_ELEMENTS`].
pub(crate) fn fits(dims: &[usize]) -> bool {
    dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64)).is_some_and(|n| n <= MAX_WEIGHT_ELEMENTS)
}

pub(crate) struct Builder {
    pub(crate) g: Graph,
    pub(crate) shapes: Vec<Vec<usize>>,
    /// The weights by name (a graph of many layers refers to tens of thousands).
    index: std::collections::HashMap<String, crate::graph::WeightId>,
}

impl Builder {
    pub(crate) fn new() -> Builder {
        Builder { g: Graph::default(), shapes: Vec::new(), index: Default::default() }
    }

    pub(crate) fn finish(self) -> ModelGraph {
        ModelGraph { graph: self.g, weight_shapes: self.shapes }
    }

    pub(crate) fn w(&mut self, name: &str, shape: &[usize]) -> crate::graph::WeightId {
        if let Some(&id) = self.index.get(name) {
            return id;
        }
        let id = crate::graph::WeightId(self.g.weights.len() as u32);
        self.g.weights.push(name.to_string());
        self.shapes.push(shape.to_vec());
        self.index.insert(name.to_string(), id);
        id
    }

    pub(crate) fn linear(&mut self, x: crate::ValueId, prefix: &str, n: usize, k: usize, bias: bool) -> crate::ValueId {
        let weight = self.w(&format!("{prefix}.weight"), &[n, k]);
        let bias = bias.then(|| self.w(&format!("{prefix}.bias"), &[n]));
        self.g.push(Op::MatMul { weight, bias, act: Activation::None }, &[x])
    }

    pub(crate) fn layernorm(&mut self, x: crate::ValueId, prefix: &str, d: usize, eps: f32) -> crate::ValueId {
        let gamma = self.w(&format!("{prefix}.weight"), &[d]);
        let beta = self.w(&format!("{prefix}.bias"), &[d]);
        self.g.push(Op::LayerNorm { gamma, beta, eps }, &[x])
    }

    /// A LayerNorm (`.weight`, `.bias`) or an RMSNorm (`.weight`) named `prefix`, or `x` as
    /// it is.
    pub(crate) fn norm(
        &mut self,
        kind: NormKind,
        x: crate::ValueId,
        prefix: &str,
        d: usize,
        eps: f32,
    ) -> crate::ValueId {
        match kind {
            NormKind::Layer => self.layernorm(x, prefix, d, eps),
            NormKind::Rms => {
                let gamma = self.w(&format!("{prefix}.weight"), &[d]);
                self.g.push(Op::RmsNorm { gamma, eps }, &[x])
            }
            NormKind::None => x,
        }
    }
}

pub(crate) fn check(cond: bool, msg: &str) -> Result<()> {
    if cond { Ok(()) } else { Err(Error::Config(msg.to_string())) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::RopeMode;
    use crate::plan::{Plan, WeightInfo};
    use crate::quant::Format;

    /// A config's layer count alone cannot make the loader build a graph for minutes (found
    /// by the `wedge_structured` fuzz target: 21,725 layers took quadratic time to name).
    #[test]
    fn the_layer_count_is_bounded_and_large_graphs_build_in_linear_time() {
        let config = |layers: usize| {
            serde_json::json!({
                "activation": "gelu_erf", "hidden_size": 4, "intermediate_size": 4,
                "layer_norm_eps": 1e-12, "max_position_embeddings": 4, "normalize": true,
                "num_heads": 2, "num_layers": layers, "pooling": "mean", "type_vocab_size": 1, "vocab_size": 4
            })
        };
        let e = build(ENCODER, &config(1_000_000)).unwrap_err().to_string();
        assert!(e.contains("num_layers"), "{e}");
        let m = build(ENCODER, &config(MAX_LAYERS)).unwrap();
        assert_eq!(m.graph.weights.len(), 5 + 16 * MAX_LAYERS);
        assert_eq!(m.weight_shapes.len(), m.graph.weights.len());
    }

    /// Sizes whose products overflow are refused by name, not multiplied (found by the
    /// `wedge_structured` fuzz target: a decoder's num_heads × head_dim overflowed).
    #[test]
    fn sizes_whose_weights_overflow_are_refused() {
        let decoder = |num_heads: usize, head_dim: usize, vocab_size: usize| DecoderConfig {
            vocab_size,
            hidden_size: 8,
            intermediate_size: 16,
            num_layers: 1,
            num_heads,
            num_kv_heads: 1,
            head_dim,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_mode: RopeMode::Interleaved,
            rope_scaling: Default::default(),
            tie_word_embeddings: false,
            qkv_bias: false,
            context_length: 0,
        };
        decoder(2, 4, 32).build().unwrap();
        for (heads, head_dim, vocab) in [(1 << 40, 1 << 30, 32), (2, 1 << 62, 32), (2, 4, usize::MAX / 2)] {
            let e = decoder(heads, head_dim, vocab).build().unwrap_err().to_string();
            assert!(e.contains("too large"), "{e}");
        }
        let encoder = serde_json::json!({
            "activation": "gelu_erf", "hidden_size": 4, "intermediate_size": usize::MAX / 2,
            "layer_norm_eps": 1e-12, "max_position_embeddings": 4, "normalize": true,
            "num_heads": 2, "num_layers": 1, "pooling": "mean", "type_vocab_size": 1, "vocab_size": 4
        });
        let e = build(ENCODER, &encoder).unwrap_err().to_string();
        assert!(e.contains("too large"), "{e}");
    }

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
            norm: NormKind::Layer,
            norm_first: false,
            embedding_norm: NormKind::Layer,
            final_norm: NormKind::None,
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
            rope_scaling: Default::default(),
            tie_word_embeddings: true,
            qkv_bias: false,
            context_length: 0,
        };
        let m = dec.build().unwrap();
        let infos: Vec<_> =
            m.weight_shapes.iter().map(|s| WeightInfo { shape: s.clone(), format: Format::F32 }).collect();
        let p = Plan::compile(&m.graph, &infos, &vec![vec![1, 7]; 3]).unwrap();
        assert_eq!(p.fused_activations, 2);
    }
}
