//! wedge-server: the HTTP front of `wedge serve`, on tokio + hyper 1.x (HTTP/1.1 and HTTP/2,
//! `hyper-util`'s auto builder) with optional TLS through rustls (ALPN h2 and http/1.1).
//!
//! Routes: `POST /v1/embeddings` (OpenAI), `GET /v1/models`, `POST /v2/models/{name}/infer`,
//! `GET /v2/models/{name}`, `GET /v2/models/{name}/ready`, `GET /v2/health/live`,
//! `GET /v2/health/ready`, `GET /v2` (KServe v2), `GET /metrics` (Prometheus); responses
//! compressed as the client accepts (zstd, br, gzip, deflate) and compressed request bodies
//! read. KServe v2 over gRPC (`inference.GRPCInferenceService`, [`grpc`]) on its own port
//! ([`Server::bind_grpc`]) and on the HTTP port to any request of type `application/grpc`.
//! Everything about serving itself (models, batching, cache, keys, limits) lives in
//! `wedge-serve`.

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Either, Full, Limited, StreamBody};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::Instrument;
use wedge_serve::{CachePolicy, Caller, Generation, ServeError, Service};

mod api;
mod compress;
#[doc(hidden)]
pub mod fuzz;
pub mod grpc;
mod llm;
pub mod telemetry;
mod tls;

pub use tls::tls_acceptor;

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Binding or accepting.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Certificate or key.
    #[error("tls: {0}")]
    Tls(String),
    /// The OpenTelemetry exporter.
    #[error("telemetry: {0}")]
    Telemetry(String),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

struct State {
    service: Arc<Service>,
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    latency: Family<RouteLabel, Histogram>,
    next_id: AtomicU64,
    /// Connections open now.
    connections: Gauge,
    grpc: grpc::proto::grpc_inference_service_server::GrpcInferenceServiceServer<grpc::Grpc>,
}

/// A bound server, ready to [`Server::run`].
pub struct Server {
    state: Arc<State>,
    listener: TcpListener,
    /// The port of gRPC alone, when it has one.
    grpc_listener: Option<TcpListener>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.listener.local_addr().ok()).finish_non_exhaustive()
    }
}

