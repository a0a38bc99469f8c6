//! OpenTelemetry traces: wedge's `tracing` spans exported over OTLP (HTTP/protobuf or gRPC)
//! to a collector, and W3C trace context (`traceparent`) continued from requests and returned
//! with answers.
//!
//! Off unless an endpoint is configured (`[telemetry]` or `OTEL_EXPORTER_OTLP_ENDPOINT`). The
//! spans of the request's stages are at DEBUG level: with telemetry off (and logs at INFO) they
//! are disabled at their call sites and cost nothing.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::HeaderMap;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::registry::LookupSpan;
use wedge_serve::TelemetryConfig;

use crate::ServerError;

/// Longest one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how traces go, from the configuration and the `OTEL_*` variables.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// The full URL spans are sent to (for HTTP, the `/v1/traces` path included).
    pub endpoint: String,
    /// `grpc` or `http/protobuf`.
    pub protocol: String,
    /// The share of new traces kept (a request's `traceparent` decides for its own trace).
    pub sample_ratio: f64,
    /// The spans' `service.name`.
    pub service_name: String,
}

impl Settings {
    /// The settings of `config`, each field it leaves out taken from `env` (the process's
    /// environment in [`Telemetry::start`]); None when no endpoint is set either way, or when
    /// `OTEL_SDK_DISABLED=true`.
    pub fn resolve(config: &TelemetryConfig, env: impl Fn(&str) -> Option<String>) -> Option<Settings> {
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return None;
        }
        let protocol = config
            .protocol
            .clone()
            .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"))
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|| "http/protobuf".into());
        // a base URL (the configuration's, OTEL_EXPORTER_OTLP_ENDPOINT) gets the signal's path
        // over HTTP; OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is the whole URL already
        let base = config.endpoint.clone().or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"));
        let endpoint = match (env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), base) {
            (Some(full), None) => full,
            (_, Some(base)) if protocol == "grpc" => base,
            (_, Some(base)) => format!("{}/v1/traces", base.trim_end_matches('/')),
            (None, None) => return None,
        };
        let sampler = env("OTEL_TRACES_SAMPLER").unwrap_or_default();
        let sample_ratio = config.sample_ratio.unwrap_or_else(|| match sampler.as_str() {
            "always_off" | "parentbased_always_off" => 0.0,
            "always_on" | "parentbased_always_on" => 1.0,
            _ => env("OTEL_TRACES_SAMPLER_ARG").and_then(|a| a.trim().parse().ok()).unwrap_or(1.0),
        });
        let service_name =
            config.service_name.clone().or_else(|| env("OTEL_SERVICE_NAME")).unwrap_or_else(|| "wedge".into());
        Some(Settings { endpoint, protocol, sample_ratio: sample_ratio.clamp(0.0, 1.0), service_name })
    }
}

/// The trace pipeline: spans go through a batch processor (a thread of its own) to the OTLP
/// exporter. Keep it for the life of the process, then [`Telemetry::shutdown`] to send what
/// is left.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    settings: Settings,
}

impl Telemetry {
    /// Starts exporting as `config` and the environment say; None when telemetry is off. Call
    /// it inside a Tokio runtime (entered or running): the exporters do their I/O on it, and it
    /// must outlive the pipeline.
    pub fn start(config: &TelemetryConfig) -> Result<Option<Telemetry>, ServerError> {
        match Settings::resolve(config, |k| std::env::var(k).ok()) {
            Some(s) => Telemetry::with_settings(s).map(Some),
            None => Ok(None),
        }
    }

    /// The pipeline of `settings` (inside a Tokio runtime, as [`Telemetry::start`]).
    pub fn with_settings(settings: Settings) -> Result<Telemetry, ServerError> {
        Telemetry::to_each(settings, &[])
    }

    /// The pipeline of `settings` that also sends every span to each of `more` (their
    /// endpoints and protocols; the sampling and service name are `settings`'): one collector
    /// being replaced by another, or a test receiving both protocols.
    pub fn to_each(settings: Settings, more: &[Settings]) -> Result<Telemetry, ServerError> {
        let resource = opentelemetry_sdk::Resource::builder().with_service_name(settings.service_name.clone()).build();
        let mut provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(settings.sample_ratio))))
            .with_resource(resource);
        for s in std::iter::once(&settings).chain(more) {
            provider = provider.with_batch_exporter(exporter(&s.protocol, &s.endpoint)?);
        }
        Ok(Telemetry { provider: provider.build(), settings })
    }

    /// Where spans go.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The `tracing` layer that turns wedge's spans (DEBUG and above) into OpenTelemetry spans.
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let tracer = self.provider.tracer("wedge");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(Targets::new().with_target("wedge", LevelFilter::DEBUG))
    }

    /// Sends the spans still buffered and stops the pipeline (blocking; call it while the
    /// runtime still runs).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("stopping the trace exporter: {e}");
        }
    }
}

