//! The OpenAI text-generation request, read the one way for every front end (the HTTP
//! server's `/v1/chat/completions` and `/v1/completions`, and the browser package's
//! `chat.completions.create` and `generate`): every field is read by name from the JSON object,
//! so a bad value gets an error that names it, and fields not known here are ignored, as
//! OpenAI's own server does. Also the `logprobs` shapes of the answers.

use serde_json::{Map, Value, json};

use crate::{ChatMessage, GenerateParams, SamplingParams, TokenEvent, Vocab};

/// Which endpoint a request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `chat/completions`: `messages` rendered with the model's chat template.
    Chat,
    /// `completions`: a `prompt` as text or token ids.
    Completions,
}

/// How log-probabilities are reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logprobs {
    /// Not asked for.
    Off,
    /// Chat: `logprobs: true` with `top_logprobs` alternatives.
    Chat(usize),
    /// Completions: `logprobs: N` (the legacy shape).
    Legacy(usize),
}

/// A generation request, read and checked against the model's vocabulary.
#[derive(Clone, Debug)]
pub struct Request {
    /// The prompt's token ids (a chat rendered with the template, the assistant's turn open).
    pub prompt: Vec<u32>,
    /// `max_completion_tokens` (or `max_tokens`), when given.
    pub max_tokens: Option<usize>,
    /// Sampling, stop strings, `ignore_eos` and log-probabilities; `max_tokens` is left at its
    /// default for the caller to set from [`Request::max_tokens`] and its context.
    pub params: GenerateParams,
    /// Choices asked for (`n`).
    pub n: usize,
    /// `stream`.
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// How log-probabilities are reported.
    pub logprobs: Logprobs,
}

impl Request {
    /// Reads a request for `endpoint` from its JSON object, with at most `max_choices` choices.
    /// The errors name the field.
    pub fn parse(
        map: &Map<String, Value>,
        endpoint: Endpoint,
        vocab: &Vocab,
        max_choices: usize,
    ) -> Result<Request, String> {
        let f = Fields(map);
        let prompt = match endpoint {
            Endpoint::Chat => {
                let msgs = messages(f.get("messages"))?;
                let text = vocab.render_chat(&msgs, true).map_err(|e| format!("`messages`: {e}"))?;
                vocab.encode(&text, true).map_err(|e| format!("`messages`: {e}"))?
            }
            Endpoint::Completions => {
                for unsupported in ["suffix", "echo"] {
                    if f.get(unsupported).is_some_and(|v| *v != Value::Bool(false) && v.as_str() != Some("")) {
                        return Err(format!("`{unsupported}` is not supported"));
                    }
                }
                completion_prompt(f.get("prompt"), vocab)?
            }
        };
        let max = f.integer("max_completion_tokens", 1, i64::MAX)?.or(f.integer("max_tokens", 1, i64::MAX)?);
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
                (_, Some(t)) if t > 0 => return Err("`top_logprobs` needs `logprobs: true`".into()),
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
            return Err("`best_of` above 1 is not supported".into());
        }
        f.string("user")?;
        let include_usage = match f.get("stream_options") {
            None => false,
            Some(Value::Object(o)) => Fields(o).boolean("include_usage")?.unwrap_or(false),
            Some(v) => return Err(format!("`stream_options` must be an object, got {v}")),
        };
        let params = GenerateParams {
            sampling,
            stop: stop_strings(f.get("stop"))?,
            stop_at_eos: !f.boolean("ignore_eos")?.unwrap_or(false),
            top_logprobs,
            ..GenerateParams::default()
        };
        Ok(Request {
            prompt,
            max_tokens: max.map(|m| usize::try_from(m).unwrap_or(usize::MAX)),
            params,
            n,
            stream: f.boolean("stream")?.unwrap_or(false),
            include_usage,
            logprobs,
        })
    }
}

/// Reads typed fields of a JSON object, naming the field in every error.
#[derive(Debug)]
pub struct Fields<'a>(pub &'a Map<String, Value>);

impl Fields<'_> {
    /// A field's value; JSON `null` counts as absent.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    /// A number in `lo..=hi`.
    pub fn number(&self, name: &str, lo: f64, hi: f64) -> Result<Option<f32>, String> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if (lo..=hi).contains(&x) => Ok(Some(x as f32)),
                Some(x) => Err(format!("`{name}` is {x}; it must be between {lo} and {hi}")),
                None => Err(format!("`{name}` must be a number, got {v}")),
            },
        }
    }

    /// A whole number in `lo..=hi`.
    pub fn integer(&self, name: &str, lo: i64, hi: i64) -> Result<Option<i64>, String> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => match v.as_i64() {
                Some(x) if (lo..=hi).contains(&x) => Ok(Some(x)),
                Some(x) => Err(format!("`{name}` is {x}; it must be between {lo} and {hi}")),
                None => Err(format!("`{name}` must be an integer, got {v}")),
            },
        }
    }

    /// `true` or `false`.
    pub fn boolean(&self, name: &str) -> Result<Option<bool>, String> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(format!("`{name}` must be true or false, got {v}")),
        }
    }

    /// A string.
    pub fn string(&self, name: &str) -> Result<Option<&str>, String> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(format!("`{name}` must be a string, got {v}")),
        }
    }
}

/// The JSON object of a request body.
pub fn object(body: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("the body must be a JSON object".into()),
        Err(e) => Err(format!("invalid JSON body: {e}")),
    }
}

