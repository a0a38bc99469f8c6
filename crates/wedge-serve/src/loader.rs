//! Turns a model's configuration into a [`ServedModel`]: reads and checks the file, builds the
//! embedder or language model on the device, starts its batcher or scheduler, and warms it up.

use std::sync::Arc;
use std::time::Instant;

use wedge::{Device, Embedder, GenerateParams, KvType, LanguageModel, LmOptions, Tokens};

use crate::breaker::{CpuCopy, DeviceKind, GpuGuard};
use crate::config::{BatchingConfig, BreakerConfig, GenerationConfig, ModelConfig};
use crate::metrics::{DeviceLabel, Metrics, ModelLabel};
use crate::model::{EmbeddingModel, FileStamp, LanguageServing, ModelFile, ModelKind, ServedModel, file_digest};
use crate::scheduler::Fallback;
use crate::{Batcher, GenEvent, Scheduler, SchedulerLimits, ServeError, batcher};

/// What every model is loaded with: the device, the serving defaults and the metrics.
#[derive(Debug)]
pub struct Loader {
    device: Device,
    batching: BatchingConfig,
    generation: GenerationConfig,
    breaker: BreakerConfig,
    metrics: Arc<Metrics>,
}

impl Loader {
    /// A loader for models on `device`, batched and generated as the configuration says,
    /// with a GPU→CPU breaker for models on a GPU as `breaker` says.
    pub fn new(
        device: Device,
        batching: BatchingConfig,
        generation: GenerationConfig,
        breaker: BreakerConfig,
        metrics: Arc<Metrics>,
    ) -> Loader {
        Loader { device, batching, generation, breaker, metrics }
    }

    /// The GPU thread and breaker of a model, when it runs on a GPU with the breaker on.
    fn guard(&self, mc: &ModelConfig) -> Result<Option<GpuGuard>, ServeError> {
        if !self.device.is_gpu() || !self.breaker.enabled {
            return Ok(None);
        }
        GpuGuard::start(&label_of(mc), self.device.describe(), self.breaker, self.metrics.clone()).map(Some)
    }

    /// The device models run on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Loads, starts and warms up one model (compiles its kernels, runs one input). Blocking:
    /// call it off the async runtime.
    pub fn load(&self, mc: &ModelConfig) -> Result<ServedModel, ServeError> {
        let t0 = Instant::now();
        let file_stamp = FileStamp::of(&mc.path).ok();
        let (kind, digest) = self.load_model(mc)?;
        let load_seconds = t0.elapsed().as_secs_f64();
        let bytes = match &kind {
            ModelKind::Embedding(e) => e.embedder.weight_bytes(),
            ModelKind::Language(l) => {
                let limits = l.scheduler.limits();
                l.lm.weight_bytes() + l.lm.kv_bytes(limits.ctx * limits.max_sequences)
            }
        };
        let device = self.device.describe();
        let label = label_of(mc);
        self.metrics.model_load_seconds.get_or_create(&label).set(load_seconds);
        let device_label =
            DeviceLabel { model: label.model.clone(), version: label.version.clone(), device: device.clone() };
        self.metrics.device.get_or_create(&device_label).set(1);
        let model = ServedModel {
            name: mc.name.clone(),
            aliases: mc.aliases.clone(),
            version: mc.version.clone().unwrap_or_else(|| "1".into()),
            path: mc.path.clone(),
            digest,
            device,
            load_seconds,
            bytes,
            file_stamp,
            kind,
        };
        tracing::info!(model = %mc.name, task = model.task(), device = %model.device, digest = %model.digest, load_seconds, "model ready");
        Ok(model)
    }

