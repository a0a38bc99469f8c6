//! wedge-serve: serving logic without HTTP. A [`Service`] holds the served models (an embedding
//! model with its dynamic [`batcher`], or a language model with its continuous-batching
//! [`scheduler`]), the two-tier prediction [`cache`] (embeddings, and completions of reproducible
//! requests), API keys and rate limits ([`auth`]), and Prometheus [`metrics`]. The HTTP front
//! (`wedge-server`) and applications that embed wedge both drive it through [`Service::embed`]
//! and [`Service::generate`].
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
//!     preload: None,
//!     versions: vec![],
//! });
//! let service = wedge_serve::Service::new(config, wedge::Device::cpu(), &mut registry)?;
//! service.load_models()?;
//! let out = service.embed("minilm", &["hello".to_string()], wedge_serve::CachePolicy::Use).await?;
//! assert_eq!(out.vectors.len(), 1);
//! # Ok(()) }
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used))]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::registry::Registry;
use tracing::Instrument;
use wedge::{Device, Embedder, GenerateParams, Tokens};

pub mod auth;
pub mod batcher;
pub mod breaker;
pub mod cache;
mod completions;
pub mod config;
mod error;
pub mod loader;
pub mod metrics;
mod model;
pub mod registry;
pub mod scheduler;
pub mod watch;
mod worker;

pub use auth::{Caller, Credentials, QuotaLeft, Quotas, RateLimits};
pub use batcher::{Batcher, Vector};
pub use breaker::{BreakerState, DeviceKind};
pub use completions::{Completion, Generation};
pub use config::{
    BatchingConfig, BreakerConfig, CacheConfig, CompressionConfig, Config, GenerationConfig, LimitsConfig, ModelConfig,
    TelemetryConfig,
};
pub use error::ServeError;
pub use loader::Loader;
pub use metrics::Metrics;
pub use model::{EmbeddingModel, FileStamp, LanguageServing, ModelFile, ModelKind, ServedModel};
pub use registry::ModelRegistry;
pub use scheduler::{GenEvent, GenReceiver, Scheduler, SchedulerLimits, Usage};
pub use watch::ModelWatcher;

use cache::{Cache, Cached, Origin};

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
    /// Where the vectors that were computed ran (the CPU if any did); `None` when all came
    /// from the cache.
    pub device: Option<DeviceKind>,
}

