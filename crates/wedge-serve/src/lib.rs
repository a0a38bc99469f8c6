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
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use prometheus_client::registry::Registry;
use wedge::{Device, Embedder, GenerateParams, KvType, LanguageModel, LmOptions, Tokens};

pub mod auth;
pub mod batcher;
pub mod cache;
mod completions;
pub mod config;
mod error;
pub mod metrics;
pub mod scheduler;
mod worker;

pub use auth::{ApiKeys, Caller, RateLimits};
pub use batcher::{Batcher, Vector};
pub use completions::{Completion, Generation};
pub use config::{BatchingConfig, CacheConfig, Config, GenerationConfig, LimitsConfig, ModelConfig};
pub use error::ServeError;
pub use metrics::Metrics;
pub use scheduler::{GenEvent, GenReceiver, Scheduler, SchedulerLimits, Usage};

use cache::{Cache, Cached, Origin};
use metrics::{DeviceLabel, ModelLabel};

/// One served model.
#[derive(Debug)]
pub struct ServedModel {
    /// The name clients use.
    pub name: String,
    /// Other names.
    pub aliases: Vec<String>,
    /// The version string.
    pub version: String,
    /// The model file.
    pub path: PathBuf,
    /// The model's digest (hex SHA-256 of a package's header, or of a GGUF file); part of
    /// every cache key.
    pub digest: String,
    /// Where it runs.
    pub device: String,
    /// Seconds it took to load and warm up.
    pub load_seconds: f64,
    /// What it does and how it is run.
    pub kind: ModelKind,
}

/// What a served model does.
#[derive(Debug)]
pub enum ModelKind {
    /// Sentence embeddings, through the dynamic batcher.
    Embedding(EmbeddingModel),
    /// Text generation, through continuous batching.
    Language(LanguageServing),
}

/// An embedding model and its batcher.
#[derive(Debug)]
pub struct EmbeddingModel {
    /// Embedding size.
    pub dim: usize,
    /// Longest input in tokens.
    pub max_seq_length: usize,
    embedder: Arc<Embedder>,
    batcher: Batcher,
}

/// A language model and its scheduler.
#[derive(Debug)]
pub struct LanguageServing {
    lm: Arc<LanguageModel>,
    scheduler: Scheduler,
    default_max_tokens: usize,
}

impl LanguageServing {
    /// The model (vocabulary, chat template, configuration).
    pub fn model(&self) -> &LanguageModel {
        &self.lm
    }

    /// Its continuous-batching scheduler.
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// `max_tokens` when a request gives none.
    pub fn default_max_tokens(&self) -> usize {
        self.default_max_tokens
    }
}