impl Server {
    /// Binds `addr`. `registry` already holds the service's metrics; the HTTP ones are added.
    /// TLS comes from the service's configuration when it has a `[tls]` section.
    pub async fn bind(service: Arc<Service>, mut registry: Registry, addr: &str) -> Result<Server, ServerError> {
        let requests = Family::<RouteStatus, Counter>::default();
        let latency = Family::<RouteLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
        });
        registry.register("wedge_http_requests", "HTTP requests by route and status", requests.clone());
        registry.register("wedge_http_request_seconds", "HTTP request latency by route", latency.clone());
        let tls = match &service.config().tls {
            Some(t) => Some(tls_acceptor(&t.cert, &t.key)?),
            None => None,
        };
        let listener = TcpListener::bind(addr).await?;
        let connections = Gauge::default();
        registry.register("wedge_open_connections", "Client connections open now", connections.clone());
        let grpc = grpc::server(service.clone(), &mut registry);
        let next_id = AtomicU64::new(1);
        let state = Arc::new(State { service, registry, requests, latency, next_id, connections, grpc });
        Ok(Server { state, listener, grpc_listener: None, tls })
    }

    /// Binds `addr` for gRPC alone (with TLS when the HTTP port has it). Without it, gRPC
    /// calls are answered on the HTTP port only (HTTP/2, `content-type: application/grpc`).
    pub async fn bind_grpc(&mut self, addr: &str) -> Result<(), ServerError> {
        self.grpc_listener = Some(TcpListener::bind(addr).await?);
        Ok(())
    }

    /// The address of the gRPC port, when [`Server::bind_grpc`] gave it one.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Whether connections are TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish
    /// (at most `drain` long), and returns. The caller shuts the service down afterwards.
    pub async fn run(self, shutdown: impl Future<Output = ()>, drain: Duration) -> Result<(), ServerError> {
        let limits = self.state.service.config().limits;
        let builder = connection_builder(&limits);
        // (over TLS, ALPN has chosen the protocol: no sniffing, so HTTP/1.1's head timeout
        // runs from the start)
        let builders = Arc::new([builder.clone(), builder.clone().http1_only(), builder.http2_only()]);
        let tls_timeout = Duration::from_millis(limits.tls_handshake_timeout_ms);
        let head_timeout = Duration::from_millis(limits.header_read_timeout_ms);
        // (a connection holds a slot until it closes; with none free, accepting waits and
        // new connections queue in the kernel's backlog)
        let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        let grpc_accept = async |l: &Option<TcpListener>| match l {
            Some(l) => l.accept().await,
            None => std::future::pending().await,
        };
        loop {
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => slot,
                () = &mut shutdown => break,
            };
            let Ok(slot) = slot else { break };
            let (accepted, grpc_only) = tokio::select! {
                a = self.listener.accept() => (a, false),
                a = grpc_accept(&self.grpc_listener) => (a, true),
                () = &mut shutdown => break,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let state = self.state.clone();
            let builders = builders.clone();
            let watcher = graceful.watcher();
            let tls = self.tls.clone();
            let open = Open::new(slot, self.state.connections.clone());
            tokio::spawn(async move {
                let _open = open;
                let svc = hyper::service::service_fn(move |req| serve(state.clone(), peer, grpc_only, req));
                let result = match tls {
                    None => {
                        // The protocol is read off the first bytes, before HTTP/1.1's head timeout
                        // starts: a client that sends none is closed here.
                        let mut first = [0u8; 1];
                        if tokio::time::timeout(head_timeout, stream.peek(&mut first)).await.is_err() {
                            tracing::debug!(%peer, "nothing sent in {} ms", head_timeout.as_millis());
                            return;
                        }
                        watcher.watch(builders[0].serve_connection(TokioIo::new(stream), svc).into_owned()).await
                    }
                    Some(acceptor) => match tokio::time::timeout(tls_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => {
                            let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
                            let builder = &builders[if h2 { 2 } else { 1 }];
                            watcher.watch(builder.serve_connection(TokioIo::new(s), svc).into_owned()).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, "TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake not done in {} ms", tls_timeout.as_millis());
                            return;
                        }
                    },
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
            });
        }
        drop(self.grpc_listener);
        drop(self.listener);
        tracing::info!("shutting down: no new connections; finishing in-flight requests");
        if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
            tracing::warn!("connections still open after {} s; closing them", drain.as_secs());
        }
        Ok(())
    }
}

/// An open connection: its slot of `max_connections`, counted in `wedge_open_connections`
/// until it is dropped.
struct Open {
    _slot: tokio::sync::OwnedSemaphorePermit,
    gauge: Gauge,
}

impl Open {
    fn new(slot: tokio::sync::OwnedSemaphorePermit, gauge: Gauge) -> Open {
        gauge.inc();
        Open { _slot: slot, gauge }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// How connections are served, bounded for clients that are slow or hostile: the request head
/// (and the wait for the next one on a kept-alive HTTP/1.1 connection) within
/// `header_read_timeout_ms`, headers of at most `max_header_bytes`, at most
/// `max_concurrent_streams` streams per HTTP/2 connection, streams a client resets before they
/// are answered counted (h2's defence against rapid reset), and dead HTTP/2 peers found by
/// pings.
fn connection_builder(limits: &wedge_serve::LimitsConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let header_bytes = limits.max_header_bytes.max(8 << 10);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms))
        .max_buf_size(header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(1024))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    builder
}

/// One request of a connection: to gRPC on the gRPC port and for `application/grpc` content,
/// else to the HTTP routes.
async fn serve(
    state: Arc<State>,
    peer: SocketAddr,
    grpc_only: bool,
    mut req: Request<Incoming>,
) -> Result<Response<Either<Body, tonic::body::Body>>, Infallible> {
    let grpc = req.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc_only || grpc {
        use tonic::codegen::Service as _;
        let path = req.uri().path().to_string();
        let span =
            tracing::info_span!("grpc", %path, %peer, otel.name = path.trim_start_matches('/'), otel.kind = "server");
        telemetry::continue_trace(&span, req.headers());
        req.extensions_mut().insert(grpc::Peer(peer));
        let mut resp = state.grpc.clone().call(req).instrument(span.clone()).await?;
        telemetry::return_trace(&span, resp.headers_mut());
        return Ok(resp.map(Either::Right));
    }
    Ok(handle(state, peer, req).await?.map(Either::Left))
}