/// The serving layer: the configured models (loaded by a [`Loader`] into a
/// [`ModelRegistry`]), the prediction [`Cache`], keys, limits, metrics.
pub struct Service {
    config: Config,
    models: Arc<ModelRegistry>,
    /// Whether every model to preload is loaded.
    loaded: AtomicBool,
    cache: Option<Arc<Cache>>,
    keys: Credentials,
    rates: RateLimits,
    quotas: Arc<Quotas>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Service {
    /// Checks the configuration, opens the cache and registers metrics; models load in
    /// [`Service::load_models`], so a server can answer liveness probes meanwhile.
    pub fn new(config: Config, device: Device, registry: &mut Registry) -> Result<Service, ServeError> {
        config.validate()?;
        let models = config.all_models()?;
        if models.is_empty() {
            return Err(ServeError::Config("no models to serve".into()));
        }
        let metrics = Arc::new(Metrics::new(registry));
        let cache = Cache::open(&config.cache, metrics.clone())?.map(Arc::new);
        let loader = Loader::new(device, config.batching, config.generation.clone(), config.breaker, metrics.clone());
        Ok(Service {
            keys: Credentials::new(&config.auth)?,
            rates: RateLimits::new(&config.limits),
            quotas: Arc::new(Quotas::new(&config.auth.quota)),
            models: Arc::new(ModelRegistry::new(models, loader, &config.registry, metrics.clone())),
            loaded: AtomicBool::new(false),
            config,
            cache,
            metrics,
        })
    }

    /// Loads every model to preload (all of `[[models]]` unless they say `preload = false`),
    /// warms it up (compiles its kernels, runs one input) and starts its batcher or scheduler;
    /// the service is ready afterwards. Other models load on their first request. Blocking:
    /// call it off the async runtime.
    pub fn load_models(&self) -> Result<(), ServeError> {
        if self.ready() {
            return Ok(());
        }
        self.models.preload()?;
        self.loaded.store(true, Ordering::Release);
        Ok(())
    }

    /// Reloads models whose files change, adds model files that appear in
    /// `registry.models_dir`, and takes the `[[models]]` (versions, weights) of `config_file`
    /// when it changes, until the returned watcher is dropped.
    pub fn watch_files(&self, config_file: Option<&std::path::Path>) -> Result<ModelWatcher, ServeError> {
        ModelWatcher::start(
            self.models.clone(),
            self.config.registry.models_dir.clone(),
            config_file.map(std::path::Path::to_path_buf),
        )
    }

    /// Whether every model is loaded and warmed up.
    pub fn ready(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The serving metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The models loaded now.
    pub fn models(&self) -> Vec<Arc<ServedModel>> {
        self.models.loaded()
    }

    /// The model registry: every model, loaded or not, its state, reloads and unloads.
    pub fn registry(&self) -> &Arc<ModelRegistry> {
        &self.models
    }

    /// A model by name or alias, loaded first if it is not (see [`ModelRegistry::get`]); of
    /// a model with several versions, a random one by their weights.
    pub async fn model(&self, name: &str) -> Result<Arc<ServedModel>, ServeError> {
        self.models.get(name).await
    }

    /// A model by name or alias for a caller that may use it (else 403, before anything
    /// loads): `version` when pinned, else the version that `user` (when given, else the
    /// caller's id) is routed to ([`registry::Entry::route`]).
    pub async fn model_for(
        &self,
        name: &str,
        caller: &Caller,
        user: Option<&str>,
        version: Option<&str>,
    ) -> Result<Arc<ServedModel>, ServeError> {
        let entry = self.models.entry(name).ok_or_else(|| ServeError::UnknownModel(name.to_string()))?;
        self.authorize(caller, &entry.name)?;
        self.models.get_routed(&entry.name, Some(user.unwrap_or(caller.id())), version).await
    }

    /// The first model (in configuration order) of a task that the caller may use, for
    /// requests that name none: `language` picks among language models, else among embedding
    /// models. `user` routes as in [`Service::model_for`].
    pub async fn default_model(
        &self,
        language: bool,
        caller: &Caller,
        user: Option<&str>,
    ) -> Result<Arc<ServedModel>, ServeError> {
        let entry = self
            .models
            .entries()
            .into_iter()
            .filter(|e| caller.may_use(&e.name))
            .find(|e| e.versions.first().is_some_and(|(s, _)| s.file.is_language() == language))
            .ok_or_else(|| {
                ServeError::BadInput(if language {
                    "no language model is served here for this caller".into()
                } else {
                    "no embedding model is served here for this caller".into()
                })
            })?;
        self.models.get_routed(&entry.name, Some(user.unwrap_or(caller.id())), None).await
    }

    /// Whether `caller` may use the model named `name` (a name, not an alias): 403 if not.
    pub fn authorize(&self, caller: &Caller, name: &str) -> Result<(), ServeError> {
        if caller.may_use(name) {
            Ok(())
        } else {
            Err(ServeError::Forbidden(format!("this key or token may not use model `{name}`")))
        }
    }

    /// Checks a request's credentials (an API key or a JWT; `None`: none given), its
    /// caller's rate and quota, and counts the request in the quota.
    pub fn admit(&self, credentials: Option<&str>, client: &str) -> Result<Caller, ServeError> {
        let caller = self.keys.check(credentials, client)?;
        self.rates.check(&caller)?;
        self.quotas.admit(&caller)?;
        Ok(caller)
    }

    /// Who presented `credentials`, without counting a request against its rate or quota
    /// (for `/metrics`, which a scraper reads often).
    pub fn identify(&self, credentials: Option<&str>, client: &str) -> Result<Caller, ServeError> {
        self.keys.check(credentials, client)
    }

    /// Whether requests need credentials (API keys or JWT settings are configured).
    pub fn credentials_required(&self) -> bool {
        self.keys.required()
    }

    /// Counts `tokens` used by `caller` against its quota.
    pub fn charge(&self, caller: &Caller, tokens: usize) {
        self.quotas.charge(caller, tokens as u64);
    }

    /// What `caller` has left of its quota.
    pub fn quota_left(&self, caller: &Caller) -> QuotaLeft {
        self.quotas.left(caller)
    }

    /// Embeds `inputs` with the model named `model`, through the cache and its batcher.
    pub async fn embed(&self, model: &str, inputs: &[String], policy: CachePolicy) -> Result<Embeddings, ServeError> {
        self.embed_with(self.model(model).await?, inputs, policy).await
    }

    /// [`Service::embed`] with a model already looked up by [`Service::model`].
    pub async fn embed_with(
        &self,
        model: Arc<ServedModel>,
        inputs: &[String],
        policy: CachePolicy,
    ) -> Result<Embeddings, ServeError> {
        model.embedding()?;
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
        // more inputs than the model's queue holds could never be admitted: a 400 that says
        // so, not a 503 that retrying cannot fix
        let max_queue = model.embedding()?.batcher.max_queue();
        if inputs.len() > max_queue {
            return Err(ServeError::BadInput(format!(
                "{} inputs in one request; model `{}` queues at most {max_queue} (batching.max_queue)",
                inputs.len(),
                model.name
            )));
        }
        if let Some((i, t)) = inputs.iter().enumerate().find(|(_, t)| t.len() > limits.max_input_bytes) {
            return Err(ServeError::BadInput(format!(
                "input {i} is {} bytes; at most {}",
                t.len(),
                limits.max_input_bytes
            )));
        }
        let tokens =
            tokenize(&model, inputs).instrument(tracing::debug_span!("tokenize", inputs = inputs.len() as i64)).await?;
        let prompt_tokens = tokens.iter().map(|t| t.ids.len()).sum();
        let admission = Admission::default();
        let jobs = tokens.into_iter().map(|t| self.embed_one(&model, t, policy, &admission));
        let found = futures_util::future::try_join_all(jobs).await?;
        let cache_hit = self.cache.is_some() && found.iter().all(|(_, origin, _)| origin.is_hit());
        let device = found.iter().filter_map(|(_, _, d)| *d).min_by_key(|d| *d != DeviceKind::Cpu);
        let vectors = found.into_iter().map(|(v, _, _)| v).collect();
        Ok(Embeddings { model, vectors, prompt_tokens, cache_hit, device })
    }

    /// One input's embedding, through the cache (keyed by the model's digest, the output
    /// options, none of which change an embedding yet, and the token ids), with where it came
    /// from and, when this request computed it, the device that did.
    async fn embed_one(
        &self,
        model: &ServedModel,
        tokens: Tokens,
        policy: CachePolicy,
        admission: &Admission,
    ) -> Result<(Vector, Origin, Option<DeviceKind>), ServeError> {
        let Some(cache) = &self.cache else {
            let (v, device) = run(model.embedding()?, tokens, admission).await?;
            return Ok((v, Origin::Computed, Some(device)));
        };
        let mut canonical = tokens.ids.clone();
        canonical.push(u32::MAX); // separates ids from type ids
        canonical.extend(&tokens.type_ids);
        let key = cache::key(&model.digest, "embedding", &canonical);
        let ran = std::sync::Mutex::new(None);
        let compute = async {
            let (v, device) = run(model.embedding()?, tokens, admission).await?;
            *ran.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(device);
            Ok::<_, ServeError>(Cached::Vector(v))
        };
        let (value, origin) = match policy {
            CachePolicy::Bypass => {
                let v = compute.await?;
                cache.put(key, v.clone()).await;
                (v, Origin::Computed)
            }
            CachePolicy::Use => cache.get_or_compute(key, compute).await?,
        };
        let device = ran.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        match value {
            Cached::Vector(v) => Ok((v, origin, device)),
            // (keys of embeddings and completions differ in their options, so this is a bug)
            Cached::Completion(_) => {
                Err(ServeError::Inference("the cache holds a completion under an embedding's key".into()))
            }
        }
    }

    /// Starts generating `prompt` (token ids, BOS included when the model wants one) with the
    /// language model `model`: the receiver gets each token as it is sampled, then the end.
    /// Dropping the receiver cancels the request. A reproducible request (greedy, or seeded)
    /// that repeats is replayed from the completion cache unless `policy` bypasses it; a
    /// computed one is stored when it is done. The tokens are counted in `caller`'s quota
    /// (prompt and completion; what was generated when a request ends early).
    pub async fn generate(
        &self,
        caller: &Caller,
        model: &ServedModel,
        prompt: Vec<u32>,
        params: GenerateParams,
        policy: CachePolicy,
    ) -> Result<Generation, ServeError> {
        let scheduler = &model.language()?.scheduler;
        let options = completions::cache_options(&params, &self.config.generation);
        let account = completions::Account::new(self.quotas.clone(), caller.clone(), prompt.len());
        let (Some(cache), Some(options)) = (&self.cache, options) else {
            return Ok(Generation::live(scheduler.submit(prompt, params)?, None, account));
        };
        let key = cache::key(&model.digest, &options, &prompt);
        if policy == CachePolicy::Use
            && let Some((Cached::Completion(c), _)) = cache.get(&key).await
        {
            self.metrics.llm_cache_hits.get_or_create(&model.label()).inc();
            return Ok(Generation::replay(&c, account));
        }
        let rx = scheduler.submit(prompt, params)?;
        Ok(Generation::live(rx, Some((key, cache.clone())), account))
    }

    /// Finishes queued inputs, stops the batchers and commits the disk cache.
    pub fn shutdown(&self) {
        self.models.shutdown();
        if let Some(c) = &self.cache {
            c.close();
        }
    }

    /// Waits until every cache tier has stored every write so far.
    pub fn flush_cache(&self) {
        if let Some(c) = &self.cache {
            c.flush();
        }
    }
}

/// A request's admission to its model's queue ([`Batcher::admit`]), decided once, at the first
/// of its inputs that must be computed (inputs the cache answers never queue), so that a
/// request is admitted or refused whole.
#[derive(Debug, Default)]
struct Admission(std::sync::OnceLock<Result<(), ServeError>>);

async fn run(model: &EmbeddingModel, tokens: Tokens, admission: &Admission) -> Result<batcher::Embedded, ServeError> {
    admission.0.get_or_init(|| model.batcher.admit()).clone()?;
    let rx = model.batcher.submit(tokens)?;
    rx.await.map_err(|_| ServeError::ShuttingDown)?
}

/// Tokenizes on the runtime for small requests, on a blocking thread for big ones.
async fn tokenize(model: &Arc<ServedModel>, inputs: &[String]) -> Result<Vec<Tokens>, ServeError> {
    let one = |e: &Embedder, t: &str| e.tokenize(t).map_err(|e| ServeError::BadInput(format!("tokenizer: {e}")));
    let embedder = &model.embedding()?.embedder;
    let total: usize = inputs.iter().map(String::len).sum();
    if total <= 16 << 10 {
        return inputs.iter().map(|t| one(embedder, t)).collect();
    }
    let (e, owned) = (embedder.clone(), inputs.to_vec());
    tokio::task::spawn_blocking(move || owned.iter().map(|t| one(&e, t)).collect())
        .await
        .map_err(|e| ServeError::Inference(format!("tokenizer thread: {e}")))?
}
