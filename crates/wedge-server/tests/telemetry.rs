//! OpenTelemetry traces of a live server, received by OTLP receivers in the test, one over
//! HTTP/protobuf and one over gRPC, that decode the real protobuf: one trace per request with
//! its stages as child spans, the caller's `traceparent` continued and returned, and the
//! caller's decision not to sample kept.
//!
//! (One test in a binary of its own: the trace layer is the process's global subscriber.)

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;
use tracing_subscriber::prelude::*;
use wedge_serve::Config;
use wedge_server::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use wedge_server::grpc::proto::model_infer_request::InferInputTensor;
use wedge_server::grpc::proto::{InferTensorContents, ModelInferRequest};
use wedge_server::telemetry::{Settings, Telemetry};

mod common;
use common::{TestServer, call, model_config};

type Received = Arc<Mutex<Vec<Span>>>;

fn spans_of(request: ExportTraceServiceRequest, into: &Received) {
    let spans = request.resource_spans.into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans);
    into.lock().unwrap().extend(spans);
}

/// An OTLP/HTTP receiver: `POST /v1/traces` with an `ExportTraceServiceRequest`.
async fn http_receiver() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let spans = received.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let spans = spans.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let spans = spans.clone();
                    async move {
                        assert_eq!((req.method(), req.uri().path()), (&Method::POST, "/v1/traces"));
                        assert_eq!(req.headers()["content-type"], "application/x-protobuf");
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        spans_of(ExportTraceServiceRequest::decode(body).unwrap(), &spans);
                        let reply = ExportTraceServiceResponse::default().encode_to_vec();
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(reply))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    (addr, received)
}

struct Collector(Received);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        spans_of(request.into_inner(), &self.0);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver: `opentelemetry.proto.collector.trace.v1.TraceService`.
async fn grpc_receiver() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let service = TraceServiceServer::new(Collector(received.clone()));
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = service.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    use tonic::codegen::Service as _;
                    service.clone().call(req)
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    (addr, received)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<Any> {
    span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.clone()?.value)
}