/// A response body: whole (JSON) or streamed (server-sent events).
type Body = UnsyncBoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

/// Which protocol a route speaks, for the shape of its errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    /// OpenAI's `{"error": {"message", "type"}}` (every route but `/v2`'s).
    OpenAi,
    /// KServe v2's `{"error": "message"}` (the `/v2` routes; Triton's clients read it).
    KServe,
}

impl Protocol {
    fn of(path: &str) -> Protocol {
        if path == "/v2" || path.starts_with("/v2/") { Protocol::KServe } else { Protocol::OpenAi }
    }

    fn error_body(self, message: &str, kind: &str) -> Vec<u8> {
        let v = match self {
            Protocol::OpenAi => serde_json::json!({"error": {"message": message, "type": kind}}),
            Protocol::KServe => serde_json::json!({ "error": message }),
        };
        v.to_string().into_bytes()
    }
}

/// The HTTP status and OpenAI error type of a serving error (gRPC's code follows the status).
fn classify(e: &ServeError) -> (StatusCode, &'static str) {
    match e {
        ServeError::BadInput(_) => (StatusCode::BAD_REQUEST, "invalid_request_error"),
        ServeError::UnknownModel(_) => (StatusCode::NOT_FOUND, "model_not_found"),
        ServeError::Unauthorized | ServeError::InvalidToken(_) => (StatusCode::UNAUTHORIZED, "authentication_error"),
        ServeError::Forbidden(_) => (StatusCode::FORBIDDEN, "permission_error"),
        ServeError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
        ServeError::QuotaExceeded { .. } => (StatusCode::TOO_MANY_REQUESTS, "insufficient_quota"),
        ServeError::Overloaded { .. }
        | ServeError::NotReady
        | ServeError::ShuttingDown
        | ServeError::Loading { .. }
        | ServeError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "overloaded_error"),
        ServeError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout_error"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
    }
}

/// Seconds a client should wait before trying again, where waiting helps.
fn retry_after(e: &ServeError) -> Option<u64> {
    match e {
        ServeError::RateLimited { retry_after_s }
        | ServeError::QuotaExceeded { retry_after_s, .. }
        | ServeError::Overloaded { retry_after_s, .. }
        | ServeError::Loading { retry_after_s, .. } => Some(*retry_after_s),
        ServeError::NotReady | ServeError::ShuttingDown => Some(1),
        _ => None,
    }
}

/// The one place where errors become HTTP: status, the protocol's error body, headers.
fn error_response(e: &ServeError, protocol: Protocol) -> Response<Body> {
    let (status, kind) = classify(e);
    let mut r = json(status, protocol.error_body(&e.to_string(), kind));
    if let Some(s) = retry_after(e) {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    match e {
        ServeError::Unauthorized => {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        ServeError::InvalidToken(_) => {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""));
        }
        _ => {}
    }
    r
}

/// Errors of the HTTP layer itself, expressed as serving errors or a status of their own.
enum Failure {
    Serve(ServeError),
    TooLarge(usize),
    /// A request body in a coding wedge does not speak (415).
    UnsupportedEncoding(String),
    NotFound(String),
    MethodNotAllowed(&'static str),
}

impl From<ServeError> for Failure {
    fn from(e: ServeError) -> Failure {
        Failure::Serve(e)
    }
}

fn failure_response(f: &Failure, protocol: Protocol) -> Response<Body> {
    let (status, kind, message) = match f {
        Failure::Serve(e) => return error_response(e, protocol),
        Failure::TooLarge(max) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("request body over {max} bytes (limits.max_body_bytes, counted decompressed too)"),
        ),
        Failure::UnsupportedEncoding(m) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "invalid_request_error", m.clone()),
        Failure::NotFound(path) => (StatusCode::NOT_FOUND, "not_found", format!("no route for {path}")),
        Failure::MethodNotAllowed(allow) => {
            let mut r = json(
                StatusCode::METHOD_NOT_ALLOWED,
                protocol.error_body(&format!("use {allow}"), "invalid_request_error"),
            );
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
            return r;
        }
    };
    json(status, protocol.error_body(&message, kind))
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

