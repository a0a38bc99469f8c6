use thiserror::Error;

/// Errors from wedge-core. Messages name the tensor, shape, dtype or field involved.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The package bytes are malformed, truncated, corrupt or hostile.
    #[error("invalid .wedge package: {0}")]
    Package(String),
    /// A GGUF file is malformed, truncated or hostile, or holds what wedge does not read.
    #[error("invalid GGUF file: {0}")]
    Gguf(String),
    /// A weight's format, shape or packed data is inconsistent.
    #[error("invalid weight `{name}`: {msg}")]
    Weight {
        /// Tensor name.
        name: String,
        /// What is wrong with it.
        msg: String,
    },
    /// A graph is malformed or its shapes do not agree.
    #[error("graph error: {0}")]
    Graph(String),
    /// Inputs given to a plan do not match what it expects.
    #[error("bad input: {0}")]
    Input(String),
    /// A model configuration is missing a field or holds an unsupported value.
    #[error("model config: {0}")]
    Config(String),
    /// Writing a package failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn weight_err(name: &str, msg: impl Into<String>) -> Error {
    Error::Weight { name: name.to_string(), msg: msg.into() }
}