/// The spans of trace `trace_id` that `received` has, by name (waiting for the exporter).
async fn trace(received: &Received, trace_id: &str, at_least: usize) -> Vec<Span> {
    for _ in 0..100 {
        let spans: Vec<Span> =
            received.lock().unwrap().iter().filter(|s| hex(&s.trace_id) == trace_id).cloned().collect();
        if spans.len() >= at_least {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "trace {trace_id} did not arrive: {:?}",
        received.lock().unwrap().iter().map(|s| &s.name).collect::<Vec<_>>()
    );
}

/// Checks the span tree of one request: `root` (a child of `parent`, the caller's span, when
/// given) with the stages under it; returns the spans by name.
fn check_tree(spans: &[Span], root: &str, parent: Option<&str>) -> HashMap<String, Span> {
    let by_id: HashMap<String, &Span> = spans.iter().map(|s| (hex(&s.span_id), s)).collect();
    let roots: Vec<&Span> = spans.iter().filter(|s| s.name == root).collect();
    assert_eq!(roots.len(), 1, "{:?}", spans.iter().map(|s| &s.name).collect::<Vec<_>>());
    let top = roots[0];
    assert_eq!(hex(&top.parent_span_id), parent.unwrap_or(""), "the root continues the caller's span");
    for s in spans.iter().filter(|s| s.name != root) {
        // every stage hangs under the request, through its parents
        let mut at: &Span = s;
        while at.name != root {
            at = by_id.get(&hex(&at.parent_span_id)).unwrap_or_else(|| panic!("{} is not under {root}", s.name));
        }
    }
    spans.iter().map(|s| (s.name.clone(), s.clone())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_traced_over_otlp_http_and_grpc() {
    let (http_addr, over_http) = http_receiver().await;
    let (grpc_addr, over_grpc) = grpc_receiver().await;
    let settings = |endpoint: String, protocol: &str| Settings {
        endpoint,
        protocol: protocol.into(),
        sample_ratio: 1.0,
        service_name: "wedge-test".into(),
    };
    let telemetry = Telemetry::to_each(
        settings(format!("http://{http_addr}/v1/traces"), "http/protobuf"),
        &[settings(format!("http://{grpc_addr}"), "grpc")],
    )
    .unwrap();
    tracing_subscriber::registry().with(telemetry.layer()).init();

    let mut config = Config::default();
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2.wedge");
    config.models.push(model_config("all-MiniLM-L6-v2", bundled));
    let s = TestServer::start(config).await;

    // A request in the caller's trace: continued, and the server's span returned.
    let (trace_id, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    let headers = [("content-type", "application/json"), ("traceparent", traceparent.as_str())];
    let body = json!({"input": ["a traced request", "and its neighbour"]}).to_string();
    let r = call(Method::POST, &s.url("/v1/embeddings"), &headers, body).await;
    assert_eq!(r.status, 200);
    let returned = r.header("traceparent").to_string();
    let parts: Vec<&str> = returned.split('-').collect();
    assert_eq!((parts.len(), parts[1], parts[3]), (4, trace_id, "01"), "{returned}");
    assert_ne!(parts[2], caller_span, "the answer names the server's span");

    // Over gRPC, in another trace.
    let grpc_trace = "0af7651916cd43dd8448eb211c80319c";
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", s.grpc_addr)).unwrap();
    let mut client = GrpcInferenceServiceClient::new(channel.connect().await.unwrap());
    let mut infer = tonic::Request::new(ModelInferRequest {
        model_name: "all-MiniLM-L6-v2".into(),
        inputs: vec![InferInputTensor {
            name: "text".into(),
            datatype: "BYTES".into(),
            shape: vec![1],
            contents: Some(InferTensorContents {
                bytes_contents: vec![b"traced over gRPC".to_vec()],
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    });
    infer.metadata_mut().insert("traceparent", format!("00-{grpc_trace}-b7ad6b7169203331-01").parse().unwrap());
    let answer = client.model_infer(infer).await.unwrap();
    assert!(answer.metadata().get("traceparent").unwrap().to_str().unwrap().contains(grpc_trace));

    // A caller that decided not to sample: no spans, its trace id still answered.
    let unsampled = "11111111111111111111111111111111";
    let quiet = format!("00-{unsampled}-2222222222222222-00");
    let headers = [("content-type", "application/json"), ("traceparent", quiet.as_str())];
    let r = call(Method::POST, &s.url("/v1/embeddings"), &headers, json!({"input": "quiet"}).to_string()).await;
    assert!(r.header("traceparent").contains(unsampled), "{}", r.header("traceparent"));
    // Without a traceparent, a trace of its own.
    let r = call(Method::GET, &s.url("/v2/health/ready"), &[], Bytes::new()).await;
    let own = r.header("traceparent").split('-').nth(1).unwrap().to_string();
    assert!(own.len() == 32 && own != trace_id, "{own}");

    s.stop().await;
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await.unwrap();

    let root = "POST /v1/embeddings";
    let stages = [root, "admission", "tokenize", "cache_get", "queue", "batch", "cache_put", "response"];
    for (protocol, received) in [("http/protobuf", &over_http), ("grpc", &over_grpc)] {
        let spans = trace(received, trace_id, stages.len()).await;
        let named = check_tree(&spans, root, Some(caller_span));
        for stage in stages {
            assert!(named.contains_key(stage), "{protocol}: no {stage} span in {:?}", named.keys());
        }
        assert_eq!(hex(&named[root].span_id), parts[2], "{protocol}: the returned span is the request's");
        assert_eq!(attribute(&named[root], "http.response.status_code"), Some(Any::IntValue(200)));
        assert_eq!(attribute(&named["batch"], "device"), Some(Any::StringValue("cpu".into())));
        assert!(matches!(attribute(&named["batch"], "size"), Some(Any::IntValue(n)) if (1..=2).contains(&n)));
        assert_eq!(attribute(&named["cache_get"], "tier"), Some(Any::StringValue("memory".into())));
        assert_eq!(attribute(&named["cache_get"], "hit"), Some(Any::BoolValue(false)));
        // two inputs: each waits and runs in the request's trace
        assert_eq!(spans.iter().filter(|s| s.name == "queue").count(), 2, "{protocol}");

        let grpc = trace(received, grpc_trace, 5).await;
        let named = check_tree(&grpc, "inference.GRPCInferenceService/ModelInfer", Some("b7ad6b7169203331"));
        for stage in ["admission", "tokenize", "queue", "batch"] {
            assert!(named.contains_key(stage), "{protocol}: no {stage} span under grpc in {:?}", named.keys());
        }
        let all: HashSet<String> = received.lock().unwrap().iter().map(|s| hex(&s.trace_id)).collect();
        assert!(!all.contains(unsampled), "{protocol}: an unsampled trace was exported");
        assert!(all.contains(&own), "{protocol}: the health check's own trace is missing");
    }
}
