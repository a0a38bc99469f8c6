//! The Hugging Face folder import behind `wedge convert <folder>`: `config.json`, the
//! sentence-transformers files, `model.safetensors` (its JSON header and tensor table) and the
//! tokenizer files, as an encoder and as a decoder, each folder written to disk and imported
//! from there as a user's would be.

use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::Arbitrary;

use crate::fixture;

/// A folder to write: each file present or not, with the bytes given or the tiny decoder's.
#[derive(Arbitrary, Debug)]
pub struct HfSpec {
    config: File,
    safetensors: File,
    tokenizer: File,
    tokenizer_config: File,
    modules: File,
    pooling: File,
    sentence_bert: File,
    index: File,
}

/// One file of the folder.
#[derive(Arbitrary, Debug)]
enum File {
    Absent,
    /// The tiny decoder's file of that name (where it has one).
    Fixture,
    Bytes(Vec<u8>),
    /// A safetensors file: a JSON header of the given text and the data.
    Safetensors(String, Vec<u8>),
}

/// The files of the tiny decoder's folder.
const FIXTURE_FILES: [&str; 4] = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"];

impl File {
    fn bytes(&self, fixture_name: &str) -> Option<Vec<u8>> {
        match self {
            File::Absent => None,
            File::Fixture if FIXTURE_FILES.contains(&fixture_name) => {
                Some(fixture(&format!("tests/data/tiny/llama3_hf/{fixture_name}")).to_vec())
            }
            File::Fixture => None,
            File::Bytes(b) => Some(b.clone()),
            File::Safetensors(header, data) => {
                let mut out = (header.len() as u64).to_le_bytes().to_vec();
                out.extend_from_slice(header.as_bytes());
                out.extend_from_slice(data);
                Some(out)
            }
        }
    }
}

/// This process's folder (one per process, its files rewritten for every input).
fn folder() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("wedge-fuzz-hf-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("1_Pooling")).expect("a temporary folder");
        dir
    })
}

/// Writes the folder a spec describes and imports it as an encoder and as a decoder.
pub fn hf_folder(spec: HfSpec) {
    let dir = folder();
    let files = [
        ("config.json", &spec.config, "config.json"),
        ("model.safetensors", &spec.safetensors, "model.safetensors"),
        ("tokenizer.json", &spec.tokenizer, "tokenizer.json"),
        ("tokenizer_config.json", &spec.tokenizer_config, "tokenizer_config.json"),
        ("modules.json", &spec.modules, "modules.json"),
        ("1_Pooling/config.json", &spec.pooling, ""),
        ("sentence_bert_config.json", &spec.sentence_bert, "sentence_bert_config.json"),
        ("model.safetensors.index.json", &spec.index, "model.safetensors.index.json"),
    ];
    for (name, file, fixture_name) in files {
        let path = dir.join(name);
        match file.bytes(fixture_name) {
            Some(bytes) => std::fs::write(&path, bytes).expect("writing the fuzz folder"),
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    if let Ok(enc) = wedge_import::inspect_hf_folder(dir) {
        let _ = wedge_import::load_f32_weights(&enc);
    }
    if wedge_import::is_hf_decoder(dir) {
        let _ = wedge_import::import_hf_decoder(dir, wedge_import::DecoderQuant::Keep);
    }
}
