//! wedge-import: turns trained models into `.wedge` packages.
//!
//! Today: a Hugging Face folder holding a BERT encoder (`config.json`,
//! `model.safetensors`, `tokenizer.json`, and the sentence-transformers files
//! `modules.json`, `1_Pooling/config.json`, `sentence_bert_config.json`).
//! The tokenizer, pooling, normalization and maximum sequence length travel in
//! the package. Weights are quantized with wedge-core's formats. Also language models of the
//! llama family (llama, qwen2) from GGUF files ([`import_gguf`]) and Hugging Face folders
//! ([`import_hf_decoder`]).
//!
//! It depends on wedge-core only, and reads files: it is not built for wasm32.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::type_complexity))]

mod auto;
mod decoder;

pub use auto::{
    AutoChoice, Budget, CALIBRATION_TEXTS, Scores, auto_select, calibration_texts, cosine, is_candidate, scores,
};
pub use decoder::{DecoderQuant, import_gguf, import_hf_decoder, is_hf_decoder};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use thiserror::Error;
use wedge_core::graph::Activation;
use wedge_core::models::{ENCODER, EncoderConfig, Pooling};
use wedge_core::package::Package;
use wedge_core::quant::{Format, Weight};

/// Errors from importing.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ImportError {
    /// Required files are missing.
    #[error("{dir} is not a Hugging Face model folder wedge can import: missing {missing}")]
    Missing {
        /// The folder.
        dir: String,
        /// The files that are not there.
        missing: String,
    },
    /// The model is of a kind wedge does not import.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A JSON file is malformed.
    #[error("{path}: {msg}")]
    Json {
        /// The file.
        path: String,
        /// What is wrong.
        msg: String,
    },
    /// A weight is missing, malformed or of the wrong shape.
    #[error("{0}")]
    Tensor(String),
    /// Quantization or packaging failed.
    #[error(transparent)]
    Core(#[from] wedge_core::Error),
}

type Result<T> = std::result::Result<T, ImportError>;

/// How to store the weights.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportOptions {
    /// Format of the encoder's linear layers (the matmul weights).
    pub linear: Format,
    /// Format of the embedding tables.
    pub embeddings: Format,
    /// Per-tensor overrides by name (mixed precision).
    pub overrides: BTreeMap<String, Format>,
}

impl ImportOptions {
    /// Linears in `format`, embedding tables in f32 (or f16 when `format` is f16).
    pub fn uniform(format: Format) -> ImportOptions {
        let embeddings = if format == Format::F16 { Format::F16 } else { Format::F32 };
        ImportOptions { linear: format, embeddings, overrides: BTreeMap::new() }
    }
}

/// Architecture name written into packages of imported encoders.
pub const ARCHITECTURE: &str = ENCODER;

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| ImportError::Io { path: path.display().to_string(), source })
}

fn read_json(path: &Path) -> Result<Value> {
    let bytes = read(path)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ImportError::Json { path: path.display().to_string(), msg: e.to_string() })
}

fn field<'a>(cfg: &'a Value, path: &Path, name: &str) -> Result<&'a Value> {
    cfg.get(name).ok_or_else(|| ImportError::Json { path: path.display().to_string(), msg: format!("no `{name}`") })
}

fn usize_field(cfg: &Value, path: &Path, name: &str) -> Result<usize> {
    field(cfg, path, name)?
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| ImportError::Json { path: path.display().to_string(), msg: format!("`{name}` is not a number") })
}

/// A named f32 tensor: name, shape, values.
pub type F32Tensor = (String, Vec<usize>, Vec<f32>);

/// What the importer learned from a folder before touching the weights.
#[derive(Clone, Debug)]
pub struct HfEncoder {
    /// The folder.
    pub dir: PathBuf,
    /// The encoder configuration.
    pub config: EncoderConfig,
    /// Longest input in tokens (sentence-transformers' `max_seq_length`).
    pub max_seq_length: usize,
    /// `tokenizer.json` as shipped.
    pub tokenizer: Vec<u8>,
}

