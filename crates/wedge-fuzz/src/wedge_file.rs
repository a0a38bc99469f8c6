//! The `.wedge` reader and the loaders behind `wedge embed`, `wedge generate` and `wedge
//! serve`: raw bytes, and whole packages built from a tiny encoder or decoder with mutated
//! configs, formats, tensor tables and sections.

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use serde_json::Value;
use wedge::{Embedder, LanguageModel, LmOptions};
use wedge_core::package::{self, Header, PREFIX_LEN, PackageLimits, read_header, verify_sections};
use wedge_core::{Format, Package, Weight};

use crate::{cpu, fixture};

/// The limits of a node that takes tensors up to 256 MiB (the defaults allow 4 GiB, which a
/// few KiB of zstd frames of one repeated byte could claim).
pub(crate) const LIMITS: PackageLimits = PackageLimits {
    max_header_bytes: 1 << 20,
    max_entries: 4096,
    max_rank: 8,
    max_entry_bytes: 256 << 20,
    max_total_bytes: 256 << 20,
};

/// A `.wedge` file as bytes; then the same bytes with the header's checksum made right, so
/// that a mutated header reaches the checks behind the checksum.
pub fn wedge_file(data: &[u8]) {
    load(data);
    if let Some(fixed) = with_header_digest(data) {
        load(&fixed);
    }
}

fn with_header_digest(data: &[u8]) -> Option<Vec<u8>> {
    let end = package::header_len(data, &LIMITS)?;
    let header = data.get(PREFIX_LEN..end)?;
    let (mut out, _) = package::assemble(header, &data[end..]);
    out[8..16].copy_from_slice(&data[8..16]);
    (out != data).then_some(out)
}

/// Everything a user's entry point does with a package: the reader, `wedge inspect`'s
/// section check, and loading it as an encoder and as a decoder on the CPU, then running it.
pub(crate) fn load(bytes: &[u8]) {
    // a package over this node's limits is refused here, as such a node refuses it: the
    // loaders read with the default limits (4 GiB a tensor), which a few KiB of zstd frames
    // could claim and make them inflate
    let Ok(parsed) = read_header(bytes, &LIMITS) else { return };
    let mut loaded = false;
    if let Ok(e) = Embedder::from_bytes(bytes, cpu()) {
        loaded = true;
        let _ = e.embed(&["a fuzzed model", "", "naïve café 日本語"]);
    }
    if let Ok(lm) = LanguageModel::from_wedge(bytes, cpu(), LmOptions::default()) {
        loaded = true;
        run_decoder(&lm);
    }
    // a package that loaded had every section checked and inflated on the way: the check
    // alone is run for the others (inflating every section a second time was a fifth of
    // each input's time)
    if !loaded {
        let _ = verify_sections(bytes, &parsed);
    }
}

/// A few steps of a loaded decoder: a prompt, then one token more.
pub(crate) fn run_decoder(lm: &LanguageModel) {
    let n = lm.vocab().len().max(1) as u32;
    let Ok(mut state) = lm.new_state(1, 16) else { return };
    let Some(seq) = state.add() else { return };
    let prompt: Vec<u32> = lm.vocab().encode("Hello, fuzz", true).unwrap_or_else(|_| vec![0, 1 % n, 2 % n]);
    if lm.score(&mut state, seq, &prompt).is_ok() {
        let _ = lm.step(&mut state, &[(seq, &[1 % n])]);
    }
}

/// A package to build: a tiny encoder or decoder (the real tokenizer assets), its config
/// edited, its weights in the formats chosen, then its header's entries edited.
#[derive(Arbitrary, Debug)]
pub struct WedgeSpec {
    decoder: bool,
    architecture: Option<String>,
    config_edits: Vec<(u8, Json)>,
    formats: Vec<u8>,
    values: Vec<u8>,
    edits: Vec<Edit>,
    asset: Option<(bool, Vec<u8>)>,
}

/// A JSON value to put in a config.
#[derive(Arbitrary, Debug)]
pub(crate) enum Json {
    Small(u8),
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    Str(String),
    Null,
}

