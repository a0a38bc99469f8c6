//! The GGUF reader and the loaders behind `wedge generate --model x.gguf`, `wedge convert` and
//! `wedge serve`: raw bytes, and a micro llama decoder (a real vocabulary) written with
//! mutated metadata, tensor table, types and offsets.

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use wedge::{DecoderConfig, LanguageModel, LmOptions, Vocab};
use wedge_core::gguf::{Array, GgmlType, Gguf, Value};

use crate::{cpu, fixture, wedge_file};

/// A GGUF file as bytes: the reader, every tensor's weights, the vocabulary, the decoder
/// config and graph, and the import into a package.
pub fn gguf_file(data: &[u8]) {
    let Ok(g) = Gguf::parse(data) else { return };
    for t in &g.tensors {
        let _ = g.weight(t);
    }
    let _ = Vocab::from_gguf(&g);
    if let Ok(config) = DecoderConfig::from_gguf(&g) {
        let _ = config.build();
    }
    let _ = wedge_import::import_gguf(data, "fuzz", wedge_import::DecoderQuant::Keep);
}

/// A file to write: the micro decoder with its metadata and tensors edited.
#[derive(Arbitrary, Debug)]
pub struct GgufSpec {
    spm: bool,
    version: Option<u32>,
    alignment: Option<u8>,
    types: Vec<u8>,
    values: Vec<u8>,
    kv_edits: Vec<KvEdit>,
    tensor_edits: Vec<TensorEdit>,
}

#[derive(Arbitrary, Debug)]
enum KvEdit {
    /// Sets the value of the `n`th key of the decoder's own (or, past them, any key).
    Set(u8, Val),
    Drop(u8),
    Add(String, Val),
}

