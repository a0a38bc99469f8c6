//! The edge node over real HTTP on a loopback port: every endpoint and error status, the
//! cache tiers, batching, load shedding, TLS with h2, and graceful shutdown. The model is the
//! bundled all-MiniLM-L6-v2 package on the CPU backend.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use wedge_serve::{Config, ModelConfig};

mod common;
use common::{Reply, TestServer, call, client, cosine, get, metric, post};

/// An error in KServe's shape, `{"error": "message"}` (the `/v2` routes).
const KSERVE: &str = "kserve";

fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2.wedge")
}

fn config(model: &Path) -> Config {
    let mut c = Config::default();
    c.models.push(ModelConfig {
        name: "all-MiniLM-L6-v2".into(),
        path: model.to_path_buf(),
        version: None,
        aliases: vec!["default".into()],
        batching: None,
        preload: None,
        versions: Vec::new(),
    });
    c
}

/// A request whose head declares `len` body bytes, none of them sent: the server must refuse it
/// from the head alone. (Sending a body the server will not read races its close: the client
/// then fails with a broken pipe, sometimes before it reads the 413.)
async fn declared_too_large(server: &TestServer, len: usize) -> Reply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /v1/embeddings HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n",
        server.addr
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    // read until the head and its declared body are in (the server may keep the connection)
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut buf)).await.unwrap().unwrap();
        raw.extend_from_slice(&buf[..n]);
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_string();
            let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
            let mut headers = hyper::HeaderMap::new();
            for line in head.lines().skip(1) {
                let (k, v) = line.split_once(':').unwrap();
                headers.insert(
                    hyper::header::HeaderName::from_bytes(k.trim().as_bytes()).unwrap(),
                    v.trim().parse().unwrap(),
                );
            }
            let want: usize = headers.get("content-length").map_or(0, |v| v.to_str().unwrap().parse().unwrap());
            if raw.len() >= end + 4 + want || n == 0 {
                let body = Bytes::copy_from_slice(&raw[end + 4..(end + 4 + want).min(raw.len())]);
                return Reply { status: StatusCode::from_u16(status).unwrap(), headers, body };
            }
        }
        assert!(n > 0, "connection closed before a reply: {}", String::from_utf8_lossy(&raw));
    }
}