/// The text of a chat message's `content`: a string, or an array of `{"type": "text"}` parts.
pub fn content_text(v: Option<&Value>, at: &str) -> Result<String, String> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    (kind, _) => {
                        return Err(format!(
                            "`{at}.content[{j}]` is a `{}` part; this model takes text parts only",
                            kind.unwrap_or("?")
                        ));
                    }
                }
            }
            Ok(text)
        }
        Some(v) => Err(format!("`{at}.content` must be a string or an array of parts, got {v}")),
    }
}

/// A chat's `messages`: a non-empty array of `{role, content}`.
pub fn messages(v: Option<&Value>) -> Result<Vec<ChatMessage>, String> {
    let Some(Value::Array(items)) = v else {
        return Err("`messages` must be a non-empty array of {role, content}".into());
    };
    if items.is_empty() {
        return Err("`messages` is empty".into());
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let at = format!("messages[{i}]");
            let role = m.get("role").and_then(Value::as_str).ok_or_else(|| format!("`{at}.role` is missing"))?;
            // OpenAI's roles; `developer` (its newer name for system instructions) is rendered
            // as `system`, the role chat templates know
            let role = match role {
                "developer" => "system",
                "system" | "user" | "assistant" | "tool" => role,
                other => {
                    return Err(format!(
                        "`{at}.role` is `{other}`; supported: system, developer, user, assistant, tool"
                    ));
                }
            };
            // only an assistant's turn may come without content (as OpenAI's API allows)
            if role != "assistant" && m.get("content").is_none_or(Value::is_null) {
                return Err(format!("`{at}.content` is missing: a {role} message needs its text"));
            }
            Ok(ChatMessage::new(role, &content_text(m.get("content"), &at)?))
        })
        .collect()
}

/// Token ids of the vocabulary, read from a JSON array called `name`.
pub fn token_ids(v: &[Value], vocab: &Vocab, name: &str) -> Result<Vec<u32>, String> {
    v.iter()
        .enumerate()
        .map(|(i, x)| match x.as_u64() {
            Some(id) if (id as usize) < vocab.len() => Ok(id as u32),
            _ => Err(format!("`{name}[{i}]` is {x}: token ids go from 0 to {}", vocab.len().saturating_sub(1))),
        })
        .collect()
}

/// A completions `prompt`: a string, or token ids (also as a one-element array of either).
pub fn completion_prompt(v: Option<&Value>, vocab: &Vocab) -> Result<Vec<u32>, String> {
    let enc = |s: &str| vocab.encode(s, false).map_err(|e| format!("`prompt`: {e}"));
    match v {
        Some(Value::String(s)) => enc(s),
        Some(Value::Array(a)) if a.len() == 1 && (a[0].is_string() || a[0].is_array()) => match &a[0] {
            Value::String(s) => enc(s),
            Value::Array(ids) => token_ids(ids, vocab, "prompt[0]"),
            _ => unreachable!("checked above"),
        },
        Some(Value::Array(a)) if a.iter().all(Value::is_number) && !a.is_empty() => token_ids(a, vocab, "prompt"),
        Some(Value::Array(_)) => Err("`prompt`: one prompt per request (a string or an array of token ids)".into()),
        _ => Err("`prompt` must be a string or an array of token ids".into()),
    }
}

/// `stop`: a string or an array of at most 16 strings.
pub fn stop_strings(v: Option<&Value>) -> Result<Vec<String>, String> {
    let list = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(str::to_string).ok_or_else(|| format!("`stop` entries must be strings, got {s}")))
            .collect::<Result<_, _>>()?,
        Some(v) => return Err(format!("`stop` must be a string or an array of strings, got {v}")),
    };
    if list.len() > 16 || list.iter().any(|s| s.len() > 256) {
        return Err("`stop`: at most 16 strings of at most 256 bytes".into());
    }
    Ok(list)
}

/// `logit_bias`: an object of token id → bias from -100 to 100.
pub fn logit_bias(v: Option<&Value>, vocab: &Vocab) -> Result<Vec<(u32, f32)>, String> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(Vec::new()) };
    let Value::Object(m) = v else {
        return Err(format!("`logit_bias` must be an object of token id → bias, got {v}"));
    };
    m.iter()
        .map(|(k, b)| {
            let id: u32 = k.parse().ok().filter(|&id: &u32| (id as usize) < vocab.len()).ok_or_else(|| {
                format!("`logit_bias`: `{k}` is not a token id (0 to {})", vocab.len().saturating_sub(1))
            })?;
            match b.as_f64() {
                Some(x) if (-100.0..=100.0).contains(&x) => Ok((id, x as f32)),
                _ => Err(format!("`logit_bias[{k}]` must be a number from -100 to 100, got {b}")),
            }
        })
        .collect()
}

/// What one response (or one chunk) says about some tokens' log-probabilities.
#[derive(Debug)]
pub struct TokenLogprobs<'a> {
    /// The model's vocabulary (the tokens' text).
    pub vocab: &'a Vocab,
    /// How to report them.
    pub mode: Logprobs,
}

impl TokenLogprobs<'_> {
    fn text(&self, id: u32) -> String {
        self.vocab.decode(&[id]).unwrap_or_default()
    }

    /// `logprobs` of a choice for `tokens`, or `null` when not asked for.
    pub fn json(&self, tokens: &[&TokenEvent], offset0: usize) -> Value {
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
