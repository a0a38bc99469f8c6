//! KServe v2 over gRPC against a live server: a Rust tonic client on the gRPC port and on the
//! shared HTTP port (health, metadata, inference with typed and raw tensors, compression,
//! errors as status codes, keys from the call's metadata, metrics), and Triton's own Python
//! gRPC client. The model is the bundled all-MiniLM-L6-v2 package on the CPU backend.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;

use serde_json::json;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;
use tonic::{Code, Request};
use wedge_serve::Config;
use wedge_server::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use wedge_server::grpc::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use wedge_server::grpc::proto::{self, InferTensorContents, ModelInferRequest};

mod common;
use common::{TestServer, metric, model_config, post};

fn config() -> Config {
    let mut c = Config::default();
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2.wedge");
    c.models.push(model_config("all-MiniLM-L6-v2", bundled));
    c.models[0].aliases = vec!["default".into()];
    c
}

async fn client(addr: SocketAddr) -> GrpcInferenceServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    GrpcInferenceServiceClient::new(channel)
}

/// An infer request for `texts` as a [N] BYTES tensor in typed contents.
fn infer(model: &str, texts: &[&str]) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        id: "g1".into(),
        inputs: vec![InferInputTensor {
            name: "text".into(),
            datatype: "BYTES".into(),
            shape: vec![texts.len() as i64],
            contents: Some(InferTensorContents {
                bytes_contents: texts.iter().map(|t| t.as_bytes().to_vec()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The same texts as raw bytes (`raw_input_contents`), as Triton's client sends them.
fn infer_raw(model: &str, texts: &[&str]) -> ModelInferRequest {
    let mut r = infer(model, texts);
    r.inputs[0].contents = None;
    r.inputs[0].shape = vec![texts.len() as i64, 1];
    let raw = texts.iter().flat_map(|t| [(t.len() as u32).to_le_bytes().to_vec(), t.as_bytes().to_vec()].concat());
    r.raw_input_contents = vec![raw.collect()];
    r
}

fn floats(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_client_gets_what_http_answers() {
    let s = TestServer::start(config()).await;
    let mut c = client(s.grpc_addr).await;
    assert!(c.server_live(proto::ServerLiveRequest {}).await.unwrap().into_inner().live);
    assert!(c.server_ready(proto::ServerReadyRequest {}).await.unwrap().into_inner().ready);
    let ready = proto::ModelReadyRequest { name: "default".into(), version: String::new() };
    assert!(c.model_ready(ready).await.unwrap().into_inner().ready);
    let server = c.server_metadata(proto::ServerMetadataRequest {}).await.unwrap().into_inner();
    assert_eq!(server.name, "wedge");
    let meta = proto::ModelMetadataRequest { name: "all-MiniLM-L6-v2".into(), version: String::new() };
    let meta = c.model_metadata(meta).await.unwrap().into_inner();
    assert_eq!((meta.versions.as_slice(), meta.platform.as_str()), (["1".to_string()].as_slice(), "wedge"));
    assert_eq!((meta.inputs[0].name.as_str(), meta.inputs[0].datatype.as_str()), ("text", "BYTES"));
    assert_eq!((meta.outputs[0].datatype.as_str(), meta.outputs[0].shape.as_slice()), ("FP32", [-1, 384].as_slice()));

    // The vectors are HTTP's, typed or raw, whichever port.
    let texts = ["grpc at the edge", "ünïcödé"];
    let http = post(&s.url("/v1/embeddings"), json!({"input": texts})).await.json();
    let want: Vec<f32> = (0..2)
        .flat_map(|i| http["data"][i]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32))
        .collect();
    let typed = c.model_infer(infer("all-MiniLM-L6-v2", &texts)).await.unwrap().into_inner();
    assert_eq!((typed.id.as_str(), typed.model_version.as_str()), ("g1", "1"));
    let out = &typed.outputs[0];
    assert_eq!(
        (out.name.as_str(), out.datatype.as_str(), out.shape.as_slice()),
        ("embedding", "FP32", [2, 384].as_slice())
    );
    assert!(typed.raw_output_contents.is_empty());
    assert_eq!(out.contents.as_ref().unwrap().fp32_contents, want);
    let mut shared = client(s.addr).await;
    let raw = shared.model_infer(infer_raw("default", &texts)).await.unwrap().into_inner();
    assert!(raw.outputs[0].contents.is_none());
    assert_eq!(floats(&raw.raw_output_contents[0]), want);

    // Compressed both ways.
    let mut zipped = client(s.grpc_addr)
        .await
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd);
    let z = zipped.model_infer(infer_raw("default", &texts)).await.unwrap();
    assert_eq!(z.metadata().get("grpc-encoding").unwrap(), "zstd");
    assert_eq!(floats(&z.into_inner().raw_output_contents[0]), want);

    // Errors: the HTTP route's message, as the nearest status code.
    let mut wrong_name = infer("default", &["x"]);
    wrong_name.inputs[0].name = "txt".into();
    let mut wrong_output = infer("default", &["x"]);
    wrong_output.outputs.push(InferRequestedOutputTensor { name: "logits".into(), ..Default::default() });
    let mut wrong_shape = infer("default", &["x", "y"]);
    wrong_shape.inputs[0].shape = vec![3];
    let too_many = infer("default", &vec!["x"; 4096]);
    let huge = infer("default", &[&"x".repeat(5 << 20)]);
    let cases = [
        (infer("no-such-model", &["x"]), Code::NotFound, "no-such-model"),
        (wrong_name, Code::InvalidArgument, "txt"),
        (wrong_output, Code::InvalidArgument, "logits"),
        (wrong_shape, Code::InvalidArgument, "shape"),
        (too_many, Code::InvalidArgument, "inputs in one request"),
        (huge, Code::OutOfRange, "too large"),
    ];
    for (i, (r, code, words)) in cases.into_iter().enumerate() {
        let e = c.model_infer(r).await.unwrap_err();
        assert_eq!(e.code(), code, "case {i}: {e:?}");
        assert!(e.message().contains(words), "case {i}: {}", e.message());
    }
    let unknown = proto::ModelReadyRequest { name: "nope".into(), version: String::new() };
    assert_eq!(c.model_ready(unknown).await.unwrap_err().code(), Code::NotFound);
    let pinned = proto::ModelMetadataRequest { name: "default".into(), version: "7".into() };
    assert_eq!(c.model_metadata(pinned).await.unwrap_err().code(), Code::NotFound);

    assert!(metric(&s, "wedge_grpc_requests_total{method=\"ModelInfer\",code=\"OK\"}").await >= 3.0);
    assert!(metric(&s, "wedge_grpc_requests_total{method=\"ModelInfer\",code=\"INVALID_ARGUMENT\"}").await >= 4.0);
    assert!(metric(&s, "wedge_grpc_request_seconds_count{method=\"ServerLive\"}").await >= 1.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_tokens_come_in_the_metadata() {
    let mut c = config();
    c.auth.api_keys = vec!["k-one".into()];
    let s = TestServer::start(c).await;
    let mut c = client(s.grpc_addr).await;
    // Health stays open, as on HTTP.
    assert!(c.server_live(proto::ServerLiveRequest {}).await.unwrap().into_inner().live);
    let e = c.model_infer(infer("default", &["x"])).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let mut wrong = Request::new(infer("default", &["x"]));
    wrong.metadata_mut().insert("authorization", "Bearer k-two".parse().unwrap());
    assert_eq!(c.model_infer(wrong).await.unwrap_err().code(), Code::Unauthenticated);
    for (key, value) in [("authorization", "Bearer k-one"), ("x-api-key", "k-one")] {
        let mut r = Request::new(infer("default", &["x"]));
        r.metadata_mut().insert(key, value.parse().unwrap());
        assert_eq!(c.model_infer(r).await.unwrap().into_inner().outputs[0].shape, [1, 384]);
    }
    s.stop().await;
}

/// Triton's own gRPC client (`tritonclient` from PyPI, which `cargo xtask setup` installs in a
/// virtual environment) against the live server, its answers checked against Triton's HTTP
/// client on the same server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritons_grpc_client_speaks_to_wedge() {
    let s = TestServer::start(config()).await;
    let args = [s.grpc_addr.to_string(), s.addr.to_string(), "all-MiniLM-L6-v2".to_string()];
    common::run_triton_client("grpc_client.py", &args, "tritonclient grpc: ok").await;
    s.stop().await;
}
