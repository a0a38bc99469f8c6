//! Language models in the browser: a GGUF file (or a decoder `.wedge` package) loaded onto the
//! wasm CPU backend (or WebGPU), one conversation kept in one key/value cache, and generation
//! a token at a time, each [`WebLanguageModel::next`] one step, so that the JS side can stream
//! tokens, yield to the page between them and stop whenever it likes.

use std::rc::Rc;

use serde_json::{Value, json};
use wedge::openai::{self, Endpoint, Logprobs, TokenLogprobs};
use wedge::{DecodeState, Device, GenerateParams, Generation, LanguageModel, LmOptions, SeqId};

use crate::DeviceRequest;

/// Positions of the conversation's cache when the caller gives none: the model's context, at
/// most this.
pub const DEFAULT_CTX: usize = 2048;

/// `max_tokens` when a request gives none (at most to the end of the context).
pub const DEFAULT_MAX_TOKENS: usize = 512;

/// A language model and its conversation, loaded for the browser.
pub struct WebLanguageModel {
    lm: Rc<LanguageModel>,
    device: Device,
    /// The conversation's cache, while no generation holds it.
    state: Option<DecodeState>,
    seq: SeqId,
    run: Option<Generation<'static>>,
    /// How the running generation reports log-probabilities, and the text offset of its next
    /// token (the legacy shape counts it).
    logprobs: Logprobs,
    offset: usize,
}

impl std::fmt::Debug for WebLanguageModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebLanguageModel").field("architecture", &self.lm.architecture()).finish_non_exhaustive()
    }
}

/// Whether a file holds a language model: a GGUF file, or a package of the decoder
/// architecture. `head` is the file's start (for a package, at least its prefix and header),
/// `file_len` its length.
pub fn is_language_model(head: &[u8], file_len: u64) -> bool {
    head.starts_with(b"GGUF")
        || crate::package_header(head, file_len).is_ok_and(|h| h.header.architecture == wedge::DECODER)
}

impl WebLanguageModel {
    /// Opens the device, loads the model (a GGUF file or a decoder package) with `options`
    /// (`fast_cpu`: the integer kernels on the CPU) and makes a cache of `ctx` positions (0: the
    /// model's context, at most [`DEFAULT_CTX`]).
    pub async fn load(
        bytes: &[u8],
        request: DeviceRequest,
        ctx: usize,
        options: LmOptions,
    ) -> Result<WebLanguageModel, String> {
        let device = request.open().await?;
        let lm = if bytes.starts_with(b"GGUF") {
            LanguageModel::from_gguf(bytes, &device, options)
        } else {
            LanguageModel::from_wedge(bytes, &device, options)
        }
        .map_err(|e| e.to_string())?;
        WebLanguageModel::with(lm, device, ctx)
    }

    /// [`WebLanguageModel::load`] of a GGUF file of `len` bytes read through `reader` a tensor
    /// at a time (in the browser: from the downloaded bytes, which stay outside the wasm heap,
    /// so the heap never holds the file beside the weights).
    pub async fn load_gguf<R: std::io::Read + std::io::Seek>(
        reader: R,
        len: u64,
        request: DeviceRequest,
        ctx: usize,
        options: LmOptions,
    ) -> Result<WebLanguageModel, String> {
        let device = request.open().await?;
        let lm = LanguageModel::from_gguf_reader(reader, len, &device, options);
        WebLanguageModel::with(lm.map_err(|e| e.to_string())?, device, ctx)
    }