/// The OTLP span exporter for `protocol` (`grpc` or `http/protobuf`) sending to `endpoint`.
fn exporter(protocol: &str, endpoint: &str) -> Result<opentelemetry_otlp::SpanExporter, ServerError> {
    let built = match protocol {
        "grpc" => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build(),
        "http/protobuf" => {
            let handle = tokio::runtime::Handle::try_current()
                .map_err(|e| ServerError::Telemetry(format!("the OTLP exporter needs a Tokio runtime: {e}")))?;
            let client = RuntimeHttpClient { handle, client: Client::builder(TokioExecutor::new()).build_http() };
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(client)
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(endpoint)
                .with_timeout(EXPORT_TIMEOUT)
                .build()
        }
        other => return Err(ServerError::Telemetry(format!("OTLP protocol `{other}`: use grpc or http/protobuf"))),
    };
    built.map_err(|e| ServerError::Telemetry(format!("OTLP exporter for {endpoint}: {e}")))
}

/// OTLP over HTTP with wedge's own hyper client. The batch processor exports from a thread of
/// its own; each request runs on the server's runtime, whose handle this keeps.
#[derive(Debug)]
struct RuntimeHttpClient {
    handle: tokio::runtime::Handle,
    client: Client<HttpConnector, Full<Bytes>>,
}

#[async_trait::async_trait]
impl HttpClient for RuntimeHttpClient {
    async fn send_bytes(&self, request: hyper::Request<Bytes>) -> Result<hyper::Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let request = request.map(Full::new);
        let sent = self.handle.spawn(async move {
            let response = tokio::time::timeout(EXPORT_TIMEOUT, client.request(request)).await??;
            let (parts, body) = response.into_parts();
            // (a collector answers with a small status message)
            let body = Limited::new(body, 4 << 20).collect().await?.to_bytes();
            Ok::<_, HttpError>(hyper::Response::from_parts(parts, body))
        });
        sent.await?
    }
}

/// Makes `span` continue the trace of an incoming request's `traceparent` (and `tracestate`),
/// if it has one. Without telemetry this does nothing.
pub(crate) fn continue_trace(span: &tracing::Span, headers: &HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Writes `span`'s trace context into `headers` as `traceparent` (and `tracestate`), so that
/// a caller can find its request's trace. Without telemetry there is none to write.
pub(crate) fn return_trace(span: &tracing::Span, headers: &mut HeaderMap) {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_string())
    }

    #[test]
    fn settings_come_from_the_config_then_the_environment() {
        let off = TelemetryConfig::default();
        assert_eq!(Settings::resolve(&off, env(&[])), None);
        let s = Settings::resolve(&off, env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")])).unwrap();
        assert_eq!((s.endpoint.as_str(), s.protocol.as_str()), ("http://c:4318/v1/traces", "http/protobuf"));
        assert_eq!((s.sample_ratio, s.service_name.as_str()), (1.0, "wedge"));
        let vars = &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_SERVICE_NAME", "edge-eu"),
        ];
        let s = Settings::resolve(&off, env(vars)).unwrap();
        assert_eq!(s.endpoint, "http://c:4317");
        assert_eq!((s.protocol.as_str(), s.sample_ratio, s.service_name.as_str()), ("grpc", 0.25, "edge-eu"));
        let full = &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/custom")];
        assert_eq!(Settings::resolve(&off, env(full)).unwrap().endpoint, "http://c:4318/custom");
        let configured = TelemetryConfig {
            endpoint: Some("http://mine:4318".into()),
            protocol: None,
            sample_ratio: Some(0.5),
            service_name: Some("wedge-a".into()),
        };
        let s = Settings::resolve(&configured, env(vars)).unwrap();
        assert_eq!((s.endpoint.as_str(), s.protocol.as_str()), ("http://mine:4318", "grpc"));
        assert_eq!((s.sample_ratio, s.service_name.as_str()), (0.5, "wedge-a"));
        assert_eq!(Settings::resolve(&configured, env(&[("OTEL_SDK_DISABLED", "true")])), None);
        let never = &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_TRACES_SAMPLER", "always_off")];
        assert_eq!(Settings::resolve(&off, env(never)).unwrap().sample_ratio, 0.0);
    }
}