async fn handle(state: Arc<State>, peer: SocketAddr, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let t0 = Instant::now();
    let id = match req.headers().get("x-request-id").and_then(|v| v.to_str().ok()) {
        Some(v) if !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()) => v.to_string(),
        _ => format!("{:016x}", state.next_id.fetch_add(1, Ordering::Relaxed)),
    };
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let route = route_name(&path);
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        %method,
        %path,
        %peer,
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        http.response.status_code = tracing::field::Empty,
    );
    telemetry::continue_trace(&span, req.headers());
    let compression = state.service.config().compression;
    let coding = if compression.enabled { compress::negotiate(req.headers()) } else { None };
    let timeout = Duration::from_millis(state.service.config().limits.request_timeout_ms);
    let result = tokio::time::timeout(timeout, route_request(&state, peer, req, &id)).instrument(span.clone()).await;
    let protocol = Protocol::of(&path);
    let mut resp = match result {
        Ok(Ok(r)) => r,
        Ok(Err(f)) => failure_response(&f, protocol),
        Err(_) => error_response(&ServeError::Timeout(timeout.as_millis() as u64), protocol),
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let status = resp.status().as_u16();
    span.record("http.response.status_code", i64::from(status));
    let respond =
        tracing::debug_span!(parent: &span, "response", coding = coding.map_or("identity", compress::Coding::name));
    if compression.enabled {
        resp = compress::encode(resp, coding, compression.min_bytes).instrument(respond).await;
    }
    telemetry::return_trace(&span, resp.headers_mut());
    let secs = t0.elapsed().as_secs_f64();
    state.requests.get_or_create(&RouteStatus { route, status }).inc();
    state.latency.get_or_create(&RouteLabel { route }).observe(secs);
    span.in_scope(|| tracing::info!(status, ms = secs * 1e3, "done"));
    Ok(resp)
}

/// A bounded label for metrics (paths carry model names, which clients choose).
fn route_name(path: &str) -> &'static str {
    match path {
        "/v1/embeddings" => "/v1/embeddings",
        "/v1/models" => "/v1/models",
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/completions" => "/v1/completions",
        "/tokenize" => "/tokenize",
        "/detokenize" => "/detokenize",
        "/v2" => "/v2",
        "/v2/health/live" => "/v2/health/live",
        "/v2/health/ready" => "/v2/health/ready",
        "/metrics" => "/metrics",
        "/v2/repository/index" => "/v2/repository/index",
        p if p.starts_with("/v2/repository/models/") && p.ends_with("/load") => "/v2/repository/models/{name}/load",
        p if p.starts_with("/v2/repository/models/") && p.ends_with("/unload") => "/v2/repository/models/{name}/unload",
        p if p.starts_with("/v2/models/") && p.ends_with("/infer") => "/v2/models/{name}/infer",
        p if p.starts_with("/v2/models/") && p.ends_with("/ready") => "/v2/models/{name}/ready",
        p if p.starts_with("/v2/models/") => "/v2/models/{name}",
        _ => "other",
    }
}

fn expect(method: &Method, want: Method, allow: &'static str) -> Result<(), Failure> {
    if *method == want { Ok(()) } else { Err(Failure::MethodNotAllowed(allow)) }
}

