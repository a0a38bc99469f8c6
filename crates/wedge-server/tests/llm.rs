//! Language models over real HTTP: the OpenAI chat and completions routes (whole and streamed),
//! tokenize/detokenize, errors naming their field, continuous batching seen in the metrics,
//! cancellation when a client leaves, prefix reuse, load shedding, and OpenAI's own JavaScript
//! client against the live server. The model is SmolLM2-135M-Instruct Q4_1 on the CPU backend,
//! beside the bundled embedding model.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use serde_json::{Value, json};
use wedge::{ChatMessage, GenerateParams, LanguageModel, LmOptions};
use wedge_serve::Config;

mod common;
use common::{TestServer, client, get, metric, model_config, post, smollm2};

const CTX: usize = 384;

fn config(gguf: &Path) -> Config {
    let mut c = Config::default();
    c.models.push(model_config("smollm2", gguf.to_path_buf()));
    c.models.push(model_config(
        "minilm",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2.wedge"),
    ));
    c.generation.ctx = CTX;
    c.generation.max_sequences = 4;
    c
}

/// The prompt ids the server makes of `messages`, and the library's greedy text after them.
fn library_chat(gguf: &Path, messages: &[ChatMessage], max_tokens: usize) -> (usize, String) {
    let lm = LanguageModel::open(gguf, &wedge::Device::cpu(), LmOptions::default()).unwrap();
    let vocab = lm.vocab();
    let prompt = vocab.encode(&vocab.render_chat(messages, true).unwrap(), true).unwrap();
    let params = GenerateParams { max_tokens, ..Default::default() };
    let text: String = lm.generate(&prompt, params).unwrap().map(|t| t.unwrap().text).collect();
    (prompt.len(), text)
}

fn chat(content: &str, extra: Value) -> Value {
    let mut v = json!({"model": "smollm2", "messages": [{"role": "user", "content": content}], "temperature": 0});
    v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    v
}

/// A streamed request that bypasses the completion cache: the status, content type and every
/// `data:` payload, read to the end.
async fn stream(url: &str, body: Value) -> (u16, String, Vec<String>) {
    let (status, kind, events, cache) = stream_with(url, body, &[("cache-control", "no-cache")]).await;
    assert_eq!(cache, if status == 200 { "miss" } else { "" });
    (status, kind, events)
}

/// A streamed request with `headers`: as [`stream`], with the `x-wedge-cache` header.
async fn stream_with(url: &str, body: Value, headers: &[(&str, &str)]) -> (u16, String, Vec<String>, String) {
    let mut req = Request::builder().method(Method::POST).uri(url).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client().request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let header = |name: &str| resp.headers().get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let (kind, cache) = (header("content-type"), header("x-wedge-cache"));
    let text = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    if kind != "text/event-stream" {
        return (status, kind, vec![text], cache);
    }
    let events = text.split("\n\n").filter(|e| !e.is_empty()).map(|e| e.strip_prefix("data: ").unwrap().to_string());
    (status, kind, events.collect(), cache)
}

/// A streamed request asking for gzip, read off the wire chunk by chunk (HTTP/1.1's chunked
/// transfer coding carries each frame the server writes as one chunk): the response head, and
/// the text decoded after each chunk.
async fn gzip_stream(addr: std::net::SocketAddr, path: &str, body: &Value) -> (String, Vec<String>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let body = body.to_string();
    let mut tcp = tokio::io::BufReader::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\naccept-encoding: gzip\r\n\
         cache-control: no-cache\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.get_mut().write_all(request.as_bytes()).await.unwrap();
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(tcp.read_line(&mut line).await.unwrap() > 0, "closed in the head: {head}");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    let mut decoder = flate2::write::GzDecoder::new(Vec::new());
    let mut decoded = Vec::new();
    loop {
        let mut size = String::new();
        tcp.read_line(&mut size).await.unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or_else(|_| panic!("chunk size {size:?}"));
        let mut chunk = vec![0; n + 2];
        tcp.read_exact(&mut chunk).await.unwrap();
        if n == 0 {
            break;
        }
        decoder.write_all(&chunk[..n]).unwrap();
        decoder.flush().unwrap();
        decoded.push(String::from_utf8_lossy(decoder.get_ref()).into_owned());
    }
    assert_eq!(decoder.finish().unwrap().len(), decoded.last().unwrap().len(), "the gzip stream ends cleanly");
    (head, decoded)
}

