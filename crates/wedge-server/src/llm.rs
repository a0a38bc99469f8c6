//! The OpenAI text-generation API: `POST /v1/chat/completions` and `POST /v1/completions`,
//! streamed as server-sent events or answered whole, and `POST /tokenize` / `/detokenize`.
//! Every field is read by name from the JSON object, so a bad value gets a 400 that names it;
//! fields this server does not know are ignored, as OpenAI's own server does.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde_json::{Value, json};
pub(crate) use wedge::openai::Endpoint;
use wedge::openai::{Fields, Logprobs, Request, TokenLogprobs, messages, object, token_ids};
use wedge::{FinishReason, GenerateParams, TokenEvent};
use wedge_serve::{CachePolicy, Caller, GenEvent, Generation, ServeError, ServedModel, Service, Usage};

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

/// The model a request names, or the first language model when it names none (loaded
/// first if it is not); of a model with several versions, the one the request's `user` (else
/// the caller) is routed to.
async fn language_model(service: &Service, f: &Fields<'_>, caller: &Caller) -> Result<Arc<ServedModel>, ServeError> {
    let user = f.string("user").map_err(bad)?;
    match f.string("model").map_err(bad)? {
        Some(name) => service.model_for(name, caller, user, None).await,
        None => service.default_model(true, caller, user).await,
    }
}

impl GenRequest {
    /// Parses and checks a request body for `endpoint`.
    pub(crate) async fn parse(
        service: &Service,
        endpoint: Endpoint,
        body: &[u8],
        max_choices: usize,
        caller: &Caller,
    ) -> Result<GenRequest, ServeError> {
        let map = object(body).map_err(bad)?;
        let f = Fields(&map);
        let model = language_model(service, &f, caller).await?;
        let served = model.language()?;
        let r = Request::parse(&map, endpoint, served.model().vocab(), max_choices).map_err(bad)?;
        served.scheduler().check_prompt(r.prompt.len())?;
        let ctx = served.scheduler().limits().ctx;
        let max_tokens = r.max_tokens.unwrap_or(served.default_max_tokens()).min(ctx - r.prompt.len());
        Ok(GenRequest {
            endpoint,
            model,
            prompt: r.prompt,
            params: GenerateParams { max_tokens, ..r.params },
            n: r.n,
            stream: r.stream,
            include_usage: r.include_usage,
            logprobs: r.logprobs,
        })
    }

    /// Submits the request's `n` choices (choice `i` seeded with `seed + i`), each answered
    /// from the completion cache when it can be.
    pub(crate) async fn submit(
        &self,
        service: &Service,
        caller: &Caller,
        policy: CachePolicy,
    ) -> Result<Vec<Generation>, ServeError> {
        let mut choices = Vec::with_capacity(self.n);
        for i in 0..self.n {
            let mut params = self.params.clone();
            params.sampling.seed = params.sampling.seed.map(|s| s.wrapping_add(i as u64));
            choices.push(service.generate(caller, &self.model, self.prompt.clone(), params, policy).await?);
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

    /// The SSE frames of the whole answer, as [`SseWriter`] writes them.
    pub(crate) fn frames(self, req: &GenRequest, id: &str) -> BoxStream<'static, Bytes> {
        let model = req.model.clone();
        let writer = SseWriter::new(req.endpoint, id, &req.model.name, req.n, req.include_usage, req.logprobs);
        let head = writer.head();
        let events = futures_util::stream::iter(self.first).chain(self.rest);
        let body =
            futures_util::stream::unfold((events, writer, model), |(mut events, mut writer, model)| async move {
                if writer.is_done() {
                    return None;
                }
                let (i, event) = events.next().await?;
                let vocab = model.language().ok().map(|l| l.model().vocab());
                let out = writer.event(i, event, vocab);
                Some((out, (events, writer, model)))
            });
        futures_util::stream::iter(head).chain(body).filter(|b| std::future::ready(!b.is_empty())).boxed()
    }
}

/// Writes a streamed answer's server-sent events from its choices' events: a role delta per
/// chat choice first, a chunk per released text, a last chunk per choice with its
/// `finish_reason`, the usage chunk when asked, then `[DONE]`. A failure becomes an error event
/// and ends the stream.
pub(crate) struct SseWriter {
    chunk: ChunkWriter,
    n: usize,
    usage: Vec<Option<Usage>>,
    /// Text bytes sent so far per choice (the logprobs' `text_offset`).
    offsets: Vec<usize>,
    done: bool,
}

impl SseWriter {
    /// A writer for `n` choices of a request to `endpoint`, answer id `id`, from `model`.
    pub(crate) fn new(
        endpoint: Endpoint,
        id: &str,
        model: &str,
        n: usize,
        include_usage: bool,
        logprobs: Logprobs,
    ) -> SseWriter {
        let chunk = ChunkWriter {
            endpoint,
            id: match endpoint {
                Endpoint::Chat => format!("chatcmpl-{id}"),
                Endpoint::Completions => format!("cmpl-{id}"),
            },
            created: unix_now(),
            model: model.to_string(),
            include_usage,
            logprobs,
        };
        SseWriter { chunk, n, usage: vec![None; n], offsets: vec![0; n], done: false }
    }