#[derive(Arbitrary, Debug)]
enum Val {
    U8(u8),
    I32(i32),
    U32(u32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Strings(Vec<String>),
    I32s(Vec<i32>),
    F32s(Vec<f32>),
    Nested(Vec<Vec<u8>>),
}

impl Val {
    fn value(&self) -> Value {
        match self {
            Val::U8(v) => Value::U8(*v),
            Val::I32(v) => Value::I32(*v),
            Val::U32(v) => Value::U32(*v),
            Val::U64(v) => Value::U64(*v),
            Val::I64(v) => Value::I64(*v),
            Val::F32(v) => Value::F32(*v),
            Val::F64(v) => Value::F64(*v),
            Val::Bool(v) => Value::Bool(*v),
            Val::Str(v) => Value::String(v.clone()),
            Val::Strings(v) => Value::Array(Array::String(v.clone())),
            Val::I32s(v) => Value::Array(Array::I32(v.clone())),
            Val::F32s(v) => Value::Array(Array::F32(v.clone())),
            Val::Nested(v) => Value::Array(Array::Array(v.iter().map(|a| Array::U8(a.clone())).collect())),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum TensorEdit {
    Drop(u8),
    Duplicate(u8),
    Rename(u8, String),
    Dims(u8, Vec<u16>),
    Type(u8, u32),
    Offset(u8, u64),
}

struct Tensor {
    name: String,
    dims: Vec<u64>,
    code: u32,
    offset: Option<u64>,
}

/// The largest data area written.
const MAX_DATA: u64 = 256 << 10;
const HIDDEN: u64 = 32;
const FFN: u64 = 64;
const HEAD_DIM: u64 = 16;

/// The decoder's own metadata: a llama of one layer, 32 wide, two heads sharing one KV head.
fn llama_keys() -> Vec<(String, Value)> {
    [
        ("general.architecture", Value::String("llama".into())),
        ("llama.embedding_length", Value::U32(HIDDEN as u32)),
        ("llama.block_count", Value::U32(1)),
        ("llama.feed_forward_length", Value::U32(FFN as u32)),
        ("llama.attention.head_count", Value::U32(2)),
        ("llama.attention.head_count_kv", Value::U32(1)),
        ("llama.context_length", Value::U32(64)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A vocabulary's metadata (the `tokenizer.*` keys) and its size.
type VocabKeys = (Vec<(String, Value)>, u64);

/// The vocabularies' metadata (a byte-level BPE and a SentencePiece one) and their sizes.
fn vocabularies() -> &'static [VocabKeys; 2] {
    static V: OnceLock<[VocabKeys; 2]> = OnceLock::new();
    V.get_or_init(|| {
        ["tests/data/tiny/vocab_smollm.gguf", "tests/data/tiny/vocab_spm.gguf"].map(|p| {
            let g = Gguf::parse(fixture(p)).expect("the vocabulary fixtures parse");
            let n = g.get("tokenizer.ggml.tokens").and_then(Value::as_array).map_or(0, Array::len) as u64;
            let keys = g.metadata.into_iter().filter(|(k, _)| k.starts_with("tokenizer.")).collect();
            (keys, n)
        })
    })
}

fn tensors(vocab: u64) -> Vec<Tensor> {
    let t = |name: &str, dims: &[u64]| Tensor { name: name.into(), dims: dims.to_vec(), code: 0, offset: None };
    vec![
        t("token_embd.weight", &[HIDDEN, vocab]),
        t("output_norm.weight", &[HIDDEN]),
        t("output.weight", &[HIDDEN, vocab]),
        t("blk.0.attn_norm.weight", &[HIDDEN]),
        t("blk.0.attn_q.weight", &[HIDDEN, 2 * HEAD_DIM]),
        t("blk.0.attn_k.weight", &[HIDDEN, HEAD_DIM]),
        t("blk.0.attn_v.weight", &[HIDDEN, HEAD_DIM]),
        t("blk.0.attn_output.weight", &[2 * HEAD_DIM, HIDDEN]),
        t("blk.0.ffn_norm.weight", &[HIDDEN]),
        t("blk.0.ffn_gate.weight", &[HIDDEN, FFN]),
        t("blk.0.ffn_up.weight", &[HIDDEN, FFN]),
        t("blk.0.ffn_down.weight", &[FFN, HIDDEN]),
    ]
}

/// The ggml types the micro decoder's tensors take (all of wedge's, chosen by index).
fn ty(i: u8) -> GgmlType {
    GgmlType::ALL[i as usize % GgmlType::ALL.len()]
}

/// Writes the file a spec describes, then loads it as `wedge generate` and `wedge convert` do
/// and runs it.
pub fn gguf_structured(spec: GgufSpec) {
    let bytes = write(&spec);
    match LanguageModel::from_gguf(&bytes, cpu(), LmOptions::default()) {
        Ok(lm) => {
            // the reader, weights, vocabulary and config all passed in the load: only the
            // import is left of the raw target's steps (the vocabulary, built twice, was half
            // of each input's time)
            wedge_file::run_decoder(&lm);
            let _ = wedge_import::import_gguf(&bytes, "fuzz", wedge_import::DecoderQuant::Keep);
        }
        Err(_) => gguf_file(&bytes),
    }
}

fn write(spec: &GgufSpec) -> Vec<u8> {
    let (vocab_keys, n_vocab) = &vocabularies()[usize::from(spec.spm)];
    let mut kvs = llama_keys();
    kvs.extend(vocab_keys.iter().cloned());
    let own = 9;
    for e in &spec.kv_edits {
        match e {
            KvEdit::Set(i, v) => {
                // mostly the decoder's own keys (while they are first), else any
                let n = if usize::from(*i) < own * 2 { own.min(kvs.len()) } else { kvs.len() };
                if n > 0 {
                    kvs[usize::from(*i) % n].1 = v.value();
                }
            }
            KvEdit::Drop(i) => {
                if !kvs.is_empty() {
                    let i = usize::from(*i) % kvs.len();
                    kvs.remove(i);
                }
            }
            KvEdit::Add(k, v) => kvs.push((k.clone(), v.value())),
        }
    }
    let alignment = spec.alignment.map_or(32, |a| 1u64 << (a % 8));
    if spec.alignment.is_some() {
        kvs.push(("general.alignment".into(), Value::U32(alignment as u32)));
    }
    let mut ts = tensors(*n_vocab);
    for (i, t) in ts.iter_mut().enumerate() {
        let g = ty(spec.types.get(i).copied().unwrap_or(0));
        // a quantized type only for matrices whose rows are whole blocks of it (as llama.cpp
        // writes them; a tensor edit may still change any)
        let whole = t.dims.len() == 2 && t.dims[0].is_multiple_of(g.block_len() as u64);
        t.code = if whole { g.code() } else { GgmlType::F32.code() };
    }
    for e in &spec.tensor_edits {
        if ts.is_empty() {
            break;
        }
        let n = ts.len();
        let at = |i: &u8| usize::from(*i) % n;
        match e {
            TensorEdit::Drop(i) => {
                ts.remove(at(i));
            }
            TensorEdit::Duplicate(i) => {
                let t = &ts[at(i)];
                let copy = Tensor { name: t.name.clone(), dims: t.dims.clone(), code: t.code, offset: t.offset };
                ts.push(copy);
            }
            TensorEdit::Rename(i, name) => ts[at(i)].name = name.clone(),
            TensorEdit::Dims(i, dims) => ts[at(i)].dims = dims.iter().map(|&d| u64::from(d)).collect(),
            TensorEdit::Type(i, code) => ts[at(i)].code = *code,
            TensorEdit::Offset(i, offset) => ts[at(i)].offset = Some(*offset),
        }
    }

    let mut w = Writer(Vec::new());
    w.0.extend_from_slice(b"GGUF");
    w.u32(spec.version.unwrap_or(3));
    w.u64(ts.len() as u64);
    w.u64(kvs.len() as u64);
    for (k, v) in &kvs {
        w.str(k);
        w.value(v);
    }
    // data laid out in order, each tensor at the next aligned offset
    let mut next = 0u64;
    let mut layout = Vec::new();
    for t in &ts {
        w.str(&t.name);
        w.u32(t.dims.len() as u32);
        for &d in &t.dims {
            w.u64(d);
        }
        w.u32(t.code);
        let n = t.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).unwrap_or(0);
        let size = GgmlType::from_code(t.code).and_then(|g| g.bytes_for(n)).unwrap_or(0).min(MAX_DATA);
        let offset = t.offset.unwrap_or(next);
        w.u64(offset);
        layout.push((offset, size));
        next = (offset.saturating_add(size)).div_ceil(alignment).saturating_mul(alignment).min(MAX_DATA);
    }
    w.pad(alignment);
    let start = w.0.len();
    // the data area: up to 256 KiB (the micro decoder needs about 80), the values repeated
    let end = layout.iter().map(|&(o, s)| o.saturating_add(s)).filter(|&e| e <= MAX_DATA).max().unwrap_or(0);
    let values: &[u8] = if spec.values.is_empty() { &[0x3c, 0x00, 0x20, 0x81] } else { &spec.values };
    let mut data = vec![0u8; end as usize];
    for chunk in data.chunks_mut(values.len()) {
        chunk.copy_from_slice(&values[..chunk.len()]);
    }
    w.0.extend_from_slice(&data);
    // f32 and f16 values kept finite and small: the exponent byte of every word masked
    for (offset, size) in layout {
        let Some(end) = offset.checked_add(size).filter(|&e| e <= end) else { continue };
        for word in w.0[start + offset as usize..start + end as usize].chunks_exact_mut(4) {
            word[3] &= 0x3f;
            word[1] &= 0x3f;
        }
    }
    w.0
}

struct Writer(Vec<u8>);

impl Writer {
    fn u32(&mut self, v: u32) {
        self.0.extend(v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend(v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.0.extend(s.as_bytes());
    }
    fn pad(&mut self, to: u64) {
        while !(self.0.len() as u64).is_multiple_of(to) {
            self.0.push(0);
        }
    }
    fn value(&mut self, v: &Value) {
        let code = type_code(v);
        self.u32(code);
        self.payload(v);
    }
    fn payload(&mut self, v: &Value) {
        match v {
            Value::U8(x) => self.0.push(*x),
            Value::I8(x) => self.0.extend(x.to_le_bytes()),
            Value::U16(x) => self.0.extend(x.to_le_bytes()),
            Value::I16(x) => self.0.extend(x.to_le_bytes()),
            Value::U32(x) => self.u32(*x),
            Value::I32(x) => self.0.extend(x.to_le_bytes()),
            Value::F32(x) => self.0.extend(x.to_le_bytes()),
            Value::Bool(x) => self.0.push(u8::from(*x)),
            Value::String(s) => self.str(s),
            Value::Array(a) => self.array(a),
            Value::U64(x) => self.u64(*x),
            Value::I64(x) => self.0.extend(x.to_le_bytes()),
            Value::F64(x) => self.0.extend(x.to_le_bytes()),
        }
    }
    fn array(&mut self, a: &Array) {
        let (code, len) = array_code(a);
        self.u32(code);
        self.u64(len);
        match a {
            Array::U8(v) => self.0.extend(v),
            Array::I8(v) => v.iter().for_each(|x| self.0.extend(x.to_le_bytes())),
            Array::U16(v) => v.iter().for_each(|x| self.0.extend(x.to_le_bytes())),
            Array::I16(v) => v.iter().for_each(|x| self.0.extend(x.to_le_bytes())),
            Array::U32(v) => v.iter().for_each(|x| self.0.extend(x.to_le_bytes())),
            Array::I32(v) => v.iter().for_each(|x| self.0.extend(x.to_le_bytes())),
            Array::F32(v) => v.iter().for_each(|x| self.0.extend(x.to_le_bytes())),
            Array::Bool(v) => v.iter().for_each(|&x| self.0.push(u8::from(x))),
            Array::String(v) => v.iter().for_each(|s| self.str(s)),
            Array::Array(v) => v.iter().for_each(|x| self.array(x)),
            Array::U64(v) => v.iter().for_each(|x| self.0.extend(x.to_le_bytes())),
            Array::I64(v) => v.iter().for_each(|x| self.0.extend(x.to_le_bytes())),
            Array::F64(v) => v.iter().for_each(|x| self.0.extend(x.to_le_bytes())),
        }
    }
}

/// GGUF's type code of a value.
fn type_code(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

/// GGUF's element type code and the length of an array.
fn array_code(a: &Array) -> (u32, u64) {
    let code = match a {
        Array::U8(_) => 0,
        Array::I8(_) => 1,
        Array::U16(_) => 2,
        Array::I16(_) => 3,
        Array::U32(_) => 4,
        Array::I32(_) => 5,
        Array::F32(_) => 6,
        Array::Bool(_) => 7,
        Array::String(_) => 8,
        Array::Array(_) => 9,
        Array::U64(_) => 10,
        Array::I64(_) => 11,
        Array::F64(_) => 12,
    };
    (code, a.len() as u64)
}

/// Seeds for the raw target: the micro decoder written unedited, with each vocabulary.
pub(crate) fn seeds() -> Vec<Vec<u8>> {
    [false, true]
        .map(|spm| {
            write(&GgufSpec {
                spm,
                version: None,
                alignment: None,
                types: vec![0, 1, 7, 7, 0, 3, 4, 7, 0, 8, 10, 9],
                values: vec![0x12, 0x34, 0x56, 0x78, 0x9a],
                kv_edits: Vec::new(),
                tensor_edits: Vec::new(),
            })
        })
        .into()
}
