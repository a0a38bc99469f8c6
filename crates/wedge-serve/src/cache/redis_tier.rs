//! The Redis tier, shared by the nodes of a region: a miss on one node that another has
//! computed is a hit. Values are the disk tier's checksummed records, under
//! `<prefix><hex key>` with the cache's TTL.
//!
//! Redis never fails a request: every call is bounded by a timeout, and consecutive failures
//! open the tier's own breaker, which skips Redis for a while and then lets one request try
//! it again (half-open). A call that finds its connection lost (Redis restarted) tries once
//! more on the new one. Writes go in the background. Errors, timeouts, skipped calls and
//! damaged values are counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use super::disk::{decode, encode, now_ms};
use super::{Cached, Key, Tier};
use crate::ServeError;
use crate::metrics::{CacheOpLabel, Metrics};

/// Consecutive failures that open the breaker.
const OPEN_AFTER: u32 = 3;
/// How long the breaker stays open before one call may try Redis again.
const COOL_DOWN: Duration = Duration::from_secs(2);

/// Tier 3.
pub struct RedisTier {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    prefix: String,
    ttl: Duration,
    timeout: Duration,
    health: Arc<Health>,
}

/// The tier's breaker and metrics, shared with its background writes.
struct Health {
    failures: AtomicU32,
    /// Milliseconds since `epoch` until which the breaker is open (0: closed).
    open_until: AtomicU64,
    epoch: Instant,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTier")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisTier {
    /// A tier on the Redis at `url` (`redis://host:port[/db]`); connects on first use, so a
    /// node starts while Redis is down.
    pub fn new(
        url: &str,
        prefix: &str,
        ttl: Duration,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<RedisTier, ServeError> {
        let client =
            redis::Client::open(url).map_err(|e| ServeError::Config(format!("cache.redis_url `{url}`: {e}")))?;
        Ok(RedisTier {
            client,
            conn: OnceCell::new(),
            prefix: prefix.to_string(),
            ttl,
            timeout,
            health: Arc::new(Health {
                failures: AtomicU32::new(0),
                open_until: AtomicU64::new(0),
                epoch: Instant::now(),
                metrics,
            }),
        })
    }

    fn redis_key(&self, key: &Key) -> String {
        let mut k = String::with_capacity(self.prefix.len() + 64);
        k.push_str(&self.prefix);
        for b in key {
            k.push_str(&format!("{b:02x}"));
        }
        k
    }

    /// The shared connection (made on first use; it reconnects by itself afterwards).
    async fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        self.conn.get_or_try_init(|| self.client.get_connection_manager_with_config(config)).await.cloned()
    }

    async fn read(&self, key: &Key) -> Option<Cached> {
        let h = &self.health;
        if !h.allowed() {
            h.metrics.cache_tier_errors.get_or_create(&label("skipped")).inc();
            return None;
        }
        let k = self.redis_key(key);
        let got = tokio::time::timeout(self.timeout, async {
            let mut c = self.connection().await?;
            match c.get::<_, Option<Vec<u8>>>(&k).await {
                // the connection was lost (Redis restarted): the manager is reconnecting now,
                // and this call waits for that rather than failing
                Err(e) if lost(&e) => c.get::<_, Option<Vec<u8>>>(&k).await,
                other => other,
            }
        })
        .await;
        match got {
            Ok(Ok(bytes)) => {
                h.succeeded();
                match decode(&bytes?) {
                    Some(r) if r.expires > now_ms() => Some(r.value),
                    Some(_) => None,
                    None => {
                        h.metrics.cache_tier_errors.get_or_create(&label("damaged")).inc();
                        tracing::warn!("redis cache tier: a value failed its checksum; not served");
                        None
                    }
                }
            }
            Ok(Err(e)) => {
                h.failed("get", &e.to_string());
                None
            }
            Err(_) => {
                h.failed("get", "timed out");
                None
            }
        }
    }
}

impl Health {
    /// Whether a call may go to Redis now: the breaker is closed, or its cool-down is over
    /// (then this call is the probe, and the next wait for its outcome).
    fn allowed(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        // one probe per cool-down: whoever moves the deadline on tries
        now >= until
            && self
                .open_until
                .compare_exchange(until, now + COOL_DOWN.as_millis() as u64, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    fn succeeded(&self) {
        self.failures.store(0, Ordering::Release);
        if self.open_until.swap(0, Ordering::AcqRel) != 0 {
            tracing::info!("redis cache tier: reachable again, breaker closed");
            self.metrics.cache_tier_open.get_or_create(&label("breaker")).set(0);
        }
    }

    fn failed(&self, op: &'static str, what: &str) {
        self.metrics.cache_tier_errors.get_or_create(&label(op)).inc();
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= OPEN_AFTER {
            let until = self.epoch.elapsed().as_millis() as u64 + COOL_DOWN.as_millis() as u64;
            if self.open_until.swap(until, Ordering::AcqRel) == 0 {
                tracing::warn!("redis cache tier: {what}; breaker open, local tiers only for {COOL_DOWN:?}");
                self.metrics.cache_tier_open.get_or_create(&label("breaker")).set(1);
            }
        }
    }
}

/// An error after which the connection manager reconnects: one retry then goes to the new
/// connection (a restarted Redis is used again at once, not after the breaker's cool-down).
fn lost(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

fn label(op: &'static str) -> CacheOpLabel {
    CacheOpLabel { tier: "redis", op }
}

impl Tier for RedisTier {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn get<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Option<Cached>> {
        Box::pin(self.read(key))
    }

    /// Writes in the background (bounded by the timeout): a request never waits for Redis,
    /// except to connect the first time.
    fn put(&self, key: Key, value: Cached) -> BoxFuture<'_, ()> {
        let h = self.health.clone();
        if !h.allowed() {
            h.metrics.cache_tier_errors.get_or_create(&label("skipped")).inc();
            return Box::pin(std::future::ready(()));
        }
        let ttl = self.ttl.max(Duration::from_secs(1));
        let record = encode(0, now_ms().saturating_add(ttl.as_millis() as u64), &value);
        let k = self.redis_key(&key);
        let timeout = self.timeout;
        Box::pin(async move {
            let mut conn = match tokio::time::timeout(timeout, self.connection()).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return h.failed("put", &e.to_string()),
                Err(_) => return h.failed("put", "timed out connecting"),
            };
            tokio::spawn(async move {
                let set = async {
                    match conn.set_ex::<_, _, ()>(&k, &record, ttl.as_secs()).await {
                        Err(e) if lost(&e) => conn.set_ex::<_, _, ()>(&k, &record, ttl.as_secs()).await,
                        other => other,
                    }
                };
                match tokio::time::timeout(timeout, set).await {
                    Ok(Ok(())) => h.succeeded(),
                    Ok(Err(e)) => h.failed("put", &e.to_string()),
                    Err(_) => h.failed("put", "timed out"),
                }
            });
        })
    }
}
