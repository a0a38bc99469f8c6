//! Prometheus metrics of the serving layer (the HTTP front adds its own to the same registry).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A model label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    /// Model name.
    pub model: String,
}

/// Cache lookups by tier and result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabel {
    /// `memory` or `disk`.
    pub tier: &'static str,
    /// `hit` or `miss`.
    pub result: &'static str,
}

/// The device a model runs on.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabel {
    /// Model name.
    pub model: String,
    /// `cpu` or `gpu: <adapter>`.
    pub device: String,
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
    /// Disk-tier values that failed their checksum and were dropped.
    pub cache_corrupt: Counter,
    /// Disk-tier writes dropped because the writer was behind.
    pub cache_write_dropped: Counter,
    /// Seconds to load and warm up each model.
    pub model_load_seconds: Family<ModelLabel, Gauge<f64, AtomicU64>>,
    /// 1 for the device each model runs on.
    pub device: Family<DeviceLabel, Gauge>,
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
            cache: Family::default(),
            cache_corrupt: Counter::default(),
            cache_write_dropped: Counter::default(),
            model_load_seconds: Family::default(),
            device: Family::default(),
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
        m
    }
}