/// Reads the configuration files of a Hugging Face BERT folder.
pub fn inspect_hf_folder(dir: &Path) -> Result<HfEncoder> {
    let missing: Vec<&str> =
        ["config.json", "model.safetensors", "tokenizer.json"].into_iter().filter(|f| !dir.join(f).is_file()).collect();
    if !missing.is_empty() {
        return Err(ImportError::Missing { dir: dir.display().to_string(), missing: missing.join(", ") });
    }
    let cfg_path = dir.join("config.json");
    let cfg = read_json(&cfg_path)?;
    let archs: Vec<&str> = cfg
        .get("architectures")
        .and_then(Value::as_array)
        .map_or(Vec::new(), |a| a.iter().filter_map(Value::as_str).collect());
    let model_type = cfg.get("model_type").and_then(Value::as_str).unwrap_or("");
    if model_type != "bert" && !archs.iter().any(|a| a.starts_with("Bert")) {
        return Err(ImportError::Unsupported(format!(
            "architecture {archs:?} (model_type `{model_type}`); supported: BertModel (model_type `bert`)"
        )));
    }
    let act = match cfg.get("hidden_act").and_then(Value::as_str).unwrap_or("gelu") {
        "gelu" => Activation::GeluErf,
        "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
        "relu" => Activation::Relu,
        other => {
            return Err(ImportError::Unsupported(format!("hidden_act `{other}` (supported: gelu, gelu_new, relu)")));
        }
    };
    if let Some(p) = cfg.get("position_embedding_type").and_then(Value::as_str)
        && p != "absolute"
    {
        return Err(ImportError::Unsupported(format!("position_embedding_type `{p}` (supported: absolute)")));
    }
    let max_pos = usize_field(&cfg, &cfg_path, "max_position_embeddings")?;

    // sentence-transformers: pooling, normalization, sequence length
    let (mut pooling, mut normalize) = (Pooling::Mean, false);
    let modules_path = dir.join("modules.json");
    if modules_path.is_file() {
        let modules = read_json(&modules_path)?;
        for m in modules.as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let ty = m.get("type").and_then(Value::as_str).unwrap_or("");
            let sub = m.get("path").and_then(Value::as_str).unwrap_or("");
            if ty.ends_with("models.Normalize") {
                normalize = true;
            } else if ty.ends_with("models.Pooling") {
                let p = dir.join(sub).join("config.json");
                let pc = read_json(&p)?;
                let on = |k: &str| pc.get(k).and_then(Value::as_bool).unwrap_or(false);
                pooling = if on("pooling_mode_mean_tokens") {
                    Pooling::Mean
                } else if on("pooling_mode_cls_token") {
                    Pooling::Cls
                } else {
                    return Err(ImportError::Unsupported(format!(
                        "{}: only mean or cls pooling is supported",
                        p.display()
                    )));
                };
            }
        }
    }
    let tokenizer = read(&dir.join("tokenizer.json"))?;
    let st_path = dir.join("sentence_bert_config.json");
    let max_seq_length = if st_path.is_file() {
        usize_field(&read_json(&st_path)?, &st_path, "max_seq_length")?
    } else {
        // without sentence-transformers settings, the tokenizer's own truncation decides
        let tok: Value = serde_json::from_slice(&tokenizer).unwrap_or(Value::Null);
        tok.pointer("/truncation/max_length").and_then(Value::as_u64).map_or(max_pos, |v| v as usize)
    }
    .min(max_pos);
    let config = EncoderConfig {
        vocab_size: usize_field(&cfg, &cfg_path, "vocab_size")?,
        hidden_size: usize_field(&cfg, &cfg_path, "hidden_size")?,
        num_layers: usize_field(&cfg, &cfg_path, "num_hidden_layers")?,
        num_heads: usize_field(&cfg, &cfg_path, "num_attention_heads")?,
        intermediate_size: usize_field(&cfg, &cfg_path, "intermediate_size")?,
        max_position_embeddings: max_pos,
        type_vocab_size: usize_field(&cfg, &cfg_path, "type_vocab_size")?,
        layer_norm_eps: cfg.get("layer_norm_eps").and_then(Value::as_f64).unwrap_or(1e-12) as f32,
        activation: act,
        pooling,
        normalize,
        norm: Default::default(),
        norm_first: false,
        embedding_norm: Default::default(),
        final_norm: wedge_core::models::NormKind::None,
    };
    Ok(HfEncoder { dir: dir.to_path_buf(), config, max_seq_length, tokenizer })
}

fn to_f32(name: &str, view: &safetensors::tensor::TensorView<'_>) -> Result<Vec<f32>> {
    use safetensors::Dtype;
    let d = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        other => return Err(unsupported_dtype(name, other)),
    })
}

/// The error for a tensor of a type the importers do not read.
fn unsupported_dtype(name: &str, dtype: safetensors::Dtype) -> ImportError {
    ImportError::Tensor(format!("tensor `{name}` has dtype {dtype:?}; supported: F32, F16, BF16"))
}

