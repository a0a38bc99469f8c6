//! Language models in the browser: a GGUF file (or a decoder `.wedge` package) loaded onto the
//! wasm CPU backend (or WebGPU), one conversation kept in one key/value cache, and generation
//! a token at a time, each [`WebLanguageModel::next`] one step, so that the JS side can stream
//! tokens, yield to the page between them and stop whenever it likes.

use std::rc::Rc;

use serde_json::{Value, json};
use wedge::{ChatMessage, DecodeState, Device, GenerateParams, Generation, LanguageModel, LmOptions, SeqId};

use crate::DeviceRequest;

/// Positions of the conversation's cache when the caller gives none: the model's context, at
/// most this.
pub const DEFAULT_CTX: usize = 2048;

/// A language model and its conversation, loaded for the browser.
pub struct WebLanguageModel {
    lm: Rc<LanguageModel>,
    device: Device,
    /// The conversation's cache, while no generation holds it.
    state: Option<DecodeState>,
    seq: SeqId,
    run: Option<Generation<'static>>,
}

impl std::fmt::Debug for WebLanguageModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebLanguageModel").field("architecture", &self.lm.architecture()).finish_non_exhaustive()
    }
}

/// Whether `bytes` start like a language model: a GGUF file, or a package of the decoder
/// architecture.
pub fn is_language_model(bytes: &[u8]) -> bool {
    bytes.starts_with(b"GGUF")
        || wedge::read_header(bytes, &wedge::PackageLimits::default())
            .is_ok_and(|h| h.header.architecture == wedge::DECODER)
}

impl WebLanguageModel {
    /// Opens the device, loads the model and makes a cache of `ctx` positions (0: the model's
    /// context, at most [`DEFAULT_CTX`]).
    pub async fn load(bytes: &[u8], request: DeviceRequest, ctx: usize) -> Result<WebLanguageModel, String> {
        let device = request.open().await?;
        let options = LmOptions::default();
        let lm = if bytes.starts_with(b"GGUF") {
            LanguageModel::from_gguf(bytes, &device, options)
        } else {
            LanguageModel::from_wedge(bytes, &device, options)
        }
        .map_err(|e| e.to_string())?;
        let ctx = match (ctx, lm.config().context_length) {
            (0, 0) => DEFAULT_CTX,
            (0, m) => m.min(DEFAULT_CTX),
            (c, _) => c,
        };
        let mut state = lm.new_state(1, ctx).map_err(|e| e.to_string())?;
        let seq = state.add().ok_or("no sequence in a new cache")?;
        Ok(WebLanguageModel { lm: Rc::new(lm), device, state: Some(state), seq, run: None })
    }

