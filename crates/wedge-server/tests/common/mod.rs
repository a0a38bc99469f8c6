//! What the HTTP test suites share: a server on a loopback port, and a client.

#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use wedge_serve::{Config, Service};

/// A server on a loopback port (on the CPU backend unless started on another device), and
/// gRPC on a second one.
pub(crate) struct TestServer {
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) grpc_addr: std::net::SocketAddr,
    pub(crate) service: Arc<Service>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub(crate) async fn start(config: Config) -> TestServer {
        TestServer::start_on(config, wedge::Device::cpu()).await
    }

    /// A server on `device`.
    pub(crate) async fn start_on(config: Config, device: wedge::Device) -> TestServer {
        let mut registry = prometheus_client::registry::Registry::default();
        let service = Arc::new(Service::new(config, device, &mut registry).unwrap());
        let loader = service.clone();
        tokio::task::spawn_blocking(move || loader.load_models()).await.unwrap().unwrap();
        let mut server = wedge_server::Server::bind(service.clone(), registry, "127.0.0.1:0").await.unwrap();
        server.bind_grpc("127.0.0.1:0").await.unwrap();
        let (addr, grpc_addr) = (server.local_addr().unwrap(), server.grpc_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(
                    async {
                        let _ = stopped.await;
                    },
                    Duration::from_secs(30),
                )
                .await
                .unwrap();
        });
        TestServer { addr, grpc_addr, service, stop: Some(stop), task: Some(task) }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops accepting, waits for in-flight requests, then drains the batchers and the cache.
    pub(crate) async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
        let s = self.service.clone();
        tokio::task::spawn_blocking(move || s.shutdown()).await.unwrap();
    }
}

/// A whole reply.
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: hyper::HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(|v| v.to_str().unwrap()).unwrap_or("")
    }

    /// A KServe v2 error reply (`{"error": "message"}`): its message.
    pub(crate) fn kserve_error(&self) -> String {
        let v = self.json();
        v["error"].as_str().unwrap_or_else(|| panic!("not KServe's error shape: {v}")).to_string()
    }

    /// An OpenAI error reply has the documented shape: its type.
    pub(crate) fn error_type(&self) -> String {
        let v = self.json();
        assert!(v["error"]["message"].is_string(), "{v}");
        v["error"]["type"].as_str().unwrap().to_string()
    }
}

pub(crate) fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub(crate) async fn call(method: Method, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client().request(req.body(Full::new(body.into())).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    Reply { status: parts.status, headers: parts.headers, body: body.collect().await.unwrap().to_bytes() }
}

pub(crate) async fn get(url: &str) -> Reply {
    call(Method::GET, url, &[], Bytes::new()).await
}

pub(crate) async fn post(url: &str, body: Value) -> Reply {
    call(Method::POST, url, &[("content-type", "application/json")], body.to_string()).await
}

pub(crate) async fn metric(server: &TestServer, prefix: &str) -> f64 {
    let text = String::from_utf8(get(&server.url("/metrics")).await.body.to_vec()).unwrap();
    text.lines().filter(|l| l.starts_with(prefix)).map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap()).sum()
}

/// The SmolLM2 GGUF file `WEDGE_SMOLLM2_GGUF` names, if it is there (else `check` is skipped,
/// or fails under `WEDGE_REQUIRE_MODEL=1`).
pub(crate) fn smollm2(check: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("WEDGE_SMOLLM2_GGUF").map(std::path::PathBuf::from).filter(|p| p.is_file());
    if path.is_none() {
        wedge_testkit::unavailable(
            "WEDGE_REQUIRE_MODEL",
            check,
            "WEDGE_SMOLLM2_GGUF does not name the file (models/fetch.sh smollm2 fetches it)",
        );
    }
    path
}

/// Cosine similarity, in f64.
pub(crate) fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let n = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

/// A model of the configuration: `name` served from `path`, every other field at its default.
pub(crate) fn model_config(name: &str, path: std::path::PathBuf) -> wedge_serve::ModelConfig {
    wedge_serve::ModelConfig {
        name: name.into(),
        path,
        version: None,
        aliases: vec![],
        batching: None,
        preload: None,
        versions: vec![],
    }
}

/// Runs `tests/triton/{script}` with `args` in the Python that has Triton's client
/// (`WEDGE_TRITON_PYTHON`, which `cargo xtask setup` makes) and checks that it ends saying
/// `done`; None (a skip, or a failure under `WEDGE_REQUIRE_TRITON=1`) without that Python.
pub(crate) async fn run_triton_client(script: &str, args: &[String], done: &str) -> Option<()> {
    let python = std::env::var_os("WEDGE_TRITON_PYTHON").map(std::path::PathBuf::from).filter(|p| p.is_file());
    let Some(python) = python else {
        wedge_testkit::unavailable(
            "WEDGE_REQUIRE_TRITON",
            &format!("Triton's Python client ({script}) against wedge serve"),
            "WEDGE_TRITON_PYTHON does not name a Python with tritonclient (cargo xtask setup makes one)",
        );
        return None;
    };
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/triton").join(script);
    let out = tokio::process::Command::new(&python).arg(&script).args(args).output().await.unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tritonclient: {said}");
    assert!(said.contains(done), "{said}");
    Some(())
}
