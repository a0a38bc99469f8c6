//! What can go wrong while serving. The HTTP front maps each kind to a status in one place.

use thiserror::Error;

/// Errors from the serving layer.
#[derive(Clone, Debug, Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The request is malformed or asks for something impossible (400).
    #[error("{0}")]
    BadInput(String),
    /// No model of that name (404).
    #[error("model `{0}` is not served here")]
    UnknownModel(String),
    /// No or a wrong API key (401).
    #[error("a valid API key is required (Authorization: Bearer KEY)")]
    Unauthorized,
    /// A bearer token that is not valid: expired, badly signed, for another audience (401).
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// The caller may not use this (403).
    #[error("{0}")]
    Forbidden(String),
    /// The caller's quota for the period is used up (429).
    #[error("quota exceeded: {limit} {what} per period; retry in {retry_after_s} s")]
    QuotaExceeded {
        /// `requests` or `tokens`.
        what: &'static str,
        /// The bound.
        limit: u64,
        /// Seconds until the period ends.
        retry_after_s: u64,
    },
    /// Over the per-key rate (429).
    #[error("rate limit exceeded; retry in {retry_after_s} s")]
    RateLimited {
        /// Seconds until a request would be admitted.
        retry_after_s: u64,
    },
    /// The model's queue is full (503).
    #[error("model `{model}` is overloaded ({queued} inputs queued); retry in {retry_after_s} s")]
    Overloaded {
        /// The model.
        model: String,
        /// Inputs waiting.
        queued: usize,
        /// A hint for `Retry-After`.
        retry_after_s: u64,
    },
    /// The models are still loading (503).
    #[error("the models are still loading")]
    NotReady,
    /// The model did not finish loading within the load timeout; its load goes on (503).
    #[error("model `{model}` is loading; retry in {retry_after_s} s")]
    Loading {
        /// The model.
        model: String,
        /// A hint for `Retry-After`.
        retry_after_s: u64,
    },
    /// The model cannot be loaded now: its file is damaged, or the memory budget is held by
    /// busy models (503).
    #[error("model `{model}` is unavailable: {reason}")]
    Unavailable {
        /// The model.
        model: String,
        /// Why its last load failed.
        reason: String,
    },
    /// The server is shutting down (503).
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The request took longer than the configured timeout (504).
    #[error("the request did not finish within {0} ms")]
    Timeout(u64),
    /// A bad configuration or model file, found at start-up.
    #[error("configuration: {0}")]
    Config(String),
    /// The model failed while running (500).
    #[error("inference failed: {0}")]
    Inference(String),
}

impl From<wedge::Error> for ServeError {
    /// The caller's input at fault is a 400 ([`wedge::Error::is_input`]), anything else a
    /// failed run.
    fn from(e: wedge::Error) -> ServeError {
        if e.is_input() { ServeError::BadInput(e.to_string()) } else { ServeError::Inference(e.to_string()) }
    }
}
