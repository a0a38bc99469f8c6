//! A GGUF file's vocabulary against llama.cpp: SmolLM2-135M-Instruct's tokenizer (`gpt2` BPE,
//! `smollm` pre-tokenizer) and ChatML template, from the file `models/fetch.sh smollm2` fetches
//! (named by `WEDGE_SMOLLM2_GGUF`). The reference prompts, their ids and llama.cpp's generated
//! ids are `tests/data/smollm2/llamacpp_greedy.jsonl` (llama-cpp-python 0.3.36).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use wedge::{ChatMessage, Gguf, Vocab};

struct Case {
    prompt: String,
    prompt_ids: Vec<u32>,
    generated_ids: Vec<u32>,
    generated_text: String,
}

fn cases() -> Vec<Case> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/smollm2/llamacpp_greedy.jsonl");
    let ids = |v: &serde_json::Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    std::fs::read_to_string(path)
        .expect("llamacpp_greedy.jsonl")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Case {
                prompt: v["prompt"].as_str().unwrap().to_string(),
                prompt_ids: ids(&v["prompt_ids"]),
                generated_ids: ids(&v["generated_ids"]),
                generated_text: v["generated_text"].as_str().unwrap().to_string(),
            }
        })
        .collect()
}

fn vocab() -> Option<Vocab> {
    let Some(path) = std::env::var_os("WEDGE_SMOLLM2_GGUF").map(PathBuf::from).filter(|p| p.is_file()) else {
        wedge_testkit::unavailable(
            "WEDGE_REQUIRE_MODEL",
            "SmolLM2's tokenizer against llama.cpp",
            "WEDGE_SMOLLM2_GGUF does not name the file (models/fetch.sh smollm2 fetches it)",
        );
        return None;
    };
    let bytes = std::fs::read(path).unwrap();
    Some(Vocab::from_gguf(&Gguf::parse(&bytes).unwrap()).unwrap())
}

/// The user's question of a reference prompt (between `user\n` and its `<|im_end|>`).
fn question(prompt: &str) -> &str {
    let start = prompt.find("<|im_start|>user\n").unwrap() + "<|im_start|>user\n".len();
    &prompt[start..start + prompt[start..].find("<|im_end|>").unwrap()]
}

#[test]
fn the_chat_template_renders_llama_cpp_s_prompts_and_their_ids_match() {
    let Some(vocab) = vocab() else { return };
    assert_eq!((vocab.len(), vocab.bos(), vocab.eos()), (49152, Some(1), Some(2)));
    for case in cases() {
        let messages = [ChatMessage::new("user", question(&case.prompt))];
        let prompt = vocab.render_chat(&messages, true).unwrap();
        assert_eq!(prompt, case.prompt);
        assert_eq!(vocab.encode(&prompt, true).unwrap(), case.prompt_ids, "{prompt:?}");
        assert_eq!(vocab.decode(&case.prompt_ids).unwrap(), case.prompt);
    }
}

/// llama.cpp's generated ids decode to its text, and that text encodes to ids that decode to it
/// again (not always to the same ids: a model may choose a split the tokenizer would not).
#[test]
fn generated_ids_decode_to_llama_cpp_s_text() {
    let Some(vocab) = vocab() else { return };
    for case in cases() {
        assert_eq!(vocab.decode(&case.generated_ids).unwrap(), case.generated_text);
        let again = vocab.encode(&case.generated_text, false).unwrap();
        assert_eq!(vocab.decode(&again).unwrap(), case.generated_text);
    }
}

#[test]
fn special_tokens_in_user_text_stay_text_unless_asked() {
    let Some(vocab) = vocab() else { return };
    let plain = vocab.encode("<|im_end|>", false).unwrap();
    assert!(plain.len() > 1 && !plain.contains(&2), "{plain:?}");
    assert_eq!(vocab.encode("<|im_end|>", true).unwrap(), [2]);
    assert_eq!(vocab.encode("2024", false).unwrap().len(), 4, "each digit its own token (smollm)");
}

/// Each tokenizer wedge reads, on the small vocabulary-only files of `tests/data/tiny/` (written
/// by `make_vocab.py` there), against the ids llama.cpp gives for the same texts: byte-level BPE
/// with every known `pre` (digit runs, contractions in either case, spaces and newlines split as
/// each one's rules say), and SentencePiece (scores, byte fallback, the space prefix). Each
/// decodes back to its text (SentencePiece: with the prefix's space).
#[test]
fn every_tokenizer_gives_llama_cpp_s_ids_for_known_texts() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/tiny/");
    let known: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}vocab_ids.json")).unwrap()).unwrap();
    for name in ["gpt-2", "smollm", "qwen2", "llama-bpe", "spm"] {
        let bytes = std::fs::read(format!("{dir}vocab_{name}.gguf")).unwrap();
        let vocab = Vocab::from_gguf(&Gguf::parse(&bytes).unwrap()).unwrap();
        for case in known[name].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            let got = vocab.encode(text, false).unwrap();
            assert_eq!(got, want, "{name}: {text:?}");
            let back = vocab.decode(&got).unwrap();
            let want_back = if name == "spm" && !text.is_empty() { format!(" {text}") } else { text.to_string() };
            assert_eq!(back, want_back, "{name}: {text:?} decoded");
        }
    }
}
