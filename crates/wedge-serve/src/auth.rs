//! Who a request is and what it may do: API keys (kept only as SHA-256 digests, compared in
//! constant time), JWT bearer tokens (HS256 with a shared secret, or the public keys of a JWKS
//! file) with per-model scopes, per-caller rate limits (GCRA, `governor`) and quotas
//! (requests and tokens per period).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ServeError;
use crate::config::{AuthConfig, JwtConfig, LimitsConfig, QuotaConfig};

/// Requests and tokens a caller may use per quota period; 0: no bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaLimits {
    /// Requests per period.
    pub requests: u64,
    /// Tokens per period.
    pub tokens: u64,
}

/// Who a request is (for rate limits, quotas and A/B routing) and what it may use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    id: String,
    /// The models it may use; `None`: all.
    models: Option<Arc<[String]>>,
    metrics: bool,
    quota: QuotaLimits,
}

impl Caller {
    /// Its id: a short digest of its API key (`key:…`), its token's subject (`jwt:…`), or its
    /// address when the server is open (`addr:…`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether it may use the model named `model`.
    pub fn may_use(&self, model: &str) -> bool {
        self.models.as_ref().is_none_or(|m| m.iter().any(|n| n == "*" || n == model))
    }

    /// Whether it may read `/metrics`.
    pub fn may_read_metrics(&self) -> bool {
        self.metrics
    }

    /// Its quota.
    pub fn quota(&self) -> QuotaLimits {
        self.quota
    }
}

/// One accepted API key.
#[derive(Debug)]
struct Key {
    digest: [u8; 32],
    models: Option<Arc<[String]>>,
    metrics: bool,
    quota: QuotaLimits,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
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

/// The accepted credentials: API keys and JWT settings.
#[derive(Debug)]
pub struct Credentials {
    keys: Vec<Key>,
    jwt: Option<JwtVerifier>,
    default_quota: QuotaLimits,
}

impl Credentials {
    /// The credentials of the configuration; clear-text keys are hashed here and not kept,
    /// a JWT secret or JWKS file is read here.
    pub fn new(c: &AuthConfig) -> Result<Credentials, ServeError> {
        let q = &c.quota;
        let default_quota = QuotaLimits { requests: q.requests, tokens: q.tokens };
        let simple = |digest| Key { digest, models: None, metrics: true, quota: default_quota };
        let mut keys = Vec::new();
        for h in &c.api_key_sha256 {
            keys.push(simple(parse_hex(h).ok_or_else(|| ServeError::Config("api_key_sha256: 64 hex digits".into()))?));
        }
        keys.extend(c.api_keys.iter().map(|k| simple(sha256(k.as_bytes()))));
        for (i, k) in c.keys.iter().enumerate() {
            let bad = |m: &str| ServeError::Config(format!("auth.keys[{i}]: {m}"));
            let digest = match (&k.sha256, &k.key) {
                (Some(h), None) => parse_hex(h).ok_or_else(|| bad("sha256: 64 hex digits"))?,
                (None, Some(key)) => sha256(key.as_bytes()),
                _ => return Err(bad("give one of `sha256` and `key`")),
            };
            let quota = QuotaLimits {
                requests: k.requests.unwrap_or(default_quota.requests),
                tokens: k.tokens.unwrap_or(default_quota.tokens),
            };
            keys.push(Key { digest, models: k.models.clone().map(Into::into), metrics: k.metrics, quota });
        }
        let jwt = c.jwt.as_ref().map(JwtVerifier::new).transpose()?;
        Ok(Credentials { keys, jwt, default_quota })
    }

    /// Whether credentials are required.
    pub fn required(&self) -> bool {
        !self.keys.is_empty() || self.jwt.is_some()
    }

    /// Checks presented credentials (`None`: none given): a JWT when JWT settings are given
    /// and it looks like one, else an API key. Every stored key digest is compared, in
    /// constant time, so timing says nothing about which or how much matched.
    pub fn check(&self, presented: Option<&str>, client: &str) -> Result<Caller, ServeError> {
        if !self.required() {
            return Ok(Caller { id: format!("addr:{client}"), models: None, metrics: true, quota: self.default_quota });
        }
        let presented = presented.ok_or(ServeError::Unauthorized)?;
        if let Some(jwt) = &self.jwt
            && presented.split('.').count() == 3
        {
            return jwt.verify(presented, self.default_quota);
        }
        let d = sha256(presented.as_bytes());
        let mut found = None;
        for (i, stored) in self.keys.iter().enumerate() {
            if bool::from(stored.digest.ct_eq(&d)) {
                found = Some(i);
            }
        }
        let key = found.map(|i| &self.keys[i]).ok_or(ServeError::Unauthorized)?;
        let short: String = d[..8].iter().map(|b| format!("{b:02x}")).collect();
        Ok(Caller { id: format!("key:{short}"), models: key.models.clone(), metrics: key.metrics, quota: key.quota })
    }
}

/// Verifies JWTs.
struct JwtVerifier {
    secret: Option<DecodingKey>,
    /// The JWKS file's keys: `kid`, algorithm, key.
    public: Vec<(Option<String>, Algorithm, DecodingKey)>,
    base: Validation,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("secret", &self.secret.is_some())
            .field("public_keys", &self.public.len())
            .finish()
    }
}

