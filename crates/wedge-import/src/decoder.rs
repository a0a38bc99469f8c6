//! Language models (the llama family: llama, qwen2) to `.wedge` decoder packages: from GGUF
//! files, their tensors kept exactly as the file stores them ([`Gguf::weight`]), and from
//! Hugging Face folders (`config.json`, safetensors, `tokenizer.json`), their tensors kept in
//! their own float type; either requantized only when asked ([`DecoderQuant::To`]).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use wedge_core::Package;
use wedge_core::gguf::Gguf;
use wedge_core::models::DECODER;
use wedge_core::models::llama::{self, DecoderConfig};
use wedge_core::quant::{Format, SUPER_BLOCK, Weight};

use crate::{ImportError, Result, read, read_json, unsupported_dtype};

/// How a decoder's weight matrices are stored in the package.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DecoderQuant {
    /// As the source stores them (exact).
    Keep,
    /// Every matrix requantized to this format (lossy), except those whose rows it cannot
    /// hold (a k-quant needs rows of whole super-blocks), which are kept. Vectors stay as
    /// they are.
    To(Format),
}

/// A package of a GGUF decoder: the config from the file's metadata, the tensors under their
/// Hugging Face names (as the file stores them, or requantized), and the vocabulary and chat
/// template as a metadata-only GGUF asset ([`llama::VOCAB_ASSET`]).
pub fn import_gguf(bytes: &[u8], source: &str, quant: DecoderQuant) -> Result<Package> {
    let g = Gguf::parse(bytes)?;
    let config = DecoderConfig::from_gguf(&g)?;
    let tensors = llama::weights_from_gguf(&g)?;
    let mut metadata = BTreeMap::new();
    if let Some(name) = g.get("general.name").and_then(|v| v.as_str()) {
        metadata.insert("name".to_string(), name.to_string());
    }
    metadata.insert("model_type".to_string(), g.str("general.architecture")?.to_string());
    let mut assets = BTreeMap::new();
    assets.insert(llama::VOCAB_ASSET.to_string(), g.metadata_only(bytes));
    finish(config, tensors, quant, source, "the GGUF file", metadata, assets)
}

/// Whether `dir` holds a Hugging Face decoder this family reads (`config.json` with
/// `model_type` `llama` or `qwen2`).
pub fn is_hf_decoder(dir: &Path) -> bool {
    read_json(&dir.join("config.json"))
        .is_ok_and(|c| matches!(c.get("model_type").and_then(Value::as_str), Some("llama" | "qwen2")))
}

/// A package of a Hugging Face decoder folder: `config.json` read by the family
/// ([`DecoderConfig::from_hf`]), the weights from `model.safetensors` (or the shards that
/// `model.safetensors.index.json` lists) in their own type (F32, F16, BF16) or requantized, and
/// `tokenizer.json` with `tokenizer_config.json` as assets.
pub fn import_hf_decoder(dir: &Path, quant: DecoderQuant) -> Result<Package> {
    let missing: Vec<&str> = ["config.json", "tokenizer.json"].into_iter().filter(|f| !dir.join(f).is_file()).collect();
    let index = dir.join("model.safetensors.index.json");
    let shards: Vec<String> = if index.is_file() {
        let map = read_json(&index)?;
        let mut files: Vec<String> = map
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| ImportError::Json { path: index.display().to_string(), msg: "no `weight_map`".into() })?
            .values()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        files.sort();
        files.dedup();
        // a shard is a file of the folder: an index naming `../x` or `/etc/x` reads nothing
        // outside it
        if let Some(bad) = files.iter().find(|f| {
            let mut parts = Path::new(f.as_str()).components();
            !matches!((parts.next(), parts.next()), (Some(std::path::Component::Normal(_)), None))
        }) {
            return Err(ImportError::Json {
                path: index.display().to_string(),
                msg: format!("`weight_map` names `{bad}`: shards must be files in the model folder"),
            });
        }
        files
    } else {
        vec!["model.safetensors".to_string()]
    };
    let missing: Vec<String> = missing
        .into_iter()
        .map(str::to_string)
        .chain(shards.iter().filter(|f| !dir.join(f).is_file()).cloned())
        .collect();
    if !missing.is_empty() {
        return Err(ImportError::Missing { dir: dir.display().to_string(), missing: missing.join(", ") });
    }
    let cfg = read_json(&dir.join("config.json"))?;
    let config = DecoderConfig::from_hf(&cfg)?;
    let mg = config.build_cached(wedge_core::graph::StateElem::F32)?;
    let mut wanted: BTreeMap<&str, &[usize]> =
        mg.graph.weights.iter().map(String::as_str).zip(mg.weight_shapes.iter().map(Vec::as_slice)).collect();
    let mut tensors = Vec::with_capacity(wanted.len());
    for shard in &shards {
        let path = dir.join(shard);
        let bytes = read(&path)?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| ImportError::Tensor(format!("{}: {e}", path.display())))?;
        for (name, view) in st.tensors() {
            let Some(shape) = wanted.remove(name.as_str()) else { continue };
            if view.shape() != shape {
                return Err(ImportError::Tensor(format!(
                    "tensor `{name}` has shape {:?}, config.json implies {shape:?}",
                    view.shape()
                )));
            }
            let format = match view.dtype() {
                safetensors::Dtype::F32 => Format::F32,
                safetensors::Dtype::F16 => Format::F16,
                safetensors::Dtype::BF16 => Format::Bf16,
                other => return Err(unsupported_dtype(&name, other)),
            };
            tensors.push(Weight::from_le_bytes(&name, shape, format, view.data())?);
        }
    }
    if let Some(name) = wanted.keys().next() {
        return Err(ImportError::Tensor(format!("{}: no tensor `{name}`", dir.display())));
    }
    let mut metadata = BTreeMap::new();
    let model_type = cfg.get("model_type").and_then(Value::as_str).unwrap_or("llama");
    metadata.insert("model_type".to_string(), model_type.to_string());
    let mut assets = BTreeMap::new();
    assets.insert(llama::TOKENIZER_ASSET.to_string(), read(&dir.join("tokenizer.json"))?);
    let tc = dir.join("tokenizer_config.json");
    if tc.is_file() {
        assets.insert(llama::TOKENIZER_CONFIG_ASSET.to_string(), read(&tc)?);
    }
    let source = dir.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    finish(config, tensors, quant, &source, "the safetensors", metadata, assets)
}

