//! The serving configuration: a TOML file (see `examples/wedge.toml`), flags on top.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ServeError;

/// Everything `wedge serve` needs to know. Every field has a default, so an empty file is valid.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on.
    pub addr: String,
    /// Address of the gRPC port (KServe v2's `GRPCInferenceService`); empty for none. Equal to
    /// `addr`, gRPC shares the HTTP port (as it always may, over HTTP/2).
    pub grpc_addr: String,
    /// `auto` (a hardware GPU, else the CPU), `gpu` or `cpu`.
    pub device: String,
    /// Log format: `human` or `json`.
    pub log_format: String,
    /// The models to serve; with none (and no `registry.models_dir`), the caller supplies the
    /// bundled model.
    pub models: Vec<ModelConfig>,
    /// Where else models come from, how many stay loaded, and reloading.
    pub registry: RegistryConfig,
    /// Dynamic batching defaults for every model.
    pub batching: BatchingConfig,
    /// Language models: continuous batching, the key/value cache, generation defaults.
    pub generation: GenerationConfig,
    /// The prediction cache.
    pub cache: CacheConfig,
    /// Request limits.
    pub limits: LimitsConfig,
    /// The GPU→CPU circuit breaker of models served on a GPU.
    pub breaker: BreakerConfig,
    /// API keys.
    pub auth: AuthConfig,
    /// TLS; plain HTTP without it.
    pub tls: Option<TlsConfig>,
    /// Compressed responses and request bodies.
    pub compression: CompressionConfig,
    /// OpenTelemetry traces over OTLP; off unless an endpoint is set (here or in
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub telemetry: TelemetryConfig,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            addr: "127.0.0.1:8080".into(),
            grpc_addr: "127.0.0.1:8081".into(),
            device: "auto".into(),
            log_format: "human".into(),
            models: Vec::new(),
            registry: RegistryConfig::default(),
            batching: BatchingConfig::default(),
            generation: GenerationConfig::default(),
            cache: CacheConfig::default(),
            limits: LimitsConfig::default(),
            breaker: BreakerConfig::default(),
            auth: AuthConfig::default(),
            tls: None,
            compression: CompressionConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

/// One served model.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The name clients use (`model` in OpenAI requests, `{name}` in KServe paths).
    pub name: String,
    /// The model file (`.wedge` or `.gguf`); not given when `versions` is.
    #[serde(default)]
    pub path: PathBuf,
    /// A version string reported by `GET /v2/models/{name}` (default `1`).
    #[serde(default)]
    pub version: Option<String>,
    /// Several versions served under the name, each with its own file and a routing weight:
    /// a caller (API key, or the request's `user`) is routed to one version by the hash of
    /// its id, so it keeps seeing the same one; `/v2/models/{name}/versions/{v}/...` pins one.
    #[serde(default)]
    pub versions: Vec<VersionConfig>,
    /// Other names for the same model.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Batching for this model, overriding `[batching]` field by field.
    #[serde(default)]
    pub batching: Option<BatchingOverride>,
    /// Load at start (and count in readiness) rather than on the first request. Default: true
    /// for models listed in `[[models]]`, false for those found in `registry.models_dir`.
    #[serde(default)]
    pub preload: Option<bool>,
}

/// One version of a model with several (see [`ModelConfig::versions`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionConfig {
    /// Its name (`model_version` in KServe answers, `x-wedge-model-version` in every answer).
    pub version: String,
    /// Its file.
    pub path: PathBuf,
    /// Its share of the callers that do not pin a version: `weight / Σ weights`. 0 serves only
    /// requests that pin it.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

impl ModelConfig {
    /// Each version as a model of one file (its `version` set), with its routing weight; a
    /// model without `versions` is its own single version, of weight 1.
    pub fn loadables(&self) -> Vec<(ModelConfig, u32)> {
        if self.versions.is_empty() {
            return vec![(self.clone(), 1)];
        }
        self.versions
            .iter()
            .map(|v| {
                let one = ModelConfig {
                    path: v.path.clone(),
                    version: Some(v.version.clone()),
                    versions: Vec::new(),
                    ..self.clone()
                };
                (one, v.weight)
            })
            .collect()
    }
}

/// The optional `<stem>.toml` beside a model in `registry.models_dir`: a `[[models]]` entry
/// without the name and path, which the file gives.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DirModelToml {
    version: Option<String>,
    #[serde(default)]
    aliases: Vec<String>,
    batching: Option<BatchingOverride>,
    preload: Option<bool>,
}