fn embedding(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

/// The first public text and its PyTorch fp32 embedding.
fn reference() -> (String, Vec<f32>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/public.jsonl");
    let line = std::fs::read_to_string(path).unwrap().lines().next().unwrap().to_string();
    let v: Value = serde_json::from_str(&line).unwrap();
    (v["text"].as_str().unwrap().to_string(), embedding(&v["embedding"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_answer_in_both_protocols() {
    let s = TestServer::start(config(&bundled())).await;
    assert_eq!(get(&s.url("/v2/health/live")).await.status, 200);
    let ready = get(&s.url("/v2/health/ready")).await;
    assert_eq!((ready.status, ready.json()["ready"].clone()), (StatusCode::OK, json!(true)));
    let meta = get(&s.url("/v2/models/all-MiniLM-L6-v2")).await.json();
    assert_eq!(meta["outputs"][0]["shape"], json!([-1, 384]));
    assert_eq!(meta["inputs"][0]["datatype"], "BYTES");
    assert_eq!(get(&s.url("/v2/models/default/ready")).await.status, 200);
    assert_eq!(get(&s.url("/v2")).await.json()["name"], "wedge");
    assert_eq!(get(&s.url("/v1/models")).await.json()["data"][0]["id"], "all-MiniLM-L6-v2");

    // OpenAI: the vector matches PyTorch, usage counts tokens, base64 carries the same floats.
    let (text, want) = reference();
    let r = post(&s.url("/v1/embeddings"), json!({"model": "all-MiniLM-L6-v2", "input": [text, "edge"]})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-wedge-cache"), "miss");
    assert!(!r.header("x-request-id").is_empty());
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][1]["index"], 1);
    let got = embedding(&v["data"][0]["embedding"]);
    assert_eq!(got.len(), 384);
    assert!(cosine(&got, &want) > 0.99, "cosine {}", cosine(&got, &want));
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 3);
    let b =
        post(&s.url("/v1/embeddings"), json!({"model": "default", "input": text, "encoding_format": "base64"})).await;
    assert_eq!(b.header("x-wedge-cache"), "hit");
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(b.json()["data"][0]["embedding"].as_str().unwrap()).unwrap();
    let decoded: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(decoded, got);

    // KServe v2: same vector, FP32 [N, 384], the request id echoed.
    let body = json!({"id": "q1", "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]});
    let k = post(&s.url("/v2/models/all-MiniLM-L6-v2/infer"), body).await;
    assert_eq!(k.status, 200);
    let kv = k.json();
    assert_eq!((kv["id"].clone(), kv["outputs"][0]["shape"].clone()), (json!("q1"), json!([1, 384])));
    assert_eq!(kv["outputs"][0]["datatype"], "FP32");
    assert_eq!(embedding(&kv["outputs"][0]["data"]), got);
    // ... and with the binary tensor data extension, as Triton's HTTP client sends by default:
    // the JSON, then each BYTES element as a 4-byte length and its bytes; the answer's FP32
    // tensor after its JSON.
    let raw = [(text.len() as u32).to_le_bytes().to_vec(), text.as_bytes().to_vec()].concat();
    let head = json!({
        "inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": raw.len()}}],
        "parameters": {"binary_data_output": true}
    })
    .to_string();
    let n = head.len().to_string();
    let headers = [("content-type", "application/octet-stream"), ("inference-header-content-length", n.as_str())];
    let b =
        call(Method::POST, &s.url("/v2/models/all-MiniLM-L6-v2/infer"), &headers, [head.into_bytes(), raw].concat())
            .await;
    assert_eq!(b.status, 200, "{}", String::from_utf8_lossy(&b.body));
    let json_len: usize = b.header("inference-header-content-length").parse().unwrap();
    let meta: Value = serde_json::from_slice(&b.body[..json_len]).unwrap();
    assert_eq!(meta["outputs"][0]["parameters"]["binary_data_size"], json!(384 * 4));
    assert!(meta["outputs"][0].get("data").is_none());
    let floats: Vec<f32> =
        b.body[json_len..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(floats, got);

    // Errors: status, JSON shape, type.
    let cases: Vec<(Reply, u16, &str)> = vec![
        (post(&s.url("/v1/embeddings"), json!({"model": "nope", "input": "x"})).await, 404, "model_not_found"),
        (post(&s.url("/v2/models/nope/infer"), json!({"inputs": []})).await, 404, KSERVE),
        (get(&s.url("/v2/models/nope")).await, 404, KSERVE),
        (post(&s.url("/v1/embeddings"), json!({"input": []})).await, 400, "invalid_request_error"),
        (post(&s.url("/v1/embeddings"), json!({"input": [[1, 2]]})).await, 400, "invalid_request_error"),
        (post(&s.url("/v1/embeddings"), json!({"inputs": "x"})).await, 400, "invalid_request_error"),
        (
            post(&s.url("/v1/embeddings"), json!({"input": "x", "encoding_format": "hex"})).await,
            400,
            "invalid_request_error",
        ),
        (post(&s.url("/v1/embeddings"), json!({"input": "x", "dimensions": 10})).await, 400, "invalid_request_error"),
        (call(Method::POST, &s.url("/v1/embeddings"), &[], "{not json").await, 400, "invalid_request_error"),
        (
            post(
                &s.url("/v2/models/default/infer"),
                json!({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a"]}]}),
            )
            .await,
            400,
            KSERVE,
        ),
        (get(&s.url("/v2/models/default/infer")).await, 405, KSERVE),
        (get(&s.url("/v1/embeddings")).await, 405, "invalid_request_error"),
        (get(&s.url("/nowhere")).await, 404, "not_found"),
        (declared_too_large(&s, (4 << 20) + 1).await, 413, "invalid_request_error"),
    ];
    for (i, (r, status, kind)) in cases.iter().enumerate() {
        assert_eq!(r.status.as_u16(), *status, "case {i}: {}", String::from_utf8_lossy(&r.body));
        if *kind == KSERVE {
            assert!(!r.kserve_error().is_empty(), "case {i}");
        } else {
            assert_eq!(r.error_type(), *kind, "case {i}");
        }
    }
    let m = String::from_utf8(get(&s.url("/metrics")).await.body.to_vec()).unwrap();
    for needle in [
        "wedge_http_requests_total{route=\"/v1/embeddings\",status=\"200\"}",
        "wedge_http_requests_total{route=\"/v1/embeddings\",status=\"413\"}",
        "wedge_http_request_seconds_bucket",
        "wedge_batch_size_bucket",
        "wedge_queue_depth",
        "wedge_cache_lookups_total{tier=\"memory\",result=\"hit\"}",
        "wedge_model_load_seconds{model=\"all-MiniLM-L6-v2\",version=\"1\"}",
        "wedge_device{model=\"all-MiniLM-L6-v2\",version=\"1\",device=\"cpu\"} 1",
        "wedge_inferences_total{model=\"all-MiniLM-L6-v2\",version=\"1\"}",
    ] {
        assert!(m.contains(needle), "/metrics lacks {needle}:\n{m}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rate_limits_and_timeouts() {
    let mut c = config(&bundled());
    c.auth.api_keys = vec!["k-one".into()];
    c.limits.rate_limit_per_sec = 1;
    c.limits.rate_limit_burst = Some(2);
    let s = TestServer::start(c).await;
    let url = s.url("/v1/embeddings");
    let body = json!({"input": "hi"}).to_string();
    let no_key = call(Method::POST, &url, &[], body.clone()).await;
    assert_eq!((no_key.status.as_u16(), no_key.error_type().as_str()), (401, "authentication_error"));
    assert_eq!(call(Method::POST, &url, &[("authorization", "Bearer k-two")], body.clone()).await.status, 401);
    assert_eq!(call(Method::POST, &url, &[("authorization", "Bearer k-one")], body.clone()).await.status, 200);
    assert_eq!(call(Method::POST, &url, &[("x-api-key", "k-one")], body.clone()).await.status, 200);
    // A burst of 2 at 1/s: ten quick calls cannot all pass, however slow this machine is.
    let mut limited = None;
    for _ in 0..10 {
        let r = call(Method::POST, &url, &[("authorization", "Bearer k-one")], body.clone()).await;
        if r.status != 200 {
            limited = Some(r);
            break;
        }
    }
    let limited = limited.expect("no call was rate limited");
    assert_eq!((limited.status.as_u16(), limited.error_type().as_str()), (429, "rate_limit_error"));
    assert!(limited.header("retry-after").parse::<u64>().unwrap() >= 1);
    // Health stays open for probes; metrics want a key now.
    assert_eq!(get(&s.url("/v2/health/ready")).await.status, 200);
    assert_eq!(get(&s.url("/metrics")).await.status, 401);
    assert_eq!(call(Method::GET, &s.url("/metrics"), &[("x-api-key", "k-one")], Bytes::new()).await.status, 200);
    s.stop().await;

    let mut c = config(&bundled());
    c.limits.request_timeout_ms = 50;
    c.batching.max_queue_delay_us = 2_000_000; // the batch waits longer than the request may
    c.batching.max_batch_size = 64;
    let s = TestServer::start(c).await;
    let r = post(&s.url("/v1/embeddings"), json!({"input": "slow"})).await;
    assert_eq!((r.status.as_u16(), r.error_type().as_str()), (504, "timeout_error"));
    s.stop().await;
}

/// Triton's own HTTP client (`tritonclient` from PyPI, which `cargo xtask setup` installs in a
/// virtual environment) against the live server: readiness, metadata, BYTES in binary and
/// JSON, FP32 out in binary and JSON, errors read with their status and message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritons_http_client_speaks_to_wedge() {
    let s = TestServer::start(config(&bundled())).await;
    let args = [s.addr.to_string(), "all-MiniLM-L6-v2".to_string()];
    common::run_triton_client("http_client.py", &args, "tritonclient http: ok").await;
    s.stop().await;
}

/// A bad request and its answer: route, body, extra headers, status, error type (or KSERVE).
type BadInput = (&'static str, Vec<u8>, Vec<(&'static str, String)>, u16, &'static str);

/// Every bad input a user can send to the embedding and KServe routes, as a table: each gets
/// its status and error type (OpenAI's object, or KServe's `{"error"}` on `/v2`), and the
/// server keeps serving after all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_their_status_and_the_server_keeps_serving() {
    let s = TestServer::start(config(&bundled())).await;
    let json_type = [("content-type", "application/json")];
    let text = |t: &str| json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [t]}]});
    let kserve = |input: Value| json!({"inputs": [input]}).to_string().into_bytes();
    let binary = |head: Value, tail: &[u8], declared: &str| {
        let head = head.to_string();
        let len = if declared.is_empty() { head.len().to_string() } else { declared.to_string() };
        ([head.into_bytes(), tail.to_vec()].concat(), len)
    };
    let bad_utf8 = [1u32.to_le_bytes().as_slice(), &[0xff]].concat();
    let binary_input = |size: usize| json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": size}}]});
    let mut cases: Vec<BadInput> = vec![
        ("/v1/embeddings", br#"{"input": 5}"#.to_vec(), vec![], 400, "invalid_request_error"),
        ("/v1/embeddings", br#"{"input": null}"#.to_vec(), vec![], 400, "invalid_request_error"),
        ("/v1/embeddings", br#"{"input": []}"#.to_vec(), vec![], 400, "invalid_request_error"),
        ("/v1/embeddings", br#"{"input": [1.5]}"#.to_vec(), vec![], 400, "invalid_request_error"),
        ("/v1/embeddings", br#"{"input": [[1, 2]]}"#.to_vec(), vec![], 400, "invalid_request_error"),
        ("/v1/embeddings", br#"{"input": "x", "model": 7}"#.to_vec(), vec![], 400, "invalid_request_error"),
        ("/v1/embeddings", br#"{"input": "x", "model": "nope"}"#.to_vec(), vec![], 404, "model_not_found"),
        (
            "/v1/embeddings",
            br#"{"input": "x", "encoding_format": "hex"}"#.to_vec(),
            vec![],
            400,
            "invalid_request_error",
        ),
        ("/v1/embeddings", br#"{"input": "x", "dimensions": -1}"#.to_vec(), vec![], 400, "invalid_request_error"),
        ("/v1/embeddings", br#"{"input": "x", "dimensions": 1e30}"#.to_vec(), vec![], 400, "invalid_request_error"),
        ("/v1/embeddings", b"[]".to_vec(), vec![], 400, "invalid_request_error"),
        ("/v1/embeddings", b"".to_vec(), vec![], 400, "invalid_request_error"),
        ("/v1/embeddings", b"{\"input\": \"\xff\xfe\"}".to_vec(), vec![], 400, "invalid_request_error"),
        (
            "/v1/embeddings",
            json!({"input": vec!["x"; 3000]}).to_string().into_bytes(),
            vec![],
            400,
            "invalid_request_error",
        ),
        (
            "/v1/embeddings",
            json!({"input": "x".repeat(70_000)}).to_string().into_bytes(),
            vec![],
            400,
            "invalid_request_error",
        ),
        ("/v2/models/default/infer", br#"{"inputs": []}"#.to_vec(), vec![], 400, KSERVE),
        ("/v2/models/default/infer", b"{not json".to_vec(), vec![], 400, KSERVE),
        (
            "/v2/models/default/infer",
            kserve(json!({"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]})),
            vec![],
            400,
            KSERVE,
        ),
        (
            "/v2/models/default/infer",
            kserve(json!({"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a"]})),
            vec![],
            400,
            KSERVE,
        ),
        (
            "/v2/models/default/infer",
            kserve(json!({"name": "text", "shape": [-1], "datatype": "BYTES", "data": ["a"]})),
            vec![],
            400,
            KSERVE,
        ),
        (
            "/v2/models/default/infer",
            kserve(json!({"name": "text", "shape": [1_000_000_000_000i64, 1], "datatype": "BYTES", "data": ["a"]})),
            vec![],
            400,
            KSERVE,
        ),
        (
            "/v2/models/default/infer",
            kserve(json!({"name": "text", "shape": [1], "datatype": "BYTES", "data": [7]})),
            vec![],
            400,
            KSERVE,
        ),
        ("/v2/models/nope/infer", text("x").to_string().into_bytes(), vec![], 404, KSERVE),
        ("/v2/models/default/versions/9/infer", text("x").to_string().into_bytes(), vec![], 404, KSERVE),
    ];
    for (head, tail, declared) in [
        (binary_input(5), b"12345".as_slice(), "99999"),
        (binary_input(5), b"12345".as_slice(), "abc"),
        (binary_input(50), b"12345".as_slice(), ""),
        (binary_input(bad_utf8.len()), bad_utf8.as_slice(), ""),
        (binary_input(3), b"\x09\x00\x00".as_slice(), ""),
    ] {
        let (body, len) = binary(head, tail, declared);
        cases.push(("/v2/models/default/infer", body, vec![("inference-header-content-length", len)], 400, KSERVE));
    }
    for (i, (route, body, extra, status, kind)) in cases.into_iter().enumerate() {
        let mut headers: Vec<(&str, &str)> = json_type.to_vec();
        headers.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
        let r = call(Method::POST, &s.url(route), &headers, body).await;
        assert_eq!(r.status.as_u16(), status, "case {i} ({route}): {}", String::from_utf8_lossy(&r.body));
        if kind == KSERVE {
            assert!(!r.kserve_error().is_empty(), "case {i}");
        } else {
            assert_eq!(r.error_type(), kind, "case {i}: {}", String::from_utf8_lossy(&r.body));
        }
    }
    let r = post(&s.url("/v1/embeddings"), json!({"input": "still serving"})).await;
    assert_eq!(r.status, 200);
    let k = post(&s.url("/v2/models/default/infer"), text("still serving")).await;
    assert_eq!(k.status, 200);
    s.stop().await;
}

/// Reads until the server closes the connection (or resets it); false if it is still open after
/// `within`.
async fn closed_by_server(tcp: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let read_to_end = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_to_end).await.is_ok()
}

/// Slow and hostile clients cost a bounded share: a request head that does not arrive within
/// `header_read_timeout_ms` (slowloris), or a kept-alive connection idle that long, is closed
/// while other clients are served; a head over `max_header_bytes` is refused with 431; past
/// `max_connections`, a new connection waits until one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_hostile_clients_are_bounded() {
    use tokio::io::AsyncWriteExt;
    let mut c = config(&bundled());
    c.limits.header_read_timeout_ms = 1_000;
    c.limits.max_concurrent_streams = 16;
    let s = TestServer::start(c).await;
    let mut slow = Vec::new();
    for i in 0..1_000 {
        let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        if i % 2 == 0 {
            // a head that never ends; the other half send nothing at all
            tcp.write_all(b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\n").await.unwrap();
        }
        slow.push(tcp);
    }
    // (the server accepts them from the kernel's backlog as it gets to them)
    let mut open = 0.0;
    for _ in 0..300 {
        open = metric(&s, "wedge_open_connections").await;
        if open >= 1_000.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(open >= 1_000.0, "{open} connections open");
    // a byte at a time keeps no connection alive, and a normal client is served meanwhile
    for _ in 0..3 {
        for tcp in slow.iter_mut().step_by(2) {
            let _ = tcp.write_all(b"x").await;
        }
        let r = post(&s.url("/v1/embeddings"), json!({"input": "served beside the slow ones"})).await;
        assert_eq!(r.status, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for (i, tcp) in slow.iter_mut().enumerate() {
        assert!(closed_by_server(tcp, Duration::from_secs(60)).await, "slow connection {i} is still open");
    }
    drop(slow);

    // A head over max_header_bytes: 431, and the connection closes.
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let big = format!("GET /v2/health/ready HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "a".repeat(100 << 10));
    let _ = tcp.write_all(big.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut answer))
        .await;
    let head = String::from_utf8_lossy(&answer);
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");

    // HTTP/2 clients are told max_concurrent_streams.
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let (mut send, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let request = hyper::Request::get(s.url("/v2/health/live")).body(()).unwrap();
    let (answer, _) = send.send_request(request, true).unwrap();
    let answer = tokio::select! {
        a = answer => a.unwrap(),
        e = &mut connection => panic!("the connection ended first: {e:?}"),
    };
    assert_eq!(answer.status(), 200);
    assert_eq!(connection.max_concurrent_send_streams(), 16);
    drop((send, connection));
    s.stop().await;

    // Past max_connections, a new connection is not served until one closes.
    let mut c = config(&bundled());
    c.limits.max_connections = 8;
    let s = TestServer::start(c).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(tokio::net::TcpStream::connect(s.addr).await.unwrap());
    }
    let url = s.url("/v2/health/live");
    let mut waiting = tokio::spawn(async move { get(&url).await.status });
    assert!(tokio::time::timeout(Duration::from_millis(1500), &mut waiting).await.is_err(), "served past the cap");
    drop(held);
    let status = tokio::time::timeout(Duration::from_secs(30), waiting).await.unwrap().unwrap();
    assert_eq!(status, 200);
    s.stop().await;
}

/// HTTP/2 rapid reset (CVE-2023-44487): a client that opens streams and resets them at once,
/// as fast as it can, is cut off with GOAWAY long before it has made the server start its
/// thousands of requests, and a normal client is served meanwhile and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_is_cut_off() {
    let s = TestServer::start(config(&bundled())).await;
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let (mut send, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut resets = 0;
    for _ in 0..100_000 {
        let Ok(ready) = send.ready().await else { break };
        send = ready;
        let request = hyper::Request::post(s.url("/v1/embeddings")).body(()).unwrap();
        let Ok((_, mut stream)) = send.send_request(request, false) else { break };
        stream.send_reset(h2::Reason::CANCEL);
        resets += 1;
    }
    let ended = tokio::time::timeout(Duration::from_secs(30), connection).await;
    let error = ended.expect("the server ended the connection").unwrap().expect_err("with an error");
    eprintln!("cut off after {resets} rapid resets: {error}");
    assert!(resets < 10_000, "the server took {resets} rapid resets");
    // GOAWAY(ENHANCE_YOUR_CALM), or the socket closed under a client still writing
    assert!(error.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || error.is_io(), "{error}");
    let r = post(&s.url("/v1/embeddings"), json!({"input": "served after the attack"})).await;
    assert_eq!(r.status, 200);
    s.stop().await;
}

/// `data` in an HTTP content coding, as a client would send it.
fn encode_as(coding: &str, data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    match coding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "deflate" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "br" => {
            let mut out = Vec::new();
            brotli::BrotliCompress(&mut &data[..], &mut out, &brotli::enc::BrotliEncoderParams::default()).unwrap();
            out
        }
        "zstd" => zstd::encode_all(data, 3).unwrap(),
        other => panic!("no coding {other}"),
    }
}

/// A body in an HTTP content coding (`""`: none), decoded as a client would.
fn decode_as(coding: &str, data: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    match coding {
        "" => out.extend_from_slice(data),
        "gzip" => _ = flate2::read::GzDecoder::new(data).read_to_end(&mut out).unwrap(),
        "deflate" => _ = flate2::read::ZlibDecoder::new(data).read_to_end(&mut out).unwrap(),
        "br" => _ = brotli::Decompressor::new(data, 4096).read_to_end(&mut out).unwrap(),
        "zstd" => out = zstd::decode_all(data).unwrap(),
        other => panic!("no coding {other}"),
    }
    out
}

/// Responses in the coding the client prefers (zstd, br, gzip or deflate) above a minimum
/// size; request bodies in any of them, with the body limit counted decompressed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_and_request_bodies_are_compressed() {
    let mut c = config(&bundled());
    c.limits.max_body_bytes = 64 << 10;
    let s = TestServer::start(c).await;
    let url = s.url("/v1/embeddings");
    let body = json!({"input": ["compressed answers", "edge"]}).to_string();
    let plain = call(Method::POST, &url, &[("content-type", "application/json")], body.clone()).await;
    assert_eq!((plain.status, plain.header("content-encoding")), (StatusCode::OK, ""));
    let want = plain.json()["data"].clone();
    for (accept, coding) in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("deflate", "deflate"),
        ("gzip, deflate, br, zstd", "zstd"),
        ("gzip;q=0.5, br;q=0.9", "br"),
        ("x-gzip", "gzip"),
        ("*;q=0.1, zstd;q=0", "br"),
        ("identity", ""),
        ("gzip;q=0", ""),
        ("compress", ""),
    ] {
        let headers = [("content-type", "application/json"), ("accept-encoding", accept)];
        let r = call(Method::POST, &url, &headers, body.clone()).await;
        assert_eq!((r.status, r.header("content-encoding")), (StatusCode::OK, coding), "{accept}");
        assert!(r.header("vary").contains("accept-encoding"), "{accept}");
        if !coding.is_empty() {
            assert!(r.body.len() < plain.body.len() * 3 / 4, "{accept}: {} of {}", r.body.len(), plain.body.len());
        }
        let v: Value = serde_json::from_slice(&decode_as(coding, &r.body)).unwrap();
        assert_eq!(v["data"], want, "{accept}");
    }
    // Small answers (under compression.min_bytes) go as they are.
    let ready = call(Method::GET, &s.url("/v2/health/ready"), &[("accept-encoding", "gzip")], Bytes::new()).await;
    assert_eq!((ready.status, ready.header("content-encoding")), (StatusCode::OK, ""));

    // Compressed request bodies, on both protocols.
    for coding in ["gzip", "deflate", "br", "zstd"] {
        let headers = [("content-type", "application/json"), ("content-encoding", coding)];
        let r = call(Method::POST, &url, &headers, encode_as(coding, body.as_bytes())).await;
        assert_eq!(r.status, 200, "{coding}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["data"], want, "{coding}");
    }
    let kserve = json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["edge"]}]});
    let headers = [("content-type", "application/json"), ("content-encoding", "gzip")];
    let k = call(
        Method::POST,
        &s.url("/v2/models/default/infer"),
        &headers,
        encode_as("gzip", kserve.to_string().as_bytes()),
    )
    .await;
    assert_eq!(k.status, 200, "{}", String::from_utf8_lossy(&k.body));
    assert_eq!(embedding(&k.json()["outputs"][0]["data"]), embedding(&want[1]["embedding"]));

    // A zip bomb (a few KiB that inflate to 16 MiB) gets 413, however it is coded; a coding
    // wedge does not speak gets 415; a body that is not what it claims gets 400.
    let bomb = [br#"{"input": [""#.as_slice(), &vec![b'a'; 16 << 20], br#""]}"#].concat();
    for coding in ["gzip", "deflate", "br", "zstd"] {
        let packed = encode_as(coding, &bomb);
        assert!(packed.len() < 64 << 10, "{coding}: {}", packed.len());
        let headers = [("content-type", "application/json"), ("content-encoding", coding)];
        let r = call(Method::POST, &url, &headers, packed).await;
        assert_eq!((r.status.as_u16(), r.error_type().as_str()), (413, "invalid_request_error"), "{coding}");
    }
    let cases = [
        ("/v1/embeddings", "compress", body.as_bytes().to_vec(), 415),
        ("/v1/embeddings", "gzip, gzip", encode_as("gzip", &encode_as("gzip", body.as_bytes())), 415),
        ("/v1/embeddings", "gzip", body.as_bytes().to_vec(), 400),
        ("/v2/models/default/infer", "snappy", kserve.to_string().into_bytes(), 415),
        ("/v2/models/default/infer", "zstd", b"not zstd at all".to_vec(), 400),
    ];
    for (path, coding, data, status) in cases {
        let headers = [("content-type", "application/json"), ("content-encoding", coding)];
        let r = call(Method::POST, &s.url(path), &headers, data).await;
        assert_eq!(r.status.as_u16(), status, "{path} {coding}: {}", String::from_utf8_lossy(&r.body));
        if path.starts_with("/v2") {
            assert!(!r.kserve_error().is_empty());
        } else {
            assert_eq!(r.error_type(), "invalid_request_error");
        }
    }
    s.stop().await;
}

/// Every `"wedge_…"` name a registry is given in `crates/{dir}/src`.
fn registered_metrics(dir: &str, names: &mut std::collections::HashSet<String>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir).join("src");
    let mut stack = vec![src];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (i, _) in text.match_indices("register(") {
                    let rest = text[i..].trim_start_matches("register(").trim_start();
                    if let Some(name) = rest.strip_prefix("\"wedge_") {
                        names.insert(format!("wedge_{}", name.split('"').next().unwrap()));
                    }
                }
            }
        }
    }
}

/// The alerting rules, the dashboard and the autoscaler's adapter rules in `deploy/` name only
/// metrics wedge registers (a renamed metric would leave them silently empty).
#[test]
fn monitoring_names_only_registered_metrics() {
    let mut registered = std::collections::HashSet::new();
    registered_metrics("wedge-serve", &mut registered);
    registered_metrics("wedge-server", &mut registered);
    for name in ["wedge_grpc_requests", "wedge_http_requests", "wedge_queue_depth", "wedge_breaker_state"] {
        assert!(registered.contains(name), "{name} not found among {registered:?}");
    }
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let mut checked = 0;
    for file in [
        "monitoring/wedge-alerts.yaml",
        "monitoring/wedge-dashboard.json",
        "monitoring/prometheus-adapter.yaml",
        "base/hpa.yaml",
    ] {
        let body = std::fs::read_to_string(deploy.join(file)).unwrap();
        let mut rest = body.as_str();
        while let Some(at) = rest.find("wedge_") {
            let name: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            rest = &rest[at + name.len()..];
            // (OpenMetrics' sample names: a counter's _total, a histogram's _bucket, _count, _sum)
            let family = ["_bucket", "_count", "_sum", "_total"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name);
            assert!(registered.contains(family), "{file} names {name}, which wedge does not register");
            checked += 1;
        }
    }
    assert!(checked > 20, "{checked}");
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A JWT for `sub` with `scope`, signed with the test keys of `tests/data/jwt`.
fn token(alg: jsonwebtoken::Algorithm, sub: &str, scope: &str, exp: u64) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/jwt");
    let (key, kid) = match alg {
        Algorithm::RS256 => (EncodingKey::from_rsa_pem(&std::fs::read(data.join("rsa-private.pem")).unwrap()), "rsa-1"),
        Algorithm::ES256 => (EncodingKey::from_ec_pem(&std::fs::read(data.join("ec-private.pem")).unwrap()), "ec-1"),
        _ => (Ok(EncodingKey::from_secret(b"the HS256 secret of this test, 32+ bytes")), ""),
    };
    let header = Header { kid: (!kid.is_empty()).then(|| kid.to_string()), ..Header::new(alg) };
    let claims = json!({"sub": sub, "scope": scope, "exp": exp, "iss": "https://id.example", "aud": "wedge"});
    jsonwebtoken::encode(&header, &claims, &key.unwrap()).unwrap()
}

/// JWT bearer tokens (HS256, and RS256/ES256 from a JWKS file) with per-model scopes, keys
/// with models, quotas of requests and tokens, and `/metrics` behind credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_scopes_and_quotas() {
    use jsonwebtoken::Algorithm;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(&bundled());
    c.models.push(ModelConfig { name: "other".into(), aliases: vec![], ..c.models[0].clone() });
    c.models[1].path = changed_model(dir.path());
    c.auth.jwt = Some(wedge_serve::config::JwtConfig {
        hs256_secret: Some("the HS256 secret of this test, 32+ bytes".into()),
        jwks_file: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/jwt/jwks.json")),
        issuer: Some("https://id.example".into()),
        audience: Some("wedge".into()),
        leeway_secs: 0,
        ..Default::default()
    });
    let key = |key: &str, models: Option<Vec<&str>>, metrics, requests, tokens| wedge_serve::config::KeyConfig {
        key: Some(key.into()),
        models: models.map(|m| m.into_iter().map(String::from).collect()),
        metrics,
        requests,
        tokens,
        ..Default::default()
    };
    c.auth.keys = vec![
        key("team-a", Some(vec!["other"]), false, Some(3), None),
        key("metered", None, true, None, Some(12)),
        key("ops", None, true, None, None),
    ];
    let s = TestServer::start(c).await;
    let url = s.url("/v1/embeddings");
    let with = |auth: String| vec![("authorization".to_string(), format!("Bearer {auth}"))];
    let ask = |model: &str, headers: Vec<(String, String)>| {
        let (url, body) = (url.clone(), json!({"model": model, "input": "a short text"}).to_string());
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            call(Method::POST, &url, &h, body).await
        }
    };
    let later = unix_now() + 600;

    // a token is scoped to the models it names, whatever signed it
    for alg in [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256] {
        let alice = token(alg, "alice", "model:all-MiniLM-L6-v2", later);
        assert_eq!(ask("all-MiniLM-L6-v2", with(alice.clone())).await.status, 200, "{alg:?}");
        let r = ask("other", with(alice.clone())).await;
        assert_eq!((r.status.as_u16(), r.error_type().as_str()), (403, "permission_error"), "{alg:?}");
        // an alias is the model it names
        assert_eq!(ask("default", with(alice)).await.status, 200);
    }
    let alice = token(Algorithm::RS256, "alice", "model:all-MiniLM-L6-v2", later);
    let listed =
        call(Method::GET, &s.url("/v1/models"), &[("authorization", &format!("Bearer {alice}"))], Bytes::new())
            .await
            .json();
    let ids: Vec<&str> = listed["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["all-MiniLM-L6-v2"]);
    let r = ask("all-MiniLM-L6-v2", with(token(Algorithm::ES256, "alice", "model:*", unix_now() - 5))).await;
    assert_eq!((r.status.as_u16(), r.error_type().as_str()), (401, "authentication_error"));
    assert_eq!(r.header("www-authenticate"), "Bearer error=\"invalid_token\"");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("Expired"), "{}", r.json());
    let mut forged = token(Algorithm::ES256, "alice", "model:*", later);
    forged.truncate(forged.len() - 4);
    assert_eq!(ask("other", with(forged)).await.status, 401);

    // a key with models: its default model is the first it may use; its requests are counted
    let r = call(Method::POST, &url, &[("x-api-key", "team-a")], json!({"input": "hi"}).to_string()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["model"], "other");
    // what is left, as OpenAI's headers say it
    assert_eq!((r.header("x-ratelimit-limit-requests"), r.header("x-ratelimit-remaining-requests")), ("3", "2"));
    assert!(r.header("x-ratelimit-reset-requests").ends_with('s'));
    assert_eq!(r.header("x-ratelimit-remaining-tokens"), "", "no token quota, no header");
    assert_eq!(ask("all-MiniLM-L6-v2", vec![("x-api-key".into(), "team-a".into())]).await.status, 403);
    assert_eq!(ask("other", vec![("x-api-key".into(), "team-a".into())]).await.status, 200);
    let r = ask("other", vec![("x-api-key".into(), "team-a".into())]).await;
    // (the 3 requests of its quota are used: a refused one counts too)
    assert_eq!((r.status.as_u16(), r.error_type().as_str()), (429, "insufficient_quota"));
    assert!(r.header("retry-after").parse::<u64>().unwrap() > 3_600);

    // a token quota: a request may go past it, the next is refused
    let metered = || vec![("x-api-key".to_string(), "metered".to_string())];
    let long = json!({"input": "a text of more than twelve tokens, which is what this key may use in a day"});
    let r = call(Method::POST, &url, &[("x-api-key", "metered")], long.to_string()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-remaining-tokens"), "0");
    assert!(r.json()["usage"]["prompt_tokens"].as_u64().unwrap() > 12);
    let r = ask("other", metered()).await;
    assert_eq!((r.status.as_u16(), r.error_type().as_str()), (429, "insufficient_quota"));
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("12 tokens"));

    // /metrics: credentials, and a scope or key that may read it
    assert_eq!(get(&s.url("/metrics")).await.status, 401);
    let metrics = |auth: String| {
        let url = s.url("/metrics");
        async move { call(Method::GET, &url, &[("authorization", &format!("Bearer {auth}"))], Bytes::new()).await.status }
    };
    assert_eq!(metrics(alice).await, 403);
    assert_eq!(metrics("team-a".into()).await, 403);
    assert_eq!(metrics("ops".into()).await, 200);
    assert_eq!(metrics(token(Algorithm::HS256, "prometheus", "metrics", later)).await, 200);
    s.stop().await;

    let mut c = config(&bundled());
    c.auth.api_keys = vec!["k".into()];
    c.auth.metrics_public = true;
    let s = TestServer::start(c).await;
    assert_eq!(get(&s.url("/metrics")).await.status, 200);
    assert_eq!(post(&s.url("/v1/embeddings"), json!({"input": "hi"})).await.status, 401);
    s.stop().await;
}

/// A copy of the bundled model with a different header, hence a different digest.
fn changed_model(dir: &Path) -> PathBuf {
    let bytes = std::fs::read(bundled()).unwrap();
    let (mut pkg, digest) = wedge_core::Package::from_bytes(&bytes).unwrap();
    pkg.config["wedge_test_revision"] = json!(2);
    let (out, new_digest) = pkg.to_bytes(1).unwrap();
    assert_ne!(digest, new_digest);
    let path = dir.join("changed.wedge");
    std::fs::write(&path, out).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hits_bypass_restart_and_invalidation() {
    let dir = tempfile::tempdir().unwrap();
    let with_disk = |model: &Path| {
        let mut c = config(model);
        c.cache.disk_path = Some(dir.path().join("cache.redb"));
        c
    };
    let body = json!({"input": ["cached text", "another"]});
    let s = TestServer::start(with_disk(&bundled())).await;
    let url = s.url("/v1/embeddings");
    let first = post(&url, body.clone()).await;
    assert_eq!(first.header("x-wedge-cache"), "miss");
    let second = post(&url, body.clone()).await;
    assert_eq!(second.header("x-wedge-cache"), "hit");
    assert_eq!(first.json()["data"], second.json()["data"]);
    let bypass = call(Method::POST, &url, &[("cache-control", "no-cache")], body.to_string()).await;
    assert_eq!(bypass.header("x-wedge-cache"), "miss");
    assert_eq!(metric(&s, "wedge_inferences_total").await, 4.0, "the bypass ran the model again");
    s.stop().await; // flushes the disk tier

    // A restart has an empty memory tier; the disk tier answers.
    let s = TestServer::start(with_disk(&bundled())).await;
    let again = post(&s.url("/v1/embeddings"), body.clone()).await;
    assert_eq!(again.header("x-wedge-cache"), "hit");
    assert_eq!(again.json()["data"], first.json()["data"]);
    assert_eq!(metric(&s, "wedge_cache_lookups_total{tier=\"disk\",result=\"hit\"}").await, 2.0);
    assert_eq!(metric(&s, "wedge_inferences_total").await, 0.0);
    s.stop().await;

    // A new model file (new digest) never sees the old entries.
    let s = TestServer::start(with_disk(&changed_model(dir.path()))).await;
    let fresh = post(&s.url("/v1/embeddings"), body.clone()).await;
    assert_eq!(fresh.header("x-wedge-cache"), "miss");
    assert_eq!(metric(&s, "wedge_inferences_total").await, 2.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_batched_and_identical_misses_run_once() {
    let mut c = config(&bundled());
    c.batching.max_batch_size = 64;
    c.batching.max_queue_delay_us = 200_000;
    let s = Arc::new(TestServer::start(c).await);
    let url = s.url("/v1/embeddings");
    let distinct: Vec<_> = (0..16)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move { post(&url, json!({"input": format!("sentence number {i}")})).await })
        })
        .collect();
    for t in distinct {
        assert_eq!(t.await.unwrap().status, 200);
    }
    let runs = metric(&s, "wedge_batch_size_count").await;
    let inputs = metric(&s, "wedge_batch_size_sum").await;
    assert_eq!(inputs, 16.0);
    assert!(runs < 16.0, "16 concurrent requests took {runs} runs: not merged");

    let same: Vec<_> = (0..12)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { post(&url, json!({"input": "the very same text"})).await })
        })
        .collect();
    let mut vectors = Vec::new();
    for t in same {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        vectors.push(r.json()["data"][0]["embedding"].clone());
    }
    assert!(vectors.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(metric(&s, "wedge_inferences_total").await, 17.0, "12 identical misses ran the model once");
    Arc::into_inner(s).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_answered_with_503_not_timeouts() {
    let mut c = config(&bundled());
    c.cache.enabled = false;
    c.batching.max_batch_size = 1;
    c.batching.max_queue_delay_us = 0;
    c.batching.max_queue = 2;
    let s = TestServer::start(c).await;
    let url = s.url("/v1/embeddings");
    let long = "a long input that keeps the model busy for a while ".repeat(20);
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let (url, text) = (url.clone(), format!("{i} {long}"));
            tokio::spawn(async move { post(&url, json!({"input": text})).await })
        })
        .collect();
    let (mut ok, mut shed) = (0, 0);
    for t in tasks {
        let r = t.await.unwrap();
        match r.status.as_u16() {
            200 => ok += 1,
            503 => {
                assert_eq!(r.error_type(), "overloaded_error");
                assert!(r.header("retry-after").parse::<u64>().unwrap() >= 1);
                shed += 1;
            }
            other => panic!("status {other}: {}", String::from_utf8_lossy(&r.body)),
        }
    }
    assert!(ok >= 1 && shed >= 1, "ok {ok}, shed {shed}");
    assert_eq!(metric(&s, "wedge_shed_requests_total").await, f64::from(shed));
    // more inputs than the queue holds: a 400 naming the limit, not a 503 to retry for ever
    let r = post(&url, json!({"input": ["a", "b", "c"]})).await;
    assert_eq!((r.status.as_u16(), r.error_type().as_str()), (400, "invalid_request_error"));
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("at most 2 (batching.max_queue)"), "{}", r.json());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_negotiates_h2() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let mut c = config(&bundled());
    c.tls = Some(wedge_serve::config::TlsConfig { cert, key });
    let s = TestServer::start(c).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::post(format!("https://localhost:{}/v1/embeddings", s.addr.port()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json!({"input": "over h2"}).to_string())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 384);
    // Plain HTTP to the TLS port gets nowhere.
    assert!(client().get(s.url("/v2/health/live").parse().unwrap()).await.is_err());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_loses_no_in_flight_response() {
    let mut c = config(&bundled());
    c.batching.max_queue_delay_us = 400_000; // requests sit in the queue when the stop comes
    c.batching.max_batch_size = 64;
    let s = TestServer::start(c).await;
    let url = s.url("/v1/embeddings");
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move { post(&url, json!({"input": format!("in flight {i}")})).await })
        })
        .collect();
    // Stop once all six are queued, i.e. accepted and waiting for their batch.
    let model = s.service.model("default").await.unwrap();
    while model.queued() < 6 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let addr = s.addr;
    s.stop().await;
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["data"][0]["embedding"].as_array().unwrap().len(), 384);
    }
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still accepting after shutdown");
}

