//! KServe v2 over gRPC: `inference.GRPCInferenceService` as Triton's and KServe's clients call
//! it (the messages of `proto/inference.proto`). Health, metadata and inference answer from
//! the same service as the HTTP routes: the same admission (keys and tokens from the call's
//! metadata), limits, cache and models; errors are gRPC status codes with the same messages.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::Value;
use tonic::codec::CompressionEncoding;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status};
use wedge_serve::{Caller, ServeError, Service};

use crate::api;

/// The generated messages, the server trait and a client (generic over its transport).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::model_infer_request::InferInputTensor;
use proto::model_infer_response::InferOutputTensor;
use proto::model_metadata_response::TensorMetadata;

/// The server's side of one connection's peer, put in each request's extensions by the accept
/// loop (the address is whom an open server's rate limits count).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer(pub(crate) SocketAddr);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodCode {
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: &'static str,
}

/// The gRPC service: wedge's [`Service`] and the calls' metrics.
pub(crate) struct Grpc {
    service: Arc<Service>,
    calls: Family<MethodCode, Counter>,
    latency: Family<MethodLabel, Histogram>,
}

/// The tonic server for `service`, its metrics registered in `registry`. Messages are limited
/// to `limits.max_body_bytes` (decompressed); requests may come gzip, deflate or zstd
/// compressed, and answers go compressed when the client accepts it and `compression` is on.
pub(crate) fn server(service: Arc<Service>, registry: &mut Registry) -> GrpcInferenceServiceServer<Grpc> {
    let calls = Family::<MethodCode, Counter>::default();
    let latency = Family::<MethodLabel, Histogram>::new_with_constructor(|| {
        Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
    });
    registry.register("wedge_grpc_requests", "gRPC calls by method and status code", calls.clone());
    registry.register("wedge_grpc_request_seconds", "gRPC call latency by method", latency.clone());
    let max = service.config().limits.max_body_bytes;
    let compress = service.config().compression.enabled;
    let encodings = [CompressionEncoding::Zstd, CompressionEncoding::Gzip, CompressionEncoding::Deflate];
    let mut s = GrpcInferenceServiceServer::new(Grpc { service, calls, latency }).max_decoding_message_size(max);
    for e in encodings {
        s = s.accept_compressed(e);
        if compress {
            s = s.send_compressed(e);
        }
    }
    s
}

/// A serving error as a gRPC status: the code nearest to the HTTP status the same error gets,
/// the same message, and `retry-after` in the metadata where waiting helps.
fn status(e: &ServeError) -> Status {
    let (http, _) = crate::classify(e);
    let code = match http {
        StatusCode::BAD_REQUEST => Code::InvalidArgument,
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::PAYLOAD_TOO_LARGE => Code::ResourceExhausted,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        StatusCode::GATEWAY_TIMEOUT => Code::DeadlineExceeded,
        _ => Code::Internal,
    };
    let mut s = Status::new(code, e.to_string());
    if let Some(secs) = crate::retry_after(e) {
        s.metadata_mut().insert("retry-after", MetadataValue::from(secs));
    }
    s
}

/// The caller's deadline from `grpc-timeout` (an integer of at most 8 digits and a unit), if
/// it sent a valid one.
fn grpc_timeout<T>(req: &Request<T>) -> Option<Duration> {
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl Grpc {
    /// Runs one call under the request timeout (or the caller's shorter deadline) and counts
    /// it by method and status code.
    async fn observe<T>(
        &self,
        method: &'static str,
        deadline: Option<Duration>,
        call: impl Future<Output = Result<T, ServeError>>,
    ) -> Result<Response<T>, Status> {
        let t0 = Instant::now();
        let limit = Duration::from_millis(self.service.config().limits.request_timeout_ms);
        let limit = deadline.map_or(limit, |d| d.min(limit));
        let result = match tokio::time::timeout(limit, call).await {
            Ok(r) => r,
            Err(_) => Err(ServeError::Timeout(limit.as_millis() as u64)),
        };
        let result = result.map(Response::new).map_err(|e| status(&e));
        let code = match &result {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        };
        self.calls.get_or_create(&MethodCode { method, code: code_name(code) }).inc();
        self.latency.get_or_create(&MethodLabel { method }).observe(t0.elapsed().as_secs_f64());
        result
    }

    /// The caller, from the credentials in the call's metadata (`authorization: Bearer …` or
    /// `x-api-key`), as the HTTP routes admit it.
    fn admit<T>(&self, req: &Request<T>) -> Result<Caller, ServeError> {
        let peer = req.extensions().get::<Peer>().map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |p| p.0);
        crate::admit(&self.service, req.metadata().as_ref(), peer)
    }
}

