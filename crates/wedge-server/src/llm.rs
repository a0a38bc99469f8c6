//! The OpenAI text-generation API: `POST /v1/chat/completions` and `POST /v1/completions`,
//! streamed as server-sent events or answered whole, and `POST /tokenize` / `/detokenize`.
//! Every field is read by name from the JSON object, so a bad value gets a 400 that names it;
//! fields this server does not know are ignored, as OpenAI's own server does.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde_json::{Map, Value, json};
use wedge::{ChatMessage, FinishReason, GenerateParams, SamplingParams, TokenEvent, Vocab};
use wedge_serve::{CachePolicy, GenEvent, Generation, ServeError, ServedModel, Service, Usage};

/// Which endpoint a request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Chat,
    Completions,
}

/// How log-probabilities are reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Logprobs {
    Off,
    /// Chat: `logprobs: true` with `top_logprobs` alternatives.
    Chat(usize),
    /// Completions: `logprobs: N` (the legacy shape).
    Legacy(usize),
}

/// A parsed generation request.
pub(crate) struct GenRequest {
    pub(crate) endpoint: Endpoint,
    pub(crate) model: Arc<ServedModel>,
    pub(crate) prompt: Vec<u32>,
    pub(crate) params: GenerateParams,
    pub(crate) n: usize,
    pub(crate) stream: bool,
    include_usage: bool,
    logprobs: Logprobs,
}

fn bad(msg: String) -> ServeError {
    ServeError::BadInput(msg)
}

/// Reads typed fields of a JSON object, naming the field in every error.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    /// A field's value; JSON `null` counts as absent.
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn number(&self, name: &str, lo: f64, hi: f64) -> Result<Option<f32>, ServeError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if (lo..=hi).contains(&x) => Ok(Some(x as f32)),
                Some(x) => Err(bad(format!("`{name}` is {x}; it must be between {lo} and {hi}"))),
                None => Err(bad(format!("`{name}` must be a number, got {v}"))),
            },
        }
    }

    fn integer(&self, name: &str, lo: i64, hi: i64) -> Result<Option<i64>, ServeError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.as_i64() {
                Some(x) if (lo..=hi).contains(&x) => Ok(Some(x)),
                Some(x) => Err(bad(format!("`{name}` is {x}; it must be between {lo} and {hi}"))),
                None => Err(bad(format!("`{name}` must be an integer, got {v}"))),
            },
        }
    }

    fn boolean(&self, name: &str) -> Result<Option<bool>, ServeError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(bad(format!("`{name}` must be true or false, got {v}"))),
        }
    }

    fn string(&self, name: &str) -> Result<Option<&str>, ServeError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(bad(format!("`{name}` must be a string, got {v}"))),
        }
    }
}

fn object(body: &[u8]) -> Result<Map<String, Value>, ServeError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad("the body must be a JSON object".into())),
        Err(e) => Err(bad(format!("invalid JSON body: {e}"))),
    }
}

/// The model a request names, or the first language model when it names none.
fn language_model(service: &Service, f: &Fields<'_>) -> Result<Arc<ServedModel>, ServeError> {
    match f.string("model")? {
        Some(name) => service.model(name),
        None => service.models().iter().find(|m| m.language().is_ok()).cloned().ok_or_else(|| {
            if service.ready() { bad("no language model is served here".into()) } else { ServeError::NotReady }
        }),
    }
}

/// The text of a chat message's `content`: a string, or an array of `{"type": "text"}` parts.
fn content_text(v: Option<&Value>, at: &str) -> Result<String, ServeError> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    (kind, _) => {
                        return Err(bad(format!(
                            "`{at}.content[{j}]` is a `{}` part; this model takes text parts only",
                            kind.unwrap_or("?")
                        )));
                    }
                }
            }
            Ok(text)
        }
        Some(v) => Err(bad(format!("`{at}.content` must be a string or an array of parts, got {v}"))),
    }
}

fn messages(v: Option<&Value>) -> Result<Vec<ChatMessage>, ServeError> {
    let Some(Value::Array(items)) = v else {
        return Err(bad("`messages` must be a non-empty array of {role, content}".into()));
    };
    if items.is_empty() {
        return Err(bad("`messages` is empty".into()));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let at = format!("messages[{i}]");
            let role = m.get("role").and_then(Value::as_str).ok_or_else(|| bad(format!("`{at}.role` is missing")))?;
            Ok(ChatMessage::new(role, &content_text(m.get("content"), &at)?))
        })
        .collect()
}

