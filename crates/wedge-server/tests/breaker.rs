//! The GPU→CPU circuit breaker over real HTTP, with real faults injected into the GPU backend
//! (lavapipe in CI): runs that fail, and runs that hang. Every request is answered; the
//! traffic moves to the CPU (`x-wedge-device`, `/metrics`) and back once a probe finds the
//! GPU well again; a stream that is generating when the GPU faults goes on on the CPU with the
//! same tokens. And a model whose load does not end answers 503 + `Retry-After` after the load
//! timeout.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use serde_json::{Value, json};
use wedge::{GenerateParams, LanguageModel, LmOptions};
use wedge_gpu::Fault;
use wedge_serve::Config;

mod common;
use common::{Reply, TestServer, client, cosine, metric, model_config, post, smollm2};

/// The tests take turns: each is timed by a watchdog, and lavapipe shares the 2 cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn gpu(check: &str) -> Option<wedge::Device> {
    match wedge::Device::gpu() {
        Ok(d) => Some(d),
        Err(e) => {
            wedge_testkit::unavailable("WEDGE_REQUIRE_GPU", check, &e.to_string());
            None
        }
    }
}

/// A configuration whose breaker gives up on a GPU run after `watchdog_ms` and probes again
/// 200 ms after it opened; nothing cached, so every request runs.
fn breaker_config(watchdog_ms: u64) -> Config {
    let mut c = Config::default();
    c.cache.enabled = false;
    c.breaker.watchdog_ms = watchdog_ms;
    c.breaker.probe_after_ms = 200;
    // (lavapipe shares the 2 cores with the other tests: correctness only here)
    c.limits.request_timeout_ms = 300_000;
    c
}

fn inject(device: &wedge::Device, fault: Option<Fault>) {
    device.gpu_context().unwrap().inject_fault(fault);
}

async fn embed(s: &TestServer, text: &str) -> (Reply, Vec<f32>) {
    let r = post(&s.url("/v1/embeddings"), json!({"model": "minilm", "input": text})).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json()["data"][0]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    (r, v)
}

/// Sends requests until one is answered by the GPU again (the probe runs off the request
/// path, so the first requests after the fault is cleared may still go to the CPU).
async fn until_back_on_gpu(s: &TestServer) {
    let t0 = Instant::now();
    loop {
        let (r, _) = embed(s, "back on the gpu?").await;
        if r.header("x-wedge-device") == "gpu" {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the breaker did not close after the fault was cleared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_move_to_the_cpu_when_the_gpu_fails_or_hangs_and_come_back() {
    let Some(device) = gpu("the embedding breaker on the GPU") else { return };
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut c = breaker_config(3_000);
    c.models.push(model_config(
        "minilm",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2.wedge"),
    ));
    let s = TestServer::start_on(c, device.clone()).await;
    let text = "The quick brown fox jumps over the lazy dog.";
    let (r, on_gpu) = embed(&s, text).await;
    assert_eq!(r.header("x-wedge-device"), "gpu");
    assert_eq!(metric(&s, "wedge_breaker_state{").await, 0.0);

    // Runs fail: concurrent requests are all answered, from the CPU copy.
    inject(&device, Some(Fault::Fail));
    let url = s.url("/v1/embeddings");
    let asks: Vec<_> = (0..8)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move { post(&url, json!({"model": "minilm", "input": format!("text {i}")})).await })
        })
        .collect();
    for ask in asks {
        let r = ask.await.unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("x-wedge-device"), "cpu");
    }
    let (r, on_cpu) = embed(&s, text).await;
    assert_eq!(r.header("x-wedge-device"), "cpu");
    assert!(cosine(&on_gpu, &on_cpu) > 0.999, "the CPU copy answers as the GPU did");
    assert_eq!(metric(&s, "wedge_breaker_trips_total{model=\"minilm\",version=\"1\",reason=\"error\"}").await, 1.0);
    assert!(metric(&s, "wedge_breaker_cpu_runs_total{").await >= 2.0);
    assert_eq!(metric(&s, "wedge_device{model=\"minilm\",version=\"1\",device=\"cpu\"}").await, 1.0);
    assert_ne!(metric(&s, "wedge_breaker_state{").await, 0.0);

    // Fixed: a probe finds the GPU well and traffic goes back.
    inject(&device, None);
    until_back_on_gpu(&s).await;
    assert_eq!(metric(&s, "wedge_breaker_state{").await, 0.0);
    assert_eq!(metric(&s, "wedge_device{model=\"minilm\",version=\"1\",device=\"cpu\"}").await, 0.0);

    // Runs hang: the request that hit it waits for the watchdog and is answered by the CPU;
    // the next ones go to the CPU at once, and no probe waits behind the hung run.
    inject(&device, Some(Fault::Hang));
    let t0 = Instant::now();
    let (r, _) = embed(&s, "this one meets the hang").await;
    assert_eq!(r.header("x-wedge-device"), "cpu");
    assert!(t0.elapsed() >= Duration::from_millis(3_000), "answered before the watchdog: {:?}", t0.elapsed());
    assert_eq!(metric(&s, "wedge_breaker_trips_total{model=\"minilm\",version=\"1\",reason=\"timeout\"}").await, 1.0);
    tokio::time::sleep(Duration::from_millis(400)).await; // past probe_after_ms
    for i in 0..3 {
        let (r, _) = embed(&s, &format!("while hung {i}")).await;
        assert_eq!(r.header("x-wedge-device"), "cpu");
    }
    assert_eq!(metric(&s, "wedge_breaker_state{").await, 1.0, "no probe while the GPU thread is stuck");
    inject(&device, None);
    until_back_on_gpu(&s).await;
    s.stop().await;
}

