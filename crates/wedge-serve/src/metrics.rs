//! Prometheus metrics of the serving layer (the HTTP front adds its own to the same registry).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A model label: its name and version.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    /// Model name.
    pub model: String,
    /// Model version (`1` unless configured).
    pub version: String,
}

impl ModelLabel {
    /// The label of version `version` of `model`.
    pub fn new(model: &str, version: &str) -> ModelLabel {
        ModelLabel { model: model.to_string(), version: version.to_string() }
    }
}

/// Cache lookups by tier and result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabel {
    /// The tier's name: `memory`, `disk`.
    pub tier: &'static str,
    /// `hit` or `miss`.
    pub result: &'static str,
}

/// Cache tier operations by tier and kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheOpLabel {
    /// The tier's name.
    pub tier: &'static str,
    /// `get` or `put`.
    pub op: &'static str,
}

/// The device a model runs on.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabel {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// `cpu` or `gpu: <adapter>`.
    pub device: String,
}

/// Why a model's GPU→CPU breaker opened.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TripLabel {
    /// Model name.
    pub model: String,
    /// Model version.
    pub version: String,
    /// `error` (the device or a run failed, the device was lost), `panic`, `timeout` (the
    /// watchdog), `probe` (a half-open probe failed or hung).
    pub reason: &'static str,
}

