//! The served models by name and alias, each in a [`Slot`] that is loaded at start
//! (`preload`), on its first request, or again when its file changes.
//!
//! - The table of slots is swapped whole (`arc-swap`): lookups take no lock.
//! - A slot's state (its model, whether a load runs, the last load error) sits behind a
//!   short lock: requests clone the model out of it and hold it until they are done, and
//!   waiters for a load are woken when it ends.
//! - A reload builds the new model beside the old one, which serves until the new one is
//!   installed; requests that hold the old one finish on it. A failed reload leaves the old
//!   one serving and records the error.
//! - With a memory budget, loading unloads the least recently used models that no request
//!   holds (checked under the slot's lock, so no request loses its model).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::ServeError;
use crate::config::{ModelConfig, RegistryConfig};
use crate::loader::Loader;
use crate::metrics::Metrics;
use crate::model::{FileStamp, ModelFile, ServedModel};

/// What a slot holds now.
#[derive(Clone, Debug, Default)]
pub struct SlotState {
    /// The model that serves requests, if loaded.
    pub model: Option<Arc<ServedModel>>,
    /// A load or reload is running.
    pub loading: bool,
    /// Why the last load failed (cleared when a load starts or succeeds).
    pub error: Option<String>,
    /// When the last load failed.
    pub failed_at: Option<Instant>,
}

/// How long a failed load is reported before a request may try it again (so that a damaged
/// file is not read again for every request).
const RETRY_FAILED_LOAD: Duration = Duration::from_secs(5);

/// One configured model.
#[derive(Debug)]
pub struct Slot {
    /// Its configuration.
    pub config: ModelConfig,
    /// What its file holds (read at registration).
    pub file: ModelFile,
    state: StateCell,
    /// Milliseconds since the registry started, at the last request.
    last_used: AtomicU64,
}

impl Slot {
    /// The loaded model, if any (a clone the caller may hold while the slot changes).
    pub fn model(&self) -> Option<Arc<ServedModel>> {
        self.state.lock().model.clone()
    }

    /// The slot's state now.
    pub fn state(&self) -> SlotState {
        self.state.lock().clone()
    }

    /// Whether it is loaded at start.
    pub fn preload(&self) -> bool {
        self.config.preload.unwrap_or(true)
    }

    /// Its version (`1` when the configuration names none).
    pub fn version(&self) -> &str {
        self.config.version.as_deref().unwrap_or("1")
    }

    /// Marks a load as running unless one is (or, with `unless_loaded`, unless a model is
    /// loaded); `true` if the caller is now the one loading.
    fn begin_load(&self, unless_loaded: bool) -> bool {
        self.state.modify(|s| {
            if s.loading || (unless_loaded && s.model.is_some()) {
                return false;
            }
            s.loading = true;
            s.error = None;
            true
        })
    }

    /// Unloads it: returns the model it held.
    fn take_model(&self) -> Option<Arc<ServedModel>> {
        let mut old = None;
        self.state.modify(|s| {
            old = s.model.take();
            s.error = None;
            true
        });
        old
    }
}

/// One line of the repository index (KServe v2 repository extension).
#[derive(Clone, Debug, serde::Serialize)]
pub struct IndexEntry {
    /// The model's name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// `READY`, `LOADING` or `UNAVAILABLE`.
    pub state: &'static str,
    /// Why it is not ready, or why its last reload failed ("" when all is well).
    pub reason: String,
    /// The loaded file's digest ("" when not loaded).
    pub digest: String,
    /// Bytes it takes while loaded (0 when not).
    pub bytes: u64,
}

/// A served name: its versions (each a [`Slot`]) and their routing weights.
#[derive(Debug)]
pub struct Entry {
    /// The name clients use.
    pub name: String,
    /// Other names.
    pub aliases: Vec<String>,
    /// The versions in configuration order, each with its weight.
    pub versions: Vec<(Arc<Slot>, u32)>,
}