/// The model registry: models found in a folder, the memory they may take, load waits and
/// reloading.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// A folder of models: every `.wedge` and `.gguf` file in it, named by its file stem,
    /// with an optional `<stem>.toml` beside it (version, aliases, batching, preload).
    pub models_dir: Option<PathBuf>,
    /// Bytes the loaded models may take together (weights, host and GPU, plus key/value
    /// caches); past it the least recently used models with no request in flight are
    /// unloaded. 0: no bound.
    pub max_loaded_bytes: u64,
    /// Seconds a request waits for its model to load before it gets 503 with `Retry-After`
    /// (the load goes on).
    pub load_timeout_secs: u64,
    /// Reload a model when its file changes, and serve models that appear in `models_dir`.
    pub watch: bool,
}

impl Default for RegistryConfig {
    fn default() -> RegistryConfig {
        RegistryConfig { models_dir: None, max_loaded_bytes: 0, load_timeout_secs: 30, watch: true }
    }
}

/// Dynamic batching: concurrent requests to one model are merged into one run.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchingConfig {
    /// Most inputs in one run; 1 turns batching off.
    pub max_batch_size: usize,
    /// How long the first input of a batch may wait for others, in microseconds.
    pub max_queue_delay_us: u64,
    /// Most inputs waiting per model; past it requests get 503 with `Retry-After`.
    pub max_queue: usize,
    /// Longest a request's inputs may expect to wait behind the queue, in milliseconds (the
    /// inputs queued and running times the recent time per input); a request that would wait
    /// longer gets 503 with `Retry-After` at once, and no run takes more inputs than fit in
    /// it, so that the requests admitted under overload keep their latency. 0: only
    /// `max_queue` bounds the wait.
    pub max_queue_wait_ms: u64,
}

impl Default for BatchingConfig {
    fn default() -> BatchingConfig {
        BatchingConfig { max_batch_size: 32, max_queue_delay_us: 2_000, max_queue: 1_024, max_queue_wait_ms: 0 }
    }
}

/// Per-model batching fields; unset ones come from `[batching]`.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingOverride {
    /// See [`BatchingConfig::max_batch_size`].
    pub max_batch_size: Option<usize>,
    /// See [`BatchingConfig::max_queue_delay_us`].
    pub max_queue_delay_us: Option<u64>,
    /// See [`BatchingConfig::max_queue`].
    pub max_queue: Option<usize>,
    /// See [`BatchingConfig::max_queue_wait_ms`].
    pub max_queue_wait_ms: Option<u64>,
}

impl BatchingConfig {
    /// These settings with `o`'s fields on top.
    pub fn with(self, o: Option<BatchingOverride>) -> BatchingConfig {
        let o = o.unwrap_or_default();
        BatchingConfig {
            max_batch_size: o.max_batch_size.unwrap_or(self.max_batch_size),
            max_queue_delay_us: o.max_queue_delay_us.unwrap_or(self.max_queue_delay_us),
            max_queue: o.max_queue.unwrap_or(self.max_queue),
            max_queue_wait_ms: o.max_queue_wait_ms.unwrap_or(self.max_queue_wait_ms),
        }
    }
}

/// How language models are served (every `.gguf` model, and `.wedge` packages of decoders).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerationConfig {
    /// Sequences decoded together (the running batch).
    pub max_sequences: usize,
    /// Positions per sequence, prompt and completion (0: the model's context, or what the
    /// budget allows when less).
    pub ctx: usize,
    /// Bytes of key/value cache for all sequences together: `max_sequences` × `ctx` positions
    /// must fit in it.
    pub kv_budget_bytes: u64,
    /// `f32` or `f16` key/value storage.
    pub kv: String,
    /// Tokens in one batched step: the decoding sequences' one each, then chunks of waiting
    /// prompts. Bounds the time between a stream's tokens while a long prompt arrives.
    pub max_batch_tokens: usize,
    /// Requests waiting for a sequence; past it requests get 503 with `Retry-After`.
    pub max_waiting: usize,
    /// `max_tokens` when a request gives none (at most to the end of the context).
    pub default_max_tokens: usize,
    /// On the CPU backend, the integer matmul kernels (faster, less exact; see
    /// `wedge::LmOptions::fast_cpu`).
    pub fast_cpu: bool,
}