/// The name gRPC gives a status code, for metrics labels.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// An empty version field: the version the server routes the caller to.
fn version(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

fn tensors(specs: Vec<api::TensorSpec>) -> Vec<TensorMetadata> {
    specs
        .into_iter()
        .map(|t| TensorMetadata { name: t.name.into(), datatype: t.datatype.into(), shape: t.shape })
        .collect()
}

/// The texts of an infer request, checked as the HTTP route checks them: one BYTES input
/// named `text`, shaped [N] or [N, 1], its elements in `contents.bytes_contents` or in
/// `raw_input_contents` (each a 4-byte little-endian length and its bytes).
fn infer_texts(r: &mut proto::ModelInferRequest) -> Result<Vec<String>, ServeError> {
    let bad = |m: String| ServeError::BadInput(m);
    let raw = std::mem::take(&mut r.raw_input_contents);
    if !raw.is_empty() && raw.len() != r.inputs.len() {
        return Err(bad(format!("raw_input_contents has {} entries for {} inputs", raw.len(), r.inputs.len())));
    }
    let mut inputs = Vec::with_capacity(r.inputs.len());
    for (i, t) in std::mem::take(&mut r.inputs).into_iter().enumerate() {
        let InferInputTensor { name, datatype, shape, contents, .. } = t;
        let ours = name == api::INPUT_NAME && datatype == "BYTES";
        let data = match (raw.get(i), contents) {
            (Some(_), Some(_)) => {
                return Err(bad(format!("input `{name}` has both contents and raw_input_contents")));
            }
            (Some(bytes), None) if ours => Some(Value::from(api::binary_strings(bytes)?)),
            (None, Some(c)) if ours => {
                let texts = c.bytes_contents.into_iter().map(|b| {
                    String::from_utf8(b).map_err(|_| bad(format!("input `{name}` holds an element that is not UTF-8")))
                });
                Some(Value::from(texts.collect::<Result<Vec<_>, _>>()?))
            }
            // (refused by name or datatype below)
            (Some(_), None) | (None, Some(_)) => Some(Value::Null),
            (None, None) => None,
        };
        inputs.push(api::InferInput { name, shape, datatype, data, parameters: None });
    }
    let outputs = std::mem::take(&mut r.outputs)
        .into_iter()
        .map(|o| api::RequestedOutput { name: o.name, parameters: None })
        .collect();
    let request = api::InferRequest { id: None, inputs, outputs: Some(outputs), parameters: None };
    Ok(request.texts()?.1)
}

#[tonic::async_trait]
impl GrpcInferenceService for Grpc {
    async fn server_live(
        &self,
        req: Request<proto::ServerLiveRequest>,
    ) -> Result<Response<proto::ServerLiveResponse>, Status> {
        self.observe("ServerLive", grpc_timeout(&req), async { Ok(proto::ServerLiveResponse { live: true }) }).await
    }

    async fn server_ready(
        &self,
        req: Request<proto::ServerReadyRequest>,
    ) -> Result<Response<proto::ServerReadyResponse>, Status> {
        let ready = self.service.ready();
        self.observe("ServerReady", grpc_timeout(&req), async { Ok(proto::ServerReadyResponse { ready }) }).await
    }

    async fn model_ready(
        &self,
        req: Request<proto::ModelReadyRequest>,
    ) -> Result<Response<proto::ModelReadyResponse>, Status> {
        self.observe("ModelReady", grpc_timeout(&req), async {
            let caller = self.admit(&req)?;
            let r = req.get_ref();
            let (_, _, ready) = crate::model_ready(&self.service, &caller, &r.name, version(&r.version))?;
            Ok(proto::ModelReadyResponse { ready })
        })
        .await
    }

    async fn server_metadata(
        &self,
        req: Request<proto::ServerMetadataRequest>,
    ) -> Result<Response<proto::ServerMetadataResponse>, Status> {
        self.observe("ServerMetadata", grpc_timeout(&req), async {
            Ok(proto::ServerMetadataResponse {
                name: "wedge".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                extensions: vec!["model_repository".into()],
            })
        })
        .await
    }

    async fn model_metadata(
        &self,
        req: Request<proto::ModelMetadataRequest>,
    ) -> Result<Response<proto::ModelMetadataResponse>, Status> {
        self.observe("ModelMetadata", grpc_timeout(&req), async {
            let caller = self.admit(&req)?;
            let r = req.get_ref();
            let m = self.service.model_for(&r.name, &caller, None, version(&r.version)).await?;
            let (inputs, outputs) = api::model_tensors(&m);
            Ok(proto::ModelMetadataResponse {
                name: m.name.clone(),
                versions: vec![m.version.clone()],
                platform: "wedge".into(),
                inputs: tensors(inputs),
                outputs: tensors(outputs),
            })
        })
        .await
    }

    async fn model_infer(
        &self,
        req: Request<proto::ModelInferRequest>,
    ) -> Result<Response<proto::ModelInferResponse>, Status> {
        let deadline = grpc_timeout(&req);
        self.observe("ModelInfer", deadline, async {
            let caller = self.admit(&req)?;
            let policy = crate::cache_policy(req.metadata().as_ref());
            let mut r = req.into_inner();
            let model = self.service.model_for(&r.model_name, &caller, None, version(&r.model_version)).await?;
            // (answers come the way the tensors came: raw bytes, or typed contents)
            let raw = !r.raw_input_contents.is_empty();
            let texts = infer_texts(&mut r)?;
            let out = self.service.embed_with(model, &texts, policy).await?;
            self.service.charge(&caller, out.prompt_tokens);
            let dim = out.model.embedding()?.dim;
            let mut data = Vec::with_capacity(out.vectors.len() * dim);
            for v in &out.vectors {
                data.extend_from_slice(v);
            }
            let shape = vec![out.vectors.len() as i64, dim as i64];
            let mut output = InferOutputTensor {
                name: api::OUTPUT_NAME.into(),
                datatype: "FP32".into(),
                shape,
                ..Default::default()
            };
            let mut raw_output_contents = Vec::new();
            if raw {
                raw_output_contents.push(data.iter().flat_map(|x| x.to_le_bytes()).collect());
            } else {
                output.contents = Some(proto::InferTensorContents { fp32_contents: data, ..Default::default() });
            }
            Ok(proto::ModelInferResponse {
                model_name: out.model.name.clone(),
                model_version: out.model.version.clone(),
                id: r.id,
                parameters: Default::default(),
                outputs: vec![output],
                raw_output_contents,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_timeout(v: &'static str) -> Option<Duration> {
        let mut r = Request::new(());
        r.metadata_mut().insert("grpc-timeout", MetadataValue::from_static(v));
        grpc_timeout(&r)
    }

    #[test]
    fn deadlines_are_read_from_grpc_timeout() {
        assert_eq!(with_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(with_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(with_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(with_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S"] {
            assert_eq!(with_timeout(bad), None, "{bad}");
        }
        assert_eq!(grpc_timeout(&Request::new(())), None);
    }

    #[test]
    fn errors_become_the_nearest_grpc_code() {
        let cases = [
            (ServeError::BadInput("x".into()), Code::InvalidArgument),
            (ServeError::UnknownModel("m".into()), Code::NotFound),
            (ServeError::Unauthorized, Code::Unauthenticated),
            (ServeError::Forbidden("f".into()), Code::PermissionDenied),
            (ServeError::RateLimited { retry_after_s: 3 }, Code::ResourceExhausted),
            (ServeError::NotReady, Code::Unavailable),
            (ServeError::Timeout(5), Code::DeadlineExceeded),
            (ServeError::Inference("boom".into()), Code::Internal),
        ];
        for (e, code) in cases {
            let s = status(&e);
            assert_eq!(s.code(), code, "{e}");
            assert_eq!(s.message(), e.to_string());
        }
        let limited = status(&ServeError::RateLimited { retry_after_s: 3 });
        assert_eq!(limited.metadata().get("retry-after").unwrap(), "3");
    }

    fn text_input(shape: Vec<i64>, texts: &[&str]) -> InferInputTensor {
        InferInputTensor {
            name: "text".into(),
            datatype: "BYTES".into(),
            shape,
            contents: Some(proto::InferTensorContents {
                bytes_contents: texts.iter().map(|t| t.as_bytes().to_vec()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn infer_inputs_come_typed_or_raw_and_are_checked() {
        let mut r = proto::ModelInferRequest { inputs: vec![text_input(vec![2], &["a", "bc"])], ..Default::default() };
        assert_eq!(infer_texts(&mut r).unwrap(), ["a", "bc"]);

        let raw = [1u32.to_le_bytes().as_slice(), b"a", 2u32.to_le_bytes().as_slice(), b"bc"].concat();
        let mut input = text_input(vec![2, 1], &[]);
        input.contents = None;
        let mut r =
            proto::ModelInferRequest { inputs: vec![input], raw_input_contents: vec![raw], ..Default::default() };
        assert_eq!(infer_texts(&mut r).unwrap(), ["a", "bc"]);

        let refused = |mut r: proto::ModelInferRequest, words: &str| {
            let e = infer_texts(&mut r).unwrap_err().to_string();
            assert!(e.contains(words), "{e} lacks {words}");
        };
        refused(proto::ModelInferRequest { inputs: vec![text_input(vec![3], &["a"])], ..Default::default() }, "shape");
        let mut wrong = text_input(vec![1], &["a"]);
        wrong.name = "txt".into();
        refused(proto::ModelInferRequest { inputs: vec![wrong], ..Default::default() }, "txt");
        let mut fp = text_input(vec![1], &["a"]);
        fp.datatype = "FP32".into();
        refused(proto::ModelInferRequest { inputs: vec![fp], ..Default::default() }, "FP32");
        refused(
            proto::ModelInferRequest {
                inputs: vec![text_input(vec![1], &["a"])],
                raw_input_contents: vec![vec![0; 5]],
                ..Default::default()
            },
            "both",
        );
        refused(
            proto::ModelInferRequest {
                inputs: vec![text_input(vec![1], &["a"])],
                raw_input_contents: vec![vec![], vec![]],
                ..Default::default()
            },
            "2 entries for 1 inputs",
        );
        let mut truncated = text_input(vec![1], &[]);
        truncated.contents = None;
        refused(
            proto::ModelInferRequest {
                inputs: vec![truncated],
                raw_input_contents: vec![vec![9, 0, 0, 0, b'a']],
                ..Default::default()
            },
            "ends inside",
        );
        let mut not_utf8 = text_input(vec![1], &[]);
        not_utf8.contents.as_mut().unwrap().bytes_contents = vec![vec![0xff, 0xfe]];
        refused(proto::ModelInferRequest { inputs: vec![not_utf8], ..Default::default() }, "UTF-8");
        let mut other_output =
            proto::ModelInferRequest { inputs: vec![text_input(vec![1], &["a"])], ..Default::default() };
        other_output.outputs.push(proto::model_infer_request::InferRequestedOutputTensor {
            name: "logits".into(),
            ..Default::default()
        });
        refused(other_output, "logits");
    }
}