impl Entry {
    /// The version a caller is routed to: `version` when pinned; else the same version for
    /// the same `caller` (the SHA-256 of the name and the caller's id, taken as a point on
    /// the weights' line), or a random one for a caller without an id. Versions of weight 0
    /// are reached only by pinning.
    pub fn route(&self, caller: Option<&str>, version: Option<&str>) -> Result<&Arc<Slot>, ServeError> {
        if let Some(v) = version {
            return self
                .versions
                .iter()
                .map(|(s, _)| s)
                .find(|s| s.version() == v)
                .ok_or_else(|| ServeError::UnknownModel(format!("{} version {v}", self.name)));
        }
        if self.versions.len() == 1 {
            return Ok(&self.versions[0].0);
        }
        let total: u64 = self.versions.iter().map(|(_, w)| u64::from(*w)).sum();
        let point = match caller {
            Some(id) => {
                use sha2::Digest;
                let h = sha2::Sha256::new().chain_update(self.name.as_bytes()).chain_update([0]).chain_update(id);
                u64::from_le_bytes(h.finalize()[..8].try_into().unwrap_or([0; 8]))
            }
            None => std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), &self.name),
        } % total.max(1);
        let mut at = 0;
        for (slot, w) in &self.versions {
            at += u64::from(*w);
            if point < at {
                return Ok(slot);
            }
        }
        Ok(&self.versions[0].0) // (unreachable: some weight is positive)
    }
}

#[derive(Debug, Default)]
struct Table {
    entries: Vec<Arc<Entry>>,
    /// Names and aliases → index in `entries`.
    by_name: HashMap<String, usize>,
}

impl Table {
    fn with(entries: Vec<Arc<Entry>>) -> Table {
        let mut by_name = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            for n in std::iter::once(&e.name).chain(&e.aliases) {
                by_name.insert(n.clone(), i);
            }
        }
        Table { entries, by_name }
    }

    fn slots(&self) -> impl Iterator<Item = &Arc<Slot>> {
        self.entries.iter().flat_map(|e| e.versions.iter().map(|(s, _)| s))
    }
}

/// The entry of a model configuration: its versions' slots, reusing those of `old` whose
/// version and file are unchanged (so a weight change keeps the loaded models).
fn new_entry(config: &ModelConfig, old: Option<&Entry>) -> Arc<Entry> {
    let versions = config
        .loadables()
        .into_iter()
        .map(|(c, w)| {
            let kept = old.and_then(|o| {
                o.versions.iter().map(|(s, _)| s).find(|s| s.config.version == c.version && s.config.path == c.path)
            });
            (kept.cloned().unwrap_or_else(|| new_slot(c)), w)
        })
        .collect();
    Arc::new(Entry { name: config.name.clone(), aliases: config.aliases.clone(), versions })
}

/// The served models.
#[derive(Debug)]
pub struct ModelRegistry {
    table: ArcSwap<Table>,
    loader: Loader,
    metrics: Arc<Metrics>,
    epoch: Instant,
    max_loaded_bytes: u64,
    load_timeout: Duration,
    closed: AtomicBool,
}

impl ModelRegistry {
    /// A registry of `models` (none loaded yet), loaded by `loader`.
    pub fn new(
        models: Vec<ModelConfig>,
        loader: Loader,
        config: &RegistryConfig,
        metrics: Arc<Metrics>,
    ) -> ModelRegistry {
        let entries = models.iter().map(|m| new_entry(m, None)).collect();
        ModelRegistry {
            table: ArcSwap::from_pointee(Table::with(entries)),
            loader,
            metrics,
            epoch: Instant::now(),
            max_loaded_bytes: config.max_loaded_bytes,
            load_timeout: Duration::from_secs(config.load_timeout_secs),
            closed: AtomicBool::new(false),
        }
    }

    /// The entry of the model with this name or alias.
    pub fn entry(&self, name: &str) -> Option<Arc<Entry>> {
        let t = self.table.load();
        t.by_name.get(name).map(|&i| t.entries[i].clone())
    }

    /// Every entry, in order (configured models, then those found in the models folder).
    pub fn entries(&self) -> Vec<Arc<Entry>> {
        self.table.load().entries.clone()
    }

    /// Every version's slot, in order.
    pub fn slots(&self) -> Vec<Arc<Slot>> {
        self.table.load().slots().cloned().collect()
    }

    /// The loaded models, in slot order.
    pub fn loaded(&self) -> Vec<Arc<ServedModel>> {
        self.slots().iter().filter_map(|s| s.model()).collect()
    }