    /// `webgpu` or `cpu`.
    pub fn device(&self) -> &'static str {
        crate::device_name(&self.device)
    }

    /// The adapter's description on WebGPU; on the CPU, why `auto` did not pick a GPU, if it did not.
    pub fn device_info(&self) -> String {
        crate::device_info(&self.device)
    }

    /// What the model is, as JSON: architecture, sizes, context and weight bytes.
    pub fn info(&self) -> String {
        let c = self.lm.config();
        let ctx = self.state.as_ref().map_or(0, DecodeState::ctx);
        json!({
            "architecture": self.lm.architecture(),
            "layers": c.num_layers,
            "hidden": c.hidden_size,
            "heads": c.num_heads,
            "kvHeads": c.num_kv_heads,
            "vocab": self.lm.vocab().len(),
            "contextLength": c.context_length,
            "ctx": ctx,
            "weightBytes": self.lm.weight_bytes(),
        })
        .to_string()
    }

    /// Token ids of `text` (no special tokens added; special-token text is parsed).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        self.lm.vocab().encode(text, false).map_err(|e| e.to_string())
    }

    /// The text of token ids.
    pub fn decode(&self, ids: &[u32]) -> Result<String, String> {
        self.lm.vocab().decode(ids).map_err(|e| e.to_string())
    }

    /// The prompt ids of a conversation (`[{role, content}]` as JSON), rendered with the
    /// model's chat template, the assistant's turn opened.
    pub fn chat_prompt(&self, messages: &str) -> Result<Vec<u32>, String> {
        let v: Value = serde_json::from_str(messages).map_err(|e| format!("messages: {e}"))?;
        let items = v.as_array().filter(|a| !a.is_empty()).ok_or("messages must be a non-empty array")?;
        let messages = items
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let role = m["role"].as_str().ok_or(format!("messages[{i}].role must be a string"))?;
                let content = match &m["content"] {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => return Err(format!("messages[{i}].content must be a string, got {other}")),
                };
                Ok(ChatMessage::new(role, &content))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let vocab = self.lm.vocab();
        let text = vocab.render_chat(&messages, true).map_err(|e| e.to_string())?;
        vocab.encode(&text, true).map_err(|e| e.to_string())
    }

    /// Starts generating after `prompt` (ids) with `params` (JSON: `max_tokens`, `temperature`,
    /// `top_p`, `top_k`, `min_p`, `repetition_penalty`, `presence_penalty`,
    /// `frequency_penalty`, `seed`, `stop`, `ignore_eos`). The conversation's cache keeps what
    /// it shares with the prompt; a generation still running ends first.
    pub fn start(&mut self, prompt: &[u32], params: &str) -> Result<(), String> {
        self.finish();
        let params = parse_params(params)?;
        let ctx = self.state.as_ref().map_or(0, DecodeState::ctx);
        if prompt.is_empty() || prompt.len() >= ctx {
            return Err(format!("the prompt has {} tokens; the context holds {ctx} (prompt and answer)", prompt.len()));
        }
        let state = match self.state.take() {
            Some(s) => s,
            None => self.fresh_state(ctx)?,
        };
        let run = self.lm.generate_owned(state, self.seq, prompt, params).map_err(|e| e.to_string());
        match run {
            Ok(run) => self.run = Some(run),
            // (checked above, so not expected: the conversation starts afresh)
            Err(e) => {
                self.state = Some(self.fresh_state(ctx)?);
                return Err(e);
            }
        }
        Ok(())
    }

    fn fresh_state(&mut self, ctx: usize) -> Result<DecodeState, String> {
        let mut state = self.lm.new_state(1, ctx).map_err(|e| e.to_string())?;
        self.seq = state.add().ok_or("no sequence in a new cache")?;
        Ok(state)
    }

    /// The next token as JSON (`{id, text, logprob}`), or `None` once the generation is over.
    pub async fn next(&mut self) -> Result<Option<String>, String> {
        let Some(run) = self.run.as_mut() else { return Ok(None) };
        match run.next_async().await {
            Some(Ok(t)) => Ok(Some(json!({"id": t.id, "text": t.text, "logprob": t.logprob}).to_string())),
            Some(Err(e)) => {
                self.finish();
                Err(e.to_string())
            }
            None => Ok(None),
        }
    }

    /// Ends the running generation (if any) and returns its summary as JSON: `finish_reason`
    /// (`stop`, `length`, or null when interrupted), token counts and timings.
    pub fn finish(&mut self) -> String {
        let Some(run) = self.run.take() else { return "null".into() };
        let stats = run.stats();
        let finish = run.finish_reason().map(|f| f.as_str());
        self.state = run.into_state();
        json!({
            "finish_reason": finish,
            "prompt_tokens": stats.prompt_tokens,
            "cached_tokens": stats.cached_tokens,
            "completion_tokens": stats.completion_tokens,
        })
        .to_string()
    }

    /// Forgets the conversation: the next prompt is computed from its first token.
    pub fn reset(&mut self) {
        self.finish();
        if let Some(s) = self.state.as_mut() {
            s.truncate(self.seq, 0);
        }
    }
}