/// `path` replaced at once (written beside it, then renamed over it), as a deployment does.
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls the repository index until `done` holds for model `name`'s line (30 s at most).
async fn index_until(s: &TestServer, name: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut index = Value::Null;
    for _ in 0..300 {
        index = call(Method::POST, &s.url("/v2/repository/index"), &[], "").await.json();
        if let Some(line) = index.as_array().unwrap().iter().find(|l| l["name"] == name)
            && done(line)
        {
            return line.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the index never got there for {name}: {index}");
}

/// A models folder: models load on their first request; under steady traffic a changed file
/// is reloaded and a damaged one refused, with no failed request; a file dropped in the folder
/// is served; the KServe repository routes load, unload and list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_models_folder_loads_on_demand_and_reloads_under_traffic() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(bundled(), dir.path().join("a.wedge")).unwrap();
    std::fs::write(dir.path().join("a.toml"), "version = \"3\"\naliases = [\"first\"]\n").unwrap();
    let mut c = Config::default();
    c.registry.models_dir = Some(dir.path().to_path_buf());
    let s = TestServer::start(c).await;
    let _watcher = s.service.watch_files(None).unwrap();
    assert_eq!(get(&s.url("/v2/health/ready")).await.status, 200, "nothing to preload");
    let line = index_until(&s, "a", |_| true).await;
    assert_eq!((line["state"].as_str(), line["version"].as_str()), (Some("UNAVAILABLE"), Some("3")));
    let ready = get(&s.url("/v2/models/a/ready")).await;
    assert_eq!((ready.status, ready.json()["ready"].clone()), (StatusCode::SERVICE_UNAVAILABLE, json!(false)));

    // the first request loads it
    let r = post(&s.url("/v1/embeddings"), json!({"model": "first", "input": "edge"})).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let loaded = index_until(&s, "a", |l| l["state"] == "READY").await;
    let first_digest = loaded["digest"].as_str().unwrap().to_string();

    // steady traffic while the file is replaced, then damaged
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic: Vec<_> = (0..4)
        .map(|i| {
            let (url, stop) = (s.url("/v1/embeddings"), stop.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let body = json!({"model": "a", "input": format!("request {i} {ok}")}).to_string();
                    let r = call(Method::POST, &url, &[("content-type", "application/json")], body).await;
                    if r.status == 200 { ok += 1 } else { failed.push(r.status) }
                }
                (ok, failed)
            })
        })
        .collect();
    let t0 = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let changed = std::fs::read(changed_model(dir.path())).unwrap();
    std::fs::remove_file(dir.path().join("changed.wedge")).unwrap();
    replace(&dir.path().join("a.wedge"), &changed);
    let reloaded = index_until(&s, "a", |l| l["digest"] != first_digest.as_str()).await;
    assert_eq!(reloaded["state"], "READY");
    let mut damaged = changed.clone();
    let at = damaged.len() - 64;
    damaged[at] ^= 0x21;
    replace(&dir.path().join("a.wedge"), &damaged);
    let refused = index_until(&s, "a", |l| !l["reason"].as_str().unwrap().is_empty()).await;
    assert_eq!(
        (&refused["state"], &refused["digest"]),
        (&json!("READY"), &reloaded["digest"]),
        "the old version serves on"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for t in traffic {
        let (o, f) = t.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "reload under traffic: {ok} requests in {secs:.1} s ({:.0}/s), {} failed",
        f64::from(ok) / secs,
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(ok > 0);
    assert!(metric(&s, "wedge_model_reloads_total").await >= 1.0);
    assert!(metric(&s, "wedge_model_load_failures_total").await >= 1.0);

    // a file dropped in the folder is served; the repository routes load, unload and list
    std::fs::copy(bundled(), dir.path().join("b.wedge")).unwrap();
    assert_eq!(index_until(&s, "b", |_| true).await["state"], "UNAVAILABLE");
    assert_eq!(call(Method::POST, &s.url("/v2/repository/models/b/load"), &[], "").await.status, 200);
    assert_eq!(index_until(&s, "b", |_| true).await["state"], "READY");
    let ready: Vec<Value> = serde_json::from_slice(
        &call(Method::POST, &s.url("/v2/repository/index"), &[], r#"{"ready": true}"#).await.body,
    )
    .unwrap();
    assert_eq!(ready.len(), 2);
    assert_eq!(call(Method::POST, &s.url("/v2/repository/models/b/unload"), &[], "").await.status, 200);
    assert_eq!(index_until(&s, "b", |_| true).await["state"], "UNAVAILABLE");
    let missing = call(Method::POST, &s.url("/v2/repository/models/nope/load"), &[], "").await;
    assert_eq!(missing.status, 404);
    // a reload that fails is a 503 naming the problem, and the old version still answers
    let failed_load = call(Method::POST, &s.url("/v2/repository/models/a/load"), &[], "").await;
    assert_eq!(failed_load.status, 503, "{}", String::from_utf8_lossy(&failed_load.body));
    assert_eq!(post(&s.url("/v1/embeddings"), json!({"model": "a", "input": "still"})).await.status, 200);
    s.stop().await;
}

/// Two versions under one name: a caller (`user`, else its address) keeps one version;
/// `/versions/{v}/` pins one; answers name the version (`x-wedge-model-version`, KServe's
/// `model_version`); a changed configuration file moves the traffic with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_routed_by_weight_pinned_by_path_and_reweighed_live() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(bundled(), dir.path().join("v2.wedge")).unwrap();
    let changed = changed_model(dir.path());
    std::fs::rename(&changed, dir.path().join("v3.wedge")).unwrap();
    let toml = |w2: u32, w3: u32| {
        format!(
            "[[models]]\nname = \"m\"\nversions = [{{ version = \"2\", path = \"v2.wedge\", weight = {w2} }}, \
             {{ version = \"3\", path = \"v3.wedge\", weight = {w3} }}]\n"
        )
    };
    let file = dir.path().join("wedge.toml");
    std::fs::write(&file, toml(1, 0)).unwrap();
    let s = TestServer::start(Config::load(&file).unwrap()).await;
    let _watcher = s.service.watch_files(Some(&file)).unwrap();
    let version_of = |user: String| {
        let url = s.url("/v1/embeddings");
        async move {
            let r = post(&url, json!({"model": "m", "input": "edge", "user": user})).await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            r.header("x-wedge-model-version").to_string()
        }
    };
    for u in 0..20 {
        assert_eq!(version_of(format!("u{u}")).await, "2", "weight 0 takes no one");
    }
    let pinned = post(
        &s.url("/v2/models/m/versions/3/infer"),
        json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["edge"]}]}),
    )
    .await;
    assert_eq!((pinned.status, pinned.header("x-wedge-model-version")), (StatusCode::OK, "3"));
    assert_eq!(pinned.json()["model_version"], "3");
    assert_eq!(get(&s.url("/v2/models/m/versions/9")).await.status, 404);
    let index = call(Method::POST, &s.url("/v2/repository/index"), &[], "").await.json();
    let lines: Vec<_> = index.as_array().unwrap().iter().map(|l| (l["name"].clone(), l["version"].clone())).collect();
    assert_eq!(lines, [(json!("m"), json!("2")), (json!("m"), json!("3"))]);

    // re-weighed in the file: a half each, by caller, sticky
    std::fs::write(&file, toml(1, 1)).unwrap();
    let mut seen = std::collections::HashMap::new();
    for _ in 0..100 {
        seen.clear();
        for u in 0..40 {
            *seen.entry(version_of(format!("u{u}")).await).or_insert(0) += 1;
        }
        if seen.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen.len(), 2, "both versions take callers: {seen:?}");
    for u in 0..40 {
        let first = version_of(format!("u{u}")).await;
        assert_eq!(version_of(format!("u{u}")).await, first, "a caller stays on its version");
    }
    s.stop().await;
}