    /// Adds `config` (a file that appeared in the models folder); `false` if its name or an
    /// alias is taken.
    pub fn add(&self, config: ModelConfig) -> bool {
        let mut added = false;
        self.table.rcu(|t| {
            let names = std::iter::once(&config.name).chain(&config.aliases);
            added = !names.clone().any(|n| t.by_name.contains_key(n));
            let mut entries = t.entries.clone();
            if added {
                entries.push(new_entry(&config, None));
            }
            Table::with(entries)
        });
        added
    }

    /// Takes the models of a changed configuration: new versions and weights route at once;
    /// versions whose file is unchanged keep their loaded model; versions and models that
    /// are gone are unloaded once their requests finish. Models found in the models folder
    /// (`folder`) stay. Blocking.
    pub fn update(&self, models: &[ModelConfig], folder: &[ModelConfig]) {
        let mut dropped = Vec::new();
        self.table.rcu(|t| {
            dropped.clear();
            let find = |name: &str| t.entries.iter().find(|e| e.name == name);
            let mut entries: Vec<Arc<Entry>> =
                models.iter().map(|m| new_entry(m, find(&m.name).map(|e| &**e))).collect();
            for e in &t.entries {
                if !entries.iter().any(|n| n.name == e.name) && folder.iter().any(|f| f.name == e.name) {
                    entries.push(e.clone());
                }
            }
            let kept: Vec<*const Slot> =
                entries.iter().flat_map(|e| e.versions.iter().map(|(s, _)| Arc::as_ptr(s))).collect();
            dropped.extend(t.slots().filter(|s| !kept.contains(&Arc::as_ptr(s))).cloned());
            Table::with(entries)
        });
        for slot in dropped {
            if let Some(m) = slot.take_model() {
                tracing::info!(model = %m.name, version = %m.version, "version removed from the configuration");
                // (its requests in flight hold it: it stops when the last one is done)
                drop(m);
            }
        }
    }

    /// The model `name` (the version `caller` is routed to, see [`Entry::route`]), loading it
    /// first if it is not loaded.
    pub async fn get(self: &Arc<Self>, name: &str) -> Result<Arc<ServedModel>, ServeError> {
        self.get_routed(name, None, None).await
    }

    /// The model `name` for `caller` (its id: API key or `user`), or its version `version`,
    /// loading it first if it is not loaded: the request waits for the load up to the load
    /// timeout, then gets [`ServeError::Loading`] while the load goes on.
    pub async fn get_routed(
        self: &Arc<Self>,
        name: &str,
        caller: Option<&str>,
        version: Option<&str>,
    ) -> Result<Arc<ServedModel>, ServeError> {
        let entry = self.entry(name).ok_or_else(|| ServeError::UnknownModel(name.to_string()))?;
        let slot = entry.route(caller, version)?.clone();
        self.touch(&slot);
        let now = slot.state();
        if let Some(m) = now.model {
            return Ok(m);
        }
        if let (Some(reason), Some(at), false) = (now.error, now.failed_at, now.loading)
            && at.elapsed() < RETRY_FAILED_LOAD
        {
            return Err(ServeError::Unavailable { model: slot.config.name.clone(), reason });
        }
        self.start_load(&slot);
        let model = slot.config.name.clone();
        let waited =
            tokio::time::timeout(self.load_timeout, slot.state.wait_for(|s| s.model.is_some() || !s.loading)).await;
        match waited {
            Err(_) => {
                let retry_after_s = self.load_timeout.as_secs().clamp(1, 60);
                Err(ServeError::Loading { model, retry_after_s })
            }
            Ok(s) => s.model.clone().ok_or_else(|| ServeError::Unavailable {
                model,
                reason: s.error.clone().unwrap_or_else(|| "it was unloaded".into()),
            }),
        }
    }

    /// Loads every `preload` model that is not loaded, one after the other. Blocking.
    pub fn preload(&self) -> Result<(), ServeError> {
        for slot in self.slots().into_iter().filter(|s| s.preload()) {
            if slot.begin_load(true) {
                self.load_into(&slot)?;
            }
        }
        Ok(())
    }