impl Json {
    pub(crate) fn value(&self) -> Value {
        match self {
            Json::Small(v) => Value::from(*v),
            Json::U64(v) => Value::from(*v),
            Json::I64(v) => Value::from(*v),
            Json::F64(v) => serde_json::Number::from_f64(*v).map_or(Value::Null, Value::Number),
            Json::Bool(v) => Value::from(*v),
            Json::Str(v) => Value::from(v.as_str()),
            Json::Null => Value::Null,
        }
    }
}

/// An edit of one entry of the tensor table (by index, modulo its length).
#[derive(Arbitrary, Debug)]
enum Edit {
    Drop(u8),
    Duplicate(u8),
    Rename(u8, String),
    Shape(u8, Vec<u32>),
    Format(u8, u8, u32),
    RawLen(u8, u64),
    StoredLen(u8, u64),
    Offset(u8, u64),
    Crc(u8, u32),
    /// New stored bytes (appended to the data area, with their CRC).
    Stored(u8, Vec<u8>),
}

/// The formats a tensor may be stored in, with `group` for the grouped ones.
pub(crate) fn format(i: u8, group: u32) -> Format {
    match i % 10 {
        0 => Format::F32,
        1 => Format::F16,
        2 => Format::Q8,
        3 => Format::Q8A8,
        4 => Format::Q4 { group },
        5 => Format::Q4_1 { group },
        6 => Format::Q8_0 { group },
        7 => Format::Q4K,
        8 => Format::Q4 { group: 32 },
        _ => Format::Q4_1 { group: 32 },
    }
}

/// The most weights (elements) a structured package gets: a config edited to a large model is
/// not built. Every path a bigger model would take, this size takes too (dimensions past the
/// kernels' tiles included), and a smaller model inflates and runs many times faster.
const MAX_WEIGHTS: usize = 1 << 16;

/// The tiny encoder and decoder packages the structured target starts from.
fn templates() -> &'static (Package, Package) {
    static T: OnceLock<(Package, Package)> = OnceLock::new();
    T.get_or_init(|| {
        let tokenizer = fixture("tests/data/tiny/llama3_hf/tokenizer.json").to_vec();
        let encoder = Package {
            architecture: wedge::ENCODER.to_string(),
            config: serde_json::json!({
                "activation": "gelu_erf", "hidden_size": 16, "intermediate_size": 32,
                "layer_norm_eps": 1e-12, "max_position_embeddings": 32, "max_seq_length": 24,
                "normalize": true, "num_heads": 2, "num_layers": 1, "pooling": "mean",
                "type_vocab_size": 2, "vocab_size": 300
            }),
            metadata: Default::default(),
            tensors: Vec::new(),
            assets: [("tokenizer.json".to_string(), tokenizer)].into(),
        };
        let dir = format!("{}/../../tests/data/tiny/llama3_hf", env!("CARGO_MANIFEST_DIR"));
        let mut decoder = wedge_import::import_hf_decoder(std::path::Path::new(&dir), wedge_import::DecoderQuant::Keep)
            .expect("the tiny decoder fixture imports");
        decoder.tensors.clear();
        // its vocabulary and rope, one layer 8 wide: small enough to build and run per input
        let micro = [
            ("hidden_size", 8),
            ("num_heads", 2),
            ("num_kv_heads", 1),
            ("head_dim", 4),
            ("intermediate_size", 16),
            ("num_layers", 1),
        ];
        for (k, v) in micro {
            decoder.config[k] = Value::from(v);
        }
        (encoder, decoder)
    })
}

/// Builds the package a spec describes and loads it.
pub fn wedge_structured(spec: WedgeSpec) {
    if let Some(bytes) = build(&spec) {
        load(&bytes);
    }
}