/// A request that bypasses the completion cache.
async fn post_fresh(url: &str, body: Value) -> common::Reply {
    let headers = [("content-type", "application/json"), ("cache-control", "no-cache")];
    let r = common::call(Method::POST, url, &headers, body.to_string()).await;
    assert_eq!(r.header("x-wedge-cache"), if r.status == 200 { "miss" } else { "" });
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_routes_answer_as_the_library_generates() {
    let Some(gguf) = smollm2("serving SmolLM2 over HTTP") else { return };
    let (prompt_len, greedy) = library_chat(&gguf, &[ChatMessage::new("user", "What is the capital of France?")], 24);
    let s = TestServer::start(config(&gguf)).await;

    let models = get(&s.url("/v1/models")).await.json();
    let tasks: Vec<(&str, &str)> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap(), m["task"].as_str().unwrap()))
        .collect();
    assert_eq!(tasks, [("smollm2", "text-generation"), ("minilm", "embedding")]);

    let r =
        post(&s.url("/v1/chat/completions"), chat("What is the capital of France?", json!({"max_tokens": 24}))).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], greedy.as_str(), "greedy over HTTP = greedy in the library");
    assert_eq!(v["usage"]["prompt_tokens"], prompt_len);
    let completion_tokens = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(completion_tokens >= 1);
    assert_eq!(v["usage"]["total_tokens"], prompt_len as u64 + completion_tokens);
    assert_eq!(v["choices"][0]["finish_reason"], if completion_tokens < 24 { "stop" } else { "length" });

    // A prompt given as text and as its token ids continues the same way.
    let text = "Once upon a time, in a small village,";
    let ids = post(&s.url("/tokenize"), json!({"model": "smollm2", "prompt": text})).await.json();
    let back = post(&s.url("/detokenize"), json!({"model": "smollm2", "tokens": ids["tokens"]})).await.json();
    assert_eq!(back["prompt"], text);
    assert_eq!(ids["max_model_len"], CTX);
    let by_text = post(&s.url("/v1/completions"), json!({"prompt": text, "max_tokens": 8, "temperature": 0})).await;
    let by_ids =
        post(&s.url("/v1/completions"), json!({"prompt": ids["tokens"], "max_tokens": 8, "temperature": 0})).await;
    assert_eq!(by_text.json()["choices"][0]["text"], by_ids.json()["choices"][0]["text"]);
    assert_eq!(by_text.json()["object"], "text_completion");

    // Log-probabilities, several choices, stop strings.
    let v = post(
        &s.url("/v1/chat/completions"),
        chat("Hi!", json!({"max_tokens": 4, "logprobs": true, "top_logprobs": 2})),
    )
    .await
    .json();
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert!(!content.is_empty());
    for t in content {
        assert!(t["logprob"].as_f64().unwrap() <= 0.0);
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert!(top[0]["logprob"].as_f64().unwrap() >= t["logprob"].as_f64().unwrap() - 1e-6, "{t}");
    }
    let v = post(
        &s.url("/v1/chat/completions"),
        chat("Tell me a joke.", json!({"max_tokens": 8, "n": 2, "temperature": 1.0, "seed": 3})),
    )
    .await
    .json();
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    let again = post_fresh(
        &s.url("/v1/chat/completions"),
        chat("Tell me a joke.", json!({"max_tokens": 8, "n": 2, "temperature": 1.0, "seed": 3})),
    )
    .await
    .json();
    assert_eq!(v["choices"], again["choices"], "a seed fixes the sampled tokens");
    let stop = greedy.split_whitespace().nth(2).unwrap();
    let v = post(
        &s.url("/v1/chat/completions"),
        chat("What is the capital of France?", json!({"max_tokens": 24, "stop": [stop]})),
    )
    .await
    .json();
    let cut = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(greedy.starts_with(cut) && !cut.contains(stop), "{cut:?} for stop {stop:?} in {greedy:?}");

    // Bad values get a 400 that names the field; a long prompt gets both numbers.
    for (body, needle) in [
        (chat("x", json!({"temperature": 7})), "temperature"),
        (chat("x", json!({"top_p": "high"})), "top_p"),
        (chat("x", json!({"max_tokens": 0})), "max_tokens"),
        (chat("x", json!({"top_logprobs": 3})), "logprobs"),
        (chat("x", json!({"logit_bias": {"99999999": 1}})), "logit_bias"),
        (chat("x", json!({"stop": 5})), "stop"),
        (chat("x", json!({"n": 99})), "n"),
        (json!({"model": "smollm2"}), "messages"),
        (json!({"model": "smollm2", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}), "image_url"),
        (chat("x", json!({"temperature": -1})), "temperature"),
        (chat("x", json!({"top_p": 2})), "top_p"),
        (chat("x", json!({"max_tokens": -5})), "max_tokens"),
        (chat("x", json!({"frequency_penalty": 5})), "frequency_penalty"),
        (chat("x", json!({"presence_penalty": -9})), "presence_penalty"),
        (chat("x", json!({"seed": "abc"})), "seed"),
        (chat("x", json!({"n": 0})), "n"),
        (json!({"model": "smollm2", "messages": "x"}), "messages"),
        (json!({"model": "smollm2", "messages": []}), "messages"),
        (json!({"model": "smollm2", "messages": [{"role": "wizard", "content": "x"}]}), "wizard"),
        (json!({"model": "smollm2", "messages": [{"role": "user"}]}), "content"),
        (json!({"model": "smollm2", "messages": [{"role": "system", "content": null}]}), "content"),
    ] {
        let r = post(&s.url("/v1/chat/completions"), body.clone()).await;
        assert_eq!(r.status.as_u16(), 400, "{body}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.error_type(), "invalid_request_error", "{body}");
        let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.contains(needle), "{msg:?} should name {needle:?}");
    }
    // An absurd max_tokens is bounded by the context, as llama.cpp's server bounds n_predict.
    let r = post(&s.url("/v1/chat/completions"), chat("x", json!({"max_tokens": 1_000_000_000_000i64}))).await;
    assert_eq!(r.status, 200);
    assert!(r.json()["usage"]["total_tokens"].as_u64().unwrap() <= CTX as u64);
    let long = "word ".repeat(CTX);
    let r = post(&s.url("/v1/completions"), json!({"prompt": long})).await;
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(r.status == 400 && msg.contains(&CTX.to_string()) && msg.contains("tokens"), "{msg}");
    assert_eq!(post(&s.url("/v1/chat/completions"), json!({"model": "nope", "messages": []})).await.status, 404);
    let r = post(
        &s.url("/v1/chat/completions"),
        json!({"model": "minilm", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert!(r.status == 400 && r.json()["error"]["message"].as_str().unwrap().contains("embedding model"));
    let r = post(&s.url("/v1/embeddings"), json!({"model": "smollm2", "input": "x"})).await;
    assert!(r.status == 400 && r.json()["error"]["message"].as_str().unwrap().contains("language model"));
    assert_eq!(post(&s.url("/v1/embeddings"), json!({"model": "minilm", "input": "x"})).await.status, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_server_sent_events_as_openai_sends_them() {
    let Some(gguf) = smollm2("serving SmolLM2 over HTTP") else { return };
    let s = TestServer::start(config(&gguf)).await;
    let whole =
        post(&s.url("/v1/chat/completions"), chat("Name three colors.", json!({"max_tokens": 20}))).await.json();
    let whole_chat = whole.clone();
    let body = chat(
        "Name three colors.",
        json!({"max_tokens": 20, "stream": true, "stream_options": {"include_usage": true}}),
    );
    let (status, kind, events) = stream(&s.url("/v1/chat/completions"), body).await;
    assert_eq!((status, kind.as_str()), (200, "text/event-stream"));
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant", "the first delta carries the role");
    let (usage, deltas) = chunks.split_last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    for n in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(usage["usage"][n], whole["usage"][n], "{n}");
    }
    let finishes: Vec<&Value> =
        deltas.iter().map(|c| &c["choices"][0]["finish_reason"]).filter(|f| !f.is_null()).collect();
    assert_eq!(finishes, [&whole["choices"][0]["finish_reason"]], "only the last delta has a finish_reason");
    assert!(!deltas.last().unwrap()["choices"][0]["finish_reason"].is_null());
    let text: String = deltas.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, whole["choices"][0]["message"]["content"].as_str().unwrap());

    // Completions stream their text; without include_usage there is no usage chunk.
    let (_, _, events) = stream(
        &s.url("/v1/completions"),
        json!({"prompt": "1, 2, 3,", "max_tokens": 6, "temperature": 0, "stream": true}),
    )
    .await;
    let whole = post_fresh(&s.url("/v1/completions"), json!({"prompt": "1, 2, 3,", "max_tokens": 6, "temperature": 0}))
        .await
        .json();
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap());
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));

    // An error found before the first token is a plain HTTP error, not a stream.
    let (status, kind, _) =
        stream(&s.url("/v1/chat/completions"), chat("x", json!({"stream": true, "min_p": 3}))).await;
    assert_eq!((status, kind.as_str()), (400, "application/json"));

    // Compressed, every event still leaves when it is written: each chunk on the wire
    // decodes to whole events, and together they are the same text.
    let body = chat("Name three colors.", json!({"max_tokens": 20, "stream": true}));
    let (head, decoded) = gzip_stream(s.addr, "/v1/chat/completions", &body).await;
    assert!(head.contains("content-encoding: gzip") && head.contains("transfer-encoding: chunked"), "{head}");
    assert!(decoded.len() > 3, "{decoded:?}");
    for (i, text) in decoded.iter().enumerate() {
        assert!(text.ends_with("\n\n"), "chunk {i} leaves an event unfinished: {text:?}");
    }
    let all = decoded.last().unwrap();
    let events: Vec<&str> =
        all.split("\n\n").filter(|e| !e.is_empty()).map(|e| e.strip_prefix("data: ").unwrap()).collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let text: String = events[..events.len() - 1]
        .iter()
        .filter_map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["choices"][0]["delta"]["content"].as_str().map(String::from)
        })
        .collect();
    assert_eq!(text, whole_chat["choices"][0]["message"]["content"].as_str().unwrap());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_batch_together_leave_when_cancelled_and_reuse_prefixes() {
    let Some(gguf) = smollm2("serving SmolLM2 over HTTP") else { return };
    let s = TestServer::start(config(&gguf)).await;
    let url = s.url("/v1/completions");
    let model = s.service.model("smollm2").await.unwrap();
    let scheduler = model.language().unwrap().scheduler();

    // Four long streams at once run in shared steps.
    let mut streams = Vec::new();
    for i in 0..4 {
        let body = json!({"prompt": format!("Story {i}:"), "max_tokens": 300, "ignore_eos": true, "stream": true});
        let req =
            Request::builder().method(Method::POST).uri(&url).body(Full::new(Bytes::from(body.to_string()))).unwrap();
        streams.push(client().request(req).await.unwrap().into_body());
    }
    for body in &mut streams {
        body.frame().await.unwrap().unwrap(); // each has its first token
    }
    assert_eq!(scheduler.running(), 4);
    let shared_steps = metric(&s, "wedge_llm_step_sequences_bucket{le=\"4.0\"").await
        - metric(&s, "wedge_llm_step_sequences_bucket{le=\"2.0\"").await;
    assert!(shared_steps >= 1.0, "no step ran three or four sequences together");

    // Clients that leave have their sequences dropped within a step or so.
    streams.truncate(1);
    let t0 = std::time::Instant::now();
    while scheduler.running() > 1 {
        assert!(t0.elapsed() < Duration::from_secs(20), "cancelled sequences still run");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(metric(&s, "wedge_llm_cancelled_requests_total").await, 3.0);
    drop(streams);
    while scheduler.running() > 0 {
        assert!(t0.elapsed() < Duration::from_secs(20), "the last cancelled sequence still runs");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A repeated prompt reuses its cached prefix, and answers as it did without it.
    let system = "You are a careful assistant who answers in one short sentence. ".repeat(3);
    let ask = |q: &str| {
        json!({"model": "smollm2", "temperature": 0, "max_tokens": 12,
               "messages": [{"role": "system", "content": system}, {"role": "user", "content": q}]})
    };
    let first = post(&s.url("/v1/chat/completions"), ask("What is 2 + 2?")).await.json();
    let second = post_fresh(&s.url("/v1/chat/completions"), ask("What is 2 + 2?")).await.json();
    let other = post(&s.url("/v1/chat/completions"), ask("Where is Rome?")).await.json();
    let cached = |v: &Value| v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    assert!(cached(&other) > 30, "the shared system prompt is reused: {}", other["usage"]);
    assert_eq!(cached(&second), second["usage"]["prompt_tokens"].as_u64().unwrap() - 1);
    assert_eq!(first["choices"][0]["message"], second["choices"][0]["message"]);
    let msgs = [ChatMessage::new("system", &system), ChatMessage::new("user", "Where is Rome?")];
    let (_, uncached) = tokio::task::spawn_blocking(move || library_chat(&gguf, &msgs, 12)).await.unwrap();
    assert_eq!(other["choices"][0]["message"]["content"], uncached.as_str(), "a reused prefix changes nothing");
    assert!(metric(&s, "wedge_llm_prefix_cache_hits_total").await >= 2.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_sheds_with_503() {
    let Some(gguf) = smollm2("serving SmolLM2 over HTTP") else { return };
    let mut c = config(&gguf);
    c.generation.max_sequences = 1;
    c.generation.max_batch_tokens = 8;
    c.generation.max_waiting = 1;
    let s = TestServer::start(c).await;
    let url = s.url("/v1/completions");
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let url = url.clone();
            let body = json!({"prompt": format!("Count {i}:"), "max_tokens": 40, "ignore_eos": true});
            tokio::spawn(async move { post(&url, body).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        if r.status == 503 {
            assert_eq!(r.error_type(), "overloaded_error");
            assert!(r.header("retry-after").parse::<u64>().unwrap() >= 1);
        } else {
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            assert_eq!(r.json()["usage"]["completion_tokens"], 40);
        }
        statuses.push(r.status.as_u16());
    }
    let shed = statuses.iter().filter(|&&s| s == 503).count();
    assert!((1..6).contains(&shed), "{statuses:?}: one runs, at most one waits, the rest are shed");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reproducible_requests_repeat_from_the_completion_cache() {
    let Some(gguf) = smollm2("serving SmolLM2 over HTTP") else { return };
    let dir = tempfile::tempdir().unwrap();
    let with_disk = |model: &Path| {
        let mut c = config(model);
        c.cache.disk_path = Some(dir.path().join("cache.redb"));
        c
    };
    let s = TestServer::start(with_disk(&gguf)).await;
    let url = s.url("/v1/chat/completions");
    let generated = || metric(&s, "wedge_llm_generated_tokens_total");
    let body = chat("Name a fruit.", json!({"max_tokens": 12, "logprobs": true, "top_logprobs": 2}));
    let first = post(&url, body.clone()).await;
    assert_eq!((first.status.as_u16(), first.header("x-wedge-cache")), (200, "miss"));
    let before = generated().await;
    let again = post(&url, body.clone()).await;
    assert_eq!(again.header("x-wedge-cache"), "hit");
    let (first, again) = (first.json(), again.json());
    assert_eq!(again["choices"], first["choices"], "the same tokens, text and log-probabilities");
    for n in ["prompt_tokens", "completion_tokens"] {
        assert_eq!(again["usage"][n], first["usage"][n]);
    }
    assert_eq!(again["usage"]["prompt_tokens_details"]["cached_tokens"], again["usage"]["prompt_tokens"]);
    assert_eq!(generated().await, before, "a hit runs nothing");
    assert_eq!(metric(&s, "wedge_llm_completion_cache_hits_total").await, 1.0);

    // A streamed hit replays as the computed stream did, chunk by chunk.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let (_, _, computed) = stream(&url, streamed.clone()).await;
    let (status, kind, replayed, cache) = stream_with(&url, streamed, &[]).await;
    assert_eq!((status, kind.as_str(), cache.as_str()), (200, "text/event-stream", "hit"));
    assert_eq!(replayed.len(), computed.len());
    assert_eq!(replayed.last().unwrap(), "[DONE]");
    let parse = |e: &String| serde_json::from_str::<Value>(e).unwrap();
    for (r, c) in replayed.iter().zip(&computed).take(computed.len() - 2) {
        assert_eq!(parse(r)["choices"], parse(c)["choices"]);
    }
    let usage = |events: &[String]| parse(&events[events.len() - 2])["usage"]["completion_tokens"].clone();
    assert_eq!(usage(&replayed), usage(&computed));

    // `Cache-Control: no-cache` computes afresh; sampling without a seed is never cached; a
    // seeded one is.
    let before = generated().await;
    let fresh = post_fresh(&url, body.clone()).await.json(); // (and replaces the stored answer)
    assert!(generated().await > before, "a bypass runs the model");
    let sampled = chat("Name a fruit.", json!({"max_tokens": 6, "temperature": 1.0}));
    for _ in 0..2 {
        assert_eq!(post(&url, sampled.clone()).await.header("x-wedge-cache"), "miss");
    }
    let seeded = chat("Name a fruit.", json!({"max_tokens": 6, "temperature": 1.0, "seed": 11}));
    assert_eq!(post(&url, seeded.clone()).await.header("x-wedge-cache"), "miss");
    assert_eq!(post(&url, seeded.clone()).await.header("x-wedge-cache"), "hit");
    s.stop().await;

    // The disk tier answers after a restart ...
    let s = TestServer::start(with_disk(&gguf)).await;
    let r = post(&s.url("/v1/chat/completions"), body.clone()).await;
    assert_eq!(r.header("x-wedge-cache"), "hit");
    assert_eq!(r.json()["choices"], fresh["choices"]);
    assert_eq!(metric(&s, "wedge_cache_lookups_total{tier=\"disk\",result=\"hit\"}").await, 1.0);
    s.stop().await;

    // ... until the model file changes: a new digest reaches none of the old entries.
    let changed = dir.path().join("changed.gguf");
    std::fs::copy(&gguf, &changed).unwrap();
    std::fs::OpenOptions::new().append(true).open(&changed).unwrap().write_all(&[0; 32]).unwrap();
    let s = TestServer::start(with_disk(&changed)).await;
    let r = post(&s.url("/v1/chat/completions"), body).await;
    assert_eq!(r.header("x-wedge-cache"), "miss");
    assert_eq!(r.json()["choices"][0]["message"], first["choices"][0]["message"], "the same weights answer the same");
    s.stop().await;
}

/// The same server on a GPU adapter (lavapipe in CI): two requests batched in the GPU's steps
/// answer as the CPU library does (SmolLM2's GPU logits are within 1e-4 of float64, so greedy
/// tokens agree).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_serves_batched_requests_as_the_cpu_generates() {
    let Some(gguf) = smollm2("serving SmolLM2 over HTTP") else { return };
    let device = match wedge::Device::gpu() {
        Ok(d) => d,
        Err(e) => {
            wedge_testkit::unavailable("WEDGE_REQUIRE_GPU", "serving SmolLM2 on the GPU", &e.to_string());
            return;
        }
    };
    let questions = ["What is 2 + 2?", "Name a color."];
    let want: Vec<String> =
        questions.iter().map(|q| library_chat(&gguf, &[ChatMessage::new("user", q)], 4).1).collect();
    let mut c = config(&gguf);
    c.models.truncate(1);
    c.generation.ctx = 64;
    // (lavapipe shares the 2 cores with the other tests of this file: correctness only here)
    c.limits.request_timeout_ms = 300_000;
    let s = TestServer::start_on(c, device).await;
    assert!(
        s.service.model("smollm2").await.unwrap().device.starts_with("gpu"),
        "{}",
        s.service.model("smollm2").await.unwrap().device
    );
    let url = s.url("/v1/chat/completions");
    let asks = questions.map(|q| {
        let url = url.clone();
        tokio::spawn(async move { post(&url, chat(q, json!({"max_tokens": 4}))).await })
    });
    for (ask, want) in asks.into_iter().zip(&want) {
        let r = ask.await.unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["choices"][0]["message"]["content"], want.as_str());
    }
    let (_, _, events) = stream(&url, chat(questions[1], json!({"max_tokens": 4, "stream": true}))).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let text: String = events[..events.len() - 1]
        .iter()
        .filter_map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["choices"][0]["delta"]["content"].as_str().map(String::from)
        })
        .collect();
    assert_eq!(text, want[1]);
    let two = metric(&s, "wedge_llm_step_sequences_bucket{le=\"2.0\"").await
        - metric(&s, "wedge_llm_step_sequences_bucket{le=\"1.0\"").await;
    assert!(two >= 1.0, "no GPU step ran both requests together");
    s.stop().await;
}

/// OpenAI's JavaScript client (`openai` from npm, in web/'s packages) parses every answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_client_library_parses_every_answer() {
    let Some(gguf) = smollm2("serving SmolLM2 over HTTP") else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let node = std::process::Command::new("node").arg("--version").output();
    if node.is_err() || !root.join("web/node_modules/openai/package.json").is_file() {
        wedge_testkit::unavailable(
            "WEDGE_REQUIRE_NODE",
            "the OpenAI JavaScript client against wedge serve",
            "needs Node.js and web/'s npm packages (npm ci in web/)",
        );
        return;
    }
    let (_, greedy) = library_chat(&gguf, &[ChatMessage::new("user", "What is the capital of France?")], 16);
    let s = TestServer::start(config(&gguf)).await;
    let script = root.join("web/test/openai-client.mjs");
    let base = s.url("/v1");
    let out = tokio::process::Command::new("node").arg(&script).arg(&base).arg("smollm2").output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["chat"]["content"], greedy.as_str());
    assert_eq!(v["chat"]["object"], "chat.completion");
    assert_eq!(v["chat_stream"]["content"], greedy.as_str());
    assert_eq!(v["chat_stream"]["roles"], json!(["assistant"]));
    assert_eq!(v["chat_stream"]["finish_reason"], v["chat"]["finish_reason"]);
    assert_eq!(v["chat_stream"]["usage"]["completion_tokens"], v["chat"]["usage"]["completion_tokens"]);
    assert_eq!(v["chat_stream"]["cache"], "miss");
    let cached = &v["chat_stream_cached"];
    assert_eq!(
        (&cached["cache"], &cached["content"], &cached["roles"]),
        (&json!("hit"), &v["chat"]["content"], &json!(["assistant"]))
    );
    assert_eq!(cached["usage"]["prompt_tokens_details"]["cached_tokens"], cached["usage"]["prompt_tokens"]);
    assert_eq!(v["completion"]["text"], v["completion_stream"]["text"]);
    assert!(!v["completion"]["text"].as_str().unwrap().is_empty());
    assert_eq!(v["bad_temperature"]["status"], 400);
    assert!(v["bad_temperature"]["message"].as_str().unwrap().contains("temperature"));
    assert_eq!(v["models"], json!(["smollm2", "minilm"]));
    s.stop().await;
}