/// A `redis-server` of Debian's package on a loopback port, killed when dropped.
struct Redis {
    child: std::process::Child,
    port: u16,
}

impl Redis {
    /// Starts one on `port` (a free one when `None`); `None` (reported) without the binary.
    fn start(port: Option<u16>) -> Option<Redis> {
        if std::process::Command::new("redis-server").arg("--version").output().is_err() {
            wedge_testkit::unavailable("WEDGE_REQUIRE_REDIS", "the Redis cache tier", "no redis-server on PATH");
            return None;
        }
        let port =
            port.unwrap_or_else(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port());
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let r = Redis { child, port };
        for _ in 0..100 {
            if r.dbsize().is_some() {
                return Some(r);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start on port {port}");
    }

    /// Keys stored, asked in Redis's own protocol.
    fn dbsize(&self) -> Option<u64> {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        tcp.write_all(b"*1\r\n$6\r\nDBSIZE\r\n").ok()?;
        let mut buf = [0u8; 64];
        let n = tcp.read(&mut buf).ok()?;
        std::str::from_utf8(&buf[..n]).ok()?.trim().strip_prefix(':')?.parse().ok()
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

/// Two nodes share a real Redis: a miss on one is a hit on the other. Redis killed mid-run
/// fails no request; restarted, it is used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_a_redis_tier_that_may_die() {
    let Some(redis) = Redis::start(None) else { return };
    let node = || {
        let mut c = config(&bundled());
        c.cache.redis_url = Some(redis.url());
        c.cache.redis_prefix = "test:".into();
        c.cache.redis_timeout_ms = 1000; // (a loaded CI machine; the breaker is what is tested)
        TestServer::start(c)
    };
    let (a, b) = (node().await, node().await);
    let embed = |s: &TestServer, text: String| {
        let url = s.url("/v1/embeddings");
        async move {
            let r = post(&url, json!({"input": text})).await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            (r.header("x-wedge-cache").to_string(), r.json()["data"][0]["embedding"].clone())
        }
    };
    let shared_once = |tag: &str| {
        let text = format!("shared between the nodes {tag}");
        let (a, b, redis) = (&a, &b, &redis);
        async move {
            let (from_a, va) = embed(a, text.clone()).await;
            assert_eq!(from_a, "miss");
            for _ in 0..100 {
                if redis.dbsize().unwrap_or(0) > 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let (from_b, vb) = embed(b, text).await;
            assert_eq!(from_b, "hit", "node b found node a's vector in Redis");
            assert_eq!(va, vb);
        }
    };
    shared_once("1").await;
    assert!(metric(&b, "wedge_cache_lookups_total{tier=\"redis\",result=\"hit\"}").await >= 1.0);

    // Redis dies: every request is still answered, from the local tiers or computed
    let port = redis.port;
    drop(redis);
    for i in 0..12 {
        for s in [&a, &b] {
            embed(s, format!("while redis is down {i}")).await;
        }
    }
    assert!(metric(&a, "wedge_cache_tier_errors_total").await >= 1.0);
    assert_eq!(metric(&a, "wedge_cache_tier_open{tier=\"redis\",op=\"breaker\"}").await, 1.0);

    // back on its port (empty): used again once the breaker's cool-down is over
    let redis = Redis::start(Some(port)).unwrap();
    let mut shared = false;
    for round in 0..40 {
        let text = format!("after the restart {round}");
        let (_, va) = embed(&a, text.clone()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (from_b, vb) = embed(&b, text).await;
        assert_eq!(va, vb);
        if from_b == "hit" {
            shared = true;
            break;
        }
    }
    assert!(shared, "the restarted Redis never carried a value from one node to the other");
    assert!(redis.dbsize().unwrap() > 0);
    a.stop().await;
    b.stop().await;
}