async fn route_request(
    state: &State,
    peer: SocketAddr,
    req: Request<Incoming>,
    id: &str,
) -> Result<Response<Body>, Failure> {
    let service = &state.service;
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["v2", "health", "live"] => {
            expect(&method, Method::GET, "GET")?;
            Ok(json(StatusCode::OK, br#"{"live":true}"#.to_vec()))
        }
        ["v2", "health", "ready"] => {
            expect(&method, Method::GET, "GET")?;
            let ready = service.ready();
            let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            Ok(json(status, serde_json::json!({ "ready": ready }).to_string().into_bytes()))
        }
        ["metrics"] => {
            expect(&method, Method::GET, "GET")?;
            if service.credentials_required() && !service.config().auth.metrics_public {
                let caller = service.identify(credentials(req.headers()), &peer.ip().to_string())?;
                if !caller.may_read_metrics() {
                    return Err(ServeError::Forbidden("this key or token may not read /metrics".into()).into());
                }
            }
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &state.registry)
                .map_err(|e| ServeError::Inference(format!("metrics: {e}")))?;
            let mut r = Response::new(full(text));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            Ok(r)
        }
        ["v2"] => {
            expect(&method, Method::GET, "GET")?;
            let body = serde_json::json!({"name": "wedge", "version": env!("CARGO_PKG_VERSION"), "extensions": ["model_repository"]});
            Ok(json(StatusCode::OK, body.to_string().into_bytes()))
        }
        ["v1", "embeddings"] => {
            expect(&method, Method::POST, "POST")?;
            let caller = admit(service, req.headers(), peer)?;
            let policy = cache_policy(req.headers());
            let body = read_body(req, service.config().limits.max_body_bytes).await?;
            let r: api::OpenAiRequest = parse_json(&body)?;
            let encoding = r.encoding()?;
            // (a caller keeps one version of a model with several: by `user`, else its key)
            let model = match &r.model {
                Some(name) => service.model_for(name, &caller, r.user.as_deref(), None).await?,
                None => service.default_model(false, &caller, r.user.as_deref()).await?,
            };
            r.check_dimensions(&model)?;
            let inputs = api::openai_inputs(r.input)?;
            let out = service.embed_with(model, &inputs, policy).await?;
            service.charge(&caller, out.prompt_tokens);
            let resp = with_cache(json(StatusCode::OK, api::openai_response(&out, encoding)?), out.cache_hit);
            Ok(with_quota(with_device(with_version(resp, &out.model.version), out.device), service, &caller))
        }
        ["v1", "chat", "completions"] | ["v1", "completions"] => {
            expect(&method, Method::POST, "POST")?;
            let caller = admit(service, req.headers(), peer)?;
            let endpoint = if segments[1] == "chat" { llm::Endpoint::Chat } else { llm::Endpoint::Completions };
            let policy = cache_policy(req.headers());
            let body = read_body(req, service.config().limits.max_body_bytes).await?;
            let max_choices = service.config().generation.max_sequences;
            let r = llm::GenRequest::parse(service, endpoint, &body, max_choices, &caller).await?;
            let receivers = r.submit(service, &caller, policy).await?;
            let hit = receivers.iter().all(Generation::cache_hit);
            let version = r.model.version.clone();
            // (where its steps run as it starts: a GPU fault may move them mid-stream)
            let device = r.model.language().ok().filter(|_| !hit).map(|l| l.scheduler().device());
            if r.stream {
                let events = llm::EventStream::start(receivers).await?;
                let frames = futures_util::StreamExt::map(events.frames(&r, id), |b| {
                    Ok::<_, Infallible>(hyper::body::Frame::data(b))
                });
                let mut resp = Response::new(StreamBody::new(frames).boxed_unsync());
                let h = resp.headers_mut();
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                h.insert("x-accel-buffering", HeaderValue::from_static("no"));
                Ok(with_quota(with_device(with_version(with_cache(resp, hit), &version), device), service, &caller))
            } else {
                let resp = with_cache(json(StatusCode::OK, llm::complete(&r, receivers, id).await?), hit);
                Ok(with_quota(with_device(with_version(resp, &version), device), service, &caller))
            }
        }
        ["tokenize"] | ["detokenize"] => {
            expect(&method, Method::POST, "POST")?;
            let caller = admit(service, req.headers(), peer)?;
            let tokenize = segments[0] == "tokenize";
            let body = read_body(req, service.config().limits.max_body_bytes).await?;
            let out = if tokenize {
                llm::tokenize(service, &body, &caller).await?
            } else {
                llm::detokenize(service, &body, &caller).await?
            };
            Ok(json(StatusCode::OK, out))
        }
        ["v1", "models"] => {
            expect(&method, Method::GET, "GET")?;
            let caller = admit(service, req.headers(), peer)?;
            let data: Vec<_> = service
                .models()
                .iter()
                .filter(|m| caller.may_use(&m.name))
                .map(|m| {
                    let mut v = serde_json::json!({"id": m.name, "object": "model", "created": 0, "owned_by": "wedge", "task": m.task()});
                    if let Ok(l) = m.language() {
                        v["max_model_len"] = l.scheduler().limits().ctx.into();
                    }
                    v
                })
                .collect();
            Ok(json(StatusCode::OK, serde_json::json!({"object": "list", "data": data}).to_string().into_bytes()))
        }
        ["v2", "models", name] | ["v2", "models", name, "versions", _] => {
            expect(&method, Method::GET, "GET")?;
            let caller = admit(service, req.headers(), peer)?;
            let m = service.model_for(name, &caller, None, pinned(&segments)).await?;
            Ok(with_version(json(StatusCode::OK, api::model_metadata(&m).to_string().into_bytes()), &m.version))
        }
        ["v2", "models", name, "ready"] | ["v2", "models", name, "versions", _, "ready"] => {
            expect(&method, Method::GET, "GET")?;
            let caller = admit(service, req.headers(), peer)?;
            let (name, version, ready) = model_ready(service, &caller, name, pinned(&segments))?;
            let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            let body = serde_json::json!({"name": name, "version": version, "ready": ready});
            Ok(with_version(json(status, body.to_string().into_bytes()), &version))
        }
        ["v2", "models", name, "infer"] | ["v2", "models", name, "versions", _, "infer"] => {
            expect(&method, Method::POST, "POST")?;
            let caller = admit(service, req.headers(), peer)?;
            // 404 before reading a body for a model that is not here
            let model = service.model_for(name, &caller, None, pinned(&segments)).await?;
            let policy = cache_policy(req.headers());
            // (the binary tensor data extension: that much JSON, then the tensors' bytes)
            let header_len = match req.headers().get("inference-header-content-length") {
                None => None,
                Some(v) => Some(v.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()).ok_or_else(|| {
                    ServeError::BadInput("Inference-Header-Content-Length must be a byte count".into())
                })?),
            };
            let body = read_body(req, service.config().limits.max_body_bytes).await?;
            let infer = api::Infer::parse(&body, header_len)?;
            let out = service.embed_with(model, &infer.texts, policy).await?;
            service.charge(&caller, out.prompt_tokens);
            let (bytes, json_len) = api::infer_response(&out, infer.id, infer.binary_output)?;
            let mut resp = json(StatusCode::OK, bytes);
            if let Some(n) = json_len {
                let h = resp.headers_mut();
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
                h.insert("inference-header-content-length", HeaderValue::from(n));
            }
            let resp = with_cache(resp, out.cache_hit);
            Ok(with_quota(with_device(with_version(resp, &out.model.version), out.device), service, &caller))
        }
        // KServe v2 model repository extension: the index, and loading (or reloading) and
        // unloading by name. The load answers once the model serves (or failed, leaving the
        // loaded version serving).
        ["v2", "repository", "index"] => {
            expect(&method, Method::POST, "POST")?;
            let caller = admit(service, req.headers(), peer)?;
            let body = read_body(req, service.config().limits.max_body_bytes).await?;
            let ready_only = if body.is_empty() {
                false
            } else {
                parse_json::<serde_json::Value>(&body)?
                    .get("ready")
                    .and_then(serde_json::Value::as_bool)
                    .unwrap_or(false)
            };
            let index: Vec<_> = service
                .registry()
                .index()
                .into_iter()
                .filter(|e| (!ready_only || e.state == "READY") && caller.may_use(&e.name))
                .collect();
            Ok(json(StatusCode::OK, serde_json::to_vec(&index).map_err(|e| ServeError::Inference(e.to_string()))?))
        }
        ["v2", "repository", "models", name, "load"] => {
            expect(&method, Method::POST, "POST")?;
            let caller = admit(service, req.headers(), peer)?;
            repository_authorize(service, &caller, name)?;
            service.registry().reload(name).await?;
            Ok(json(StatusCode::OK, b"{}".to_vec()))
        }
        ["v2", "repository", "models", name, "unload"] => {
            expect(&method, Method::POST, "POST")?;
            let caller = admit(service, req.headers(), peer)?;
            repository_authorize(service, &caller, name)?;
            let (registry, name) = (service.registry().clone(), name.to_string());
            tokio::task::spawn_blocking(move || registry.unload(&name))
                .await
                .map_err(|e| ServeError::Inference(format!("unload: {e}")))??;
            Ok(json(StatusCode::OK, b"{}".to_vec()))
        }
        _ => Err(Failure::NotFound(path)),
    }
}