    fn with(lm: LanguageModel, device: Device, ctx: usize) -> Result<WebLanguageModel, String> {
        let ctx = match (ctx, lm.config().context_length) {
            (0, 0) => DEFAULT_CTX,
            (0, m) => m.min(DEFAULT_CTX),
            (c, _) => c,
        };
        let mut state = lm.new_state(1, ctx).map_err(|e| e.to_string())?;
        let seq = state.add().ok_or("no sequence in a new cache")?;
        Ok(WebLanguageModel {
            lm: Rc::new(lm),
            device,
            state: Some(state),
            seq,
            run: None,
            logprobs: Logprobs::Off,
            offset: 0,
        })
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
            "fast": self.lm.options().fast_cpu,
            "formats": self.lm.formats().iter().map(|(f, n)| (f.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
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
        let messages = openai::messages(Some(&v))?;
        let vocab = self.lm.vocab();
        let text = vocab.render_chat(&messages, true).map_err(|e| e.to_string())?;
        vocab.encode(&text, true).map_err(|e| e.to_string())
    }

    /// Starts answering an OpenAI request (JSON): a chat (`messages`) or a completion
    /// (`prompt`), read by the server's own rules ([`openai::Request`]; one choice). The
    /// conversation's cache keeps what it shares with the prompt; a generation still running
    /// ends first. Returns what the caller needs to shape the answer, as JSON: `prompt_tokens`,
    /// `max_tokens`, `stream`, `include_usage`.
    pub fn start(&mut self, request: &str, endpoint: Endpoint) -> Result<String, String> {
        self.finish();
        let map = openai::object(request.as_bytes())?;
        let r = openai::Request::parse(&map, endpoint, self.lm.vocab(), 1)?;
        let ctx = self.state.as_ref().map_or(0, DecodeState::ctx);
        let prompt = r.prompt;
        if prompt.is_empty() || prompt.len() >= ctx {
            return Err(format!("the prompt has {} tokens; the context holds {ctx} (prompt and answer)", prompt.len()));
        }
        let max_tokens = r.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS).min(ctx - prompt.len());
        let params = GenerateParams { max_tokens, ..r.params };
        let state = match self.state.take() {
            Some(s) => s,
            None => self.fresh_state(ctx)?,
        };
        let run = self.lm.generate_owned(state, self.seq, &prompt, params).map_err(|e| e.to_string());
        match run {
            Ok(run) => self.run = Some(run),
            // (checked above, so not expected: the conversation starts afresh)
            Err(e) => {
                self.state = Some(self.fresh_state(ctx)?);
                return Err(e);
            }
        }
        self.logprobs = r.logprobs;
        self.offset = 0;
        Ok(json!({
            "prompt_tokens": prompt.len(),
            "max_tokens": max_tokens,
            "stream": r.stream,
            "include_usage": r.include_usage,
        })
        .to_string())
    }

    fn fresh_state(&mut self, ctx: usize) -> Result<DecodeState, String> {
        let mut state = self.lm.new_state(1, ctx).map_err(|e| e.to_string())?;
        self.seq = state.add().ok_or("no sequence in a new cache")?;
        Ok(state)
    }

    /// The next token as JSON (`{id, text, logprob, logprobs}`: `logprobs` in the shape of the
    /// request's endpoint, or null when not asked for), or `None` once the generation is over.
    pub async fn next(&mut self) -> Result<Option<String>, String> {
        let Some(run) = self.run.as_mut() else { return Ok(None) };
        match run.next_async().await {
            Some(Ok(t)) => {
                let logprobs = TokenLogprobs { vocab: self.lm.vocab(), mode: self.logprobs }.json(&[&t], self.offset);
                self.offset += t.text.len();
                Ok(Some(json!({"id": t.id, "text": t.text, "logprob": t.logprob, "logprobs": logprobs}).to_string()))
            }
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

/// The digest of a GGUF file: the hex SHA-256 of all its bytes, read through `reader` (as
/// `wedge serve` keys its caches). Browsers compute it with WebCrypto where they can.
pub fn gguf_digest<R: std::io::Read>(mut reader: R) -> Result<String, String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The JS API of language models (wasm32 only).
#[cfg(target_arch = "wasm32")]
pub mod bindings {
    use std::io::{Read, Seek, SeekFrom};

    use wasm_bindgen::prelude::*;
    use wedge::openai::Endpoint;

    use super::{DeviceRequest, WebLanguageModel};
    use crate::bindings::js_error;

    /// Bytes a page downloaded, read in pieces from outside the wasm heap.
    struct JsBytes {
        bytes: js_sys::Uint8Array,
        len: u64,
        pos: u64,
    }

    impl JsBytes {
        fn new(bytes: js_sys::Uint8Array) -> JsBytes {
            JsBytes { len: u64::from(bytes.length()), bytes, pos: 0 }
        }
    }

    impl Read for JsBytes {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
            if n > 0 {
                // (a Uint8Array's length is a u32 on wasm32, so these fit)
                let (from, to) = (self.pos as u32, (self.pos + n as u64) as u32);
                self.bytes.subarray(from, to).copy_to(&mut buf[..n]);
                self.pos += n as u64;
            }
            Ok(n)
        }
    }

    impl Seek for JsBytes {
        fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
            let pos = match to {
                SeekFrom::Start(p) => Some(p),
                SeekFrom::End(d) => self.len.checked_add_signed(d),
                SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            };
            self.pos =
                pos.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start"))?;
            Ok(self.pos)
        }
    }

    /// A language model and its conversation (`free()` releases it).
    #[wasm_bindgen(js_name = WasmLanguageModel)]
    #[derive(Debug)]
    pub struct LanguageModel {
        inner: WebLanguageModel,
    }

    /// Loads a GGUF file (read a tensor at a time from the page's bytes) or a decoder `.wedge`
    /// package onto `device`, with a conversation cache of `ctx` positions (0: the model's
    /// context, at most 2048); `fast`: the CPU's integer kernels.
    #[wasm_bindgen(js_name = loadLanguageModel)]
    pub async fn load_language_model(
        bytes: js_sys::Uint8Array,
        device: String,
        ctx: usize,
        fast: bool,
    ) -> Result<LanguageModel, JsError> {
        let request = DeviceRequest::parse(&device).map_err(js_error)?;
        let options = wedge::LmOptions { fast_cpu: fast, ..wedge::LmOptions::default() };
        let mut magic = [0u8; 4];
        if bytes.length() >= 4 {
            bytes.subarray(0, 4).copy_to(&mut magic);
        }
        let inner = if &magic == b"GGUF" {
            let reader = JsBytes::new(bytes);
            let len = reader.len;
            WebLanguageModel::load_gguf(reader, len, request, ctx, options).await
        } else {
            WebLanguageModel::load(&bytes.to_vec(), request, ctx, options).await
        };
        Ok(LanguageModel { inner: inner.map_err(js_error)? })
    }

    /// Whether the bytes hold a language model (a GGUF file, or a decoder package), from
    /// their start.
    #[wasm_bindgen(js_name = isLanguageModel)]
    pub fn is_language_model(bytes: &js_sys::Uint8Array) -> bool {
        let (head, len) = crate::bindings::head(bytes);
        super::is_language_model(&head, len)
    }

    /// The hex SHA-256 of a whole GGUF file.
    #[wasm_bindgen(js_name = ggufDigest)]
    pub fn gguf_digest(bytes: js_sys::Uint8Array) -> Result<String, JsError> {
        super::gguf_digest(JsBytes::new(bytes)).map_err(js_error)
    }

    #[wasm_bindgen(js_class = WasmLanguageModel)]
    impl LanguageModel {
        /// `webgpu` or `cpu`.
        #[wasm_bindgen(getter)]
        pub fn device(&self) -> String {
            self.inner.device().to_string()
        }

        /// The adapter, or why the CPU was chosen.
        #[wasm_bindgen(getter, js_name = deviceInfo)]
        pub fn device_info(&self) -> String {
            self.inner.device_info()
        }

        /// What the model is, as JSON.
        pub fn info(&self) -> String {
            self.inner.info()
        }

        /// Token ids of a text (no special tokens added).
        pub fn encode(&self, text: &str) -> Result<Vec<u32>, JsError> {
            self.inner.encode(text).map_err(js_error)
        }

        /// The text of token ids.
        pub fn decode(&self, ids: Vec<u32>) -> Result<String, JsError> {
            self.inner.decode(&ids).map_err(js_error)
        }

        /// The prompt ids of `[{role, content}]` (JSON) under the chat template.
        #[wasm_bindgen(js_name = chatPrompt)]
        pub fn chat_prompt(&self, messages: &str) -> Result<Vec<u32>, JsError> {
            self.inner.chat_prompt(messages).map_err(js_error)
        }

        /// Starts answering an OpenAI request (JSON), a chat or a completion.
        pub fn start(&mut self, request: &str, chat: bool) -> Result<String, JsError> {
            let endpoint = if chat { Endpoint::Chat } else { Endpoint::Completions };
            self.inner.start(request, endpoint).map_err(js_error)
        }

        /// The next token as JSON, or `undefined` once the generation is over.
        pub async fn next(&mut self) -> Result<Option<String>, JsError> {
            self.inner.next().await.map_err(js_error)
        }

        /// Ends the generation; its summary as JSON.
        pub fn finish(&mut self) -> String {
            self.inner.finish()
        }

        /// Forgets the conversation.
        pub fn reset(&mut self) {
            self.inner.reset();
        }
    }
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
    fn a_gguf_digest_is_the_files_sha256() {
        let want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(gguf_digest(&b"abc"[..]).unwrap(), want);
        let long = vec![7u8; (1 << 20) + 5]; // across the reading buffer's edge
        let hex: String = <sha2::Sha256 as sha2::Digest>::digest(&long).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(gguf_digest(std::io::Cursor::new(long)).unwrap(), hex);
    }

    fn chat(content: &str, rest: &str) -> String {
        format!(r#"{{"messages": [{{"role": "user", "content": "{content}"}}]{rest}}}"#)
    }

    #[test]
    fn a_conversation_streams_tokens_as_the_library_generates_and_keeps_its_cache() {
        let Some(bytes) = smollm2() else { return };
        assert!(is_language_model(&bytes, bytes.len() as u64) && !is_language_model(b"WEDGE", 5));
        let mut m =
            pollster::block_on(WebLanguageModel::load(&bytes, DeviceRequest::Cpu, 256, LmOptions::default())).unwrap();
        assert_eq!(m.device(), "cpu");
        let info: Value = serde_json::from_str(&m.info()).unwrap();
        assert_eq!((info["architecture"].as_str(), info["ctx"].as_u64()), (Some("llama"), Some(256)));
        assert!(info["formats"]["q4_1/g32"].as_u64().unwrap() > 0, "{info}");
        let question = "What is the capital of France?";
        let prompt = m.chat_prompt(&format!(r#"[{{"role": "user", "content": "{question}"}}]"#)).unwrap();
        let lib = LanguageModel::from_gguf(&bytes, &Device::cpu(), LmOptions::default()).unwrap();
        let params = GenerateParams { max_tokens: 8, ..Default::default() };
        let mut g = lib.generate(&prompt, params).unwrap();
        let want: String = g.by_ref().map(|t| t.unwrap().text).collect();
        let (n, finish) = (g.tokens().len() as u64, g.finish_reason().unwrap().as_str());
        let started =
            m.start(&chat(question, r#", "max_tokens": 8, "temperature": 0, "stream": true"#), Endpoint::Chat);
        let started: Value = serde_json::from_str(&started.unwrap()).unwrap();
        assert_eq!(started["prompt_tokens"].as_u64(), Some(prompt.len() as u64));
        assert_eq!((started["stream"].as_bool(), started["max_tokens"].as_u64()), (Some(true), Some(8)));
        let (text, end) = run(&mut m);
        assert_eq!(text, want);
        assert_eq!((end["completion_tokens"].as_u64(), end["cached_tokens"].as_u64()), (Some(n), Some(0)));
        assert_eq!(end["finish_reason"], finish);
        // the next turn reuses the first (its prompt and answer) from the cache
        let turn = format!(
            r#"{{"messages": [{{"role": "user", "content": "{question}"}}, {{"role": "assistant", "content": {}}},
               {{"role": "user", "content": "And of Italy?"}}], "max_tokens": 2, "logprobs": true, "top_logprobs": 2}}"#,
            Value::String(text.clone())
        );
        m.start(&turn, Endpoint::Chat).unwrap();
        let first: Value = serde_json::from_str(&pollster::block_on(m.next()).unwrap().unwrap()).unwrap();
        assert_eq!(first["logprobs"]["content"][0]["top_logprobs"].as_array().map(Vec::len), Some(2), "{first}");
        let (_, end) = run(&mut m);
        assert!(end["cached_tokens"].as_u64().unwrap() >= prompt.len() as u64, "{end}");
        // a completion; an interrupted generation has no finish reason; a reset forgets the
        // conversation
        m.start(r#"{"prompt": "Once upon a time", "max_tokens": 50}"#, Endpoint::Completions).unwrap();
        pollster::block_on(m.next()).unwrap().unwrap();
        assert_eq!(serde_json::from_str::<Value>(&m.finish()).unwrap()["finish_reason"], Value::Null);
        m.reset();
        m.start(&chat(question, ""), Endpoint::Chat).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&m.finish()).unwrap()["cached_tokens"], 0);
        // bad input: errors that name the field, and the model still answers afterwards
        for (request, needle) in [
            (chat(question, r#", "temperature": "hot""#), "temperature"),
            ("[1]".into(), "object"),
            (chat(question, r#", "stop": 3"#), "stop"),
            (chat(question, r#", "n": 2"#), "`n`"),
            (r#"{"messages": []}"#.into(), "messages"),
            (r#"{"messages": [{"content": "x"}]}"#.into(), "role"),
        ] {
            let err = m.start(&request, Endpoint::Chat).unwrap_err();
            assert!(err.contains(needle), "{request}: {err}");
        }
        let long = format!(r#"{{"prompt": {:?}}}"#, vec![1; 300]);
        assert!(m.start(&long, Endpoint::Completions).unwrap_err().contains("300 tokens"));
        m.start(&chat(question, r#", "max_tokens": 1"#), Endpoint::Chat).unwrap();
        assert_eq!(run(&mut m).1["completion_tokens"], 1);
        assert!(
            pollster::block_on(WebLanguageModel::load(b"GGUF\x03\0\0\0", DeviceRequest::Cpu, 0, LmOptions::default()))
                .is_err()
        );
        let reader = std::io::Cursor::new(&bytes[..bytes.len() / 2]);
        let half = pollster::block_on(WebLanguageModel::load_gguf(
            reader,
            bytes.len() as u64 / 2,
            DeviceRequest::Cpu,
            0,
            LmOptions::default(),
        ));
        assert!(half.unwrap_err().contains("truncated"));
    }
}
