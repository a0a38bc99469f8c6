//! Decoders of the llama family (llama, SmolLM2, TinyLlama, Llama-3.x; qwen2 with its q/k/v
//! biases): pre-norm RMSNorm, rotary positions, SwiGLU, grouped KV heads.
//!
//! The graphs name weights as Hugging Face checkpoints do; [`hf_name`] maps a GGUF file's
//! names onto them, and [`DecoderConfig::from_gguf`] reads the config from its metadata;
//! [`DecoderConfig::from_hf`] reads a Hugging Face `config.json`.

use serde::{Deserialize, Serialize};

use super::{Builder, ModelGraph, check, dims};
use crate::error::{Error, Result};
use crate::gguf::{Gguf, TensorInfo};
use crate::graph::{Activation, BinaryOp, Dim, Elem, Op, RopeMode, RopeScaling, StateElem, ValueId};
use crate::quant::Format;

/// GGUF architectures this family reads.
pub const GGUF_ARCHITECTURES: [&str; 2] = ["llama", "qwen2"];

/// Hugging Face `architectures` this family reads (`model_type` `llama`, `qwen2`).
pub const HF_ARCHITECTURES: [&str; 2] = ["LlamaForCausalLM", "Qwen2ForCausalLM"];

/// The divisors of Llama 3's RoPE frequencies (`rope_type = llama3`), as transformers computes
/// them: wavelengths above `original / low` stretched by `factor`, below `original / high`
/// kept, and those between blended smoothly.
pub fn llama3_rope_factors(head_dim: usize, theta: f64, factor: f64, low: f64, high: f64, original: f64) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            let inv = theta.powf(-((2 * i) as f64) / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / inv;
            if wavelen < original / high {
                1.0
            } else if wavelen > original / low {
                factor as f32
            } else {
                let smooth = (original / wavelen - low) / (high - low);
                (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
            }
        })
        .collect()
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
    /// RoPE frequency scaling.
    #[serde(default)]
    pub rope_scaling: RopeScaling,
    /// Output head shares the token embedding.
    pub tie_word_embeddings: bool,
    /// Biases on the query, key and value projections (qwen2).
    #[serde(default)]
    pub qkv_bias: bool,
    /// Positions the model was trained for (0: not stated).
    #[serde(default)]
    pub context_length: usize,
}

/// Inputs of the stateful decoder graph ([`DecoderConfig::build_cached`]), in order: every
/// token of a step (from any number of sequences) as a flat list, with its position and the
/// index of its sequence's rows in the caches, and the tokens whose logits are wanted.
pub const CACHED_INPUTS: [&str; 4] = ["input_ids", "positions", "seqs", "logit_rows"];

/// The name this family gives GGUF's `rope_freqs.weight`, the per-frequency divisors of Llama
/// 3's RoPE: [`DecoderConfig::take_rope_freqs`] moves it from the weights into the config.
pub const ROPE_FREQS: &str = "rope_freqs";

/// The Hugging Face name of a GGUF tensor of this family (`blk.3.attn_q.weight` →
/// `model.layers.3.self_attn.q_proj.weight`), `None` for a name it does not know.
pub fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        "rope_freqs.weight" => Some(ROPE_FREQS),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, kind) = rest.rsplit_once('.')?;
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    matches!(kind, "weight" | "bias").then(|| format!("model.layers.{layer}.{hf}.{kind}"))
}

/// The asset of a `.wedge` decoder package that holds its vocabulary and chat template: a
/// GGUF file of the source's metadata alone ([`Gguf::metadata_only`]).
pub const VOCAB_ASSET: &str = "vocab.gguf";

/// The assets of a `.wedge` decoder package imported from a Hugging Face folder that hold its
/// vocabulary: the folder's `tokenizer.json` and `tokenizer_config.json`, as they are.
pub const TOKENIZER_ASSET: &str = "tokenizer.json";

/// See [`TOKENIZER_ASSET`].
pub const TOKENIZER_CONFIG_ASSET: &str = "tokenizer_config.json";

/// Every tensor of a GGUF file this family uses, repacked exactly ([`Gguf::weight`]) under its
/// Hugging Face name (`rope_freqs` as [`ROPE_FREQS`]); tensors it does not use are left out.
pub fn weights_from_gguf(g: &Gguf<'_>) -> Result<Vec<crate::quant::Weight>> {
    used_tensors(g).map(|(t, name)| Ok(crate::quant::Weight { name, ..g.weight(t)? })).collect()
}