/// The claims wedge reads (`exp`, `nbf`, `iss` and `aud` are checked by `jsonwebtoken`).
#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scp: Option<Vec<String>>,
}

/// The algorithm a JWK is for: its `alg`, else the usual one for its key type.
fn jwk_algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, KeyAlgorithm as K};
    if let Some(a) = jwk.common.key_algorithm {
        return Some(match a {
            K::RS256 => Algorithm::RS256,
            K::RS384 => Algorithm::RS384,
            K::RS512 => Algorithm::RS512,
            K::PS256 => Algorithm::PS256,
            K::PS384 => Algorithm::PS384,
            K::PS512 => Algorithm::PS512,
            K::ES256 => Algorithm::ES256,
            K::ES384 => Algorithm::ES384,
            K::EdDSA => Algorithm::EdDSA,
            _ => return None,
        });
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
        AlgorithmParameters::OctetKey(_) => None,
    }
}

impl JwtVerifier {
    fn new(c: &JwtConfig) -> Result<JwtVerifier, ServeError> {
        let bad = |m: String| ServeError::Config(format!("auth.jwt: {m}"));
        let secret = match (&c.hs256_secret, &c.hs256_secret_file) {
            (Some(s), None) => Some(s.as_bytes().to_vec()),
            (None, Some(p)) => {
                let mut s = std::fs::read(p).map_err(|e| bad(format!("{}: {e}", p.display())))?;
                if s.last() == Some(&b'\n') {
                    s.pop();
                }
                Some(s)
            }
            (None, None) => None,
            (Some(_), Some(_)) => return Err(bad("give one of hs256_secret and hs256_secret_file".into())),
        };
        if secret.as_ref().is_some_and(|s| s.len() < 32) {
            return Err(bad("the HS256 secret must be at least 32 bytes".into()));
        }
        let mut public = Vec::new();
        if let Some(p) = &c.jwks_file {
            let text = std::fs::read_to_string(p).map_err(|e| bad(format!("{}: {e}", p.display())))?;
            let set: jsonwebtoken::jwk::JwkSet =
                serde_json::from_str(&text).map_err(|e| bad(format!("{}: not a JWKS: {e}", p.display())))?;
            for (i, jwk) in set.keys.iter().enumerate() {
                let alg = jwk_algorithm(jwk)
                    .ok_or_else(|| bad(format!("{}: key {i}: not a signature key wedge can use", p.display())))?;
                let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(format!("{}: key {i}: {e}", p.display())))?;
                public.push((jwk.common.key_id.clone(), alg, key));
            }
        }
        if secret.is_none() && public.is_empty() {
            return Err(bad("give an HS256 secret or a JWKS file with keys".into()));
        }
        let mut base = Validation::new(Algorithm::HS256);
        base.set_required_spec_claims(&["exp", "sub"]);
        base.leeway = c.leeway_secs;
        base.validate_nbf = true;
        if let Some(iss) = &c.issuer {
            base.set_issuer(&[iss]);
        }
        match &c.audience {
            Some(aud) => base.set_audience(&[aud]),
            None => base.validate_aud = false,
        }
        Ok(JwtVerifier { secret: secret.map(|s| DecodingKey::from_secret(&s)), public, base })
    }

    fn verify(&self, token: &str, quota: QuotaLimits) -> Result<Caller, ServeError> {
        let invalid = |m: String| ServeError::InvalidToken(m);
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(e.to_string()))?;
        // the key is chosen by the header, and must be one for the header's algorithm: a
        // public key is never taken for an HMAC secret
        let key = if header.alg == Algorithm::HS256 {
            self.secret.as_ref()
        } else {
            self.public
                .iter()
                .filter(|(_, alg, _)| *alg == header.alg)
                .find(|(kid, _, _)| header.kid.is_none() || *kid == header.kid)
                .map(|(_, _, k)| k)
        };
        let key = key.ok_or_else(|| {
            invalid(format!(
                "no key for algorithm {:?}{}",
                header.alg,
                header.kid.map(|k| format!(", kid `{k}`")).unwrap_or_default()
            ))
        })?;
        let mut validation = self.base.clone();
        validation.algorithms = vec![header.alg];
        let claims =
            jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| invalid(e.to_string()))?.claims;
        let scopes: Vec<String> = claims
            .scope
            .iter()
            .flat_map(|s| s.split_whitespace().map(String::from))
            .chain(claims.scp.into_iter().flatten())
            .collect();
        let models: Vec<String> = scopes.iter().filter_map(|s| s.strip_prefix("model:").map(String::from)).collect();
        Ok(Caller {
            id: format!("jwt:{}", claims.sub),
            models: Some(models.into()),
            metrics: scopes.iter().any(|s| s == "metrics"),
            quota,
        })
    }
}

