//! Text in and out: the tokenizers and chat templates every front end runs a user's text
//! through, and the stream of a generation (stop strings across tokens, then the server-sent
//! events a streamed answer is written as).

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use serde_json::Value;
use wedge::openai::{Endpoint, Logprobs};
use wedge::{ChatMessage, Continuation, Embedder, FinishReason, GenerateParams, Gguf, TokenEvent, Vocab};
use wedge_serve::{GenEvent, ServeError, Usage};

use crate::{cpu, fixture};

/// Every vocabulary wedge reads: GGUF byte-level BPE with each pre-tokenizer, GGUF
/// SentencePiece, and a Hugging Face `tokenizer.json`.
pub(crate) fn vocabularies() -> &'static [Vocab] {
    static V: OnceLock<Vec<Vocab>> = OnceLock::new();
    V.get_or_init(|| {
        let mut v: Vec<Vocab> = ["gpt-2", "llama-bpe", "qwen2", "smollm", "spm"]
            .iter()
            .map(|name| {
                let bytes = fixture(&format!("tests/data/tiny/vocab_{name}.gguf"));
                Vocab::from_gguf(&Gguf::parse(bytes).expect("vocabulary fixture")).expect("vocabulary fixture")
            })
            .collect();
        let hf = Vocab::from_hf(
            fixture("tests/data/tiny/llama3_hf/tokenizer.json"),
            Some(fixture("tests/data/tiny/llama3_hf/tokenizer_config.json")),
        )
        .expect("tokenizer fixture");
        v.push(hf);
        v
    })
}

/// The bundled embedding model's tokenizer (WordPiece), as `wedge embed` runs it.
fn embedder() -> &'static Embedder {
    static E: OnceLock<Embedder> = OnceLock::new();
    E.get_or_init(|| {
        Embedder::from_bytes(fixture("models/all-MiniLM-L6-v2.wedge"), cpu()).expect("the bundled model loads")
    })
}

/// One operation on one vocabulary: the first byte chooses both, the rest is the text (or
/// token ids, or a conversation of messages separated by NUL, each role its first line).
pub fn tokenizer(data: &[u8]) {
    let Some((&op, rest)) = data.split_first() else { return };
    let vocabs = vocabularies();
    let vocab = &vocabs[usize::from(op & 7) % vocabs.len()];
    let text = String::from_utf8_lossy(rest);
    match (op >> 3) % 6 {
        0 => {
            let _ = vocab.encode(&text, false);
        }
        1 => {
            if let Ok(ids) = vocab.encode(&text, true) {
                let _ = vocab.decode(&ids);
            }
        }
        2 => {
            let _ = vocab.decode(&ids(rest));
            for id in ids(rest) {
                let _ = vocab.token(id);
            }
        }
        3 => {
            let messages: Vec<ChatMessage> = text
                .split('\0')
                .map(|m| {
                    let (role, content) = m.split_once('\n').unwrap_or(("user", m));
                    ChatMessage::new(role, content)
                })
                .collect();
            if let Ok(prompt) = vocab.render_chat(&messages, op & 0x40 != 0) {
                let _ = vocab.encode(&prompt, true);
            }
        }
        4 => {
            if let Ok(t) = embedder().tokenize(&text) {
                assert!(t.ids.len() <= embedder().max_seq_length(), "truncation holds");
            }
        }
        _ => {
            let mut stream = wedge::TextStream::default();
            for id in ids(rest) {
                let _ = stream.push(vocab, id);
            }
        }
    }
}

/// Token ids from bytes, two at a time (most land in the tiny vocabularies, some past them).
fn ids(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks(2).map(|c| u32::from(c[0]) | (u32::from(*c.get(1).unwrap_or(&0) & 0x83) << 8)).collect()
}

/// What a streamed generation is made of: a continuation's choices and stop strings, or the
/// events of a streamed answer's choices.
#[derive(Arbitrary, Debug)]
enum Stream {
    Continuation { vocab: u8, stops: Vec<String>, max_tokens: u8, ids: Vec<u16> },
    Events { chat: bool, n: u8, include_usage: bool, logprobs: u8, events: Vec<(u8, Event)> },
}

#[derive(Arbitrary, Debug)]
enum Event {
    Token { id: u32, text: String, logprob: f32, top: Vec<(u32, f32)> },
    Done { length: bool, prompt: u16, cached: u16, completion: u16 },
    Failed(String),
}