    /// Loads every version of `name` again from its file (or for the first time) and waits:
    /// an old model serves until its new one is ready; if a new one fails, the old one stays
    /// and the error is returned (and kept in the index).
    pub async fn reload(self: &Arc<Self>, name: &str) -> Result<(), ServeError> {
        let entry = self.entry(name).ok_or_else(|| ServeError::UnknownModel(name.to_string()))?;
        let mut first_error = None;
        for (slot, _) in &entry.versions {
            if let Err(e) = self.reload_slot(slot).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn reload_slot(self: &Arc<Self>, slot: &Arc<Slot>) -> Result<(), ServeError> {
        // a load already running may have read the file before it changed: wait it out
        loop {
            slot.state.wait_for(|s| !s.loading).await;
            if slot.begin_load(false) {
                break;
            }
        }
        let me = self.clone();
        let s = slot.clone();
        tokio::task::spawn_blocking(move || me.load_into(&s))
            .await
            .map_err(|e| ServeError::Inference(format!("the load thread failed: {e}")))?
    }

    /// Reloads `slot` when its file is not the one its loaded model was read from (a file
    /// watcher sees several events per write, and events that change nothing). Blocking.
    pub fn reload_if_changed(&self, slot: &Slot) -> Result<bool, ServeError> {
        let Some(current) = slot.model() else { return Ok(false) }; // loads on its next request
        if current.file_stamp.is_some() && FileStamp::of(&slot.config.path).ok() == current.file_stamp {
            return Ok(false);
        }
        if !slot.begin_load(false) {
            return Ok(false);
        }
        self.load_into(slot).map(|_| true)
    }

    /// Unloads every version of `name` (requests that hold one finish on it); each loads
    /// again on its next request. Blocking: a model's threads are stopped here once its last
    /// request is done.
    pub fn unload(&self, name: &str) -> Result<(), ServeError> {
        let entry = self.entry(name).ok_or_else(|| ServeError::UnknownModel(name.to_string()))?;
        for (slot, _) in &entry.versions {
            if let Some(m) = slot.take_model() {
                tracing::info!(model = %m.name, version = %m.version, "model unloaded");
                self.metrics.model_unloads.get_or_create(&m.label()).inc();
                drop(m);
            }
        }
        Ok(())
    }

    /// The repository index: every model's version and state.
    pub fn index(&self) -> Vec<IndexEntry> {
        self.slots()
            .iter()
            .map(|slot| {
                let s = slot.state();
                let state = match (&s.model, s.loading) {
                    (Some(_), _) => "READY",
                    (None, true) => "LOADING",
                    (None, false) => "UNAVAILABLE",
                };
                let m = s.model.as_ref();
                IndexEntry {
                    name: slot.config.name.clone(),
                    version: slot.version().to_string(),
                    state,
                    reason: s.error.clone().unwrap_or_default(),
                    digest: m.map(|m| m.digest.clone()).unwrap_or_default(),
                    bytes: m.map_or(0, |m| m.bytes),
                }
            })
            .collect()
    }

    /// Bytes the loaded models take.
    pub fn loaded_bytes(&self) -> u64 {
        self.loaded().iter().map(|m| m.bytes).sum()
    }

    /// Refuses loads from now on and stops every loaded model (after its queued work).
    pub fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        for m in self.loaded() {
            m.shutdown();
        }
    }

    fn touch(&self, slot: &Slot) {
        slot.last_used.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Starts loading `slot` on a blocking thread unless a load runs; `true` if it started.
    fn start_load(self: &Arc<Self>, slot: &Arc<Slot>) -> bool {
        let started = slot.begin_load(true);
        if started {
            let (me, slot) = (self.clone(), slot.clone());
            tokio::task::spawn_blocking(move || me.load_into(&slot));
        }
        started
    }

    /// Loads `slot`'s file (its `loading` flag already set) and installs the model, making
    /// room in the memory budget first; on failure the slot keeps what it had and records
    /// the error. Blocking.
    fn load_into(&self, slot: &Slot) -> Result<(), ServeError> {
        let name = slot.config.name.clone();
        let result = self.make_room(slot, file_len(&slot.config)).and_then(|()| self.loader.load(&slot.config));
        let result = match result {
            Ok(_) if self.closed.load(Ordering::Acquire) => Err(ServeError::ShuttingDown),
            other => other,
        };
        match result {
            Ok(model) => {
                // the real size may exceed the file's: make room for all of it (it is not counted
                // yet) before it serves
                if let Err(e) = self.make_room(slot, model.bytes) {
                    tracing::warn!("{e}");
                }
                let (label, digest) = (model.label(), model.digest.clone());
                // (moved in, no copy kept: a model no request holds must count as idle at once)
                let mut model = Some(Arc::new(model));
                let mut old = None;
                slot.state.modify(|s| {
                    old = std::mem::replace(&mut s.model, model.take());
                    s.loading = false;
                    s.error = None;
                    true
                });
                if let Some(old) = old {
                    tracing::info!(model = %name, old = %old.digest, new = %digest, "model reloaded");
                    self.metrics.model_reloads.get_or_create(&label).inc();
                }
                Ok(())
            }
            Err(e) => {
                // (a model that cannot be loaded is unavailable, whatever the reason)
                let e = match e {
                    ServeError::Unavailable { .. } | ServeError::ShuttingDown => e,
                    other => ServeError::Unavailable { model: name.clone(), reason: other.to_string() },
                };
                let serving = slot.model().is_some();
                tracing::error!(model = %name, error = %e, still_serving_the_old_version = serving, "model load failed");
                self.metrics.model_load_failures.get_or_create(&crate::loader::label_of(&slot.config)).inc();
                let reason = match &e {
                    ServeError::Unavailable { reason, .. } => reason.clone(),
                    other => other.to_string(),
                };
                slot.state.modify(|s| {
                    s.loading = false;
                    s.error = Some(reason);
                    s.failed_at = Some(Instant::now());
                    true
                });
                Err(e)
            }
        }
    }

    /// Unloads least recently used idle models until `need` more bytes fit the budget.
    fn make_room(&self, loading: &Slot, need: u64) -> Result<(), ServeError> {
        let max = self.max_loaded_bytes;
        if max == 0 {
            return Ok(());
        }
        if need > max {
            return Err(ServeError::Unavailable {
                model: loading.config.name.clone(),
                reason: format!("it needs {need} bytes; registry.max_loaded_bytes is {max}"),
            });
        }
        loop {
            let slots = self.slots();
            let used: u64 = slots.iter().filter_map(|s| s.model()).map(|m| m.bytes).sum();
            if used + need <= max {
                return Ok(());
            }
            let mut idle: Vec<&Arc<Slot>> =
                slots.iter().filter(|s| !std::ptr::eq(s.as_ref(), loading) && s.model().is_some()).collect();
            idle.sort_by_key(|s| s.last_used.load(Ordering::Relaxed));
            // the oldest one no request holds: checked and taken under the slot's lock, which
            // requests take to clone the model out
            let evicted = idle.iter().find_map(|s| {
                let mut taken = None;
                s.state.modify(|st| match &st.model {
                    Some(m) if Arc::strong_count(m) == 1 => {
                        taken = st.model.take();
                        true
                    }
                    _ => false,
                });
                taken
            });
            let Some(m) = evicted else {
                return Err(ServeError::Unavailable {
                    model: loading.config.name.clone(),
                    reason: format!(
                        "registry.max_loaded_bytes ({max}) is held by models serving requests: {used} bytes loaded, \
                         {need} more needed"
                    ),
                });
            };
            tracing::info!(model = %m.name, bytes = m.bytes, for_model = %loading.config.name, "model unloaded to make room");
            self.metrics.model_unloads.get_or_create(&m.label()).inc();
            m.shutdown();
        }
    }
}

fn new_slot(config: ModelConfig) -> Arc<Slot> {
    let file = ModelFile::probe(&config.path).unwrap_or(ModelFile::Other);
    Arc::new(Slot { config, file, state: StateCell::default(), last_used: AtomicU64::new(0) })
}

/// A slot's state behind a lock held only to read or change it, and a way to wait for a
/// change.
#[derive(Debug, Default)]
struct StateCell {
    value: std::sync::Mutex<SlotState>,
    changed: Notify,
}

impl StateCell {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.value.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on the state under the lock; if it says it changed something, wakes the
    /// waiters. Returns what `f` said.
    fn modify(&self, f: impl FnOnce(&mut SlotState) -> bool) -> bool {
        let changed = f(&mut self.lock());
        if changed {
            self.changed.notify_waiters();
        }
        changed
    }

    /// The state once `done` holds for it.
    async fn wait_for(&self, done: impl Fn(&SlotState) -> bool) -> SlotState {
        loop {
            let notified = self.changed.notified();
            let mut notified = std::pin::pin!(notified);
            // registered before looking, so a change between the look and the wait is seen
            notified.as_mut().enable();
            {
                let s = self.lock();
                if done(&s) {
                    return s.clone();
                }
            }
            notified.await;
        }
    }
}

fn file_len(config: &ModelConfig) -> u64 {
    std::fs::metadata(&config.path).map_or(0, |m| m.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BatchingConfig, GenerationConfig};

    fn bundled() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2.wedge")
    }

    /// The bundled package with one more metadata entry: the same model under a new digest.
    fn resigned(tag: &str) -> Vec<u8> {
        let bytes = std::fs::read(bundled()).unwrap();
        let mut p = wedge::Package::from_bytes(&bytes).unwrap().0;
        p.config["wedge_test_tag"] = tag.into();
        p.to_bytes(1).unwrap().0
    }

    fn registry(dir: &std::path::Path, names: &[&str], max_loaded_bytes: u64) -> Arc<ModelRegistry> {
        let metrics = Arc::new(Metrics::new(&mut prometheus_client::registry::Registry::default()));
        let loader = Loader::new(
            wedge::Device::cpu(),
            BatchingConfig::default(),
            GenerationConfig::default(),
            crate::config::BreakerConfig::default(),
            metrics.clone(),
        );
        let models = names
            .iter()
            .map(|n| {
                let path = dir.join(format!("{n}.wedge"));
                std::fs::copy(bundled(), &path).unwrap();
                ModelConfig {
                    name: n.to_string(),
                    path,
                    version: None,
                    aliases: vec![format!("{n}-alias")],
                    batching: None,
                    preload: Some(false),
                    versions: Vec::new(),
                }
            })
            .collect();
        let config = RegistryConfig { max_loaded_bytes, load_timeout_secs: 60, ..RegistryConfig::default() };
        Arc::new(ModelRegistry::new(models, loader, &config, metrics))
    }

    fn states(r: &ModelRegistry) -> Vec<(String, &'static str)> {
        r.index().into_iter().map(|e| (e.name, e.state)).collect()
    }

    /// Models load on their first request (by name or alias); a reload swaps in a changed
    /// file while holders of the old model finish on it; a damaged file leaves the old model
    /// serving and says why; an unloaded model loads again on its next request.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn models_load_on_demand_and_reload_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path(), &["a", "b"], 0);
        assert_eq!(states(&r), [("a".into(), "UNAVAILABLE"), ("b".into(), "UNAVAILABLE")]);
        assert!(r.loaded().is_empty());
        let held = r.get("a-alias").await.unwrap();
        assert_eq!(states(&r), [("a".into(), "READY"), ("b".into(), "UNAVAILABLE")]);
        assert!(Arc::ptr_eq(&held, &r.get("a").await.unwrap()), "loaded once");
        assert!(matches!(r.get("c").await, Err(ServeError::UnknownModel(_))));

        // an unchanged file is not reloaded; a changed one is
        assert!(!tokio::task::block_in_place(|| r.reload_if_changed(&r.slots()[0])).unwrap());
        std::fs::write(dir.path().join("a.wedge"), resigned("v2")).unwrap();
        assert!(tokio::task::block_in_place(|| r.reload_if_changed(&r.slots()[0])).unwrap());
        let new = r.get("a").await.unwrap();
        assert_ne!(new.digest, held.digest);
        let e = held.embedding().unwrap();
        assert_eq!(e.embedder.embed(&["the old one still runs"]).unwrap()[0].len(), e.dim);

        // a damaged file: the reload fails, the loaded model keeps serving
        let mut bad = resigned("v3");
        let at = bad.len() - 100;
        bad[at] ^= 0x55;
        std::fs::write(dir.path().join("a.wedge"), bad).unwrap();
        let err = r.reload("a").await.unwrap_err().to_string();
        assert!(Arc::ptr_eq(&r.get("a").await.unwrap(), &new), "the old version serves on");
        let line = r.index().into_iter().find(|e| e.name == "a").unwrap();
        assert_eq!((line.state, line.digest.as_str()), ("READY", new.digest.as_str()));
        assert!(line.reason.contains("checksum") && err.ends_with(&line.reason), "{err} / {}", line.reason);

        r.unload("a").unwrap();
        assert_eq!(states(&r)[0].1, "UNAVAILABLE");
        std::fs::write(dir.path().join("a.wedge"), resigned("v4")).unwrap();
        assert_ne!(r.get("a").await.unwrap().digest, new.digest, "loads the current file on its next request");
    }