/// Per-caller rate limits (GCRA, from `governor`).
pub struct RateLimits {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
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
        l.check_key(&caller.id).map_err(|not_until| {
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

/// What a caller used in its current period.
#[derive(Clone, Copy, Debug)]
struct Window {
    start: Instant,
    requests: u64,
    tokens: u64,
}

/// Per-caller quotas: requests and tokens per period, counted by this node.
#[derive(Debug)]
pub struct Quotas {
    period: Duration,
    used: Mutex<HashMap<String, Window>>,
}

/// What a caller has left of its quota (`None`: no bound).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaLeft {
    /// Requests left in the period.
    pub requests: Option<u64>,
    /// Tokens left in the period.
    pub tokens: Option<u64>,
    /// Seconds until the period ends.
    pub reset_s: u64,
}

impl Quotas {
    /// Quotas counted over `period_secs`.
    pub fn new(c: &QuotaConfig) -> Quotas {
        Quotas { period: Duration::from_secs(c.period_secs.max(1)), used: Mutex::new(HashMap::new()) }
    }

    fn with_window<T>(&self, caller: &Caller, f: impl FnOnce(&mut Window, u64) -> T) -> T {
        let mut used = self.used.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if used.len() > 10_000 {
            used.retain(|_, w| now.duration_since(w.start) < self.period);
        }
        let w = used.entry(caller.id.clone()).or_insert(Window { start: now, requests: 0, tokens: 0 });
        if now.duration_since(w.start) >= self.period {
            *w = Window { start: now, requests: 0, tokens: 0 };
        }
        let reset_s = self.period.saturating_sub(now.duration_since(w.start)).as_secs_f64().ceil().max(1.0) as u64;
        f(w, reset_s)
    }

    /// Counts one request of `caller`, or refuses it (429 with the time to the period's end)
    /// when its requests are used up or its tokens are.
    pub fn admit(&self, caller: &Caller) -> Result<(), ServeError> {
        let q = caller.quota;
        if q == QuotaLimits::default() {
            return Ok(());
        }
        self.with_window(caller, |w, reset_s| {
            let over =
                |what: &'static str, limit: u64| ServeError::QuotaExceeded { what, limit, retry_after_s: reset_s };
            if q.requests > 0 && w.requests >= q.requests {
                return Err(over("requests", q.requests));
            }
            if q.tokens > 0 && w.tokens >= q.tokens {
                return Err(over("tokens", q.tokens));
            }
            w.requests += 1;
            Ok(())
        })
    }

    /// Counts `tokens` used by `caller` (a request may take its period past the bound; the
    /// next one is refused).
    pub fn charge(&self, caller: &Caller, tokens: u64) {
        if caller.quota.tokens > 0 {
            self.with_window(caller, |w, _| w.tokens = w.tokens.saturating_add(tokens));
        }
    }

    /// What `caller` has left.
    pub fn left(&self, caller: &Caller) -> QuotaLeft {
        let q = caller.quota;
        self.with_window(caller, |w, reset_s| QuotaLeft {
            requests: (q.requests > 0).then(|| q.requests.saturating_sub(w.requests)),
            tokens: (q.tokens > 0).then(|| q.tokens.saturating_sub(w.tokens)),
            reset_s,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeyConfig;
    use jsonwebtoken::{EncodingKey, Header};

    fn hex(d: [u8; 32]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn keys_are_checked_by_digest() {
        let c = AuthConfig {
            api_key_sha256: vec![hex(sha256(b"s3cret"))],
            api_keys: vec!["other".into()],
            ..AuthConfig::default()
        };
        let keys = Credentials::new(&c).unwrap();
        assert!(keys.check(Some("s3cret"), "a").is_ok());
        assert!(keys.check(Some("other"), "a").is_ok());
        assert!(matches!(keys.check(Some("s3cre"), "a"), Err(ServeError::Unauthorized)));
        assert!(matches!(keys.check(None, "a"), Err(ServeError::Unauthorized)));
        let open = Credentials::new(&AuthConfig::default()).unwrap();
        assert!(!open.required());
        assert_eq!(open.check(None, "1.2.3.4").unwrap().id(), "addr:1.2.3.4");
    }

    #[test]
    fn keys_carry_their_models_metrics_and_quota() {
        let mut c =
            AuthConfig { quota: QuotaConfig { period_secs: 60, requests: 100, tokens: 0 }, ..AuthConfig::default() };
        c.keys.push(KeyConfig {
            key: Some("team-a".into()),
            models: Some(vec!["minilm".into()]),
            metrics: false,
            tokens: Some(50),
            ..KeyConfig::default()
        });
        c.keys.push(KeyConfig { sha256: Some(hex(sha256(b"ops"))), metrics: true, ..KeyConfig::default() });
        let creds = Credentials::new(&c).unwrap();
        let a = creds.check(Some("team-a"), "x").unwrap();
        assert!(a.may_use("minilm") && !a.may_use("smollm2") && !a.may_read_metrics());
        assert_eq!(a.quota(), QuotaLimits { requests: 100, tokens: 50 });
        let ops = creds.check(Some("ops"), "x").unwrap();
        assert!(ops.may_use("smollm2") && ops.may_read_metrics());
        c.keys.push(KeyConfig { key: Some("k".into()), sha256: Some(hex(sha256(b"k"))), ..KeyConfig::default() });
        assert!(Credentials::new(&c).is_err(), "a key given twice over is refused");
    }

    #[test]
    fn rate_limits_are_per_caller() {
        let l = RateLimits::new(&LimitsConfig {
            rate_limit_per_sec: 1,
            rate_limit_burst: Some(2),
            ..LimitsConfig::default()
        });
        let caller = |id: &str| Caller { id: id.into(), models: None, metrics: true, quota: QuotaLimits::default() };
        let (a, b) = (caller("a"), caller("b"));
        assert!(l.check(&a).is_ok() && l.check(&a).is_ok());
        assert!(matches!(l.check(&a), Err(ServeError::RateLimited { retry_after_s: 1 })));
        assert!(l.check(&b).is_ok());
        assert!(RateLimits::new(&LimitsConfig::default()).check(&a).is_ok());
    }

    #[test]
    fn quotas_count_requests_and_tokens_per_period() {
        let q = Quotas::new(&QuotaConfig { period_secs: 1, requests: 0, tokens: 0 });
        let caller = |id: &str, requests, tokens| Caller {
            id: id.into(),
            models: None,
            metrics: true,
            quota: QuotaLimits { requests, tokens },
        };
        let a = caller("a", 2, 0);
        assert!(q.admit(&a).is_ok() && q.admit(&a).is_ok());
        let Err(ServeError::QuotaExceeded { what, limit, retry_after_s }) = q.admit(&a) else { panic!() };
        assert_eq!((what, limit, retry_after_s), ("requests", 2, 1));
        assert_eq!(q.left(&a).requests, Some(0));
        let t = caller("t", 0, 10);
        assert!(q.admit(&t).is_ok());
        q.charge(&t, 12);
        assert!(matches!(q.admit(&t), Err(ServeError::QuotaExceeded { what: "tokens", .. })));
        assert!(q.admit(&caller("free", 0, 0)).is_ok());
        std::thread::sleep(Duration::from_millis(1_050));
        assert!(q.admit(&a).is_ok() && q.admit(&t).is_ok(), "a new period starts afresh");
        assert_eq!(q.left(&t), QuotaLeft { requests: None, tokens: Some(10), reset_s: 1 });
    }

    fn jwt_config() -> JwtConfig {
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/jwt");
        JwtConfig {
            hs256_secret: Some("an HS256 secret of at least 32 bytes".into()),
            jwks_file: Some(data.join("jwks.json")),
            issuer: Some("https://issuer.example".into()),
            audience: Some("wedge".into()),
            leeway_secs: 0,
            ..JwtConfig::default()
        }
    }

    fn sign(alg: Algorithm, kid: Option<&str>, claims: serde_json::Value) -> String {
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/jwt");
        let key = match alg {
            Algorithm::HS256 => EncodingKey::from_secret(b"an HS256 secret of at least 32 bytes"),
            Algorithm::RS256 => {
                EncodingKey::from_rsa_pem(&std::fs::read(data.join("rsa-private.pem")).unwrap()).unwrap()
            }
            _ => EncodingKey::from_ec_pem(&std::fs::read(data.join("ec-private.pem")).unwrap()).unwrap(),
        };
        let header = Header { kid: kid.map(String::from), ..Header::new(alg) };
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }

    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn tokens_of_every_algorithm_are_verified_with_their_scopes() {
        let c = AuthConfig { jwt: Some(jwt_config()), ..AuthConfig::default() };
        let creds = Credentials::new(&c).unwrap();
        let claims = serde_json::json!({
            "sub": "alice", "exp": now() + 600, "iss": "https://issuer.example", "aud": "wedge",
            "scope": "model:minilm metrics"
        });
        for (alg, kid) in
            [(Algorithm::HS256, None), (Algorithm::RS256, Some("rsa-1")), (Algorithm::ES256, Some("ec-1"))]
        {
            let caller = creds.check(Some(&sign(alg, kid, claims.clone())), "x").unwrap();
            assert_eq!(caller.id(), "jwt:alice");
            assert!(caller.may_use("minilm") && !caller.may_use("smollm2") && caller.may_read_metrics(), "{alg:?}");
        }
        let all = serde_json::json!({"sub": "bob", "exp": now() + 600, "iss": "https://issuer.example", "aud": "wedge", "scp": ["model:*"]});
        let bob = creds.check(Some(&sign(Algorithm::ES256, None, all.clone())), "x").unwrap();
        assert!(bob.may_use("anything") && !bob.may_read_metrics());

        let refused = |token: String, why: &str| match creds.check(Some(&token), "x") {
            Err(ServeError::InvalidToken(m)) => assert!(m.contains(why), "{m} (wanted {why})"),
            other => panic!("{other:?}"),
        };
        let mut expired = claims.clone();
        expired["exp"] = (now() - 10).into();
        refused(sign(Algorithm::HS256, None, expired), "Expired");
        let mut other_aud = claims.clone();
        other_aud["aud"] = "someone-else".into();
        refused(sign(Algorithm::RS256, Some("rsa-1"), other_aud), "Audience");
        let mut other_iss = claims.clone();
        other_iss["iss"] = "https://evil.example".into();
        refused(sign(Algorithm::ES256, Some("ec-1"), other_iss), "Issuer");
        let mut no_sub = claims.clone();
        no_sub.as_object_mut().unwrap().remove("sub");
        refused(sign(Algorithm::HS256, None, no_sub), "sub");
        refused(sign(Algorithm::RS256, Some("rsa-2"), claims.clone()), "no key");
        // a token whose signature does not match
        let good = sign(Algorithm::ES256, Some("ec-1"), claims.clone());
        let forged = format!("{}.{}", good.rsplit_once('.').unwrap().0, "AAAA");
        assert!(matches!(creds.check(Some(&forged), "x"), Err(ServeError::InvalidToken(_))));
        // the public key presented as an HMAC secret (algorithm confusion) finds no key
        let jwks = std::fs::read(jwt_config().jwks_file.unwrap()).unwrap();
        let confused = jsonwebtoken::encode(
            &Header { kid: Some("rsa-1".into()), ..Header::new(Algorithm::HS384) },
            &claims,
            &EncodingKey::from_secret(&jwks),
        )
        .unwrap();
        refused(confused, "no key");
    }

    #[test]
    fn bad_jwt_settings_are_refused_with_reasons() {
        let refused = |j: JwtConfig, why: &str| {
            let e = Credentials::new(&AuthConfig { jwt: Some(j), ..AuthConfig::default() }).unwrap_err();
            assert!(e.to_string().contains(why), "{e} (wanted {why})");
        };
        refused(JwtConfig::default(), "give an HS256 secret or a JWKS file");
        refused(JwtConfig { hs256_secret: Some("short".into()), ..JwtConfig::default() }, "at least 32 bytes");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("jwks.json");
        std::fs::write(&f, "{\"keys\": 3}").unwrap();
        refused(JwtConfig { jwks_file: Some(f), ..JwtConfig::default() }, "not a JWKS");
        refused(JwtConfig { jwks_file: Some(dir.path().join("missing")), ..JwtConfig::default() }, "missing");
    }
}