fn token_ids(v: &[Value], vocab: &Vocab, name: &str) -> Result<Vec<u32>, ServeError> {
    v.iter()
        .enumerate()
        .map(|(i, x)| match x.as_u64() {
            Some(id) if (id as usize) < vocab.len() => Ok(id as u32),
            _ => Err(bad(format!("`{name}[{i}]` is {x}: token ids go from 0 to {}", vocab.len().saturating_sub(1)))),
        })
        .collect()
}

/// A completions `prompt`: a string, or token ids (also as a one-element array of either).
fn completion_prompt(v: Option<&Value>, vocab: &Vocab) -> Result<Vec<u32>, ServeError> {
    let enc = |s: &str| vocab.encode(s, false).map_err(|e| bad(format!("`prompt`: {e}")));
    match v {
        Some(Value::String(s)) => enc(s),
        Some(Value::Array(a)) if a.len() == 1 && (a[0].is_string() || a[0].is_array()) => match &a[0] {
            Value::String(s) => enc(s),
            Value::Array(ids) => token_ids(ids, vocab, "prompt[0]"),
            _ => unreachable!("checked above"),
        },
        Some(Value::Array(a)) if a.iter().all(Value::is_number) && !a.is_empty() => token_ids(a, vocab, "prompt"),
        Some(Value::Array(_)) => {
            Err(bad("`prompt`: one prompt per request (a string or an array of token ids)".into()))
        }
        _ => Err(bad("`prompt` must be a string or an array of token ids".into())),
    }
}

fn stop_strings(v: Option<&Value>) -> Result<Vec<String>, ServeError> {
    let list = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| {
                s.as_str().map(str::to_string).ok_or_else(|| bad(format!("`stop` entries must be strings, got {s}")))
            })
            .collect::<Result<_, _>>()?,
        Some(v) => return Err(bad(format!("`stop` must be a string or an array of strings, got {v}"))),
    };
    if list.len() > 16 || list.iter().any(|s| s.len() > 256) {
        return Err(bad("`stop`: at most 16 strings of at most 256 bytes".into()));
    }
    Ok(list)
}

fn logit_bias(v: Option<&Value>, vocab: &Vocab) -> Result<Vec<(u32, f32)>, ServeError> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(Vec::new()) };
    let Value::Object(m) = v else {
        return Err(bad(format!("`logit_bias` must be an object of token id → bias, got {v}")));
    };
    m.iter()
        .map(|(k, b)| {
            let id: u32 = k.parse().ok().filter(|&id: &u32| (id as usize) < vocab.len()).ok_or_else(|| {
                bad(format!("`logit_bias`: `{k}` is not a token id (0 to {})", vocab.len().saturating_sub(1)))
            })?;
            match b.as_f64() {
                Some(x) if (-100.0..=100.0).contains(&x) => Ok((id, x as f32)),
                _ => Err(bad(format!("`logit_bias[{k}]` must be a number from -100 to 100, got {b}"))),
            }
        })
        .collect()
}

