//! The prediction cache, of embeddings and of generated completions: ordered [`Tier`]s behind
//! one [`Cache`]. A lookup goes down the tiers (memory, disk, Redis) and fills the faster ones
//! with what a slower one had; a computed value goes into every tier. Concurrent misses of one
//! key share one computation (single flight). Every tier's lookups are counted by tier and
//! result, and timed.

mod disk;
mod memory;
mod redis_tier;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use tracing::Instrument;

pub use disk::DiskCache;
pub use memory::MemoryCache;
pub use redis_tier::RedisTier;

use crate::ServeError;
use crate::batcher::Vector;
use crate::completions::Completion;
use crate::config::CacheConfig;
use crate::metrics::{CacheLabel, CacheOpLabel, Metrics};

/// A cache key: SHA-256 of the model digest, the options that change the output and the
/// canonical input.
pub type Key = [u8; 32];

/// Builds the key of one value. `canonical` is the input as the model sees it (token ids),
/// so texts that tokenize alike share an entry.
pub fn key(model_digest: &str, options: &str, canonical: &[u32]) -> Key {
    let mut h = Sha256::new();
    h.update(b"wedge-cache-v1\0");
    h.update((model_digest.len() as u64).to_le_bytes());
    h.update(model_digest.as_bytes());
    h.update((options.len() as u64).to_le_bytes());
    h.update(options.as_bytes());
    for id in canonical {
        h.update(id.to_le_bytes());
    }
    h.finalize().into()
}

/// A cached value.
#[derive(Clone, Debug, PartialEq)]
pub enum Cached {
    /// An embedding.
    Vector(Vector),
    /// A generated completion.
    Completion(Arc<Completion>),
}

impl Cached {
    /// Bytes it holds in memory, roughly.
    fn weight(&self) -> u32 {
        let bytes = match self {
            Cached::Vector(v) => v.len() * 4,
            Cached::Completion(c) => c.heap_bytes(),
        };
        u32::try_from(bytes + 64).unwrap_or(u32::MAX)
    }
}

/// One level of the cache. A tier never fails a request: one that cannot read answers
/// `None`, one that cannot write drops the value (and counts it in its own metrics).
pub trait Tier: Send + Sync + std::fmt::Debug {
    /// Its name in metrics and logs: `memory`, `disk`.
    fn name(&self) -> &'static str;
    /// A live, intact value, or `None`.
    fn get<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Option<Cached>>;
    /// Stores a value (a slow tier may finish in the background).
    fn put(&self, key: Key, value: Cached) -> BoxFuture<'_, ()>;
    /// Blocks until every write so far is stored.
    fn flush(&self) {}
    /// Stores pending writes and stops; later writes are dropped.
    fn close(&self) {}
}

/// Where a value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Found in the named tier.
    Tier(&'static str),
    /// Computed by this request.
    Computed,
    /// Computed by a concurrent request for the same key, which this one waited for.
    Shared,
}

impl Origin {
    /// Whether the value was not computed for this request.
    pub fn is_hit(self) -> bool {
        self != Origin::Computed
    }
}

type Flight = Arc<OnceCell<Result<Cached, ServeError>>>;

/// The tiers, in lookup order, and the computations in flight.
pub struct Cache {
    tiers: Vec<Arc<dyn Tier>>,
    in_flight: Mutex<HashMap<Key, Flight>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("tiers", &self.tiers).finish_non_exhaustive()
    }
}

impl Cache {
    /// The tiers `config` asks for (memory unless its bound is 0, then disk when it has a
    /// path, then Redis when it has a URL); `None` when the cache is off.
    pub fn open(config: &CacheConfig, metrics: Arc<Metrics>) -> Result<Option<Cache>, ServeError> {
        if !config.enabled {
            return Ok(None);
        }
        let ttl = Duration::from_secs(config.ttl_secs);
        let mut tiers: Vec<Arc<dyn Tier>> = Vec::new();
        if config.memory_bytes > 0 {
            tiers.push(Arc::new(MemoryCache::new(config.memory_bytes, ttl)));
        }
        if let Some(p) = &config.disk_path {
            tiers.push(Arc::new(DiskCache::open(p, config.disk_bytes, ttl, metrics.clone())?));
        }
        if let Some(url) = &config.redis_url {
            let timeout = Duration::from_millis(config.redis_timeout_ms);
            tiers.push(Arc::new(RedisTier::new(url, &config.redis_prefix, ttl, timeout, metrics.clone())?));
        }
        Ok(Some(Cache::new(tiers, metrics)))
    }