/// The stream of a generation: stop strings never reach the client, and the server-sent events
/// of an answer are well-formed frames whose texts add up to what the choices sent.
pub fn sse_stream(data: &[u8]) {
    let Ok(stream) = Stream::arbitrary_take_rest(Unstructured::new(data)) else { return };
    match stream {
        Stream::Continuation { vocab, stops, max_tokens, ids } => continuation(vocab, stops, max_tokens, &ids),
        Stream::Events { chat, n, include_usage, logprobs, events } => {
            events_to_frames(chat, n, include_usage, logprobs, events)
        }
    }
}

/// A continuation driven by one-hot logits: the text it releases never holds a stop string.
fn continuation(vocab: u8, stops: Vec<String>, max_tokens: u8, ids: &[u16]) {
    let vocabs = vocabularies();
    let vocab = &vocabs[usize::from(vocab) % vocabs.len()];
    let mut params = GenerateParams { stop: stops, max_tokens: usize::from(max_tokens).max(1), ..Default::default() };
    params.sampling.temperature = 0.0;
    let Ok(mut c) = Continuation::new(vocab, &[0], params.clone()) else { return };
    let mut logits = vec![0f32; vocab.len()];
    let mut text = String::new();
    for &id in ids {
        let id = usize::from(id) % logits.len();
        logits[id] = 1.0;
        let event = c.accept(vocab, &logits, true);
        logits[id] = 0.0;
        if let Ok(Some(TokenEvent { text: t, .. })) = event {
            text.push_str(&t);
        }
        if c.finish_reason().is_some() {
            break;
        }
    }
    for s in params.stop.iter().filter(|s| !s.is_empty()) {
        assert!(!text.contains(s.as_str()), "stop string {s:?} released in {text:?}");
    }
}

/// The frames of an answer's events: `data: <JSON>` frames (or `[DONE]`, last), each on one
/// line; per choice, the texts add up to its tokens' texts.
fn events_to_frames(chat: bool, n: u8, include_usage: bool, logprobs: u8, events: Vec<(u8, Event)>) {
    let n = usize::from(n % 4) + 1;
    let endpoint = if chat { Endpoint::Chat } else { Endpoint::Completions };
    let logprobs = match (logprobs % 3, chat) {
        (0, _) => Logprobs::Off,
        (_, true) => Logprobs::Chat(usize::from(logprobs % 5)),
        (_, false) => Logprobs::Legacy(usize::from(logprobs % 5)),
    };
    let mut sent = vec![String::new(); n];
    let mut open = vec![true; n];
    let mut ended = false;
    let events: Vec<(usize, GenEvent)> = events
        .into_iter()
        .map(|(i, e)| {
            let i = usize::from(i) % (n + 1);
            let e = match e {
                Event::Token { id, text, logprob, top } => {
                    if i < n && !ended {
                        sent[i].push_str(&text);
                    }
                    GenEvent::Token(TokenEvent { id, text, logprob, top_logprobs: top })
                }
                Event::Done { length, prompt, cached, completion } => {
                    if i < n {
                        open[i] = false;
                        ended |= open.iter().all(|o| !o);
                    }
                    let finish = if length { FinishReason::Length } else { FinishReason::Stop };
                    let usage = Usage {
                        prompt_tokens: prompt.into(),
                        cached_tokens: cached.into(),
                        completion_tokens: completion.into(),
                    };
                    GenEvent::Done { finish, usage }
                }
                Event::Failed(m) => {
                    if i < n {
                        ended = true;
                    }
                    GenEvent::Failed(ServeError::Inference(m))
                }
            };
            (i, e)
        })
        .collect();
    let vocab = &vocabularies()[3];
    let out = wedge_server::fuzz::sse_frames(endpoint, n, include_usage, logprobs, events, vocab);
    let out = std::str::from_utf8(&out).expect("frames are UTF-8");
    assert!(out.is_empty() || out.ends_with("\n\n"), "the last frame ends with a blank line");
    let mut got = vec![String::new(); n];
    let mut done = false;
    for frame in out.split_terminator("\n\n") {
        assert!(!done, "a frame after [DONE]");
        let payload = frame.strip_prefix("data: ").unwrap_or_else(|| panic!("frame without `data: `: {frame:?}"));
        assert!(!payload.contains(['\n', '\r']), "a frame spans lines: {payload:?}");
        if payload == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(payload).expect("frames are JSON");
        for choice in v["choices"].as_array().into_iter().flatten() {
            let i = choice["index"].as_u64().expect("a choice has its index") as usize;
            let text = if chat { &choice["delta"]["content"] } else { &choice["text"] };
            got[i].push_str(text.as_str().unwrap_or(""));
        }
    }
    assert_eq!(got, sent, "the frames' texts add up to the tokens' texts");
}