impl ServedModel {
    /// `embedding` or `text-generation`.
    pub fn task(&self) -> &'static str {
        match self.kind {
            ModelKind::Embedding(_) => "embedding",
            ModelKind::Language(_) => "text-generation",
        }
    }

    /// The embedding model, or a 400 naming the routes this model serves.
    pub fn embedding(&self) -> Result<&EmbeddingModel, ServeError> {
        match &self.kind {
            ModelKind::Embedding(e) => Ok(e),
            ModelKind::Language(_) => Err(ServeError::BadInput(format!(
                "model `{}` is a language model: use /v1/chat/completions or /v1/completions",
                self.name
            ))),
        }
    }

    /// The language model, or a 400 naming the routes this model serves.
    pub fn language(&self) -> Result<&LanguageServing, ServeError> {
        match &self.kind {
            ModelKind::Language(l) => Ok(l),
            ModelKind::Embedding(_) => Err(ServeError::BadInput(format!(
                "model `{}` is an embedding model: use /v1/embeddings or /v2/models/{}/infer",
                self.name, self.name
            ))),
        }
    }

    /// Inputs (embeddings) or requests (generation) waiting.
    pub fn queued(&self) -> usize {
        match &self.kind {
            ModelKind::Embedding(e) => e.batcher.queued(),
            ModelKind::Language(l) => l.scheduler.waiting(),
        }
    }

    fn shutdown(&self) {
        match &self.kind {
            ModelKind::Embedding(e) => e.batcher.shutdown(),
            ModelKind::Language(l) => l.scheduler.shutdown(),
        }
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
    cache: Option<Arc<Cache>>,
    keys: ApiKeys,
    rates: RateLimits,
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
        if config.models.is_empty() {
            return Err(ServeError::Config("no models to serve".into()));
        }
        let metrics = Arc::new(Metrics::new(registry));
        let cache = Cache::open(&config.cache, metrics.clone())?.map(Arc::new);
        Ok(Service {
            keys: ApiKeys::new(&config.auth)?,
            rates: RateLimits::new(&config.limits),
            config,
            device,
            loaded: OnceLock::new(),
            cache,
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
            let (kind, digest) = self.load_model(mc)?;
            let load_seconds = t0.elapsed().as_secs_f64();
            let device = self.device.describe();
            let label = ModelLabel { model: mc.name.clone() };
            self.metrics.model_load_seconds.get_or_create(&label).set(load_seconds);
            self.metrics.device.get_or_create(&DeviceLabel { model: mc.name.clone(), device: device.clone() }).set(1);
            let model = ServedModel {
                name: mc.name.clone(),
                aliases: mc.aliases.clone(),
                version: mc.version.clone().unwrap_or_else(|| "1".into()),
                path: mc.path.clone(),
                digest,
                device,
                load_seconds,
                kind,
            };
            tracing::info!(model = %mc.name, task = model.task(), device = %model.device, digest = %model.digest, load_seconds, "model ready");
            for n in std::iter::once(&mc.name).chain(&mc.aliases) {
                by_name.insert(n.clone(), i);
            }
            models.push(Arc::new(model));
        }
        let _ = self.loaded.set(Loaded { models, by_name });
        Ok(())
    }

    /// Loads one model file: a GGUF file or a decoder package is a language model
    /// ([`ModelFile::probe`]), any other package an embedding model. Returns it with its
    /// digest.
    fn load_model(&self, mc: &ModelConfig) -> Result<(ModelKind, String), ServeError> {
        let bad = |what: String| ServeError::Config(format!("model `{}` ({}): {what}", mc.name, mc.path.display()));
        let file = ModelFile::probe(&mc.path).map_err(|e| bad(e.to_string()))?;
        let g = &self.config.generation;
        let lm_options = || -> Result<LmOptions, ServeError> {
            let kv = KvType::parse(&g.kv).ok_or_else(|| bad(format!("kv `{}`", g.kv)))?;
            Ok(LmOptions { kv, fast_cpu: g.fast_cpu })
        };
        let (lm, digest) = if file == ModelFile::Gguf {
            let lm = LanguageModel::open(&mc.path, &self.device, lm_options()?).map_err(|e| bad(e.to_string()))?;
            (lm, file_digest(&mc.path).map_err(|e| bad(e.to_string()))?)
        } else {
            let bytes = std::fs::read(&mc.path).map_err(|e| bad(e.to_string()))?;
            let header =
                wedge::read_header(&bytes, &wedge::PackageLimits::default()).map_err(|e| bad(e.to_string()))?;
            if file == ModelFile::Other {
                let embedder = Arc::new(Embedder::from_bytes(&bytes, &self.device).map_err(|e| bad(e.to_string()))?);
                drop(bytes);
                return self.serve_embedder(mc, embedder).map(|k| (k, header.digest));
            }
            let lm = LanguageModel::from_wedge(&bytes, &self.device, lm_options()?).map_err(|e| bad(e.to_string()))?;
            (lm, header.digest)
        };
        let lm = Arc::new(lm);
        let limits = scheduler_limits(g, &lm).map_err(bad)?;
        let kv_bytes = lm.kv_bytes(limits.ctx * limits.max_sequences);
        let kv_mib = kv_bytes as f64 / (1 << 20) as f64;
        tracing::info!(model = %mc.name, sequences = limits.max_sequences, ctx = limits.ctx, kv_mib, "key/value cache");
        let label = ModelLabel { model: mc.name.clone() };
        self.metrics.llm_kv_bytes_capacity.get_or_create(&label).set(kv_bytes as i64);
        let scheduler = Scheduler::start(&mc.name, lm.clone(), limits, self.metrics.clone())?;
        // Warm up: compile the step's kernels before the first client waits for them.
        let mut prompt = lm.vocab().encode("wedge warm-up", false).unwrap_or_default();
        prompt.truncate(limits.ctx - 1);
        if prompt.is_empty() {
            prompt.push(0);
        }
        let mut warm = scheduler.submit(prompt, GenerateParams { max_tokens: 1, ..Default::default() })?;
        while let Some(e) = warm.blocking_recv() {
            if let GenEvent::Failed(e) = e {
                return Err(bad(format!("warm-up run failed: {e}")));
            }
        }
        Ok((ModelKind::Language(LanguageServing { lm, scheduler, default_max_tokens: g.default_max_tokens }), digest))
    }

    fn serve_embedder(&self, mc: &ModelConfig, embedder: Arc<Embedder>) -> Result<ModelKind, ServeError> {
        let bad = |what: String| ServeError::Config(format!("model `{}` ({}): {what}", mc.name, mc.path.display()));
        embedder.embed(&["wedge warm-up"]).map_err(|e| bad(format!("warm-up run failed: {e}")))?;
        let settings = self.config.batching.with(mc.batching);
        let e = embedder.clone();
        let run: batcher::RunBatch =
            Box::new(move |b: &[Tokens]| e.embed_batched(b, b.len()).map_err(ServeError::from));
        Ok(ModelKind::Embedding(EmbeddingModel {
            dim: embedder.dim(),
            max_seq_length: embedder.max_seq_length(),
            batcher: Batcher::start(&mc.name, settings, self.metrics.clone(), run),
            embedder,
        }))
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
        if let Some((i, t)) = inputs.iter().enumerate().find(|(_, t)| t.len() > limits.max_input_bytes) {
            return Err(ServeError::BadInput(format!(
                "input {i} is {} bytes; at most {}",
                t.len(),
                limits.max_input_bytes
            )));
        }
        let tokens = tokenize(&model, inputs).await?;
        let prompt_tokens = tokens.iter().map(|t| t.ids.len()).sum();
        let jobs = tokens.into_iter().map(|t| self.embed_one(&model, t, policy));
        let found = futures_util::future::try_join_all(jobs).await?;
        let cache_hit = self.cache.is_some() && found.iter().all(|(_, origin)| origin.is_hit());
        let vectors = found.into_iter().map(|(v, _)| v).collect();
        Ok(Embeddings { model, vectors, prompt_tokens, cache_hit })
    }

    /// One input's embedding, through the cache (keyed by the model's digest, the output
    /// options, none of which change an embedding yet, and the token ids), with where it came
    /// from.
    async fn embed_one(
        &self,
        model: &ServedModel,
        tokens: Tokens,
        policy: CachePolicy,
    ) -> Result<(Vector, Origin), ServeError> {
        let Some(cache) = &self.cache else {
            return Ok((run(model.embedding()?, tokens).await?, Origin::Computed));
        };
        let mut canonical = tokens.ids.clone();
        canonical.push(u32::MAX); // separates ids from type ids
        canonical.extend(&tokens.type_ids);
        let key = cache::key(&model.digest, "embedding", &canonical);
        let (value, origin) = match policy {
            CachePolicy::Bypass => {
                let v = Cached::Vector(run(model.embedding()?, tokens).await?);
                cache.put(key, v.clone()).await;
                (v, Origin::Computed)
            }
            CachePolicy::Use => {
                cache.get_or_compute(key, async { Ok(Cached::Vector(run(model.embedding()?, tokens).await?)) }).await?
            }
        };
        match value {
            Cached::Vector(v) => Ok((v, origin)),
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
    /// computed one is stored when it is done.
    pub async fn generate(
        &self,
        model: &ServedModel,
        prompt: Vec<u32>,
        params: GenerateParams,
        policy: CachePolicy,
    ) -> Result<Generation, ServeError> {
        let scheduler = &model.language()?.scheduler;
        let options = completions::cache_options(&params, &self.config.generation);
        let (Some(cache), Some(options)) = (&self.cache, options) else {
            return Ok(Generation::live(scheduler.submit(prompt, params)?, None));
        };
        let key = cache::key(&model.digest, &options, &prompt);
        if policy == CachePolicy::Use
            && let Some((Cached::Completion(c), _)) = cache.get(&key).await
        {
            self.metrics.llm_cache_hits.get_or_create(&ModelLabel { model: model.name.clone() }).inc();
            return Ok(Generation::replay(&c));
        }
        let rx = scheduler.submit(prompt, params)?;
        Ok(Generation::live(rx, Some((key, cache.clone()))))
    }

    /// Finishes queued inputs, stops the batchers and commits the disk cache.
    pub fn shutdown(&self) {
        for m in self.models() {
            m.shutdown();
        }
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

/// The sizes of a language model's scheduler: `ctx` is the configured one (or the model's
/// context), lowered to what the key/value budget holds for `max_sequences` sequences.
fn scheduler_limits(g: &GenerationConfig, lm: &LanguageModel) -> Result<SchedulerLimits, String> {
    let model_ctx = lm.config().context_length;
    let per_position = lm.kv_bytes(g.max_sequences).max(1);
    let fits = usize::try_from(g.kv_budget_bytes / per_position).unwrap_or(usize::MAX);
    let want = match (g.ctx, model_ctx) {
        (0, 0) => 4096,
        (0, m) => m,
        (c, 0) => c,
        (c, m) => c.min(m),
    };
    if g.ctx > 0 && g.ctx > fits {
        return Err(format!(
            "ctx {} × {} sequences needs {} bytes of key/value cache; kv_budget_bytes is {}",
            g.ctx,
            g.max_sequences,
            lm.kv_bytes(g.ctx * g.max_sequences),
            g.kv_budget_bytes
        ));
    }
    let ctx = want.min(fits);
    if ctx < 16 {
        return Err(format!(
            "kv_budget_bytes {} holds only {ctx} positions for each of {} sequences",
            g.kv_budget_bytes, g.max_sequences
        ));
    }
    Ok(SchedulerLimits {
        max_sequences: g.max_sequences,
        ctx,
        max_batch_tokens: g.max_batch_tokens,
        max_waiting: g.max_waiting,
    })
}

/// What a model file holds, as far as serving it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFile {
    /// A GGUF file: a language model.
    Gguf,
    /// A package of the decoder architecture: a language model.
    Decoder,
    /// Anything else: served as an embedding model, whose loading reports what is wrong with
    /// a file that is not one.
    Other,
}

impl ModelFile {
    /// Reads the file's magic (and a package's prefix and header, not its data).
    pub fn probe(path: &std::path::Path) -> std::io::Result<ModelFile> {
        use std::io::Read;
        let mut f = std::fs::File::open(path)?;
        let file_len = f.metadata()?.len();
        let mut head = Vec::with_capacity(wedge::PREFIX_LEN);
        f.by_ref().take(wedge::PREFIX_LEN as u64).read_to_end(&mut head)?;
        if head.starts_with(b"GGUF") {
            return Ok(ModelFile::Gguf);
        }
        let limits = wedge::PackageLimits::default();
        let Some(len) = wedge::header_len(&head, &limits) else { return Ok(ModelFile::Other) };
        f.take((len - head.len()) as u64).read_to_end(&mut head)?;
        let header = wedge::read_header_of(&head, file_len, &limits);
        Ok(if header.is_ok_and(|h| h.header.architecture == wedge::DECODER) {
            ModelFile::Decoder
        } else {
            ModelFile::Other
        })
    }

    /// Whether it is a language model.
    pub fn is_language(self) -> bool {
        self != ModelFile::Other
    }
}

/// Hex SHA-256 of a file, read in pieces.
fn file_digest(path: &std::path::Path) -> std::io::Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

async fn run(model: &EmbeddingModel, tokens: Tokens) -> Result<Vector, ServeError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_files_are_told_apart_by_their_first_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let bundled = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2.wedge");
        assert_eq!(ModelFile::probe(&bundled).unwrap(), ModelFile::Other);
        let gguf = dir.path().join("m.gguf");
        std::fs::write(&gguf, b"GGUF\x03\0\0\0").unwrap();
        assert!(ModelFile::probe(&gguf).unwrap().is_language());
        // a decoder package: the bundled package's header says `decoder` (re-signed)
        let bytes = std::fs::read(&bundled).unwrap();
        let mut p = wedge::Package::from_bytes(&bytes).unwrap().0;
        p.architecture = wedge::DECODER.into();
        let decoder = dir.path().join("d.wedge");
        std::fs::write(&decoder, p.to_bytes(1).unwrap().0).unwrap();
        assert_eq!(ModelFile::probe(&decoder).unwrap(), ModelFile::Decoder);
        for junk in [&b""[..], b"GG", b"WEDGE\0\0\0 but nothing more"] {
            let f = dir.path().join("junk");
            std::fs::write(&f, junk).unwrap();
            assert_eq!(ModelFile::probe(&f).unwrap(), ModelFile::Other);
        }
        assert!(ModelFile::probe(&dir.path().join("missing")).is_err());
    }
}