/// The tensors of a GGUF file this family uses, in file order, each with its Hugging Face name
/// (for a caller that reads them one at a time, [`Gguf::weight_from`]).
pub fn used_tensors<'g>(g: &'g Gguf<'_>) -> impl Iterator<Item = (&'g TensorInfo, String)> {
    g.tensors.iter().filter_map(|t| hf_name(&t.name).map(|name| (t, name)))
}

impl DecoderConfig {
    /// The config of a GGUF file of architecture `llama` or `qwen2`, from its metadata and
    /// tensor table (a missing `output.weight` means a tied head).
    pub fn from_gguf(g: &Gguf<'_>) -> Result<DecoderConfig> {
        let arch = g.str("general.architecture")?;
        if !GGUF_ARCHITECTURES.contains(&arch) {
            return Err(Error::Config(format!(
                "GGUF architecture `{arch}` is not supported (supported: {})",
                GGUF_ARCHITECTURES.join(", ")
            )));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let size = |k: &str| -> Result<usize> {
            let v = g.u64(&key(k))?;
            usize::try_from(v)
                .ok()
                .filter(|v| *v <= 1 << 24)
                .ok_or_else(|| Error::Config(format!("{} = {v} is out of range", key(k))))
        };
        let hidden = size("embedding_length")?;
        let heads = size("attention.head_count")?;
        let kv_heads = match g.get(&key("attention.head_count_kv")) {
            Some(_) => size("attention.head_count_kv")?,
            None => heads,
        };
        check(heads > 0 && hidden % heads == 0, "embedding_length must be a multiple of attention.head_count")?;
        let head_dim = match g.get(&key("attention.key_length")) {
            Some(_) => size("attention.key_length")?,
            None => hidden / heads,
        };
        let rope_scaling = match g.get(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
            None | Some("none") => RopeScaling::None,
            Some("linear") => {
                let factor = g.f64(&key("rope.scaling.factor"))? as f32;
                check(factor.is_finite() && factor > 0.0, "rope.scaling.factor must be above 0")?;
                RopeScaling::Linear { factor }
            }
            Some(other) => {
                return Err(Error::Config(format!(
                    "{} = {other}: this RoPE scaling is not supported (supported: none, linear, and llama3's \
                     rope_freqs tensor)",
                    key("rope.scaling.type")
                )));
            }
        };
        let vocab = g
            .tensor("token_embd.weight")
            .map(|t| t.shape()[0])
            .ok_or_else(|| Error::Config("the file has no token_embd.weight".into()))?;
        let rope_theta = match g.get(&key("rope.freq_base")) {
            Some(_) => g.f64(&key("rope.freq_base"))? as f32,
            None => 10000.0,
        };
        Ok(DecoderConfig {
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: size("feed_forward_length")?,
            num_layers: size("block_count")?,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            rms_norm_eps: g.f64(&key("attention.layer_norm_rms_epsilon"))? as f32,
            rope_theta,
            // llama.cpp's converter permutes llama's q/k rows for adjacent pairs; qwen2 keeps
            // the checkpoint's halves (NeoX)
            rope_mode: if arch == "llama" { RopeMode::Interleaved } else { RopeMode::Half },
            rope_scaling,
            tie_word_embeddings: g.tensor("output.weight").is_none(),
            qkv_bias: g.tensor("blk.0.attn_q.bias").is_some(),
            context_length: size("context_length").unwrap_or(0),
        })
    }

    /// The config of a Hugging Face `config.json` of `LlamaForCausalLM` or `Qwen2ForCausalLM`
    /// (their weights are not permuted as GGUF's llama ones are: RoPE pairs `(i, i + d/2)`).
    pub fn from_hf(cfg: &serde_json::Value) -> Result<DecoderConfig> {
        let archs: Vec<&str> = cfg
            .get("architectures")
            .and_then(|v| v.as_array())
            .map_or(Vec::new(), |a| a.iter().filter_map(|v| v.as_str()).collect());
        let model_type = cfg.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
        if !matches!(model_type, "llama" | "qwen2") {
            return Err(Error::Config(format!(
                "config.json: architecture {archs:?} (model_type `{model_type}`) is not supported (supported: {})",
                HF_ARCHITECTURES.join(", ")
            )));
        }
        let num = |k: &str| -> Result<f64> {
            cfg.get(k)
                .and_then(|v| v.as_f64())
                .ok_or_else(|| Error::Config(format!("config.json: `{k}` is missing or not a number")))
        };
        let size = |k: &str| -> Result<usize> {
            let v = num(k)?;
            (v >= 0.0 && v.fract() == 0.0 && v <= f64::from(1u32 << 24))
                .then_some(v as usize)
                .ok_or_else(|| Error::Config(format!("config.json: `{k}` = {v} is out of range")))
        };
        let opt_size = |k: &str, default: usize| match cfg.get(k) {
            None | Some(serde_json::Value::Null) => Ok(default),
            Some(_) => size(k),
        };
        let (hidden, heads) = (size("hidden_size")?, size("num_attention_heads")?);
        check(heads > 0 && hidden % heads == 0, "hidden_size must be a multiple of num_attention_heads")?;
        let head_dim = opt_size("head_dim", hidden / heads)?;
        let rope_theta = if cfg.get("rope_theta").is_some() { num("rope_theta")? } else { 10000.0 };
        let rope_scaling = match cfg.get("rope_scaling") {
            None | Some(serde_json::Value::Null) => RopeScaling::None,
            Some(s) => {
                let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(|v| v.as_str()).unwrap_or("");
                let get = |k: &str| {
                    s.get(k).and_then(|v| v.as_f64()).filter(|v| v.is_finite() && *v > 0.0).ok_or_else(|| {
                        Error::Config(format!("config.json: rope_scaling `{k}` is missing or not above 0"))
                    })
                };
                match kind {
                    "default" => RopeScaling::None,
                    "linear" => RopeScaling::Linear { factor: get("factor")? as f32 },
                    "llama3" => {
                        let (low, high) = (get("low_freq_factor")?, get("high_freq_factor")?);
                        check(high > low, "rope_scaling high_freq_factor must exceed low_freq_factor")?;
                        RopeScaling::Factors(llama3_rope_factors(
                            head_dim,
                            rope_theta,
                            get("factor")?,
                            low,
                            high,
                            get("original_max_position_embeddings")?,
                        ))
                    }
                    other => {
                        return Err(Error::Config(format!(
                            "config.json: rope_scaling type `{other}` is not supported (supported: default, linear, \
                             llama3)"
                        )));
                    }
                }
            }
        };
        if cfg.get("attention_bias").and_then(|v| v.as_bool()) == Some(true) {
            return Err(Error::Config("config.json: llama's attention_bias is not supported".into()));
        }
        let config = DecoderConfig {
            vocab_size: size("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: size("intermediate_size")?,
            num_layers: size("num_hidden_layers")?,
            num_heads: heads,
            num_kv_heads: opt_size("num_key_value_heads", heads)?,
            head_dim,
            rms_norm_eps: if cfg.get("rms_norm_eps").is_some() { num("rms_norm_eps")? as f32 } else { 1e-6 },
            rope_theta: rope_theta as f32,
            rope_mode: RopeMode::Half,
            rope_scaling,
            tie_word_embeddings: cfg.get("tie_word_embeddings").and_then(|v| v.as_bool()).unwrap_or(false),
            // (Qwen2's attention always has them)
            qkv_bias: model_type == "qwen2",
            context_length: opt_size("max_position_embeddings", 0)?,
        };
        config.check()?;
        Ok(config)
    }

    /// Moves the [`ROPE_FREQS`] weight, when `weights` holds one, into the config as
    /// [`RopeScaling::Factors`] (it must be an f32/f16 vector of `head_dim / 2` values).
    pub fn take_rope_freqs(&mut self, weights: &mut Vec<crate::quant::Weight>) -> Result<()> {
        let Some(at) = weights.iter().position(|w| w.name == ROPE_FREQS) else { return Ok(()) };
        let w = weights.remove(at);
        let want = self.head_dim / 2;
        check(
            w.shape == [want] && matches!(w.format, Format::F32 | Format::F16 | Format::Bf16),
            "rope_freqs must be a float vector of head_dim / 2 values",
        )?;
        if self.rope_scaling != RopeScaling::None {
            return Err(Error::Config("rope_freqs together with rope.scaling.type is not supported".into()));
        }
        self.rope_scaling = RopeScaling::Factors(w.to_f32());
        Ok(())
    }

    fn check(&self) -> Result<()> {
        let (h, nh, nkv, d) = (self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim);
        check(nh > 0 && nkv > 0 && nh % nkv == 0, "num_heads must be a positive multiple of num_kv_heads")?;
        check(d > 0 && d % 2 == 0, "head_dim must be even")?;
        check(self.num_layers <= super::MAX_LAYERS, "num_layers is over 1024")?;
        check(self.vocab_size > 0 && self.num_layers > 0 && h > 0, "sizes must be positive")?;
        let (q, kv) = (nh.saturating_mul(d), nkv.saturating_mul(d));
        let weights = [[q, h], [kv, h], [self.vocab_size, h], [self.intermediate_size, h]];
        check(
            weights.iter().all(|w| super::fits(w)),
            "sizes too large: a weight (num_heads × head_dim, num_kv_heads × head_dim, vocab_size or \
             intermediate_size by hidden_size) would pass 2^40 elements",
        )
    }

    /// Builds the decoder graph over a whole sequence (causal). Inputs: `input_ids`,
    /// `positions`, `attention_mask` (all `[batch, seq]` u32). Output: `logits`
    /// `[batch, seq, vocab]`.
    pub fn build(&self) -> Result<ModelGraph> {
        self.check()?;
        let mut b = Builder::new();
        let ids = b.g.input("input_ids", Elem::U32, dims());
        let pos = b.g.input("positions", Elem::U32, dims());
        let mask = b.g.input("attention_mask", Elem::U32, dims());
        let (nh, nkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let att = Op::Attention { heads: nh, kv_heads: nkv, head_dim: d, causal: true, scale: 1.0 / (d as f32).sqrt() };
        let x = self.layers(&mut b, ids, pos, |b, _, q, k, v| b.g.push(att.clone(), &[q, k, v, mask]));
        let logits = self.head(&mut b, x);
        b.g.output("logits", logits);
        Ok(b.finish())
    }

    /// Builds the stateful decoder: one run is one step over any tokens of any sequences,
    /// reading and extending key/value caches (states `layers.{l}.k` and `.v`, each
    /// `[seqs, ctx, kv_heads·head_dim]` in `kv`). Inputs ([`CACHED_INPUTS`]): `input_ids`,
    /// `positions` and `seqs` (`[tokens]` u32), `logit_rows` (`[rows]` u32, indices into the
    /// step's tokens). Output: `logits` `[rows, vocab]`, only for the rows asked for.
    pub fn build_cached(&self, kv: StateElem) -> Result<ModelGraph> {
        self.check()?;
        let mut b = Builder::new();
        let flat = || vec![Dim::Var("tokens".into())];
        let ids = b.g.input(CACHED_INPUTS[0], Elem::U32, flat());
        let pos = b.g.input(CACHED_INPUTS[1], Elem::U32, flat());
        let seqs = b.g.input(CACHED_INPUTS[2], Elem::U32, flat());
        let rows = b.g.input(CACHED_INPUTS[3], Elem::U32, vec![Dim::Var("rows".into())]);
        let (nh, nkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let cache_dims = || vec![Dim::Var("seqs".into()), Dim::Var("ctx".into()), Dim::Fixed(nkv * d)];
        let x = self.layers(&mut b, ids, pos, |b, l, q, k, v| {
            let k_cache = b.g.state(&format!("layers.{l}.k"), kv, cache_dims());
            let v_cache = b.g.state(&format!("layers.{l}.v"), kv, cache_dims());
            let k = b.g.push(Op::CacheWrite { state: k_cache }, &[k, seqs, pos]);
            let v = b.g.push(Op::CacheWrite { state: v_cache }, &[v, seqs, pos]);
            let att = Op::CachedAttention {
                heads: nh,
                kv_heads: nkv,
                head_dim: d,
                scale: 1.0 / (d as f32).sqrt(),
                k_cache,
                v_cache,
            };
            b.g.push(att, &[q, k, v, seqs, pos])
        });
        let x = b.g.push(Op::SelectRows, &[x, rows]);
        let logits = self.head(&mut b, x);
        b.g.output("logits", logits);
        Ok(b.finish())
    }

    /// The embedding and every layer; `attend(b, layer, q, k, v)` adds the attention over
    /// the rotated queries and keys.
    fn layers(
        &self,
        b: &mut Builder,
        ids: ValueId,
        pos: ValueId,
        mut attend: impl FnMut(&mut Builder, usize, ValueId, ValueId, ValueId) -> ValueId,
    ) -> ValueId {
        let (h, nh, nkv, d) = (self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim);
        let emb = b.w("model.embed_tokens.weight", &[self.vocab_size, h]);
        let mut x = b.g.push(Op::Embedding { table: emb }, &[ids]);
        let eps = self.rms_norm_eps;
        let bias = self.qkv_bias;
        for l in 0..self.num_layers {
            let pre = format!("model.layers.{l}");
            let g1 = b.w(&format!("{pre}.input_layernorm.weight"), &[h]);
            let n = b.g.push(Op::RmsNorm { gamma: g1, eps }, &[x]);
            let q = b.linear(n, &format!("{pre}.self_attn.q_proj"), nh * d, h, bias);
            let k = b.linear(n, &format!("{pre}.self_attn.k_proj"), nkv * d, h, bias);
            let v = b.linear(n, &format!("{pre}.self_attn.v_proj"), nkv * d, h, bias);
            let rope = |heads| Op::Rope {
                heads,
                head_dim: d,
                base: self.rope_theta,
                mode: self.rope_mode,
                scaling: self.rope_scaling.clone(),
            };
            let q = b.g.push(rope(nh), &[q, pos]);
            let k = b.g.push(rope(nkv), &[k, pos]);
            let a = attend(b, l, q, k, v);
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
        x
    }

    /// The final norm and the output head.
    fn head(&self, b: &mut Builder, x: ValueId) -> ValueId {
        let h = self.hidden_size;
        let gn = b.w("model.norm.weight", &[h]);
        let x = b.g.push(Op::RmsNorm { gamma: gn, eps: self.rms_norm_eps }, &[x]);
        let head = if self.tie_word_embeddings { "model.embed_tokens" } else { "lm_head" };
        b.linear(x, head, self.vocab_size, h, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hugging_face_configs_are_read_and_what_is_not_supported_is_named() {
        let base = serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 100, "hidden_size": 64,
            "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 64}
        });
        let c = DecoderConfig::from_hf(&base).unwrap();
        assert_eq!((c.head_dim, c.num_kv_heads, c.rope_mode, c.qkv_bias), (16, 2, RopeMode::Half, false));
        // wavelengths 6.3 (kept), 32 (blended), 167 and longer (stretched 8-fold)
        let RopeScaling::Factors(f) = &c.rope_scaling else { panic!("{:?}", c.rope_scaling) };
        assert_eq!((f[0], f[2], f[7]), (1.0, 8.0, 8.0));
        assert!(f[1] > 1.0 && f[1] < 8.0, "{f:?}");
        let with = |k: &str, v: serde_json::Value| {
            let mut c = base.clone();
            c[k] = v;
            DecoderConfig::from_hf(&c).unwrap_err().to_string()
        };
        let e = with("model_type", "gpt2".into());
        assert!(e.contains("LlamaForCausalLM") && e.contains("Qwen2ForCausalLM"), "{e}");
        let e = with("rope_scaling", serde_json::json!({"rope_type": "yarn", "factor": 4.0}));
        assert!(e.contains("yarn") && e.contains("llama3"), "{e}");
        let e = with("hidden_size", serde_json::json!(-3));
        assert!(e.contains("hidden_size"), "{e}");
    }

    #[test]
    fn gguf_names_map_to_hugging_face_names() {
        assert_eq!(hf_name("blk.12.attn_q.bias").as_deref(), Some("model.layers.12.self_attn.q_proj.bias"));
        assert_eq!(hf_name("blk.0.ffn_down.weight").as_deref(), Some("model.layers.0.mlp.down_proj.weight"));
        assert_eq!(hf_name("output_norm.weight").as_deref(), Some("model.norm.weight"));
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
        assert_eq!(hf_name("blk.1.attn_q.scale"), None);
        assert_eq!(hf_name("rope_freqs.weight").as_deref(), Some(ROPE_FREQS));
        assert_eq!(hf_name("blk.0.attn_rot_embd"), None);
    }
}
