//! wedge-serve: serving logic without HTTP. A [`Service`] holds the served models, one dynamic
//! [`batcher`] per model, the two-tier prediction [`cache`], API keys and rate limits
//! ([`auth`]), and Prometheus [`metrics`]. The HTTP front (`wedge-server`) and applications that
//! embed wedge both drive it through [`Service::embed`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), wedge_serve::ServeError> {
//! let mut registry = prometheus_client::registry::Registry::default();
//! let mut config = wedge_serve::Config::default();
//! config.models.push(wedge_serve::ModelConfig {
//!     name: "minilm".into(),
//!     path: "models/all-MiniLM-L6-v2.wedge".into(),
//!     version: None,
//!     aliases: vec![],
//!     batching: None,
//! });
//! let service = wedge_serve::Service::new(config, wedge::Device::cpu(), &mut registry)?;
//! service.load_models()?;
//! let out = service.embed("minilm", &["hello".to_string()], wedge_serve::CachePolicy::Use).await?;
//! assert_eq!(out.vectors.len(), 1);
//! # Ok(()) }
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use wedge::{Device, Embedder, Tokens};

pub mod auth;
pub mod batcher;
pub mod cache;
pub mod config;
mod error;
pub mod metrics;

pub use auth::{ApiKeys, Caller, RateLimits};
pub use batcher::{Batcher, Vector};
pub use config::{BatchingConfig, CacheConfig, Config, LimitsConfig, ModelConfig};
pub use error::ServeError;
pub use metrics::Metrics;

use cache::{DiskCache, MemoryCache};
use metrics::{CacheLabel, DeviceLabel, ModelLabel};

/// One served model.
#[derive(Debug)]
pub struct ServedModel {
    /// The name clients use.
    pub name: String,
    /// Other names.
    pub aliases: Vec<String>,
    /// The version string.
    pub version: String,
    /// The package file.
    pub path: PathBuf,
    /// The package digest (hex SHA-256 of its header); part of every cache key.
    pub digest: String,
    /// Embedding size.
    pub dim: usize,
    /// Longest input in tokens.
    pub max_seq_length: usize,
    /// Where it runs.
    pub device: String,
    /// Seconds it took to load and warm up.
    pub load_seconds: f64,
    embedder: Arc<Embedder>,
    batcher: Batcher,
}

impl ServedModel {
    /// Inputs waiting for a run.
    pub fn queued(&self) -> usize {
        self.batcher.queued()
    }
}

#[derive(Debug)]
struct Loaded {
    models: Vec<Arc<ServedModel>>,
    by_name: HashMap<String, usize>,
}

/// Whether a request may be answered from the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CachePolicy {
    /// Serve from the cache when possible; store what is computed.
    Use,
    /// Compute afresh (`Cache-Control: no-cache`), then store the fresh result.
    Bypass,
}

/// The answer to [`Service::embed`].
#[derive(Debug)]
pub struct Embeddings {
    /// The model that answered.
    pub model: Arc<ServedModel>,
    /// One vector per input, in input order.
    pub vectors: Vec<Vector>,
    /// Tokens in all inputs (after truncation), for `usage.prompt_tokens`.
    pub prompt_tokens: usize,
    /// Whether every vector came from the cache.
    pub cache_hit: bool,
}

/// The serving layer: models, batchers, cache, keys, limits, metrics.
pub struct Service {
    config: Config,
    device: Device,
    loaded: OnceLock<Loaded>,
    memory: Option<MemoryCache>,
    disk: Option<Arc<DiskCache>>,
    keys: ApiKeys,
    rates: RateLimits,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("config", &self.config).finish_non_exhaustive()
    }
}

/// How a cached value was found.
const FROM_MEMORY: u8 = 0;
const FROM_DISK: u8 = 1;
const COMPUTED: u8 = 2;

impl Service {
    /// Checks the configuration, opens the cache and registers metrics; models load in
    /// [`Service::load_models`], so a server can answer liveness probes meanwhile.
    pub fn new(config: Config, device: Device, registry: &mut Registry) -> Result<Service, ServeError> {
        config.validate()?;
        if config.models.is_empty() {
            return Err(ServeError::Config("no models to serve".into()));
        }
        let metrics = Arc::new(Metrics::new(registry));
        let ttl = Duration::from_secs(config.cache.ttl_secs);
        let (memory, disk) = if config.cache.enabled {
            let disk = match &config.cache.disk_path {
                Some(p) => Some(Arc::new(DiskCache::open(p, config.cache.disk_bytes, ttl, metrics.clone())?)),
                None => None,
            };
            (Some(cache::memory(config.cache.memory_bytes, ttl)), disk)
        } else {
            (None, None)
        };
        Ok(Service {
            keys: ApiKeys::new(&config.auth)?,
            rates: RateLimits::new(&config.limits),
            config,
            device,
            loaded: OnceLock::new(),
            memory,
            disk,
            metrics,
        })
    }