/// Whether the version of model `name` that `caller` is routed to (or `version`) is loaded,
/// asked without loading it: its name, that version, and the answer.
fn model_ready(
    service: &Service,
    caller: &Caller,
    name: &str,
    version: Option<&str>,
) -> Result<(String, String, bool), ServeError> {
    let entry = service.registry().entry(name).ok_or_else(|| ServeError::UnknownModel(name.to_string()))?;
    service.authorize(caller, &entry.name)?;
    let slot = entry.route(Some(caller.id()), version)?;
    Ok((entry.name.clone(), slot.version().to_string(), slot.model().is_some()))
}

/// Whether `caller` may load or unload the model `name` (as it may use it); an unknown name
/// is left to the registry's own 404.
fn repository_authorize(service: &Service, caller: &Caller, name: &str) -> Result<(), ServeError> {
    match service.registry().entry(name) {
        Some(entry) => service.authorize(caller, &entry.name),
        None => Ok(()),
    }
}

/// Checks the request's credentials, rate and quota; returns who it is.
fn admit(service: &Service, headers: &HeaderMap, peer: SocketAddr) -> Result<Caller, ServeError> {
    let _span = tracing::debug_span!("admission").entered();
    service.admit(credentials(headers), &peer.ip().to_string())
}

/// The credentials a request presents: `Authorization: Bearer …`, else `x-api-key`.
fn credentials(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
}