impl GenRequest {
    /// Parses and checks a request body for `endpoint`.
    pub(crate) fn parse(
        service: &Service,
        endpoint: Endpoint,
        body: &[u8],
        max_choices: usize,
    ) -> Result<GenRequest, ServeError> {
        let map = object(body)?;
        let f = Fields(&map);
        let model = language_model(service, &f)?;
        let served = model.language()?;
        let vocab = served.model().vocab();
        let prompt = match endpoint {
            Endpoint::Chat => {
                let msgs = messages(f.get("messages"))?;
                let text = vocab.render_chat(&msgs, true).map_err(|e| bad(format!("`messages`: {e}")))?;
                vocab.encode(&text, true).map_err(|e| bad(format!("`messages`: {e}")))?
            }
            Endpoint::Completions => {
                for unsupported in ["suffix", "echo"] {
                    if f.get(unsupported).is_some_and(|v| *v != Value::Bool(false) && v.as_str() != Some("")) {
                        return Err(bad(format!("`{unsupported}` is not supported")));
                    }
                }
                completion_prompt(f.get("prompt"), vocab)?
            }
        };
        served.scheduler().check_prompt(prompt.len())?;
        let ctx = served.scheduler().limits().ctx;
        let max = f.integer("max_completion_tokens", 1, i64::MAX)?.or(f.integer("max_tokens", 1, i64::MAX)?);
        let max_tokens = max.map_or(served.default_max_tokens(), |m| m as usize).min(ctx - prompt.len());
        let temperature = f.number("temperature", 0.0, 2.0)?.unwrap_or(1.0);
        let top_k = f.integer("top_k", -1, i64::from(u32::MAX))?.unwrap_or(0).max(0) as usize;
        let sampling = SamplingParams {
            temperature,
            top_k,
            top_p: f.number("top_p", f64::MIN_POSITIVE, 1.0)?.unwrap_or(1.0),
            min_p: f.number("min_p", 0.0, 1.0)?.unwrap_or(0.0),
            repetition_penalty: f.number("repetition_penalty", f64::MIN_POSITIVE, 100.0)?.unwrap_or(1.0),
            presence_penalty: f.number("presence_penalty", -2.0, 2.0)?.unwrap_or(0.0),
            frequency_penalty: f.number("frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0),
            logit_bias: logit_bias(f.get("logit_bias"), vocab)?,
            seed: f.integer("seed", i64::MIN, i64::MAX)?.map(|s| s as u64),
        };
        let logprobs = match endpoint {
            Endpoint::Chat => match (f.boolean("logprobs")?, f.integer("top_logprobs", 0, 20)?) {
                (Some(true), top) => Logprobs::Chat(top.unwrap_or(0) as usize),
                (_, Some(t)) if t > 0 => return Err(bad("`top_logprobs` needs `logprobs: true`".into())),
                _ => Logprobs::Off,
            },
            Endpoint::Completions => match f.integer("logprobs", 0, 20)? {
                Some(n) => Logprobs::Legacy(n as usize),
                None => Logprobs::Off,
            },
        };
        let top_logprobs = match logprobs {
            Logprobs::Off => 0,
            Logprobs::Chat(n) | Logprobs::Legacy(n) => n,
        };
        let n = f.integer("n", 1, max_choices as i64)?.unwrap_or(1) as usize;
        if f.integer("best_of", 1, 1).is_err() {
            return Err(bad("`best_of` above 1 is not supported".into()));
        }
        f.string("user")?;
        let include_usage = match f.get("stream_options") {
            None => false,
            Some(Value::Object(o)) => Fields(o).boolean("include_usage")?.unwrap_or(false),
            Some(v) => return Err(bad(format!("`stream_options` must be an object, got {v}"))),
        };
        let params = GenerateParams {
            max_tokens,
            sampling,
            stop: stop_strings(f.get("stop"))?,
            stop_at_eos: !f.boolean("ignore_eos")?.unwrap_or(false),
            top_logprobs,
            ..GenerateParams::default()
        };
        Ok(GenRequest {
            endpoint,
            model,
            prompt,
            params,
            n,
            stream: f.boolean("stream")?.unwrap_or(false),
            include_usage,
            logprobs,
        })
    }

    /// Submits the request's `n` choices (choice `i` seeded with `seed + i`), each answered
    /// from the completion cache when it can be.
    pub(crate) async fn submit(&self, service: &Service, policy: CachePolicy) -> Result<Vec<Generation>, ServeError> {
        let mut choices = Vec::with_capacity(self.n);
        for i in 0..self.n {
            let mut params = self.params.clone();
            params.sampling.seed = params.sampling.seed.map(|s| s.wrapping_add(i as u64));
            choices.push(service.generate(&self.model, self.prompt.clone(), params, policy).await?);
        }
        Ok(choices)
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

/// The choices' usage together: the prompt counted once, as OpenAI does for `n` > 1.
fn total_usage(all: &[Usage]) -> Usage {
    Usage {
        prompt_tokens: all.first().map_or(0, |u| u.prompt_tokens),
        cached_tokens: all.first().map_or(0, |u| u.cached_tokens),
        completion_tokens: all.iter().map(|u| u.completion_tokens).sum(),
    }
}

/// What one response (or one chunk) says about some tokens' log-probabilities.
struct TokenLogprobs<'a> {
    vocab: &'a Vocab,
    mode: Logprobs,
}

impl TokenLogprobs<'_> {
    fn text(&self, id: u32) -> String {
        self.vocab.decode(&[id]).unwrap_or_default()
    }

    /// `logprobs` of a choice for `tokens`, or `null` when not asked for.
    fn json(&self, tokens: &[&TokenEvent], offset0: usize) -> Value {
        match self.mode {
            Logprobs::Off => Value::Null,
            Logprobs::Chat(_) => {
                let entry = |id: u32, lp: f32| {
                    let t = self.text(id);
                    json!({"token": t, "logprob": lp, "bytes": t.as_bytes()})
                };
                let content: Vec<Value> = tokens
                    .iter()
                    .map(|e| {
                        let mut v = entry(e.id, e.logprob);
                        v["top_logprobs"] = e.top_logprobs.iter().map(|&(id, lp)| entry(id, lp)).collect();
                        v
                    })
                    .collect();
                json!({ "content": content })
            }
            Logprobs::Legacy(_) => {
                let mut offset = offset0;
                let mut offsets = Vec::new();
                for e in tokens {
                    offsets.push(offset);
                    offset += e.text.len();
                }
                json!({
                    "tokens": tokens.iter().map(|e| self.text(e.id)).collect::<Vec<_>>(),
                    "token_logprobs": tokens.iter().map(|e| e.logprob).collect::<Vec<_>>(),
                    "top_logprobs": tokens.iter().map(|e| {
                        e.top_logprobs.iter().map(|&(id, lp)| (self.text(id), json!(lp))).collect::<Map<_, _>>()
                    }).collect::<Vec<_>>(),
                    "text_offset": offsets,
                })
            }
        }
    }
}

/// One choice, collected whole.
#[derive(Default)]
struct Collected {
    text: String,
    tokens: Vec<TokenEvent>,
    finish: Option<FinishReason>,
    usage: Usage,
}

/// Waits for every choice and answers with one JSON body.
pub(crate) async fn complete(req: &GenRequest, receivers: Vec<Generation>, id: &str) -> Result<Vec<u8>, ServeError> {
    let collect = |mut rx: Generation| async move {
        let mut c = Collected::default();
        while let Some(e) = rx.recv().await {
            match e {
                GenEvent::Token(t) => {
                    c.text.push_str(&t.text);
                    c.tokens.push(t);
                }
                GenEvent::Done { finish, usage } => {
                    c.finish = Some(finish);
                    c.usage = usage;
                }
                GenEvent::Failed(e) => return Err(e),
            }
        }
        c.finish.ok_or(ServeError::ShuttingDown).map(|_| c)
    };
    let choices = futures_util::future::try_join_all(receivers.into_iter().map(collect)).await?;
    let vocab = req.model.language()?.model().vocab();
    let lp = TokenLogprobs { vocab, mode: req.logprobs };
    let usage = total_usage(&choices.iter().map(|c| c.usage).collect::<Vec<_>>());
    let finish = |c: &Collected| c.finish.map_or("stop", FinishReason::as_str);
    let body = match req.endpoint {
        Endpoint::Chat => json!({
            "id": format!("chatcmpl-{id}"),
            "object": "chat.completion",
            "created": unix_now(),
            "model": req.model.name,
            "choices": choices.iter().enumerate().map(|(i, c)| json!({
                "index": i,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": lp.json(&c.tokens.iter().collect::<Vec<_>>(), 0),
                "finish_reason": finish(c),
            })).collect::<Vec<_>>(),
            "usage": usage_json(&usage),
        }),
        Endpoint::Completions => json!({
            "id": format!("cmpl-{id}"),
            "object": "text_completion",
            "created": unix_now(),
            "model": req.model.name,
            "choices": choices.iter().enumerate().map(|(i, c)| json!({
                "index": i,
                "text": c.text,
                "logprobs": lp.json(&c.tokens.iter().collect::<Vec<_>>(), 0),
                "finish_reason": finish(c),
            })).collect::<Vec<_>>(),
            "usage": usage_json(&usage),
        }),
    };
    serde_json::to_vec(&body).map_err(|e| ServeError::Inference(e.to_string()))
}

/// The events of every choice, tagged with the choice's index, as they come.
fn merged(receivers: Vec<Generation>) -> BoxStream<'static, (usize, GenEvent)> {
    let streams = receivers.into_iter().enumerate().map(|(i, rx)| {
        futures_util::stream::unfold(rx, move |mut rx| async move { rx.recv().await.map(|e| ((i, e), rx)) }).boxed()
    });
    futures_util::stream::select_all(streams).boxed()
}

