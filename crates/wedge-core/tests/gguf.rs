//! The GGUF reader on a file written by llama.cpp's own Python package (`gguf` on PyPI; the
//! script is `tests/data/gguf/make_fixtures.py`): every metadata value type, and every tensor
//! type wedge reads, dequantized bit for bit as `gguf.quants` does; then the same file damaged
//! at every length and in every bit of its header. Last, a real model file: llama.cpp's
//! SmolLM2-135M-Instruct Q4_1 (`models/fetch.sh smollm2`, named by `WEDGE_SMOLLM2_GGUF`),
//! against the listing `gguf`'s own reader made of it (`tests/data/smollm2/gguf_summary.txt`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use wedge_core::gguf::{Array, GgmlType, Gguf, Value, dequantize};

fn fixture() -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/gguf/types.gguf");
    std::fs::read(path).expect("tests/data/gguf/types.gguf")
}

#[test]
fn every_metadata_type_reads_as_written() {
    let bytes = fixture();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.version, 3);
    let v = |k: &str| g.get(k).unwrap_or_else(|| panic!("{k}")).clone();
    assert_eq!(v("general.architecture"), Value::String("test".into()));
    assert_eq!(v("test.u8"), Value::U8(200));
    assert_eq!(v("test.i8"), Value::I8(-100));
    assert_eq!(v("test.u16"), Value::U16(60000));
    assert_eq!(v("test.i16"), Value::I16(-30000));
    assert_eq!(v("test.u32"), Value::U32(4_000_000_000));
    assert_eq!(v("test.i32"), Value::I32(-2_000_000_000));
    assert_eq!(v("test.f32"), Value::F32(0.15625));
    assert_eq!(v("test.bool"), Value::Bool(true));
    assert_eq!(v("test.string"), Value::String("Grüße, 世界".into()));
    assert_eq!(v("test.u64"), Value::U64((1 << 63) + 5));
    assert_eq!(v("test.i64"), Value::I64(-(1 << 62)));
    assert_eq!(v("test.f64"), Value::F64(1e-300));
    let strings = ["", "a", "ümlaut", "<|im_end|>"].map(String::from).to_vec();
    assert_eq!(v("test.strings"), Value::Array(Array::String(strings)));
    assert_eq!(v("test.ints").as_array().unwrap().to_i64(), Some(vec![1, -2, 3]));
    let Value::Array(Array::F32(floats)) = v("test.floats") else { panic!("floats: {:?}", v("test.floats")) };
    assert_eq!(floats, [0.5, -1.25]);
    let Value::Array(Array::Array(nested)) = v("test.nested") else { panic!("nested") };
    assert_eq!(nested.iter().map(|a| a.to_i64().unwrap()).collect::<Vec<_>>(), [vec![1, 2], vec![3]]);
    assert_eq!(g.u64("test.u32").unwrap(), 4_000_000_000);
    assert!(g.u64("test.i8").is_err(), "a negative value is no u64");
}

#[test]
fn every_tensor_type_dequantizes_as_llama_cpp_does() {
    let bytes = fixture();
    let g = Gguf::parse(&bytes).unwrap();
    for ty in GgmlType::ALL {
        let q = g.tensor(&format!("{ty}.q")).unwrap_or_else(|| panic!("{ty}.q"));
        let want = g.tensor(&format!("{ty}.want")).unwrap();
        assert_eq!((q.ty, want.ty), (ty, GgmlType::F32));
        assert_eq!(q.shape(), want.shape(), "{ty}");
        assert_eq!(q.size, g.data(q).len() as u64);
        let mut got = vec![f32::NAN; q.len() as usize];
        dequantize(ty, g.data(q), &mut got).unwrap();
        let mut reference = vec![0f32; want.len() as usize];
        dequantize(GgmlType::F32, g.data(want), &mut reference).unwrap();
        for (i, (a, b)) in got.iter().zip(&reference).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{ty} value {i}: got {a}, gguf.quants gives {b}");
        }
    }
}

/// Every tensor type loads as a wedge weight holding the same values at the file's size. (Equal
/// as numbers: where a Q4_0 value is zero, `(u − 8) · d` and wedge's `u · d − 8d` can differ in
/// the sign of that zero.)
#[test]
fn every_type_repacks_into_a_wedge_weight_of_its_size() {
    let bytes = fixture();
    let g = Gguf::parse(&bytes).unwrap();
    for ty in GgmlType::ALL {
        let q = g.tensor(&format!("{ty}.q")).unwrap();
        let mut want = vec![0f32; q.len() as usize];
        dequantize(ty, g.data(q), &mut want).unwrap();
        let w = g.weight(q).unwrap();
        assert_eq!(w.shape, q.shape());
        // two f16 scales share a word: an odd count of blocks adds two bytes (q5_0: six, its
        // bits come in pairs too); q6_k keeps its d in a word of its own, two bytes more per
        // 210-byte super-block, under 1%
        let bytes = w.packed_bytes() as u64;
        let slack = match ty {
            GgmlType::Q6_K => 2 * q.len() / 256,
            GgmlType::Q5_0 => 6,
            _ => 2,
        };
        assert!(
            (q.size..=q.size + slack).contains(&bytes),
            "{ty} as {}: {bytes} bytes for the file's {}",
            w.format,
            q.size
        );
        let got = w.to_f32();
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(a == b, "{ty} as {} value {i}: {a} vs {b}", w.format);
        }
    }
}