fn parse_params(params: &str) -> Result<GenerateParams, String> {
    let v: Value = if params.trim().is_empty() {
        Value::Object(Default::default())
    } else {
        serde_json::from_str(params).map_err(|e| format!("options: {e}"))?
    };
    let o = v.as_object().ok_or("options must be an object")?;
    let num = |k: &str| -> Result<Option<f32>, String> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x.as_f64().map(|f| Some(f as f32)).ok_or(format!("`{k}` must be a number, got {x}")),
        }
    };
    let int = |k: &str| -> Result<Option<u64>, String> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x.as_u64().map(Some).ok_or(format!("`{k}` must be a whole number, got {x}")),
        }
    };
    let mut p = GenerateParams::default();
    if let Some(n) = int("max_tokens")? {
        p.max_tokens = usize::try_from(n).map_err(|e| e.to_string())?.max(1);
    }
    let s = &mut p.sampling;
    s.temperature = num("temperature")?.unwrap_or(s.temperature);
    s.top_p = num("top_p")?.unwrap_or(s.top_p);
    s.top_k = int("top_k")?.map_or(s.top_k, |k| k as usize);
    s.min_p = num("min_p")?.unwrap_or(s.min_p);
    s.repetition_penalty = num("repetition_penalty")?.unwrap_or(s.repetition_penalty);
    s.presence_penalty = num("presence_penalty")?.unwrap_or(s.presence_penalty);
    s.frequency_penalty = num("frequency_penalty")?.unwrap_or(s.frequency_penalty);
    s.seed = int("seed")?;
    s.validate()?;
    p.stop = match o.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(x)) => vec![x.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string).ok_or(format!("`stop` entries must be strings, got {x}")))
            .collect::<Result<_, _>>()?,
        Some(x) => return Err(format!("`stop` must be a string or an array of strings, got {x}")),
    };
    p.stop_at_eos = !o.get("ignore_eos").and_then(Value::as_bool).unwrap_or(false);
    Ok(p)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn smollm2() -> Option<Vec<u8>> {
        let path = std::env::var_os("WEDGE_SMOLLM2_GGUF").filter(|p| std::path::Path::new(p).is_file());
        if path.is_none() {
            wedge_testkit::unavailable(
                "WEDGE_REQUIRE_MODEL",
                "the browser's language model",
                "WEDGE_SMOLLM2_GGUF is not set",
            );
        }
        path.map(|p| std::fs::read(p).unwrap())
    }

    fn run(m: &mut WebLanguageModel) -> (String, Value) {
        let mut text = String::new();
        while let Some(t) = pollster::block_on(m.next()).unwrap() {
            text.push_str(serde_json::from_str::<Value>(&t).unwrap()["text"].as_str().unwrap());
        }
        (text, serde_json::from_str(&m.finish()).unwrap())
    }

    #[test]
    fn a_conversation_streams_tokens_as_the_library_generates_and_keeps_its_cache() {
        let Some(bytes) = smollm2() else { return };
        assert!(is_language_model(&bytes) && !is_language_model(b"WEDGE"));
        let mut m = pollster::block_on(WebLanguageModel::load(&bytes, DeviceRequest::Cpu, 256)).unwrap();
        assert_eq!(m.device(), "cpu");
        let info: Value = serde_json::from_str(&m.info()).unwrap();
        assert_eq!((info["architecture"].as_str(), info["ctx"].as_u64()), (Some("llama"), Some(256)));
        let prompt = m.chat_prompt(r#"[{"role": "user", "content": "What is the capital of France?"}]"#).unwrap();
        let lib = LanguageModel::from_gguf(&bytes, &Device::cpu(), LmOptions::default()).unwrap();
        let params = GenerateParams { max_tokens: 8, ..Default::default() };
        let mut g = lib.generate(&prompt, params).unwrap();
        let want: String = g.by_ref().map(|t| t.unwrap().text).collect();
        let (n, finish) = (g.tokens().len() as u64, g.finish_reason().unwrap().as_str());
        m.start(&prompt, r#"{"max_tokens": 8, "temperature": 0}"#).unwrap();
        let (text, end) = run(&mut m);
        assert_eq!(text, want);
        assert_eq!((end["completion_tokens"].as_u64(), end["cached_tokens"].as_u64()), (Some(n), Some(0)));
        assert_eq!(end["finish_reason"], finish);
        // the next turn reuses the first (its prompt and answer) from the cache
        let mut turn = prompt.clone();
        turn.extend(m.encode(&text).unwrap());
        turn.extend(m.encode(" And of Italy?").unwrap());
        m.start(&turn, r#"{"max_tokens": 2}"#).unwrap();
        let (_, end) = run(&mut m);
        assert!(end["cached_tokens"].as_u64().unwrap() >= prompt.len() as u64, "{end}");
        // an interrupted generation has no finish reason; a reset forgets the conversation
        m.start(&prompt, r#"{"max_tokens": 50}"#).unwrap();
        pollster::block_on(m.next()).unwrap().unwrap();
        assert_eq!(serde_json::from_str::<Value>(&m.finish()).unwrap()["finish_reason"], Value::Null);
        m.reset();
        m.start(&prompt, "{}").unwrap();
        assert_eq!(serde_json::from_str::<Value>(&m.finish()).unwrap()["cached_tokens"], 0);
        // bad input: clear errors, and the model still answers afterwards
        for (params, needle) in
            [(r#"{"temperature": "hot"}"#, "temperature"), ("[1]", "object"), (r#"{"stop": 3}"#, "stop")]
        {
            assert!(m.start(&prompt, params).unwrap_err().contains(needle), "{params}");
        }
        assert!(m.start(&vec![1; 300], "{}").unwrap_err().contains("300 tokens"));
        assert!(m.chat_prompt("[]").is_err() && m.chat_prompt(r#"[{"content": "x"}]"#).unwrap_err().contains("role"));
        m.start(&prompt, r#"{"max_tokens": 1}"#).unwrap();
        assert_eq!(run(&mut m).1["completion_tokens"], 1);
        assert!(pollster::block_on(WebLanguageModel::load(b"GGUF\x03\0\0\0", DeviceRequest::Cpu, 0)).is_err());
    }
}