impl Default for GenerationConfig {
    fn default() -> GenerationConfig {
        GenerationConfig {
            max_sequences: 8,
            ctx: 0,
            kv_budget_bytes: 512 << 20,
            kv: "f32".into(),
            max_batch_tokens: 256,
            max_waiting: 64,
            default_max_tokens: 512,
            fast_cpu: false,
        }
    }
}

/// The prediction cache: memory, disk and Redis tiers.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Whether to cache at all.
    pub enabled: bool,
    /// Tier 1 bound, in bytes of stored embeddings and completions; 0 turns tier 1 off (a node
    /// that reads through to the shared tiers).
    pub memory_bytes: u64,
    /// Entry lifetime in seconds, both tiers.
    pub ttl_secs: u64,
    /// Tier 2 database file; no disk tier without it.
    pub disk_path: Option<PathBuf>,
    /// Tier 2 bound, in bytes of stored values.
    pub disk_bytes: u64,
    /// Tier 3, shared by the nodes of a region: `redis://host:port[/db]`; none without it.
    pub redis_url: Option<String>,
    /// Prefix of this cluster's keys in Redis.
    pub redis_prefix: String,
    /// Longest wait for Redis per call, in milliseconds; past it the call counts as failed
    /// and the request goes on without Redis.
    pub redis_timeout_ms: u64,
}

impl Default for CacheConfig {
    fn default() -> CacheConfig {
        CacheConfig {
            enabled: true,
            memory_bytes: 256 << 20,
            ttl_secs: 24 * 3600,
            disk_path: None,
            disk_bytes: 1 << 30,
            redis_url: None,
            redis_prefix: "wedge:".into(),
            redis_timeout_ms: 50,
        }
    }
}

/// Request limits.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Most inputs in one request.
    pub max_inputs: usize,
    /// Longest input text, in bytes (the model truncates to its token limit after this).
    pub max_input_bytes: usize,
    /// Time a request may take before it is answered with 504, in milliseconds.
    pub request_timeout_ms: u64,
    /// Requests per second per API key (per client address when no keys are set); 0 turns it off.
    pub rate_limit_per_sec: u32,
    /// Requests a key may make at once above the rate (default: the rate, at least 1).
    pub rate_limit_burst: Option<u32>,
    /// Time a client has to send a request's head, in milliseconds; also the longest an
    /// HTTP/1.1 connection may stay idle between requests. Slower ones are closed (slowloris).
    pub header_read_timeout_ms: u64,
    /// Time a client has to finish the TLS handshake, in milliseconds.
    pub tls_handshake_timeout_ms: u64,
    /// Most client connections open at once; past it, new ones wait to be accepted.
    pub max_connections: usize,
    /// Most requests at once on one HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Largest request head (HTTP/1.1) or header list (HTTP/2), in bytes; at least 8 KiB.
    pub max_header_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> LimitsConfig {
        LimitsConfig {
            max_body_bytes: 4 << 20,
            max_inputs: 2_048,
            max_input_bytes: 64 << 10,
            request_timeout_ms: 30_000,
            rate_limit_per_sec: 0,
            rate_limit_burst: None,
            header_read_timeout_ms: 10_000,
            tls_handshake_timeout_ms: 10_000,
            max_connections: 10_000,
            max_concurrent_streams: 256,
            max_header_bytes: 64 << 10,
        }
    }
}

/// HTTP compression: responses are compressed in the coding the client's `Accept-Encoding`
/// prefers (zstd, br, gzip or deflate), streams flushed event by event; request bodies in
/// any of those `Content-Encoding`s are accepted, `limits.max_body_bytes` bounding both the
/// compressed and the decompressed size.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionConfig {
    /// Compress responses at all (compressed request bodies are accepted either way).
    pub enabled: bool,
    /// Smaller whole responses go out as they are (streams are always compressed).
    pub min_bytes: usize,
}

impl Default for CompressionConfig {
    fn default() -> CompressionConfig {
        CompressionConfig { enabled: true, min_bytes: 1024 }
    }
}