    /// Loads every model, warms it up (compiles its kernels, runs one input) and starts its
    /// batcher; the service is ready afterwards. Blocking: call it off the async runtime.
    pub fn load_models(&self) -> Result<(), ServeError> {
        if self.loaded.get().is_some() {
            return Ok(());
        }
        let mut models = Vec::new();
        let mut by_name = HashMap::new();
        for (i, mc) in self.config.models.iter().enumerate() {
            let t0 = Instant::now();
            let bad = |what: String| ServeError::Config(format!("model `{}` ({}): {what}", mc.name, mc.path.display()));
            let bytes = std::fs::read(&mc.path).map_err(|e| bad(e.to_string()))?;
            let embedder = Arc::new(Embedder::from_bytes(&bytes, &self.device).map_err(|e| bad(e.to_string()))?);
            drop(bytes);
            embedder.embed(&["wedge warm-up"]).map_err(|e| bad(format!("warm-up run failed: {e}")))?;
            let load_seconds = t0.elapsed().as_secs_f64();
            let digest = embedder.digest().unwrap_or_default().to_string();
            let settings = self.config.batching.with(mc.batching);
            let e = embedder.clone();
            let run: batcher::RunBatch =
                Box::new(move |b: &[Tokens]| e.embed_batched(b, b.len()).map_err(|e| e.to_string()));
            let device = self.device.describe();
            let label = ModelLabel { model: mc.name.clone() };
            self.metrics.model_load_seconds.get_or_create(&label).set(load_seconds);
            self.metrics.device.get_or_create(&DeviceLabel { model: mc.name.clone(), device: device.clone() }).set(1);
            tracing::info!(model = %mc.name, %device, digest = %digest, load_seconds, "model ready");
            let model = ServedModel {
                name: mc.name.clone(),
                aliases: mc.aliases.clone(),
                version: mc.version.clone().unwrap_or_else(|| "1".into()),
                path: mc.path.clone(),
                dim: embedder.dim(),
                max_seq_length: embedder.max_seq_length(),
                digest,
                device,
                load_seconds,
                batcher: Batcher::start(&mc.name, settings, self.metrics.clone(), run),
                embedder,
            };
            for n in std::iter::once(&mc.name).chain(&mc.aliases) {
                by_name.insert(n.clone(), i);
            }
            models.push(Arc::new(model));
        }
        let _ = self.loaded.set(Loaded { models, by_name });
        Ok(())
    }

