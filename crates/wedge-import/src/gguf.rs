//! GGUF language models (llama, qwen2) to `.wedge` decoder packages, keeping every tensor in
//! its own format (the exact repacking of [`Gguf::weight`]).

use std::collections::BTreeMap;

use wedge_core::Package;
use wedge_core::gguf::Gguf;
use wedge_core::models::DECODER;
use wedge_core::models::llama::{self, DecoderConfig};

use crate::{ImportError, Result};

/// A package of a GGUF decoder's weights as they are (`keep`): the config from the file's
/// metadata, the tensors under their Hugging Face names, and the vocabulary and chat template
/// as a metadata-only GGUF asset ([`llama::VOCAB_ASSET`]).
pub fn import_gguf(bytes: &[u8], source: &str) -> Result<Package> {
    let g = Gguf::parse(bytes)?;
    let mut config = DecoderConfig::from_gguf(&g)?;
    let mut tensors = llama::weights_from_gguf(&g)?;
    config.take_rope_freqs(&mut tensors)?;
    // the graph's weights, checked now rather than at load time
    config.build_cached(wedge_core::graph::StateElem::F32)?.take_weights(tensors.clone())?;
    let mut metadata = BTreeMap::new();
    metadata.insert("source".to_string(), source.to_string());
    metadata.insert("converter".to_string(), format!("wedge-import {}", env!("CARGO_PKG_VERSION")));
    metadata.insert("weights".to_string(), "kept as in the GGUF file".to_string());
    if let Some(name) = g.get("general.name").and_then(|v| v.as_str()) {
        metadata.insert("name".to_string(), name.to_string());
    }
    let mut assets = BTreeMap::new();
    assets.insert(llama::VOCAB_ASSET.to_string(), g.metadata_only(bytes));
    let config = serde_json::to_value(&config).map_err(|e| ImportError::Unsupported(e.to_string()))?;
    Ok(Package { architecture: DECODER.to_string(), config, metadata, tensors, assets })
}