/// A streamed answer: server-sent events, once the first event is in (so that a request
/// that fails before its first token gets a plain HTTP error instead).
pub(crate) struct EventStream {
    first: Option<(usize, GenEvent)>,
    rest: BoxStream<'static, (usize, GenEvent)>,
}

impl EventStream {
    /// Waits for the first event; an error there is the request's error.
    pub(crate) async fn start(receivers: Vec<Generation>) -> Result<EventStream, ServeError> {
        let mut rest = merged(receivers);
        match rest.next().await {
            Some((_, GenEvent::Failed(e))) => Err(e),
            Some(first) => Ok(EventStream { first: Some(first), rest }),
            None => Err(ServeError::ShuttingDown),
        }
    }

    /// The SSE frames of the whole answer: a role delta per chat choice first, a chunk per
    /// released text, a last chunk per choice with its `finish_reason`, the usage chunk when
    /// asked, then `[DONE]`. A failure becomes an error event and ends the stream.
    pub(crate) fn frames(self, req: &GenRequest, id: &str) -> BoxStream<'static, Bytes> {
        let chunk = ChunkWriter {
            endpoint: req.endpoint,
            id: match req.endpoint {
                Endpoint::Chat => format!("chatcmpl-{id}"),
                Endpoint::Completions => format!("cmpl-{id}"),
            },
            created: unix_now(),
            model: req.model.name.clone(),
            include_usage: req.include_usage,
            logprobs: req.logprobs,
        };
        let model = req.model.clone();
        let n = req.n;
        let head: Vec<Bytes> = match req.endpoint {
            Endpoint::Chat => {
                (0..n).map(|i| chunk.frame(i, json!({"role": "assistant", "content": ""}), None)).collect()
            }
            Endpoint::Completions => Vec::new(),
        };
        let events = futures_util::stream::iter(self.first).chain(self.rest);
        let state = (events, chunk, model, vec![None::<Usage>; n], vec![0usize; n], false);
        let body = futures_util::stream::unfold(
            state,
            |(mut events, chunk, model, mut usage, mut offsets, done)| async move {
                if done {
                    return None;
                }
                let out = match events.next().await {
                    Some((i, GenEvent::Token(t))) => {
                        let lp = match model.language() {
                            Ok(l) => {
                                TokenLogprobs { vocab: l.model().vocab(), mode: chunk.logprobs }.json(&[&t], offsets[i])
                            }
                            Err(_) => Value::Null,
                        };
                        offsets[i] += t.text.len();
                        if t.text.is_empty() && lp.is_null() { Bytes::new() } else { chunk.content(i, &t.text, lp) }
                    }
                    Some((i, GenEvent::Done { finish, usage: u })) => {
                        usage[i] = Some(u);
                        let mut out = chunk.finish(i, finish).to_vec();
                        if usage.iter().all(Option::is_some) {
                            if chunk.include_usage {
                                let all: Vec<Usage> = usage.iter().flatten().copied().collect();
                                out.extend_from_slice(&chunk.usage(&total_usage(&all)));
                            }
                            out.extend_from_slice(b"data: [DONE]\n\n");
                            return Some((Bytes::from(out), (events, chunk, model, usage, offsets, true)));
                        }
                        Bytes::from(out)
                    }
                    Some((_, GenEvent::Failed(e))) => {
                        let ev = json!({"error": {"message": e.to_string(), "type": "server_error"}});
                        return Some((sse(&ev), (events, chunk, model, usage, offsets, true)));
                    }
                    None => return None,
                };
                Some((out, (events, chunk, model, usage, offsets, false)))
            },
        );
        futures_util::stream::iter(head).chain(body).filter(|b| std::future::ready(!b.is_empty())).boxed()
    }
}

