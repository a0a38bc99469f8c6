//! The memory tier: `moka`, bounded by the bytes of the stored values, entries living a TTL.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::{Cached, Key, Tier};

/// Tier 1.
#[derive(Debug)]
pub struct MemoryCache(moka::future::Cache<Key, Cached>);

impl MemoryCache {
    /// A tier bounded by `bytes` of values, entries living `ttl`.
    pub fn new(bytes: u64, ttl: Duration) -> MemoryCache {
        MemoryCache(
            moka::future::Cache::builder()
                .max_capacity(bytes)
                .weigher(|_k: &Key, v: &Cached| v.weight())
                .time_to_live(ttl)
                .build(),
        )
    }
}

impl Tier for MemoryCache {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn get<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Option<Cached>> {
        Box::pin(self.0.get(key))
    }

    fn put(&self, key: Key, value: Cached) -> BoxFuture<'_, ()> {
        Box::pin(self.0.insert(key, value))
    }
}