fn build(spec: &WedgeSpec) -> Option<Vec<u8>> {
    let (encoder, decoder) = templates();
    let mut pkg = if spec.decoder { decoder.clone() } else { encoder.clone() };
    if let Some(a) = &spec.architecture {
        pkg.architecture = a.clone();
    }
    if let Value::Object(map) = &mut pkg.config {
        let keys: Vec<String> = map.keys().cloned().collect();
        for (k, v) in &spec.config_edits {
            map.insert(keys[*k as usize % keys.len()].clone(), v.value());
        }
    }
    if let Some((replace, bytes)) = &spec.asset {
        let name = pkg.assets.keys().next().cloned().unwrap_or_else(|| "tokenizer.json".into());
        if *replace {
            pkg.assets.insert(name, bytes.clone());
        } else {
            pkg.assets.clear();
        }
    }
    // the weights the (edited) config asks for, if it builds and is small
    if let Ok(mg) = wedge_core::models::build(&pkg.architecture, &pkg.config) {
        let total = mg.weight_shapes.iter().try_fold(0usize, |sum, s| {
            s.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).and_then(|n| sum.checked_add(n))
        });
        if total.is_none_or(|t| t > MAX_WEIGHTS) {
            return None;
        }
        let values: Vec<f32> = if spec.values.is_empty() {
            vec![0.25, -0.5, 0.125]
        } else {
            spec.values.iter().map(|&b| f32::from(b as i8) / 64.0).collect()
        };
        for (i, (name, shape)) in mg.graph.weights.iter().zip(&mg.weight_shapes).enumerate() {
            let n: usize = shape.iter().product(); // (bounded above)
            let v: Vec<f32> = values.iter().copied().cycle().skip(i).take(n).collect();
            // matrices in the formats chosen, vectors in f32 as the importers store them (a
            // table edit may still change either)
            let f = spec.formats.get(i % spec.formats.len().max(1)).copied().unwrap_or(0);
            let f = if shape.len() == 1 { Format::F32 } else { format(f, 32) };
            let w = Weight::quantize(name, shape, &v, f).or_else(|_| Weight::from_f32(name, shape, &v));
            pkg.tensors.push(w.ok()?);
        }
    }
    let (bytes, _) = pkg.to_bytes(1).ok()?;
    if spec.edits.is_empty() {
        return Some(bytes);
    }
    let parsed = read_header(&bytes, &LIMITS).ok()?;
    let mut header: Header = parsed.header;
    let mut data = bytes[parsed.data_offset..].to_vec();
    for e in &spec.edits {
        edit(&mut header, &mut data, e);
    }
    let hb = serde_json::to_vec(&header).ok()?;
    Some(package::assemble(&hb, &data).0)
}

fn edit(h: &mut Header, data: &mut Vec<u8>, e: &Edit) {
    let n = h.tensors.len();
    if n == 0 {
        return;
    }
    let at = |i: &u8| *i as usize % n;
    match e {
        Edit::Drop(i) => {
            h.tensors.remove(at(i));
        }
        Edit::Duplicate(i) => {
            let t = h.tensors[at(i)].clone();
            h.tensors.push(t);
        }
        Edit::Rename(i, name) => h.tensors[at(i)].name = name.clone(),
        Edit::Shape(i, shape) => h.tensors[at(i)].shape = shape.iter().map(|&d| u64::from(d)).collect(),
        Edit::Format(i, f, group) => h.tensors[at(i)].format = format(*f, *group),
        Edit::RawLen(i, v) => h.tensors[at(i)].raw_len = *v,
        Edit::StoredLen(i, v) => h.tensors[at(i)].stored_len = *v,
        Edit::Offset(i, v) => h.tensors[at(i)].offset = *v,
        Edit::Crc(i, v) => h.tensors[at(i)].crc32 = *v,
        Edit::Stored(i, bytes) => {
            let t = &mut h.tensors[at(i)];
            t.offset = data.len() as u64;
            t.stored_len = bytes.len() as u64;
            t.crc32 = crc32fast::hash(bytes);
            data.extend_from_slice(bytes);
        }
    }
}

/// Seeds for the corpora: the templates whole (their bytes as the raw target reads them).
pub(crate) fn seeds() -> Vec<Vec<u8>> {
    [false, true]
        .into_iter()
        .filter_map(|decoder| {
            build(&WedgeSpec {
                decoder,
                architecture: None,
                config_edits: Vec::new(),
                formats: vec![0, 2, 5],
                values: vec![3, 200, 17, 64],
                edits: Vec::new(),
                asset: None,
            })
        })
        .collect()
}
