//! wedge's fuzz targets as plain functions, one per input a user or a client controls: the
//! `.wedge` reader and loaders, the GGUF reader and loaders, the Hugging Face folder import,
//! the tokenizers and chat templates, every HTTP route's request body, and the stream writer.
//! Each has a raw-bytes form; the model files also have a structure-aware form
//! ([`arbitrary`]: valid files with mutated fields) that reaches past the checksums.
//!
//! A target returns normally for every input, accepted or refused; a panic, a hang or an
//! allocation over 1 GiB is a bug. The libFuzzer binaries in `fuzz/` call
//! these functions; `tests/corpus.rs` replays every saved input (`fuzz/corpus/<target>/` and
//! the crashes once found, `fuzz/regressions/<target>/`) through them on every test run.

use std::sync::OnceLock;

mod gguf;
mod hf;
mod http;
mod text;
mod wedge_file;

pub use gguf::{GgufSpec, gguf_file, gguf_structured};
pub use hf::{HfSpec, hf_folder};
pub use http::{content_coding, http_body};
pub use text::{sse_stream, tokenizer};
pub use wedge_file::{WedgeSpec, wedge_file, wedge_structured};

/// A target: runs one input.
pub type Target = fn(&[u8]);

/// Every target by name, as `fuzz/fuzz_targets/<name>.rs` and the corpus folders name them,
/// with the function that runs one input.
pub const TARGETS: [(&str, Target); 9] = [
    ("wedge_file", wedge_file),
    ("wedge_structured", |d| with_arbitrary(d, wedge_structured)),
    ("gguf_file", gguf_file),
    ("gguf_structured", |d| with_arbitrary(d, gguf_structured)),
    ("hf_folder", |d| with_arbitrary(d, hf_folder)),
    ("tokenizer", tokenizer),
    ("http_body", http_body),
    ("sse_stream", sse_stream),
    ("content_coding", content_coding),
];

/// Runs the target `name` on one input.
///
/// # Panics
/// If no target has that name (a fuzz binary and this list disagree).
pub fn run(name: &str, data: &[u8]) {
    match TARGETS.iter().find(|(n, _)| *n == name) {
        Some((_, f)) => f(data),
        None => panic!("no fuzz target `{name}`"),
    }
}

/// Runs `f` on the structure `data` spells (inputs too short for one are skipped, as
/// libFuzzer's own `arbitrary` support does).
pub fn with_arbitrary<T: for<'a> arbitrary::Arbitrary<'a>>(data: &[u8], f: fn(T)) {
    if let Ok(spec) = T::arbitrary_take_rest(arbitrary::Unstructured::new(data)) {
        f(spec);
    }
}

/// The CPU device the loaders run on (one per process: it owns the thread pool).
fn cpu() -> &'static wedge::Device {
    static CPU: OnceLock<wedge::Device> = OnceLock::new();
    CPU.get_or_init(wedge::Device::cpu)
}

/// A file of the repository's test data, read once (the fixtures the targets start from).
fn fixture(path: &str) -> &'static [u8] {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static FILES: OnceLock<Mutex<HashMap<String, &'static [u8]>>> = OnceLock::new();
    let files = FILES.get_or_init(Default::default);
    let mut files = files.lock().unwrap_or_else(|e| e.into_inner());
    files.entry(path.to_string()).or_insert_with(|| {
        let full = format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"));
        let bytes = std::fs::read(&full).unwrap_or_else(|e| panic!("wedge-fuzz fixture {full}: {e}"));
        Box::leak(bytes.into_boxed_slice())
    })
}

/// Every target's seed inputs (see `examples/seeds.rs`).
pub fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let patterns: Vec<Vec<u8>> =
        vec![vec![0; 64], (0..=255).collect(), (0..512).map(|i| (i * 37 % 251) as u8).collect(), vec![0xff; 128]];
    let fixtures = |paths: &[&str]| paths.iter().map(|p| fixture(p).to_vec()).collect::<Vec<_>>();
    let text = "Hello, world! naïve café 日本語 🦀 <|im_start|>user\nhi<|im_end|>\n\t  spaces   1234567 'll";
    let tokenizer = (0u8..48).map(|op| [&[op][..], text.as_bytes()].concat()).collect();
    let bodies: [(u8, &str); 9] = [
        (0, r#"{"input": ["a sentence", "another"], "model": "m", "encoding_format": "base64"}"#),
        (1, r#"{"id": "1", "inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": ["a", "b"]}]}"#),
        (
            3,
            r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "stop": ["\n"], "logprobs": true, "top_logprobs": 2, "stream": true, "stream_options": {"include_usage": true}, "n": 2, "seed": 7}"#,
        ),
        (4, r#"{"prompt": "Once upon a time", "max_tokens": 4, "logprobs": 1, "logit_bias": {"5": -100}}"#),
        (4, r#"{"prompt": [1, 2, 3], "max_tokens": 2}"#),
        (5, r#"{"prompt": "Hello there", "add_special_tokens": false}"#),
        (5, r#"{"messages": [{"role": "user", "content": "Hello"}], "add_generation_prompt": true}"#),
        (6, r#"{"tokens": [1, 2, 3, 40]}"#),
        (7, r#"{"ready": true}"#),
    ];
    let mut http: Vec<Vec<u8>> = bodies.iter().map(|(op, b)| [&[*op][..], b.as_bytes()].concat()).collect();
    // the KServe binary extension: a JSON header of 2 bytes' length, then two BYTES elements
    let json =
        br#"{"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 10}}]}"#;
    let mut binary = vec![2];
    binary.extend((json.len() as u16).to_le_bytes());
    binary.extend(json);
    binary.extend([1, 0, 0, 0, b'a', 1, 0, 0, 0, b'b']);
    http.push(binary);
    let body = br#"{"input": "compressed"}"#;
    let zstd = zstd::bulk::compress(body, 3).unwrap_or_default();
    let coding = vec![[&[0u8][..], &zstd].concat(), [&[5u8][..], body].concat()];
    vec![
        ("wedge_file", wedge_file::seeds()),
        ("wedge_structured", patterns.clone()),
        ("gguf_file", {
            let mut v = gguf::seeds();
            v.extend(fixtures(&[
                "tests/data/tiny/vocab_smollm.gguf",
                "tests/data/tiny/vocab_spm.gguf",
                "tests/data/gguf/types.gguf",
            ]));
            v
        }),
        ("gguf_structured", patterns.clone()),
        ("hf_folder", patterns.clone()),
        ("tokenizer", tokenizer),
        ("http_body", http),
        ("sse_stream", patterns),
        ("content_coding", coding),
    ]
}