    /// A cache over `tiers`, fastest first.
    pub fn new(tiers: Vec<Arc<dyn Tier>>, metrics: Arc<Metrics>) -> Cache {
        Cache { tiers, in_flight: Mutex::new(HashMap::new()), metrics }
    }

    /// The tiers' names, in lookup order.
    pub fn tier_names(&self) -> Vec<&'static str> {
        self.tiers.iter().map(|t| t.name()).collect()
    }

    /// The value of `key` from the first tier that has it (copied into the tiers above it).
    pub async fn get(&self, key: &Key) -> Option<(Cached, Origin)> {
        for (i, tier) in self.tiers.iter().enumerate() {
            let t0 = Instant::now();
            let span = tracing::debug_span!("cache_get", tier = tier.name(), hit = tracing::field::Empty);
            let found = tier.get(key).instrument(span.clone()).await;
            span.record("hit", found.is_some());
            self.observe(tier.name(), "get", t0);
            self.count(tier.name(), if found.is_some() { "hit" } else { "miss" });
            if let Some(v) = found {
                for upper in &self.tiers[..i] {
                    let t0 = Instant::now();
                    upper.put(*key, v.clone()).await;
                    self.observe(upper.name(), "put", t0);
                }
                return Some((v, Origin::Tier(tier.name())));
            }
        }
        None
    }

    /// Stores `value` in every tier.
    pub async fn put(&self, key: Key, value: Cached) {
        for tier in &self.tiers {
            let t0 = Instant::now();
            tier.put(key, value.clone()).instrument(tracing::debug_span!("cache_put", tier = tier.name())).await;
            self.observe(tier.name(), "put", t0);
        }
    }

    /// The value of `key` from the tiers, else from `compute` (then stored in every tier).
    /// Concurrent calls for one key share the first one's lookup and computation; its error
    /// reaches them all, and the next call tries afresh.
    pub async fn get_or_compute<F>(&self, key: Key, compute: F) -> Result<(Cached, Origin), ServeError>
    where
        F: Future<Output = Result<Cached, ServeError>>,
    {
        let flight: Flight = self.lock().entry(key).or_default().clone();
        let mut origin = Origin::Shared;
        let result = flight
            .get_or_init(|| {
                let origin = &mut origin;
                async move {
                    if let Some((v, from)) = self.get(&key).await {
                        *origin = from;
                        return Ok(v);
                    }
                    *origin = Origin::Computed;
                    let v = compute.await?;
                    self.put(key, v.clone()).await;
                    Ok(v)
                }
            })
            .await
            .clone();
        let mut in_flight = self.lock();
        if in_flight.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
            in_flight.remove(&key);
        }
        drop(in_flight);
        result.map(|v| (v, origin))
    }

    /// Blocks until every tier has stored the writes so far.
    pub fn flush(&self) {
        for t in &self.tiers {
            t.flush();
        }
    }

    /// Stores pending writes and stops every tier.
    pub fn close(&self) {
        for t in &self.tiers {
            t.close();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Flight>> {
        self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn count(&self, tier: &'static str, result: &'static str) {
        self.metrics.cache.get_or_create(&CacheLabel { tier, result }).inc();
    }

    fn observe(&self, tier: &'static str, op: &'static str, t0: Instant) {
        self.metrics.cache_seconds.get_or_create(&CacheOpLabel { tier, op }).observe(t0.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn metrics() -> Arc<Metrics> {
        Arc::new(Metrics::new(&mut Registry::default()))
    }

    fn vector(x: f32) -> Cached {
        Cached::Vector(vec![x, x + 1.0].into())
    }

    #[test]
    fn keys_separate_models_options_and_inputs() {
        let k = key("d1", "", &[1, 2, 3]);
        assert_eq!(k, key("d1", "", &[1, 2, 3]));
        assert_ne!(k, key("d2", "", &[1, 2, 3]));
        assert_ne!(k, key("d1", "x", &[1, 2, 3]));
        assert_ne!(k, key("d1", "", &[1, 2]));
        assert_ne!(key("ab", "c", &[]), key("a", "bc", &[]));
    }

    /// Lookups go down the tiers and fill the upper ones; computed values go everywhere;
    /// each tier's hits and misses are counted under its name.
    #[tokio::test]
    async fn lookups_go_down_the_tiers_and_fill_the_upper_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::default();
        let m = Arc::new(Metrics::new(&mut registry));
        let disk =
            Arc::new(DiskCache::open(&dir.path().join("c.redb"), 1 << 20, Duration::from_secs(60), m.clone()).unwrap());
        disk.put([1; 32], vector(1.0));
        disk.flush();
        let memory = Arc::new(MemoryCache::new(1 << 20, Duration::from_secs(60)));
        let cache = Cache::new(vec![memory.clone(), disk.clone()], m.clone());
        assert_eq!(cache.tier_names(), ["memory", "disk"]);
        assert_eq!(cache.get(&[1; 32]).await, Some((vector(1.0), Origin::Tier("disk"))));
        assert_eq!(memory.get(&[1; 32]).await, Some(vector(1.0)), "filled from the disk tier");
        assert_eq!(cache.get(&[1; 32]).await, Some((vector(1.0), Origin::Tier("memory"))));
        let (v, o) = cache.get_or_compute([2; 32], async { Ok(vector(2.0)) }).await.unwrap();
        assert_eq!((v, o), (vector(2.0), Origin::Computed));
        disk.flush();
        assert_eq!(disk.lookup(&[2; 32]), Some(vector(2.0)), "computed values reach every tier");
        let n = |tier, result| m.cache.get_or_create(&CacheLabel { tier, result }).get();
        assert_eq!((n("memory", "hit"), n("memory", "miss"), n("disk", "hit"), n("disk", "miss")), (1, 2, 1, 1));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains(r#"wedge_cache_tier_seconds_count{tier="disk",op="get"} 2"#), "{text}");
    }

    /// Concurrent misses of one key run one computation; an error reaches every waiter and is
    /// not kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_share_one_computation() {
        let cache = Arc::new(Cache::new(vec![Arc::new(MemoryCache::new(1 << 20, Duration::from_secs(60)))], metrics()));
        let runs = Arc::new(AtomicUsize::new(0));
        let call = |x: f32, fail: bool| {
            let (cache, runs) = (cache.clone(), runs.clone());
            tokio::spawn(async move {
                cache
                    .get_or_compute([7; 32], async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if fail { Err(ServeError::Inference("boom".into())) } else { Ok(vector(x)) }
                    })
                    .await
            })
        };
        let failed: Vec<_> = (0..4).map(|_| call(0.0, true)).collect();
        for f in failed {
            assert!(matches!(f.await.unwrap(), Err(ServeError::Inference(m)) if m == "boom"));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let ok: Vec<_> = (0..4).map(|i| call(i as f32, false)).collect();
        let mut got = Vec::new();
        for f in ok {
            got.push(f.await.unwrap().unwrap());
        }
        let origins: Vec<Origin> = got.iter().map(|g| g.1).collect();
        assert!(got.iter().all(|g| g.0 == got[0].0), "every waiter gets the one computation's value");
        assert_eq!(runs.load(Ordering::SeqCst), 2, "the error was not kept; one more run");
        assert_eq!(origins.iter().filter(|o| **o == Origin::Computed).count(), 1, "{origins:?}");
    }
}