/// Requantizes as asked, checks the weights against the graph, and makes the package.
fn finish(
    mut config: DecoderConfig,
    mut tensors: Vec<Weight>,
    quant: DecoderQuant,
    source: &str,
    from: &str,
    mut metadata: BTreeMap<String, String>,
    assets: BTreeMap<String, Vec<u8>>,
) -> Result<Package> {
    config.take_rope_freqs(&mut tensors)?;
    let note = match quant {
        DecoderQuant::Keep => format!("kept as in {from}"),
        DecoderQuant::To(format) => {
            format.validate().map_err(ImportError::Unsupported)?;
            let (mut done, mut kept) = (0, 0);
            for w in tensors.iter_mut().filter(|w| w.shape.len() == 2 && w.format != format) {
                let cols = w.shape[1];
                if format.super_blocks() && !cols.is_multiple_of(SUPER_BLOCK) {
                    kept += 1;
                    continue;
                }
                *w = Weight::quantize(&w.name, &w.shape, &w.to_f32(), format)?;
                done += 1;
            }
            let mut note = format!("{done} matrices requantized to {format} from {from} (lossy)");
            if kept > 0 {
                note += &format!(", {kept} kept (rows not whole {SUPER_BLOCK}-value super-blocks)");
            }
            note
        }
    };
    // the graph's weights, checked now rather than at load time
    config.build_cached(wedge_core::graph::StateElem::F32)?.take_weights(tensors.clone())?;
    metadata.insert("source".to_string(), source.to_string());
    metadata.insert("converter".to_string(), format!("wedge-import {}", env!("CARGO_PKG_VERSION")));
    metadata.insert("weights".to_string(), note);
    let config = serde_json::to_value(&config).map_err(|e| ImportError::Unsupported(e.to_string()))?;
    Ok(Package { architecture: DECODER.to_string(), config, metadata, tensors, assets })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_cannot_name_shards_outside_the_folder() {
        let dir = std::env::temp_dir().join(format!("wedge-import-shards-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["config.json", "tokenizer.json"] {
            std::fs::write(dir.join(f), "{}").unwrap();
        }
        for (shard, outside) in [
            ("../secret.safetensors", true),
            ("/etc/passwd", true),
            ("a/../../b", true),
            ("model-1.safetensors", false),
        ] {
            let index = serde_json::json!({"weight_map": {"w": shard}});
            std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
            let err = import_hf_decoder(&dir, DecoderQuant::Keep).unwrap_err().to_string();
            assert_eq!(err.contains("shards must be files in the model folder"), outside, "{shard}: {err}");
            if !outside {
                assert!(err.contains("model-1.safetensors"), "{err}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