    /// With a budget for one model, loading another unloads the least recently used one that
    /// no request holds; when every loaded model is held, the load is refused, naming the
    /// budget, and nothing is unloaded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_memory_budget_unloads_the_least_recently_used_idle_model() {
        let dir = tempfile::tempdir().unwrap();
        let one = registry(dir.path(), &["probe"], 0).get("probe").await.unwrap().bytes;
        let r = registry(dir.path(), &["a", "b", "c"], one + one / 2);
        drop(r.get("a").await.unwrap());
        drop(r.get("b").await.unwrap());
        assert_eq!(states(&r), [("a".into(), "UNAVAILABLE"), ("b".into(), "READY"), ("c".into(), "UNAVAILABLE")]);
        let held = r.get("b").await.unwrap();
        match r.get("c").await {
            Err(ServeError::Unavailable { model, reason }) => {
                assert_eq!(model, "c");
                assert!(reason.contains("max_loaded_bytes"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(states(&r)[1].1, "READY", "a model with a request in flight stays");
        drop(held);
        // (the failed load is reported for a few seconds rather than retried per request)
        assert!(matches!(r.get("c").await, Err(ServeError::Unavailable { .. })));
        r.reload("c").await.unwrap();
        assert_eq!(states(&r), [("a".into(), "UNAVAILABLE"), ("b".into(), "UNAVAILABLE"), ("c".into(), "READY")]);
        assert!(r.loaded_bytes() <= one + one / 2);
    }

    /// 10,000 callers split by the weights within 2 points; each caller always lands on the
    /// same version; pinning reaches any version, weight 0 included; a changed configuration
    /// re-weighs without reloading the versions it keeps.
    #[test]
    fn callers_split_by_weight_and_stay_on_their_version() {
        let versions = |weights: &[(&str, u32)]| ModelConfig {
            name: "m".into(),
            path: Default::default(),
            version: None,
            aliases: vec![],
            batching: None,
            preload: Some(false),
            versions: weights
                .iter()
                .map(|(v, w)| crate::config::VersionConfig { version: v.to_string(), path: bundled(), weight: *w })
                .collect(),
        };
        let entry = new_entry(&versions(&[("2", 90), ("3", 10), ("4", 0)]), None);
        let mut counts = HashMap::new();
        for caller in 0..10_000 {
            let id = format!("user-{caller}");
            let v = entry.route(Some(&id), None).unwrap().version().to_string();
            assert_eq!(entry.route(Some(&id), None).unwrap().version(), v, "sticky");
            *counts.entry(v).or_insert(0) += 1;
        }
        let share = |v: &str| f64::from(*counts.get(v).unwrap_or(&0)) / 100.0;
        println!("10,000 callers over 90/10/0: {:.2}% / {:.2}% / {:.2}%", share("2"), share("3"), share("4"));
        assert!((share("2") - 90.0).abs() <= 2.0 && (share("3") - 10.0).abs() <= 2.0, "{counts:?}");
        assert_eq!(share("4"), 0.0);
        assert_eq!(entry.route(Some("anyone"), Some("4")).unwrap().version(), "4");
        assert!(matches!(entry.route(None, Some("9")), Err(ServeError::UnknownModel(m)) if m == "m version 9"));
        for _ in 0..50 {
            assert_ne!(entry.route(None, None).unwrap().version(), "4", "no caller id: still by weight");
        }
        // a new configuration keeps the slot of an unchanged version
        let next = new_entry(&versions(&[("2", 10), ("3", 90)]), Some(&entry));
        assert!(Arc::ptr_eq(&next.versions[0].0, &entry.versions[0].0));
        assert_eq!(next.versions.iter().map(|(_, w)| *w).collect::<Vec<_>>(), [10, 90]);
    }
}