#[test]
fn the_file_cut_anywhere_is_refused() {
    let bytes = fixture();
    for cut in 0..bytes.len() {
        let e = Gguf::parse(&bytes[..cut]).expect_err(&format!("the file cut to {cut} bytes parsed"));
        assert!(e.to_string().contains("truncated") || e.to_string().contains("past"), "cut {cut}: {e}");
    }
}

#[test]
fn a_flipped_header_bit_is_an_error_or_a_file_that_still_reads() {
    let bytes = fixture();
    let header = Gguf::parse(&bytes).unwrap().data_offset as usize;
    for at in 0..header {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[at] ^= 1 << bit;
            if let Ok(g) = Gguf::parse(&b) {
                for t in &g.tensors {
                    let mut out = vec![0f32; t.len() as usize];
                    dequantize(t.ty, g.data(t), &mut out).unwrap();
                }
            }
        }
    }
}

/// One tensor line of the listing: name, ggml dimensions, type, values, bytes, file offset.
type Listed = (String, Vec<u64>, String, u64, u64, u64);

fn listing() -> (u64, Vec<Listed>) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/smollm2/gguf_summary.txt");
    let text = std::fs::read_to_string(path).expect("tests/data/smollm2/gguf_summary.txt");
    let kv_count = text
        .lines()
        .find_map(|l| l.strip_prefix("GGUF.kv_count: UINT64 = "))
        .and_then(|v| v.trim().parse().ok())
        .expect("kv_count line");
    let tensors = text
        .lines()
        .skip_while(|l| !l.starts_with("== tensors"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| {
            // token_embd.weight   [576, 49152]   Q8_0   n=  28311552 bytes=  30081024 off=1785664
            let (name, rest) = l.split_once(' ').expect("name");
            let (dims, rest) = rest.trim_start().strip_prefix('[').and_then(|r| r.split_once(']')).expect("dims");
            let dims = dims.split(',').map(|d| d.trim().parse().expect("dim")).collect();
            let mut words = rest.split_whitespace();
            let ty = words.next().expect("type").to_string();
            let num = |key: &str, words: &mut std::str::SplitWhitespace<'_>| -> u64 {
                let w = words.next().expect(key);
                let v = if w == key { words.next().expect(key) } else { w.strip_prefix(key).expect(key) };
                v.parse().expect(key)
            };
            let n = num("n=", &mut words);
            let bytes = num("bytes=", &mut words);
            let off = num("off=", &mut words);
            (name.to_string(), dims, ty, n, bytes, off)
        })
        .collect();
    (kv_count, tensors)
}

#[test]
fn smollm2_reads_as_llama_cpp_lists_it() {
    let Some(path) = std::env::var_os("WEDGE_SMOLLM2_GGUF").map(PathBuf::from).filter(|p| p.is_file()) else {
        wedge_testkit::unavailable(
            "WEDGE_REQUIRE_MODEL",
            "SmolLM2's GGUF file against gguf's listing",
            "WEDGE_SMOLLM2_GGUF does not name the file (models/fetch.sh smollm2 fetches it)",
        );
        return;
    };
    let bytes = std::fs::read(&path).expect("the SmolLM2 file");
    let g = Gguf::parse(&bytes).unwrap();
    let (kv_count, listed) = listing();
    assert_eq!((g.version, g.metadata.len() as u64, g.tensors.len()), (3, kv_count, listed.len()));
    assert_eq!(g.str("general.architecture").unwrap(), "llama");
    assert_eq!(g.u64("llama.block_count").unwrap(), 30);
    assert_eq!(g.f64("llama.rope.freq_base").unwrap(), 100000.0);
    assert_eq!(g.str("tokenizer.ggml.pre").unwrap(), "smollm");
    assert_eq!(g.get("tokenizer.ggml.tokens").and_then(Value::as_array).map(Array::len), Some(49152));
    assert_eq!(g.get("tokenizer.ggml.merges").and_then(Value::as_array).map(Array::len), Some(48900));
    assert!(g.str("tokenizer.chat_template").unwrap().starts_with("{% for message in messages %}"));
    for (t, (name, dims, ty, n, size, off)) in g.tensors.iter().zip(&listed) {
        assert_eq!(&t.name, name);
        assert_eq!((&t.dims, t.ty.name(), t.len(), t.size), (dims, ty.as_str(), *n, *size), "{name}");
        assert_eq!(g.data_offset + t.offset, *off, "{name}: file offset");
    }
    // every tensor (Q4_1, F32, and the Q8_0 embedding table) loads as a wedge weight of the same
    // values and bytes
    let mut loaded = 0;
    for t in &g.tensors {
        match (t.ty, g.weight(t)) {
            (GgmlType::Q4_1 | GgmlType::F32 | GgmlType::Q8_0, Ok(w)) => {
                assert_eq!(w.packed_bytes() as u64, t.size, "{}", t.name);
                let mut want = vec![0f32; t.len() as usize];
                dequantize(t.ty, g.data(t), &mut want).unwrap();
                let same = w.to_f32().iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{}: the repacked weight differs", t.name);
                loaded += 1;
            }
            (ty, r) => panic!("{}: {ty} gave {:?}", t.name, r.map(|w| w.format)),
        }
    }
    assert_eq!(loaded, 272);
}