    /// Whether every model is loaded and warmed up.
    pub fn ready(&self) -> bool {
        self.loaded.get().is_some()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The serving metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The served models (empty until loaded).
    pub fn models(&self) -> &[Arc<ServedModel>] {
        self.loaded.get().map(|l| l.models.as_slice()).unwrap_or(&[])
    }

    /// A model by name or alias.
    pub fn model(&self, name: &str) -> Result<Arc<ServedModel>, ServeError> {
        let Some(l) = self.loaded.get() else {
            return Err(if self.config.models.iter().any(|m| m.name == name || m.aliases.iter().any(|a| a == name)) {
                ServeError::NotReady
            } else {
                ServeError::UnknownModel(name.to_string())
            });
        };
        l.by_name.get(name).map(|&i| l.models[i].clone()).ok_or_else(|| ServeError::UnknownModel(name.to_string()))
    }

    /// Checks a request's API key (`None`: none given) and its caller's rate.
    pub fn admit(&self, api_key: Option<&str>, client: &str) -> Result<Caller, ServeError> {
        let caller = self.keys.check(api_key, client)?;
        self.rates.check(&caller)?;
        Ok(caller)
    }

    /// Embeds `inputs` with the model named `model`, through the cache and its batcher.
    pub async fn embed(&self, model: &str, inputs: &[String], policy: CachePolicy) -> Result<Embeddings, ServeError> {
        self.embed_with(self.model(model)?, inputs, policy).await
    }

    /// [`Service::embed`] with a model already looked up by [`Service::model`].
    pub async fn embed_with(
        &self,
        model: Arc<ServedModel>,
        inputs: &[String],
        policy: CachePolicy,
    ) -> Result<Embeddings, ServeError> {
        let limits = &self.config.limits;
        if inputs.is_empty() {
            return Err(ServeError::BadInput("`input` is empty".into()));
        }
        if inputs.len() > limits.max_inputs {
            return Err(ServeError::BadInput(format!(
                "{} inputs in one request; at most {}",
                inputs.len(),
                limits.max_inputs
            )));
        }
        if let Some((i, t)) = inputs.iter().enumerate().find(|(_, t)| t.len() > limits.max_input_bytes) {
            return Err(ServeError::BadInput(format!(
                "input {i} is {} bytes; at most {}",
                t.len(),
                limits.max_input_bytes
            )));
        }
        let tokens = tokenize(&model, inputs).await?;
        let prompt_tokens = tokens.iter().map(|t| t.ids.len()).sum();
        let tiers: Vec<AtomicU8> = (0..tokens.len()).map(|_| AtomicU8::new(FROM_MEMORY)).collect();
        let jobs = tokens.into_iter().zip(&tiers).map(|(t, tier)| self.embed_one(&model, t, policy, tier));
        let vectors = futures_util::future::try_join_all(jobs).await?;
        let cache_hit = self.memory.is_some()
            && policy == CachePolicy::Use
            && tiers.iter().all(|t| t.load(Ordering::Relaxed) != COMPUTED);
        Ok(Embeddings { model, vectors, prompt_tokens, cache_hit })
    }

    async fn embed_one(
        &self,
        model: &ServedModel,
        tokens: Tokens,
        policy: CachePolicy,
        tier: &AtomicU8,
    ) -> Result<Vector, ServeError> {
        let Some(memory) = &self.memory else {
            tier.store(COMPUTED, Ordering::Relaxed);
            return run(model, tokens).await;
        };
        // The key: model digest, output options (none change an embedding yet), token ids.
        let mut canonical = tokens.ids.clone();
        canonical.push(u32::MAX); // separates ids from type ids
        canonical.extend(&tokens.type_ids);
        let key = cache::key(&model.digest, "embedding", &canonical);
        let count = |tier: &'static str, result: &'static str| {
            self.metrics.cache.get_or_create(&CacheLabel { tier, result }).inc();
        };
        if policy == CachePolicy::Bypass {
            tier.store(COMPUTED, Ordering::Relaxed);
            let v = run(model, tokens).await?;
            memory.insert(key, v.clone()).await;
            if let Some(d) = &self.disk {
                d.put(key, v.clone());
            }
            return Ok(v);
        }
        // Single flight: concurrent misses of one key wait for the first one's result.
        let entry = memory
            .entry(key)
            .or_try_insert_with(async {
                if let Some(d) = &self.disk {
                    let d = d.clone();
                    let found = tokio::task::spawn_blocking(move || d.get(&key)).await.ok().flatten();
                    if let Some(v) = found {
                        count("disk", "hit");
                        tier.store(FROM_DISK, Ordering::Relaxed);
                        return Ok(v);
                    }
                    count("disk", "miss");
                }
                tier.store(COMPUTED, Ordering::Relaxed);
                let v = run(model, tokens).await?;
                if let Some(d) = &self.disk {
                    d.put(key, v.clone());
                }
                Ok::<_, ServeError>(v)
            })
            .await
            .map_err(|e| (*e).clone())?;
        count("memory", if entry.is_fresh() { "miss" } else { "hit" });
        Ok(entry.into_value())
    }

    /// Finishes queued inputs, stops the batchers and commits the disk cache.
    pub fn shutdown(&self) {
        for m in self.models() {
            m.batcher.shutdown();
        }
        if let Some(d) = &self.disk {
            d.close();
        }
    }

    /// Waits until the disk cache has committed every write so far.
    pub fn flush_cache(&self) {
        if let Some(d) = &self.disk {
            d.flush();
        }
    }
}

async fn run(model: &ServedModel, tokens: Tokens) -> Result<Vector, ServeError> {
    let rx = model.batcher.submit(tokens)?;
    rx.await.map_err(|_| ServeError::ShuttingDown)?
}

/// Tokenizes on the runtime for small requests, on a blocking thread for big ones.
async fn tokenize(model: &Arc<ServedModel>, inputs: &[String]) -> Result<Vec<Tokens>, ServeError> {
    let one = |e: &Embedder, t: &str| e.tokenize(t).map_err(|e| ServeError::BadInput(format!("tokenizer: {e}")));
    let total: usize = inputs.iter().map(String::len).sum();
    if total <= 16 << 10 {
        return inputs.iter().map(|t| one(&model.embedder, t)).collect();
    }
    let (e, owned) = (model.embedder.clone(), inputs.to_vec());
    tokio::task::spawn_blocking(move || owned.iter().map(|t| one(&e, t)).collect())
        .await
        .map_err(|e| ServeError::Inference(format!("tokenizer thread: {e}")))?
}