fn sse(v: &Value) -> Bytes {
    let mut out = b"data: ".to_vec();
    // (serializing a Value cannot fail)
    out.extend_from_slice(&serde_json::to_vec(v).unwrap_or_default());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// Writes the chunks of one streamed answer.
struct ChunkWriter {
    endpoint: Endpoint,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    logprobs: Logprobs,
}

impl ChunkWriter {
    fn object(&self) -> &'static str {
        match self.endpoint {
            Endpoint::Chat => "chat.completion.chunk",
            Endpoint::Completions => "text_completion",
        }
    }

    fn frame(&self, index: usize, delta: Value, finish: Option<FinishReason>) -> Bytes {
        self.frame_lp(index, delta, finish, Value::Null)
    }

    fn frame_lp(&self, index: usize, delta: Value, finish: Option<FinishReason>, logprobs: Value) -> Bytes {
        let finish = finish.map(FinishReason::as_str);
        let choice = match self.endpoint {
            Endpoint::Chat => json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}),
            Endpoint::Completions => json!({
                "index": index,
                "text": delta.get("content").and_then(Value::as_str).unwrap_or(""),
                "logprobs": logprobs,
                "finish_reason": finish,
            }),
        };
        let mut v = json!({
            "id": self.id,
            "object": self.object(),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        sse(&v)
    }

    fn content(&self, index: usize, text: &str, logprobs: Value) -> Bytes {
        self.frame_lp(index, json!({"content": text}), None, logprobs)
    }

    fn finish(&self, index: usize, finish: FinishReason) -> Bytes {
        self.frame(index, json!({}), Some(finish))
    }

    fn usage(&self, u: &Usage) -> Bytes {
        sse(&json!({
            "id": self.id,
            "object": self.object(),
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage_json(u),
        }))
    }
}