/// OpenTelemetry traces: every request's spans (admission, tokenization, each cache tier,
/// queueing, the batch run, the response) exported over OTLP to a collector. Each field left
/// out falls back to the standard variable named beside it; with no endpoint either way,
/// tracing is off and costs nothing.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The collector's base URL, e.g. `http://otel-collector:4318` (HTTP) or
    /// `http://otel-collector:4317` (gRPC) (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub endpoint: Option<String>,
    /// `http/protobuf` or `grpc` (`OTEL_EXPORTER_OTLP_PROTOCOL`; default `http/protobuf`).
    pub protocol: Option<String>,
    /// The share of traces kept, 0 to 1, for traces that do not arrive already sampled or not
    /// by their `traceparent` (`OTEL_TRACES_SAMPLER_ARG`; default 1).
    pub sample_ratio: Option<f64>,
    /// The `service.name` of the spans (`OTEL_SERVICE_NAME`; default `wedge`).
    pub service_name: Option<String>,
}

/// The circuit breaker between a model's GPU and the CPU: a GPU error, a lost device or a run
/// past the watchdog moves the model's traffic to a CPU copy of the same file (made on first
/// need) and reruns the run that faulted there; after `probe_after_ms` a probe run tries the
/// GPU again, and traffic goes back when it succeeds.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Whether models on a GPU have a breaker (without it a GPU fault fails its requests).
    pub enabled: bool,
    /// Longest a GPU batch or step may take, in milliseconds; past it the GPU counts as hung.
    pub watchdog_ms: u64,
    /// Milliseconds the breaker stays open before a probe tries the GPU again.
    pub probe_after_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> BreakerConfig {
        BreakerConfig { enabled: true, watchdog_ms: 30_000, probe_after_ms: 5_000 }
    }
}

/// Who may call: API keys and JWT bearer tokens, what each may use, and quotas. With neither
/// keys nor JWT settings the server is open.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Hex SHA-256 digests of the accepted keys (`printf %s KEY | sha256sum`).
    pub api_key_sha256: Vec<String>,
    /// Keys in the clear (hashed when loaded; prefer `api_key_sha256`).
    pub api_keys: Vec<String>,
    /// Keys with settings of their own: the models they may use, `/metrics`, their quota.
    pub keys: Vec<KeyConfig>,
    /// JWT bearer tokens, as another way in.
    pub jwt: Option<JwtConfig>,
    /// Requests and tokens each caller may use per period (keys may set their own).
    pub quota: QuotaConfig,
    /// Serve `/metrics` without credentials even when they are required elsewhere.
    pub metrics_public: bool,
}

/// One API key with settings of its own.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Hex SHA-256 digest of the key.
    pub sha256: Option<String>,
    /// The key in the clear (prefer `sha256`).
    pub key: Option<String>,
    /// The models (by name) it may use; all when not given.
    pub models: Option<Vec<String>>,
    /// Whether it may read `/metrics` (default true).
    #[serde(default = "yes")]
    pub metrics: bool,
    /// Requests per quota period (overrides `[auth.quota] requests`; 0: no bound).
    pub requests: Option<u64>,
    /// Tokens per quota period (overrides `[auth.quota] tokens`; 0: no bound).
    pub tokens: Option<u64>,
}

fn yes() -> bool {
    true
}

/// JWT bearer tokens: signed with a shared HS256 secret, or by a key of a JWKS file (RS256,
/// ES256 and the other RSA, ECDSA and EdDSA algorithms, chosen by the token's `kid`). A token
/// needs `sub` and `exp`; its `scope` (space-separated) or `scp` (a list) says what it may
/// use: `model:NAME` a model, `model:*` every model, `metrics` the `/metrics` route.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The HS256 secret.
    pub hs256_secret: Option<String>,
    /// A file holding the HS256 secret (its bytes, a trailing newline dropped).
    pub hs256_secret_file: Option<PathBuf>,
    /// A JWKS file (`{"keys": [...]}`) of public keys.
    pub jwks_file: Option<PathBuf>,
    /// The `iss` tokens must carry, when given.
    pub issuer: Option<String>,
    /// The `aud` tokens must carry, when given.
    pub audience: Option<String>,
    /// Seconds of clock difference allowed on `exp` and `nbf` (default 60).
    #[serde(default = "sixty")]
    pub leeway_secs: u64,
}

fn sixty() -> u64 {
    60
}

/// Quotas: what each caller (API key, token subject, or client address on an open server)
/// may use per period, counted by this node. 0: no bound.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    /// The period, in seconds (a window that starts at a caller's first request).
    pub period_secs: u64,
    /// Requests per period.
    pub requests: u64,
    /// Tokens per period: prompt (or input) tokens plus generated ones.
    pub tokens: u64,
}