    /// The frames before any event: the chat choices' role deltas.
    pub(crate) fn head(&self) -> Vec<Bytes> {
        match self.chunk.endpoint {
            Endpoint::Chat => {
                (0..self.n).map(|i| self.chunk.frame(i, json!({"role": "assistant", "content": ""}), None)).collect()
            }
            Endpoint::Completions => Vec::new(),
        }
    }

    /// Whether the stream has ended (`[DONE]` or an error event written).
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// The frames of choice `i`'s `event` (possibly none); `vocab` spells the log-probabilities'
    /// tokens. Events after the end, or of a choice this writer does not have, write nothing.
    pub(crate) fn event(&mut self, i: usize, event: GenEvent, vocab: Option<&wedge::Vocab>) -> Bytes {
        if self.done || i >= self.n {
            return Bytes::new();
        }
        match event {
            GenEvent::Token(t) => {
                let lp = match vocab {
                    Some(vocab) => TokenLogprobs { vocab, mode: self.chunk.logprobs }.json(&[&t], self.offsets[i]),
                    None => Value::Null,
                };
                self.offsets[i] += t.text.len();
                if t.text.is_empty() && lp.is_null() { Bytes::new() } else { self.chunk.content(i, &t.text, lp) }
            }
            GenEvent::Done { finish, usage } => {
                self.usage[i] = Some(usage);
                let mut out = self.chunk.finish(i, finish).to_vec();
                if self.usage.iter().all(Option::is_some) {
                    if self.chunk.include_usage {
                        let all: Vec<Usage> = self.usage.iter().flatten().copied().collect();
                        out.extend_from_slice(&self.chunk.usage(&total_usage(&all)));
                    }
                    out.extend_from_slice(b"data: [DONE]\n\n");
                    self.done = true;
                }
                Bytes::from(out)
            }
            GenEvent::Failed(e) => {
                self.done = true;
                sse(&json!({"error": {"message": e.to_string(), "type": "server_error"}}))
            }
        }
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
pub(crate) async fn tokenize(service: &Service, body: &[u8], caller: &Caller) -> Result<Vec<u8>, ServeError> {
    let map = object(body).map_err(bad)?;
    let f = Fields(&map);
    let model = language_model(service, &f, caller).await?;
    let served = model.language()?;
    let ids = token_ids_of(&f, served.model().vocab())?;
    let body = json!({"tokens": ids, "count": ids.len(), "max_model_len": served.scheduler().limits().ctx});
    serde_json::to_vec(&body).map_err(|e| ServeError::Inference(e.to_string()))
}

/// The token ids `/tokenize` answers for a request's fields.
pub(crate) fn token_ids_of(f: &Fields<'_>, vocab: &wedge::Vocab) -> Result<Vec<u32>, ServeError> {
    let special = f.boolean("add_special_tokens").map_err(bad)?.unwrap_or(true);
    let mut ids = if f.get("messages").is_some() {
        let msgs = messages(f.get("messages")).map_err(bad)?;
        let add = f.boolean("add_generation_prompt").map_err(bad)?.unwrap_or(true);
        let text = vocab.render_chat(&msgs, add).map_err(|e| bad(format!("`messages`: {e}")))?;
        vocab.encode(&text, true).map_err(|e| bad(e.to_string()))?
    } else {
        let text = match (f.string("prompt").map_err(bad)?, f.string("content").map_err(bad)?) {
            (Some(t), _) | (None, Some(t)) => t,
            (None, None) => return Err(bad("give `prompt` (text) or `messages`".into())),
        };
        vocab.encode(text, false).map_err(|e| bad(e.to_string()))?
    };
    if !special && vocab.bos().is_some() && ids.first() == vocab.bos().as_ref() {
        ids.remove(0);
    }
    Ok(ids)
}

/// The text `/detokenize` answers for a request's fields.
pub(crate) fn text_of(f: &Fields<'_>, vocab: &wedge::Vocab) -> Result<String, ServeError> {
    let Some(Value::Array(ids)) = f.get("tokens") else {
        return Err(bad("`tokens` must be an array of token ids".into()));
    };
    vocab.decode(&token_ids(ids, vocab, "tokens").map_err(bad)?).map_err(|e| bad(e.to_string()))
}

/// `POST /detokenize`: `{"model", "tokens": [ids]}` → `{"prompt": text}` (also as `content`).
pub(crate) async fn detokenize(service: &Service, body: &[u8], caller: &Caller) -> Result<Vec<u8>, ServeError> {
    let map = object(body).map_err(bad)?;
    let f = Fields(&map);
    let model = language_model(service, &f, caller).await?;
    let text = text_of(&f, model.language()?.model().vocab())?;
    serde_json::to_vec(&json!({"prompt": text, "content": text})).map_err(|e| ServeError::Inference(e.to_string()))
}