/// Names the model version that answered.
fn with_version(mut r: Response<Body>, version: &str) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(version) {
        r.headers_mut().insert("x-wedge-model-version", v);
    }
    r
}

/// Names the device that computed the answer (`cpu` or `gpu`), when one did (not for an
/// answer wholly from the cache).
fn with_device(mut r: Response<Body>, device: Option<wedge_serve::DeviceKind>) -> Response<Body> {
    if let Some(d) = device {
        r.headers_mut().insert("x-wedge-device", HeaderValue::from_static(d.as_str()));
    }
    r
}

/// The version a KServe path pins (`/v2/models/{name}/versions/{v}/...`).
fn pinned<'a>(segments: &[&'a str]) -> Option<&'a str> {
    match segments {
        ["v2", "models", _, "versions", v, ..] => Some(v),
        _ => None,
    }
}

fn cache_policy(headers: &HeaderMap) -> CachePolicy {
    let no_cache = headers.get_all(header::CACHE_CONTROL).iter().filter_map(|v| v.to_str().ok()).any(|v| {
        v.split(',').map(str::trim).any(|d| d.eq_ignore_ascii_case("no-cache") || d.eq_ignore_ascii_case("no-store"))
    });
    if no_cache { CachePolicy::Bypass } else { CachePolicy::Use }
}

/// What is left of the caller's quota, as OpenAI names it (`x-ratelimit-remaining-requests`,
/// `-tokens`, their limits, and the seconds to the period's end), when it has one.
fn with_quota(mut r: Response<Body>, service: &Service, caller: &Caller) -> Response<Body> {
    let left = service.quota_left(caller);
    let quota = caller.quota();
    let h = r.headers_mut();
    for (what, limit, remaining) in [("requests", quota.requests, left.requests), ("tokens", quota.tokens, left.tokens)]
    {
        let Some(remaining) = remaining else { continue };
        let reset = HeaderValue::from_str(&format!("{}s", left.reset_s)).ok();
        for (kind, value) in [
            ("limit", Some(HeaderValue::from(limit))),
            ("remaining", Some(HeaderValue::from(remaining))),
            ("reset", reset),
        ] {
            let name = hyper::header::HeaderName::from_bytes(format!("x-ratelimit-{kind}-{what}").as_bytes());
            if let (Ok(name), Some(value)) = (name, value) {
                h.insert(name, value);
            }
        }
    }
    r
}

