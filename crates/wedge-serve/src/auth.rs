//! API keys (kept only as SHA-256 digests, compared in constant time) and per-key rate limits.

use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ServeError;
use crate::config::{AuthConfig, LimitsConfig};

/// Who a request is, for rate limiting: the digest of its key, or its client address when
/// the server is open.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Caller(String);

impl Caller {
    /// Its id: a short digest of its API key, or its address when the server is open.
    pub fn id(&self) -> &str {
        &self.0
    }
}

/// The accepted keys.
#[derive(Debug)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

fn hex_digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn parse_hex(h: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if h.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl ApiKeys {
    /// The keys of the configuration; clear-text ones are hashed here and not kept.
    pub fn new(c: &AuthConfig) -> Result<ApiKeys, ServeError> {
        let mut digests = Vec::new();
        for h in &c.api_key_sha256 {
            digests.push(parse_hex(h).ok_or_else(|| ServeError::Config("api_key_sha256: 64 hex digits".into()))?);
        }
        digests.extend(c.api_keys.iter().map(|k| hex_digest(k.as_bytes())));
        Ok(ApiKeys { digests })
    }

    /// Whether keys are required.
    pub fn required(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Checks a presented key (`None`: none given). Every stored digest is compared, in
    /// constant time, so timing says nothing about which or how much matched.
    pub fn check(&self, presented: Option<&str>, client: &str) -> Result<Caller, ServeError> {
        if !self.required() {
            return Ok(Caller(format!("addr:{client}")));
        }
        let key = presented.ok_or(ServeError::Unauthorized)?;
        let d = hex_digest(key.as_bytes());
        let mut ok = subtle::Choice::from(0u8);
        for stored in &self.digests {
            ok |= stored.ct_eq(&d);
        }
        if bool::from(ok) {
            let short: String = d[..8].iter().map(|b| format!("{b:02x}")).collect();
            Ok(Caller(format!("key:{short}")))
        } else {
            Err(ServeError::Unauthorized)
        }
    }
}

/// Per-caller rate limits (GCRA, from `governor`).
pub struct RateLimits {
    limiter: Option<DefaultKeyedRateLimiter<Caller>>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits").field("enabled", &self.limiter.is_some()).finish()
    }
}

impl RateLimits {
    /// From the limits section; off when `rate_limit_per_sec` is 0.
    pub fn new(l: &LimitsConfig) -> RateLimits {
        let limiter = NonZeroU32::new(l.rate_limit_per_sec).map(|rate| {
            let burst = l.rate_limit_burst.and_then(NonZeroU32::new).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        RateLimits { limiter }
    }

    /// Admits one request of `caller`, or says when to retry.
    pub fn check(&self, caller: &Caller) -> Result<(), ServeError> {
        let Some(l) = &self.limiter else { return Ok(()) };
        l.check_key(caller).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            ServeError::RateLimited { retry_after_s: wait.as_secs_f64().ceil().max(1.0) as u64 }
        })?;
        // Forget idle callers now and then so the table stays small.
        if l.len() > 10_000 {
            l.retain_recent();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_by_digest() {
        let digest: String = hex_digest(b"s3cret").iter().map(|b| format!("{b:02x}")).collect();
        let keys = ApiKeys::new(&AuthConfig { api_key_sha256: vec![digest], api_keys: vec!["other".into()] }).unwrap();
        assert!(keys.check(Some("s3cret"), "a").is_ok());
        assert!(keys.check(Some("other"), "a").is_ok());
        assert!(matches!(keys.check(Some("s3cre"), "a"), Err(ServeError::Unauthorized)));
        assert!(matches!(keys.check(None, "a"), Err(ServeError::Unauthorized)));
        let open = ApiKeys::new(&AuthConfig::default()).unwrap();
        assert!(open.check(None, "1.2.3.4").is_ok());
    }

    #[test]
    fn rate_limits_are_per_caller() {
        let l = RateLimits::new(&LimitsConfig {
            rate_limit_per_sec: 1,
            rate_limit_burst: Some(2),
            ..LimitsConfig::default()
        });
        let (a, b) = (Caller("a".into()), Caller("b".into()));
        assert!(l.check(&a).is_ok() && l.check(&a).is_ok());
        assert!(matches!(l.check(&a), Err(ServeError::RateLimited { retry_after_s: 1 })));
        assert!(l.check(&b).is_ok());
        assert!(RateLimits::new(&LimitsConfig::default()).check(&a).is_ok());
    }
}