/// `POST /tokenize`: `{"model", "prompt"}` (or llama.cpp's `"content"`), or `{"model",
/// "messages"}` rendered with the chat template; `add_special_tokens` (default true) adds BOS.
pub(crate) fn tokenize(service: &Service, body: &[u8]) -> Result<Vec<u8>, ServeError> {
    let map = object(body)?;
    let f = Fields(&map);
    let model = language_model(service, &f)?;
    let served = model.language()?;
    let vocab = served.model().vocab();
    let special = f.boolean("add_special_tokens")?.unwrap_or(true);
    let mut ids = if f.get("messages").is_some() {
        let msgs = messages(f.get("messages"))?;
        let add = f.boolean("add_generation_prompt")?.unwrap_or(true);
        let text = vocab.render_chat(&msgs, add).map_err(|e| bad(format!("`messages`: {e}")))?;
        vocab.encode(&text, true).map_err(|e| bad(e.to_string()))?
    } else {
        let text = match (f.string("prompt")?, f.string("content")?) {
            (Some(t), _) | (None, Some(t)) => t,
            (None, None) => return Err(bad("give `prompt` (text) or `messages`".into())),
        };
        vocab.encode(text, false).map_err(|e| bad(e.to_string()))?
    };
    if !special && vocab.bos().is_some() && ids.first() == vocab.bos().as_ref() {
        ids.remove(0);
    }
    let body = json!({"tokens": ids, "count": ids.len(), "max_model_len": served.scheduler().limits().ctx});
    serde_json::to_vec(&body).map_err(|e| ServeError::Inference(e.to_string()))
}

/// `POST /detokenize`: `{"model", "tokens": [ids]}` → `{"prompt": text}` (also as `content`).
pub(crate) fn detokenize(service: &Service, body: &[u8]) -> Result<Vec<u8>, ServeError> {
    let map = object(body)?;
    let f = Fields(&map);
    let model = language_model(service, &f)?;
    let vocab = model.language()?.model().vocab();
    let Some(Value::Array(ids)) = f.get("tokens") else {
        return Err(bad("`tokens` must be an array of token ids".into()));
    };
    let text = vocab.decode(&token_ids(ids, vocab, "tokens")?).map_err(|e| bad(e.to_string()))?;
    serde_json::to_vec(&json!({"prompt": text, "content": text})).map_err(|e| ServeError::Inference(e.to_string()))
}