/// Serving metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Inputs per model run.
    pub batch_size: Family<ModelLabel, Histogram>,
    /// Seconds per model run.
    pub batch_seconds: Family<ModelLabel, Histogram>,
    /// Inputs waiting for a run.
    pub queue_depth: Family<ModelLabel, Gauge>,
    /// Inputs embedded by the model (cache misses that ran).
    pub inferences: Family<ModelLabel, Counter>,
    /// Requests refused because the queue was full.
    pub shed: Family<ModelLabel, Counter>,
    /// Cache lookups.
    pub cache: Family<CacheLabel, Counter>,
    /// Seconds per cache tier operation.
    pub cache_seconds: Family<CacheOpLabel, Histogram>,
    /// A shared tier's failed (`get`, `put`), skipped (breaker open) and damaged values.
    pub cache_tier_errors: Family<CacheOpLabel, Counter>,
    /// 1 while a shared tier's breaker is open.
    pub cache_tier_open: Family<CacheOpLabel, Gauge>,
    /// Disk-tier values that failed their checksum and were dropped.
    pub cache_corrupt: Counter,
    /// Disk-tier writes dropped because the writer was behind.
    pub cache_write_dropped: Counter,
    /// Models replaced by a new load of their file.
    pub model_reloads: Family<ModelLabel, Counter>,
    /// Models unloaded (by request, or to make room).
    pub model_unloads: Family<ModelLabel, Counter>,
    /// Loads and reloads that failed (a reload that fails leaves the old model serving).
    pub model_load_failures: Family<ModelLabel, Counter>,
    /// Seconds to load and warm up each model.
    pub model_load_seconds: Family<ModelLabel, Gauge<f64, AtomicU64>>,
    /// 1 for the device each model runs on.
    pub device: Family<DeviceLabel, Gauge>,
    /// State of a GPU model's breaker: 0 closed (on the GPU), 1 open (on the CPU), 2
    /// half-open (on the CPU, a probe on the GPU).
    pub breaker_state: Family<ModelLabel, Gauge>,
    /// Times a GPU model's breaker opened, by reason.
    pub breaker_trips: Family<TripLabel, Counter>,
    /// Batches and steps a GPU model ran on the CPU because its breaker was open (or its GPU
    /// run faulted and was rerun).
    pub breaker_cpu_runs: Family<ModelLabel, Counter>,
    /// Language models: seconds from admission to the first generated token.
    pub llm_ttft: Family<ModelLabel, Histogram>,
    /// Language models: seconds between a sequence's consecutive tokens.
    pub llm_inter_token: Family<ModelLabel, Histogram>,
    /// Language models: prompt tokens of admitted requests.
    pub llm_prompt_tokens: Family<ModelLabel, Counter>,
    /// Language models: of those, tokens whose keys and values were reused (prefix cache).
    pub llm_cached_tokens: Family<ModelLabel, Counter>,
    /// Language models: requests that reused a cached prompt prefix.
    pub llm_prefix_hits: Family<ModelLabel, Counter>,
    /// Language models: tokens generated.
    pub llm_generated_tokens: Family<ModelLabel, Counter>,
    /// Language models: sequences in the running batch.
    pub llm_running: Family<ModelLabel, Gauge>,
    /// Language models: requests waiting for a sequence.
    pub llm_waiting: Family<ModelLabel, Gauge>,
    /// Language models: bytes of key/value cache the running sequences fill.
    pub llm_kv_bytes_used: Family<ModelLabel, Gauge>,
    /// Language models: bytes of key/value cache allocated.
    pub llm_kv_bytes_capacity: Family<ModelLabel, Gauge>,
    /// Language models: requests dropped because their client left or timed out.
    pub llm_cancelled: Family<ModelLabel, Counter>,
    /// Language models: tokens per batched step.
    pub llm_step_tokens: Family<ModelLabel, Histogram>,
    /// Language models: sequences per batched step.
    pub llm_step_sequences: Family<ModelLabel, Histogram>,
    /// Completions answered from the cache (memory or disk).
    pub llm_cache_hits: Family<ModelLabel, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them under `wedge_`.
    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            batch_size: Family::new_with_constructor(|| Histogram::new(exponential_buckets(1.0, 2.0, 10))),
            batch_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16))),
            queue_depth: Family::default(),
            inferences: Family::default(),
            shed: Family::default(),
            model_reloads: Family::default(),
            model_unloads: Family::default(),
            model_load_failures: Family::default(),
            cache: Family::default(),
            cache_tier_errors: Family::default(),
            cache_tier_open: Family::default(),
            cache_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_01, 4.0, 10))),
            cache_corrupt: Counter::default(),
            cache_write_dropped: Counter::default(),
            model_load_seconds: Family::default(),
            device: Family::default(),
            breaker_state: Family::default(),
            breaker_trips: Family::default(),
            breaker_cpu_runs: Family::default(),
            llm_ttft: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16))),
            llm_inter_token: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16))),
            llm_prompt_tokens: Family::default(),
            llm_cached_tokens: Family::default(),
            llm_prefix_hits: Family::default(),
            llm_generated_tokens: Family::default(),
            llm_running: Family::default(),
            llm_waiting: Family::default(),
            llm_kv_bytes_used: Family::default(),
            llm_kv_bytes_capacity: Family::default(),
            llm_cancelled: Family::default(),
            llm_step_tokens: Family::new_with_constructor(|| Histogram::new(exponential_buckets(1.0, 2.0, 12))),
            llm_step_sequences: Family::new_with_constructor(|| Histogram::new(exponential_buckets(1.0, 2.0, 8))),
            llm_cache_hits: Family::default(),
        };
        registry.register("wedge_batch_size", "Inputs per model run", m.batch_size.clone());
        registry.register("wedge_batch_seconds", "Seconds per model run", m.batch_seconds.clone());
        registry.register("wedge_queue_depth", "Inputs waiting for a model run", m.queue_depth.clone());
        registry.register("wedge_inferences", "Inputs embedded by a model", m.inferences.clone());
        registry.register(
            "wedge_shed_requests",
            "Requests refused with 503 because the queue was full",
            m.shed.clone(),
        );
        registry.register("wedge_cache_lookups", "Prediction cache lookups by tier and result", m.cache.clone());
        registry.register("wedge_cache_tier_seconds", "Seconds per cache tier get or put", m.cache_seconds.clone());
        registry.register(
            "wedge_cache_tier_errors",
            "Shared cache tier calls that failed or timed out, were skipped by its breaker, or held damaged values",
            m.cache_tier_errors.clone(),
        );
        registry.register(
            "wedge_cache_tier_open",
            "1 while a shared cache tier's breaker is open",
            m.cache_tier_open.clone(),
        );
        registry.register(
            "wedge_cache_corrupt",
            "Disk cache values dropped for a bad checksum",
            m.cache_corrupt.clone(),
        );
        registry.register(
            "wedge_cache_write_dropped",
            "Disk cache writes dropped because the writer was behind",
            m.cache_write_dropped.clone(),
        );
        registry.register(
            "wedge_model_load_seconds",
            "Seconds to load and warm up a model",
            m.model_load_seconds.clone(),
        );
        registry.register("wedge_device", "1 for the device a model runs on", m.device.clone());
        registry.register(
            "wedge_breaker_state",
            "GPU to CPU breaker of a model: 0 closed (GPU), 1 open (CPU), 2 half-open (probing the GPU)",
            m.breaker_state.clone(),
        );
        registry.register(
            "wedge_breaker_trips",
            "Times a model's GPU breaker opened, by reason",
            m.breaker_trips.clone(),
        );
        registry.register(
            "wedge_breaker_cpu_runs",
            "Batches and steps of a GPU model run on the CPU while its breaker was open",
            m.breaker_cpu_runs.clone(),
        );
        registry.register(
            "wedge_model_reloads",
            "Models replaced by a new load of their file",
            m.model_reloads.clone(),
        );
        registry.register("wedge_model_unloads", "Models unloaded by request or to make room", m.model_unloads.clone());
        registry.register(
            "wedge_model_load_failures",
            "Model loads that failed (a failed reload leaves the old model serving)",
            m.model_load_failures.clone(),
        );
        let r = registry;
        r.register("wedge_llm_time_to_first_token_seconds", "Admission to first token", m.llm_ttft.clone());
        r.register("wedge_llm_inter_token_seconds", "Seconds between a sequence's tokens", m.llm_inter_token.clone());
        r.register("wedge_llm_prompt_tokens", "Prompt tokens of admitted requests", m.llm_prompt_tokens.clone());
        r.register(
            "wedge_llm_cached_prompt_tokens",
            "Prompt tokens reused from the cache",
            m.llm_cached_tokens.clone(),
        );
        r.register("wedge_llm_prefix_cache_hits", "Requests that reused a prompt prefix", m.llm_prefix_hits.clone());
        r.register("wedge_llm_generated_tokens", "Tokens generated", m.llm_generated_tokens.clone());
        r.register("wedge_llm_running_sequences", "Sequences in the running batch", m.llm_running.clone());
        r.register("wedge_llm_waiting_requests", "Requests waiting for a sequence", m.llm_waiting.clone());
        r.register("wedge_llm_kv_bytes_used", "Key/value cache bytes in use", m.llm_kv_bytes_used.clone());
        r.register("wedge_llm_kv_bytes_capacity", "Key/value cache bytes allocated", m.llm_kv_bytes_capacity.clone());
        r.register("wedge_llm_cancelled_requests", "Requests whose client left", m.llm_cancelled.clone());
        r.register("wedge_llm_step_tokens", "Tokens per batched step", m.llm_step_tokens.clone());
        r.register("wedge_llm_step_sequences", "Sequences per batched step", m.llm_step_sequences.clone());
        r.register("wedge_llm_completion_cache_hits", "Completions served from the cache", m.llm_cache_hits.clone());
        m
    }
}