/// The f32 weights of an encoder folder, named and ordered as the encoder graph wants them.
pub fn load_f32_weights(enc: &HfEncoder) -> Result<Vec<F32Tensor>> {
    let path = enc.dir.join("model.safetensors");
    let bytes = read(&path)?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| ImportError::Tensor(format!("{}: {e}", path.display())))?;
    let mg = enc.config.build()?;
    let mut out = Vec::with_capacity(mg.graph.weights.len());
    for (name, shape) in mg.graph.weights.iter().zip(&mg.weight_shapes) {
        let view = st
            .tensor(name)
            .or_else(|_| st.tensor(&format!("bert.{name}")))
            .map_err(|_| ImportError::Tensor(format!("{}: no tensor `{name}` (nor `bert.{name}`)", path.display())))?;
        if view.shape() != shape.as_slice() {
            return Err(ImportError::Tensor(format!(
                "tensor `{name}` has shape {:?}, config.json implies {shape:?}",
                view.shape()
            )));
        }
        out.push((name.clone(), shape.clone(), to_f32(name, &view)?));
    }
    Ok(out)
}

/// True for the matmul weights of the encoder layers.
pub fn is_linear(name: &str, shape: &[usize]) -> bool {
    shape.len() == 2 && name.starts_with("encoder.layer.") && name.ends_with(".weight")
}

/// The format `opts` gives a tensor.
pub fn format_for(opts: &ImportOptions, name: &str, shape: &[usize]) -> Format {
    if let Some(f) = opts.overrides.get(name) {
        return *f;
    }
    if is_linear(name, shape) {
        opts.linear
    } else if shape.len() == 2 {
        opts.embeddings
    } else {
        Format::F32
    }
}

/// Builds a package from an inspected folder and its f32 weights.
pub fn package(
    enc: &HfEncoder,
    weights: &[F32Tensor],
    opts: &ImportOptions,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<Package> {
    let tensors = quantize(weights, opts, progress)?;
    let mut config = serde_json::to_value(&enc.config).map_err(|e| ImportError::Tensor(e.to_string()))?;
    if let Some(obj) = config.as_object_mut() {
        obj.insert("max_seq_length".into(), Value::from(enc.max_seq_length));
    }
    let source = enc.dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let metadata = precision_metadata(&source, &format!("wedge-import {}", env!("CARGO_PKG_VERSION")), opts);
    let mut assets = BTreeMap::new();
    assets.insert("tokenizer.json".to_string(), enc.tokenizer.clone());
    Ok(Package { architecture: ARCHITECTURE.to_string(), config, metadata, tensors, assets })
}

/// Every weight in the format `opts` gives it, in order.
pub fn quantize(
    weights: &[F32Tensor],
    opts: &ImportOptions,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<Vec<Weight>> {
    let mut tensors = Vec::with_capacity(weights.len());
    for (i, (name, shape, values)) in weights.iter().enumerate() {
        progress(i, weights.len(), name);
        tensors.push(Weight::quantize(name, shape, values, format_for(opts, name, shape))?);
    }
    progress(weights.len(), weights.len(), "");
    Ok(tensors)
}

/// A package's metadata: where it came from, what made it, and its precision (the linears'
/// format, and how many tensors of each format when `opts` mixes them).
pub fn precision_metadata(source: &str, converter: &str, opts: &ImportOptions) -> BTreeMap<String, String> {
    let mut metadata = BTreeMap::new();
    metadata.insert("source".to_string(), source.to_string());
    metadata.insert("converter".to_string(), converter.to_string());
    metadata.insert("linear_format".to_string(), opts.linear.to_string());
    if !opts.overrides.is_empty() {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for f in opts.overrides.values() {
            *counts.entry(f.to_string()).or_default() += 1;
        }
        let mix: Vec<String> = counts.iter().map(|(f, n)| format!("{n}x {f}")).collect();
        metadata.insert("mixed_precision".to_string(), mix.join(", "));
    }
    metadata
}

/// Imports a Hugging Face BERT folder with `opts`.
pub fn import_hf_folder(
    dir: &Path,
    opts: &ImportOptions,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<Package> {
    let enc = inspect_hf_folder(dir)?;
    let weights = load_f32_weights(&enc)?;
    package(&enc, &weights, opts, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_and_unsupported_architectures_are_named() {
        let dir = std::env::temp_dir().join(format!("wedge-import-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = inspect_hf_folder(&dir).unwrap_err().to_string();
        assert!(
            err.contains("config.json") && err.contains("model.safetensors") && err.contains("tokenizer.json"),
            "{err}"
        );
        std::fs::write(dir.join("config.json"), r#"{"architectures":["GPT2LMHeadModel"],"model_type":"gpt2"}"#)
            .unwrap();
        std::fs::write(dir.join("model.safetensors"), b"").unwrap();
        std::fs::write(dir.join("tokenizer.json"), b"{}").unwrap();
        let err = inspect_hf_folder(&dir).unwrap_err().to_string();
        assert!(err.contains("GPT2LMHeadModel") && err.contains("BertModel"), "{err}");
        std::fs::write(dir.join("config.json"), b"{not json").unwrap();
        let err = inspect_hf_folder(&dir).unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