fn with_cache(mut r: Response<Body>, hit: bool) -> Response<Body> {
    r.headers_mut().insert("x-wedge-cache", HeaderValue::from_static(if hit { "hit" } else { "miss" }));
    r
}

/// Reads a body of at most `max` bytes: a larger `Content-Length` is refused before reading,
/// and a body that grows past `max` while streaming is cut off. A compressed body
/// (`Content-Encoding`) is decompressed, and refused once it grows past `max` bytes too.
async fn read_body(req: Request<Incoming>, max: usize) -> Result<Bytes, Failure> {
    let coding = compress::request_coding(req.headers()).map_err(|e| decode_failure(e, max))?;
    let body = read_raw_body(req, max).await?;
    let Some(coding) = coding else { return Ok(body) };
    let decode = move || compress::decode(coding, &body, max);
    // (a few MiB decompress in milliseconds; larger limits leave the async workers alone)
    let decoded = if max <= 4 << 20 {
        decode()
    } else {
        tokio::task::spawn_blocking(decode)
            .await
            .map_err(|e| ServeError::Inference(format!("decompressing the body: {e}")))?
    };
    Ok(Bytes::from(decoded.map_err(|e| decode_failure(e, max))?))
}

fn decode_failure(e: compress::DecodeError, max: usize) -> Failure {
    match e {
        compress::DecodeError::Unsupported(m) => Failure::UnsupportedEncoding(m),
        compress::DecodeError::TooLarge => Failure::TooLarge(max),
        compress::DecodeError::Corrupt(m) => Failure::Serve(ServeError::BadInput(m)),
    }
}

async fn read_raw_body(req: Request<Incoming>, max: usize) -> Result<Bytes, Failure> {
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(Failure::TooLarge(max));
    }
    match Limited::new(req.into_body(), max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Failure::TooLarge(max)),
        Err(e) => Err(ServeError::BadInput(format!("reading the body: {e}")).into()),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ServeError> {
    serde_json::from_slice(body).map_err(|e| ServeError::BadInput(format!("invalid JSON body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_bounded_labels() {
        assert_eq!(route_name("/v2/models/anything/infer"), "/v2/models/{name}/infer");
        assert_eq!(route_name("/v2/models/x"), "/v2/models/{name}");
        assert_eq!(route_name("/etc/passwd"), "other");
    }

    #[test]
    fn every_error_has_a_status_and_a_json_body() {
        let cases = [
            (ServeError::BadInput("x".into()), 400),
            (ServeError::UnknownModel("m".into()), 404),
            (ServeError::Unauthorized, 401),
            (ServeError::InvalidToken("expired".into()), 401),
            (ServeError::Forbidden("no".into()), 403),
            (ServeError::RateLimited { retry_after_s: 2 }, 429),
            (ServeError::QuotaExceeded { what: "tokens", limit: 5, retry_after_s: 9 }, 429),
            (ServeError::Overloaded { model: "m".into(), queued: 9, retry_after_s: 3 }, 503),
            (ServeError::NotReady, 503),
            (ServeError::Timeout(5), 504),
            (ServeError::Inference("x".into()), 500),
        ];
        for (e, status) in cases {
            for protocol in [Protocol::OpenAi, Protocol::KServe] {
                let r = error_response(&e, protocol);
                assert_eq!(r.status().as_u16(), status, "{e}");
                assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
            }
        }
        let r = error_response(
            &ServeError::Overloaded { model: "m".into(), queued: 9, retry_after_s: 3 },
            Protocol::KServe,
        );
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
        assert_eq!(Protocol::of("/v2/models/m/infer"), Protocol::KServe);
        assert_eq!(Protocol::of("/v2"), Protocol::KServe);
        assert_eq!(Protocol::of("/v1/embeddings"), Protocol::OpenAi);
        assert_eq!(Protocol::of("/v2x"), Protocol::OpenAi);
    }

    #[test]
    fn no_cache_is_read_from_cache_control() {
        let mut h = HeaderMap::new();
        assert_eq!(cache_policy(&h), CachePolicy::Use);
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=0, No-Cache"));
        assert_eq!(cache_policy(&h), CachePolicy::Bypass);
    }
}