/// A model whose load does not end (its warm-up run hangs on the GPU) keeps a request waiting
/// only `load_timeout_secs`, which then gets 503 with `Retry-After` while the load goes on; the
/// index says LOADING; once the load ends the model serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waits_for_a_slow_load_then_gets_503_with_retry_after() {
    let Some(device) = gpu("a slow load on the GPU") else { return };
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut c = breaker_config(3_000);
    let mut m =
        model_config("minilm", Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2.wedge"));
    m.preload = Some(false);
    c.models.push(m);
    c.registry.load_timeout_secs = 1;
    let s = TestServer::start_on(c, device.clone()).await;
    inject(&device, Some(Fault::Hang));
    let t0 = Instant::now();
    let r = post(&s.url("/v1/embeddings"), json!({"model": "minilm", "input": "first"})).await;
    assert_eq!((r.status.as_u16(), r.error_type().as_str()), (503, "overloaded_error"));
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("is loading"), "{}", r.json());
    assert_eq!(r.header("retry-after"), "1");
    assert!(t0.elapsed() >= Duration::from_secs(1), "answered before the load timeout");
    let index = |s: &TestServer| {
        let url = s.url("/v2/repository/index");
        async move { post(&url, json!({})).await.json()[0]["state"].as_str().unwrap().to_string() }
    };
    assert_eq!(index(&s).await, "LOADING");
    inject(&device, None);
    let t0 = Instant::now();
    while index(&s).await != "READY" {
        assert!(t0.elapsed() < Duration::from_secs(60), "the load did not end");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (r, _) = embed(&s, "second").await;
    assert_eq!(r.header("x-wedge-device"), "gpu");
    s.stop().await;
}

/// Streams a greedy completion of `prompt` of `max_tokens` tokens; returns the
/// `x-wedge-device` header and the text.
async fn stream_completion(s: &TestServer, prompt: &str, max_tokens: usize) -> (String, String) {
    let body =
        json!({"model": "smollm2", "prompt": prompt, "temperature": 0, "max_tokens": max_tokens, "stream": true});
    let req = Request::builder()
        .method(Method::POST)
        .uri(s.url("/v1/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let device = resp.headers().get("x-wedge-device").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let mut text = String::new();
    for event in std::str::from_utf8(&body).unwrap().split("\n\n").filter(|e| !e.is_empty()) {
        let payload = event.strip_prefix("data: ").unwrap();
        if payload != "[DONE]" {
            let v: Value = serde_json::from_str(payload).unwrap();
            assert!(v.get("error").is_none(), "the stream failed: {v}");
            text.push_str(v["choices"][0]["text"].as_str().unwrap_or_default());
        }
    }
    (device, text)
}

/// SmolLM2 on the GPU: a stream that is generating when the GPU fails, and one when it hangs,
/// go on on the CPU (every running sequence is fed again there) and end with the tokens the
/// CPU library generates; then the model goes back to the GPU. (A prompt of at most 4 tokens
/// runs the GPU's matrix-vector kernels: a long prompt step on lavapipe takes seconds, which a
/// short watchdog would take for a hang.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generating_stream_survives_a_gpu_fault_with_the_same_tokens() {
    let Some(gguf) = smollm2("the language-model breaker") else { return };
    let Some(device) = gpu("the language-model breaker on the GPU") else { return };
    let _turn = ONE_AT_A_TIME.lock().await;
    let prompt = "One, two,";
    let max_tokens = 12;
    let want = {
        let lm = LanguageModel::open(&gguf, &wedge::Device::cpu(), LmOptions::default()).unwrap();
        let ids = lm.vocab().encode(prompt, false).unwrap();
        assert!(ids.len() <= 4, "{ids:?}");
        let params = GenerateParams { max_tokens, ..Default::default() };
        lm.generate(&ids, params).unwrap().map(|t| t.unwrap().text).collect::<String>()
    };
    let mut c = breaker_config(4_000);
    c.models.push(model_config("smollm2", gguf));
    c.generation.ctx = 64;
    c.generation.max_sequences = 2;
    let s = TestServer::start_on(c, device.clone()).await;

    // the prompt's step and 3 decode steps go well on the GPU, the 4th fails
    let gpu = device.gpu_context().unwrap();
    gpu.inject_fault_after(4, Fault::Fail);
    let (on, text) = stream_completion(&s, prompt, max_tokens).await;
    assert_eq!((on.as_str(), text.as_str()), ("gpu", want.as_str()));
    assert_eq!(metric(&s, "wedge_breaker_trips_total{model=\"smollm2\",version=\"1\",reason=\"error\"}").await, 1.0);
    assert!(metric(&s, "wedge_breaker_cpu_runs_total{").await >= 1.0);
    let (on, text) = stream_completion(&s, prompt, max_tokens).await;
    assert_eq!((on.as_str(), text.as_str()), ("cpu", want.as_str()));

    inject(&device, None);
    let t0 = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // (a request lets the breaker send its probe; a later one sees the result)
        let (on, text) = stream_completion(&s, prompt, 2).await;
        assert!(!text.is_empty());
        if on == "gpu" {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the breaker did not close after the fault was cleared");
    }

    gpu.inject_fault_after(4, Fault::Hang);
    let (on, text) = stream_completion(&s, prompt, max_tokens).await;
    assert_eq!((on.as_str(), text.as_str()), ("gpu", want.as_str()));
    assert!(metric(&s, "wedge_breaker_trips_total{model=\"smollm2\",version=\"1\",reason=\"timeout\"}").await >= 1.0);
    inject(&device, None);
    s.stop().await;
}
