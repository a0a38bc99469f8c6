//! `wedge generate` end to end on SmolLM2 (the file `models/fetch.sh smollm2` fetches, named by
//! `WEDGE_SMOLLM2_GGUF`): messages on stdin rendered with the model's template, greedy tokens
//! as JSON lines equal to the float64 reference's, the summary line, and clear errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Stdio};

fn model() -> Option<String> {
    let path = std::env::var("WEDGE_SMOLLM2_GGUF").ok().filter(|p| std::path::Path::new(p).is_file());
    if path.is_none() {
        wedge_testkit::unavailable("WEDGE_REQUIRE_MODEL", "wedge generate on SmolLM2", "WEDGE_SMOLLM2_GGUF is not set");
    }
    path
}

#[test]
fn generate_json_streams_the_reference_greedy_tokens() {
    let Some(model) = model() else { return };
    let mut child = Command::new(env!("CARGO_BIN_EXE_wedge"))
        .args(["generate", "--model", &model, "--device", "cpu", "--chat", "-", "--json"])
        .args(["--temperature", "0", "--max-tokens", "12"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let question = "What is the capital of France? Tell me about its history, its famous landmarks, its food and \
                    its culture in detail.";
    let messages = serde_json::json!([{ "role": "user", "content": question }]);
    child.stdin.take().unwrap().write_all(messages.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let (summary, tokens) = lines.split_last().unwrap();
    let ids: Vec<u64> = tokens.iter().map(|t| t["id"].as_u64().unwrap()).collect();
    // the float64 reference's free-running greedy tokens for this chat (exact_f64_top10.json)
    assert_eq!(ids, [50, 6522, 262, 41307, 98, 28, 260, 3575, 282, 4649, 314, 7042]);
    let text: String = tokens.iter().map(|t| t["text"].as_str().unwrap()).collect();
    assert_eq!(text, "Bien sûr, the capital of France is Paris");
    assert!(tokens.iter().all(|t| t["logprob"].as_f64().unwrap() <= 0.0));
    assert_eq!(summary["finish_reason"], "length");
    assert_eq!((summary["prompt_tokens"].as_u64(), summary["completion_tokens"].as_u64()), (Some(55), Some(12)));
    assert!(summary["decode_tok_s"].as_f64().unwrap() > 0.0 && summary["ttft_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_models_and_flags_get_clear_errors() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_wedge")).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let err = run(&["generate", "--model", manifest, "--prompt", "hi", "--device", "cpu"]);
    assert!(err.contains("not a GGUF file"), "{err}");
    let err = run(&["generate", "--model", "/nonexistent.gguf", "--prompt", "hi", "--device", "cpu"]);
    assert!(err.contains("/nonexistent.gguf"), "{err}");
    let Some(model) = model() else { return };
    let err = run(&["generate", "--model", &model, "--prompt", "hi", "--device", "cpu", "--kv", "q4"]);
    assert!(err.contains("unknown --kv"), "{err}");
    let err = run(&["generate", "--model", &model, "--prompt", "hi", "--device", "cpu", "--top-p", "0"]);
    assert!(err.contains("top_p"), "{err}");
    let err = run(&["generate", "--model", &model, "--prompt", "a b c d e f", "--device", "cpu", "--ctx", "3"]);
    assert!(err.contains("context holds 3"), "{err}");
}

/// `wedge convert model.gguf` keeps every tensor: the `.wedge` generates the same tokens, texts
/// and log-probabilities, bit for bit, as the `.gguf`; `--quant auto` (for encoders) and unknown
/// formats are refused.
#[test]
fn a_converted_package_generates_exactly_as_the_gguf() {
    let Some(model) = model() else { return };
    let dir = std::env::temp_dir().join(format!("wedge-convert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("smollm2.wedge");
    let wedge = env!("CARGO_BIN_EXE_wedge");
    let status = Command::new(wedge).args(["convert", &model, "-o"]).arg(&out).status().unwrap();
    assert!(status.success());
    for bad in ["auto", "q3"] {
        let refused = Command::new(wedge).args(["convert", &model, "--quant", bad, "-o"]).arg(&out).output().unwrap();
        let said = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success() && said.contains("keep"), "{said}");
    }
    let tokens = |m: &str| greedy_lines(m, "Once upon a time, in a small village,", 10);
    let (a, b) = (tokens(&model), tokens(out.to_str().unwrap()));
    assert_eq!(a.len(), 10);
    assert_eq!(a, b);
    std::fs::remove_dir_all(&dir).ok();
}

/// The same for the tiny decoders of `tests/data/tiny/` (no download needed): RoPE scaling
/// (`rope_freqs`, linear, llama3), every tensor type and the Hugging Face folder form travel
/// through `convert` into the package; a requantizing `--quant` says it is lossy and runs.
#[test]
fn tiny_decoders_convert_and_generate_the_same() {
    let dir = std::env::temp_dir().join(format!("wedge-convert-tiny-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wedge = env!("CARGO_BIN_EXE_wedge");
    let data = format!("{}/../../tests/data/tiny", env!("CARGO_MANIFEST_DIR"));
    let converted = Command::new(wedge)
        .args(["convert", &format!("{data}/llama_rope_freqs.gguf"), "--quant", "q4_k", "-o"])
        .arg(dir.join("q4k.wedge"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&converted.stderr);
    assert!(converted.status.success() && said.contains("requantized to q4_k") && said.contains("lossy"), "{said}");
    let shown = Command::new(wedge).args(["inspect", &format!("{data}/llama3_hf")]).output().unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("llama-decoder") && shown.contains("kept as in the safetensors"), "{shown}");
    let q4k = dir.join("q4k.wedge");
    let mut run = Command::new(wedge);
    let ran = run.args(["generate", "--device", "cpu", "--max-tokens", "4", "--prompt", "hi", "--model"]);
    let ran = ran.arg(&q4k).output().unwrap();
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
    for name in ["llama_rope_freqs.gguf", "qwen2_linear.gguf", "llama3_hf", "qwen2_linear_hf"] {
        let model = format!("{data}/{name}");
        let out = dir.join(format!("{name}.wedge"));
        let status = Command::new(wedge).args(["convert", &model, "-o"]).arg(&out).status().unwrap();
        assert!(status.success());
        let tokens = |m: &str| greedy_lines(m, "the tin", 12);
        let (a, b) = (tokens(&model), tokens(out.to_str().unwrap()));
        assert_eq!(a.len(), 12, "{name}");
        assert_eq!(a, b, "{name}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The per-token JSON lines of `wedge generate --json` (greedy, on the CPU, EOS ignored).
fn greedy_lines(model: &str, prompt: &str, n: usize) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_wedge"))
        .args(["generate", "--model", model, "--device", "cpu", "--json", "--temperature", "0", "--ignore-eos"])
        .args(["--max-tokens", &n.to_string(), "--prompt", prompt])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines().filter(|l| l.contains("\"logprob\"")).map(str::to_string).collect()
}