impl Default for QuotaConfig {
    fn default() -> QuotaConfig {
        QuotaConfig { period_secs: 86_400, requests: 0, tokens: 0 }
    }
}

/// TLS certificate chain and private key, PEM.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl Config {
    /// Parses TOML; paths in it are taken relative to `base` (the file's folder).
    pub fn from_toml(text: &str, base: &Path) -> Result<Config, ServeError> {
        let mut c: Config = toml::from_str(text).map_err(|e| ServeError::Config(e.to_string()))?;
        let rel = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for m in &mut c.models {
            if !m.path.as_os_str().is_empty() {
                rel(&mut m.path);
            }
            for v in &mut m.versions {
                rel(&mut v.path);
            }
        }
        if let Some(p) = &mut c.registry.models_dir {
            rel(p);
        }
        if let Some(p) = &mut c.cache.disk_path {
            rel(p);
        }
        if let Some(t) = &mut c.tls {
            rel(&mut t.cert);
            rel(&mut t.key);
        }
        if let Some(j) = &mut c.auth.jwt {
            for p in [&mut j.hs256_secret_file, &mut j.jwks_file].into_iter().flatten() {
                rel(p);
            }
        }
        Ok(c)
    }

    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Config, ServeError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServeError::Config(format!("cannot read {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml(&text, base).map_err(|e| ServeError::Config(format!("{}: {e}", path.display())))
    }

    /// The models of `[[models]]` and of `registry.models_dir`, in that order (the folder's
    /// sorted by file name).
    pub fn all_models(&self) -> Result<Vec<ModelConfig>, ServeError> {
        let mut all = self.models.clone();
        if let Some(dir) = &self.registry.models_dir {
            all.extend(models_in(dir)?);
        }
        Ok(all)
    }

    /// Checks values that TOML types alone do not.
    pub fn validate(&self) -> Result<(), ServeError> {
        let bad = |m: String| Err(ServeError::Config(m));
        if !matches!(self.device.as_str(), "auto" | "gpu" | "cpu") {
            return bad(format!("device `{}`: use auto, gpu or cpu", self.device));
        }
        if !matches!(self.log_format.as_str(), "human" | "json") {
            return bad(format!("log_format `{}`: use human or json", self.log_format));
        }
        let mut names = std::collections::HashSet::new();
        for m in &self.all_models()? {
            for n in std::iter::once(&m.name).chain(&m.aliases) {
                if n.is_empty() || n.contains('/') {
                    return bad(format!("model name `{n}` must be non-empty and contain no `/`"));
                }
                if !names.insert(n.clone()) {
                    return bad(format!("model name `{n}` is used twice"));
                }
            }
            if m.versions.is_empty() == m.path.as_os_str().is_empty() {
                return bad(format!("model `{}`: give either `path` or `versions`", m.name));
            }
            if !m.versions.is_empty() && m.version.is_some() {
                return bad(format!(
                    "model `{}`: `version` names the single file; with `versions` each has its own",
                    m.name
                ));
            }
            let mut seen = std::collections::HashSet::new();
            for v in &m.versions {
                if v.version.is_empty() || v.version.contains('/') || !seen.insert(v.version.as_str()) {
                    return bad(format!(
                        "model `{}`: version `{}` must be non-empty, contain no `/` and be given once",
                        m.name, v.version
                    ));
                }
            }
            if !m.versions.is_empty() && m.versions.iter().all(|v| v.weight == 0) {
                return bad(format!("model `{}`: every version has weight 0; give one a share", m.name));
            }
            let b = self.batching.with(m.batching);
            if b.max_batch_size == 0 || b.max_queue == 0 {
                return bad(format!("model `{}`: max_batch_size and max_queue must be at least 1", m.name));
            }
            if b.max_queue_delay_us > 10_000_000 {
                return bad(format!("model `{}`: max_queue_delay_us is over 10 s", m.name));
            }
            if b.max_queue_wait_ms > 600_000 {
                return bad(format!("model `{}`: max_queue_wait_ms is over 10 minutes", m.name));
            }
        }
        let g = &self.generation;
        if g.max_sequences == 0 || g.max_waiting == 0 || g.default_max_tokens == 0 {
            return bad("generation: max_sequences, max_waiting and default_max_tokens must be at least 1".into());
        }
        if g.max_batch_tokens < g.max_sequences {
            return bad(format!(
                "generation: max_batch_tokens ({}) must be at least max_sequences ({}): every running sequence \
                 takes a token per step",
                g.max_batch_tokens, g.max_sequences
            ));
        }
        if wedge::KvType::parse(&g.kv).is_none() {
            return bad(format!("generation: kv `{}`: use f32 or f16", g.kv));
        }
        if self.breaker.enabled && (self.breaker.watchdog_ms == 0 || self.breaker.probe_after_ms == 0) {
            return bad("breaker: watchdog_ms and probe_after_ms must be at least 1".into());
        }
        if self.auth.quota.period_secs == 0 {
            return bad("auth.quota: period_secs must be at least 1".into());
        }
        if self.registry.load_timeout_secs == 0 {
            return bad("registry: load_timeout_secs must be at least 1".into());
        }
        let l = &self.limits;
        let t = &self.telemetry;
        if let Some(p) = &t.protocol
            && p != "grpc"
            && p != "http/protobuf"
        {
            return bad(format!("telemetry.protocol `{p}`: use grpc or http/protobuf"));
        }
        if let Some(r) = t.sample_ratio
            && !(0.0..=1.0).contains(&r)
        {
            return bad(format!("telemetry.sample_ratio {r}: must be between 0 and 1"));
        }
        if l.max_body_bytes == 0 || l.max_inputs == 0 || l.max_input_bytes == 0 || l.request_timeout_ms == 0 {
            return bad("limits: max_body_bytes, max_inputs, max_input_bytes and request_timeout_ms must be > 0".into());
        }
        if l.header_read_timeout_ms == 0 || l.tls_handshake_timeout_ms == 0 {
            return bad("limits: header_read_timeout_ms and tls_handshake_timeout_ms must be > 0".into());
        }
        if l.max_connections == 0 || l.max_concurrent_streams == 0 {
            return bad("limits: max_connections and max_concurrent_streams must be > 0".into());
        }
        if l.max_header_bytes < 8 << 10 {
            return bad(format!("limits: max_header_bytes {} is under 8192", l.max_header_bytes));
        }
        if l.rate_limit_burst == Some(0) {
            return bad("limits: rate_limit_burst must be at least 1".into());
        }
        for h in &self.auth.api_key_sha256 {
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad("auth: api_key_sha256 entries must be 64 hex digits".into());
            }
        }
        if self.auth.api_keys.iter().any(String::is_empty) {
            return bad("auth: an API key is empty".into());
        }
        Ok(())
    }
}