    /// Loads one model file: a GGUF file or a decoder package is a language model
    /// ([`ModelFile::probe`]), any other package an embedding model. Returns it with its
    /// digest.
    fn load_model(&self, mc: &ModelConfig) -> Result<(ModelKind, String), ServeError> {
        let bad = |what: String| ServeError::Config(format!("model `{}` ({}): {what}", mc.name, mc.path.display()));
        let file = ModelFile::probe(&mc.path).map_err(|e| bad(e.to_string()))?;
        let g = &self.generation;
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
                return self.serve_embedder(mc, embedder, &header.digest).map(|k| (k, header.digest));
            }
            let lm = LanguageModel::from_wedge(&bytes, &self.device, lm_options()?).map_err(|e| bad(e.to_string()))?;
            (lm, header.digest)
        };
        let lm = Arc::new(lm);
        let limits = scheduler_limits(g, &lm).map_err(bad)?;
        let kv_bytes = lm.kv_bytes(limits.ctx * limits.max_sequences);
        let kv_mib = kv_bytes as f64 / (1 << 20) as f64;
        tracing::info!(model = %mc.name, sequences = limits.max_sequences, ctx = limits.ctx, kv_mib, "key/value cache");
        let label = label_of(mc);
        self.metrics.llm_kv_bytes_capacity.get_or_create(&label).set(kv_bytes as i64);
        // (a prompt of more than a few tokens: prompt steps of many rows run other matmul
        // kernels than decode steps, and both are compiled here)
        let warm_text = "wedge warms up: a prompt step of many tokens, then a decode step of one.";
        let mut prompt = lm.vocab().encode(warm_text, false).unwrap_or_default();
        prompt.truncate(limits.ctx - 2);
        if prompt.is_empty() {
            prompt.push(0);
        }
        let mut watchdog = None;
        let fallback = match self.guard(mc)? {
            None => None,
            Some(guard) => {
                watchdog = Some(guard.watchdog_switch());
                let options = lm_options()?;
                let (path, digest, gguf) = (mc.path.clone(), digest.clone(), file == ModelFile::Gguf);
                let cpu = CpuCopy::new(move || {
                    let err = |e: wedge::Error| cpu_copy_err(&path, e.to_string());
                    if gguf {
                        let now = file_digest(&path).map_err(|e| cpu_copy_err(&path, e.to_string()))?;
                        if now != digest {
                            return Err(cpu_copy_err(&path, "the file changed since the model was loaded".into()));
                        }
                        return LanguageModel::open(&path, &Device::cpu(), options).map_err(err);
                    }
                    let bytes = std::fs::read(&path).map_err(|e| cpu_copy_err(&path, e.to_string()))?;
                    check_same_package(&path, &bytes, &digest)?;
                    LanguageModel::from_wedge(&bytes, &Device::cpu(), options).map_err(err)
                });
                Some(Fallback { guard, cpu })
            }
        };
        let scheduler = Scheduler::start_with(&label, lm.clone(), limits, self.metrics.clone(), fallback)?;
        // Warm up: compile the steps' kernels (a prompt step, a decode step) before the first
        // client waits for them.
        let mut warm = scheduler.submit(prompt, GenerateParams { max_tokens: 2, ..Default::default() })?;
        while let Some(e) = warm.blocking_recv() {
            if let GenEvent::Failed(e) = e {
                return Err(bad(format!("warm-up run failed: {e}")));
            }
        }
        // warm: the watchdog times the steps from now on
        if let Some(w) = watchdog {
            w.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok((ModelKind::Language(LanguageServing { lm, scheduler, default_max_tokens: g.default_max_tokens }), digest))
    }

    fn serve_embedder(&self, mc: &ModelConfig, embedder: Arc<Embedder>, digest: &str) -> Result<ModelKind, ServeError> {
        let bad = |what: String| ServeError::Config(format!("model `{}` ({}): {what}", mc.name, mc.path.display()));
        embedder.embed(&["wedge warm-up"]).map_err(|e| bad(format!("warm-up run failed: {e}")))?;
        let settings = self.batching.with(mc.batching);
        let e = embedder.clone();
        let run: batcher::RunBatch = match self.guard(mc)? {
            None => {
                let kind = if self.device.is_gpu() { DeviceKind::Gpu } else { DeviceKind::Cpu };
                Box::new(move |b: &[Tokens]| e.embed_batched(b, b.len()).map(|v| (v, kind)).map_err(ServeError::from))
            }
            Some(guard) => {
                // (warmed up above: the watchdog times the batches from the first)
                guard.watchdog_switch().store(true, std::sync::atomic::Ordering::Relaxed);
                let (path, digest) = (mc.path.clone(), digest.to_string());
                let cpu = CpuCopy::new(move || {
                    let bytes = std::fs::read(&path).map_err(|e| cpu_copy_err(&path, e.to_string()))?;
                    check_same_package(&path, &bytes, &digest)?;
                    Embedder::from_bytes(&bytes, &Device::cpu()).map_err(|e| cpu_copy_err(&path, e.to_string()))
                });
                Box::new(move |b: &[Tokens]| guarded_embed(&guard, &e, &cpu, b))
            }
        };
        Ok(ModelKind::Embedding(EmbeddingModel {
            dim: embedder.dim(),
            max_seq_length: embedder.max_seq_length(),
            batcher: Batcher::start(&label_of(mc), settings, self.metrics.clone(), run),
            embedder,
        }))
    }
}

/// Runs a batch on the GPU while the breaker is closed, else (and after a fault, which opens
/// it) on the CPU copy.
fn guarded_embed(
    guard: &GpuGuard,
    gpu: &Arc<Embedder>,
    cpu: &CpuCopy<Embedder>,
    batch: &[Tokens],
) -> Result<(Vec<Vec<f32>>, DeviceKind), ServeError> {
    let probe = gpu.clone();
    if guard.use_gpu(move || probe.embed(&["wedge probe"]).map(drop).map_err(|e| e.to_string())) {
        let (e, owned) = (gpu.clone(), batch.to_vec());
        let ran = guard.run(move || match e.embed_batched(&owned, owned.len()) {
            Ok(v) => Ok(Ok(v)),
            Err(e) if e.is_input() => Ok(Err(e)),
            Err(e) => Err(e.to_string()),
        });
        match ran {
            Ok(Ok(v)) => return Ok((v, DeviceKind::Gpu)),
            Ok(Err(input)) => return Err(input.into()),
            Err(_) => {} // the breaker is open now: rerun on the CPU
        }
    }
    guard.ran_on_cpu();
    let cpu = cpu.get()?;
    cpu.embed_batched(batch, batch.len()).map(|v| (v, DeviceKind::Cpu)).map_err(ServeError::from)
}

/// A CPU copy of a model could not be made.
fn cpu_copy_err(path: &std::path::Path, what: String) -> ServeError {
    ServeError::Inference(format!("the GPU faulted and no CPU copy of {} could be made: {what}", path.display()))
}

/// Checks that the package in `bytes` is the one served (by its digest): a CPU copy of
/// another file would answer with another model.
fn check_same_package(path: &std::path::Path, bytes: &[u8], digest: &str) -> Result<(), ServeError> {
    let header =
        wedge::read_header(bytes, &wedge::PackageLimits::default()).map_err(|e| cpu_copy_err(path, e.to_string()))?;
    if header.digest != digest {
        return Err(cpu_copy_err(path, "the file changed since the model was loaded".into()));
    }
    Ok(())
}

/// The metrics label of a model's version.
pub(crate) fn label_of(mc: &ModelConfig) -> ModelLabel {
    ModelLabel::new(&mc.name, mc.version.as_deref().unwrap_or("1"))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A CPU copy is made only of the package that was loaded: a file changed since (another
    /// digest) or damaged is refused with the reason.
    #[test]
    fn a_cpu_copy_is_only_made_of_the_same_package() {
        let bundled = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2.wedge");
        let bytes = std::fs::read(&bundled).unwrap();
        let digest = wedge::read_header(&bytes, &wedge::PackageLimits::default()).unwrap().digest;
        check_same_package(&bundled, &bytes, &digest).unwrap();
        let e = check_same_package(&bundled, &bytes, "0123").unwrap_err();
        assert!(e.to_string().contains("the file changed since the model was loaded"), "{e}");
        let e = check_same_package(&bundled, b"not a package", &digest).unwrap_err();
        assert!(e.to_string().contains("no CPU copy"), "{e}");
    }
}