/// The models in a folder: every `.wedge` and `.gguf` file, named by its stem, with the
/// settings of a `<stem>.toml` beside it.
pub fn models_in(dir: &Path) -> Result<Vec<ModelConfig>, ServeError> {
    let err = |e: std::io::Error| ServeError::Config(format!("models_dir {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir).map_err(err)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>().map_err(err)?;
    files.retain(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("wedge" | "gguf")));
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_string) else {
            return Err(ServeError::Config(format!("{}: the file name is not UTF-8", path.display())));
        };
        let toml_path = path.with_extension("toml");
        let extra = match std::fs::read_to_string(&toml_path) {
            Ok(text) => toml::from_str::<DirModelToml>(&text)
                .map_err(|e| ServeError::Config(format!("{}: {e}", toml_path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => DirModelToml::default(),
            Err(e) => return Err(ServeError::Config(format!("{}: {e}", toml_path.display()))),
        };
        out.push(ModelConfig {
            name,
            path,
            version: extra.version,
            versions: Vec::new(),
            aliases: extra.aliases,
            batching: extra.batching,
            preload: Some(extra.preload.unwrap_or(false)),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        let c = Config::from_toml("", Path::new("/etc")).unwrap();
        assert_eq!(c.addr, "127.0.0.1:8080");
        assert_eq!(c.batching.max_batch_size, 32);
        c.validate().unwrap();
    }

    #[test]
    fn paths_are_relative_to_the_file_and_overrides_apply() {
        let c = Config::from_toml(
            r#"
            [[models]]
            name = "m"
            path = "m.wedge"
            batching = { max_batch_size = 1 }
            [cache]
            disk_path = "c.redb"
            "#,
            Path::new("/srv"),
        )
        .unwrap();
        assert_eq!(c.models[0].path, Path::new("/srv/m.wedge"));
        assert_eq!(c.cache.disk_path.as_deref(), Some(Path::new("/srv/c.redb")));
        let b = c.batching.with(c.models[0].batching);
        assert_eq!((b.max_batch_size, b.max_queue), (1, 1024));
    }

    #[test]
    fn the_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/wedge.toml");
        let c = Config::load(&path).unwrap();
        c.validate().unwrap();
        assert!(c.models[0].path.is_file(), "{}", c.models[0].path.display());
        assert_eq!(c.models[0].aliases, ["default"]);
    }

    #[test]
    fn the_kubernetes_configs_are_valid() {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
        for (file, device, batch) in [("base/wedge.toml", "auto", 32), ("overlays/gpu/wedge.toml", "gpu", 128)] {
            let mut c = Config::load(&deploy.join(file)).unwrap();
            assert_eq!(c.registry.models_dir.as_deref(), Some(Path::new("/models")), "{file}");
            // (the volume is mounted there in the pod; here any folder stands in)
            c.registry.models_dir = Some(std::env::temp_dir());
            c.validate().unwrap();
            assert_eq!((c.addr.as_str(), c.grpc_addr.as_str()), ("0.0.0.0:8080", "0.0.0.0:8081"), "{file}");
            assert_eq!((c.device.as_str(), c.batching.max_batch_size), (device, batch), "{file}");
            assert_eq!(c.cache.redis_url.as_deref(), Some("redis://wedge-redis:6379"), "{file}");
        }
    }

    #[test]
    fn mistakes_are_named() {
        let e = Config::from_toml("adr = 1", Path::new(".")).unwrap_err().to_string();
        assert!(e.contains("adr"), "{e}");
        let c = Config::from_toml("device = \"tpu\"", Path::new(".")).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("tpu"));
        let c = Config::from_toml("[auth]\napi_key_sha256 = [\"abc\"]", Path::new(".")).unwrap();
        assert!(c.validate().is_err());
        let c = Config::from_toml(
            "[[models]]\nname='a'\npath='x'\n[[models]]\nname='b'\npath='y'\naliases=['a']",
            Path::new("."),
        )
        .unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn versions_have_files_and_weights() {
        let c = Config::from_toml(
            r#"
            [[models]]
            name = "m"
            versions = [{ version = "2", path = "a.wedge", weight = 90 }, { version = "3", path = "b.wedge" }]
            "#,
            Path::new("/srv"),
        )
        .unwrap();
        c.validate().unwrap();
        let l = c.models[0].loadables();
        let got: Vec<_> = l.iter().map(|(m, w)| (m.version.as_deref(), m.path.to_str().unwrap(), *w)).collect();
        assert_eq!(got, [(Some("2"), "/srv/a.wedge", 90), (Some("3"), "/srv/b.wedge", 1)]);
        for bad in [
            "[[models]]\nname='m'\npath='x'\nversions=[{version='1', path='y'}]",
            "[[models]]\nname='m'",
            "[[models]]\nname='m'\nversions=[{version='1', path='y'}, {version='1', path='z'}]",
            "[[models]]\nname='m'\nversions=[{version='1', path='y', weight=0}]",
        ] {
            let c = Config::from_toml(bad, Path::new(".")).unwrap();
            assert!(c.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_models_dir_names_models_by_file_stem() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["b.gguf", "a.wedge", "notes.txt", "a.toml"] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        std::fs::write(dir.path().join("a.toml"), "version = \"7\"\naliases = [\"first\"]\npreload = true\n").unwrap();
        let c = Config::from_toml("[registry]\nmodels_dir = \"m\"", Path::new("/x")).unwrap();
        assert_eq!(c.registry.models_dir.as_deref(), Some(Path::new("/x/m")));
        let ms = models_in(dir.path()).unwrap();
        let names: Vec<_> = ms.iter().map(|m| (m.name.as_str(), m.version.as_deref(), m.preload)).collect();
        assert_eq!(names, [("a", Some("7"), Some(true)), ("b", None, Some(false))]);
        assert_eq!(ms[0].aliases, ["first"]);
        std::fs::write(dir.path().join("b.toml"), "nmae = 1").unwrap();
        assert!(models_in(dir.path()).unwrap_err().to_string().contains("b.toml"));
        assert!(models_in(&dir.path().join("missing")).unwrap_err().to_string().contains("missing"));
    }
}
