//! The crate's error type. Messages name files and reasons, never key material or secrets.

use std::path::PathBuf;

/// Why the issuer could not open, sign or hash.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    /// The issuer configuration is inconsistent.
    #[error("invalid issuer configuration: {0}")]
    Config(String),
    /// A file or directory in the data dir could not be read or written.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A key file exists but does not hold a usable RSA private key.
    #[error("signing key {}: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    /// aws-lc could not generate or use a key.
    #[error("key operation failed: {0}")]
    Crypto(&'static str),
    /// Signing and verifying a token at start-up failed (a crypto backend or key problem).
    #[error("signing self-test failed: {0}")]
    SelfTest(String),
    /// Claims given to `mint` cannot form a token.
    #[error("invalid claims: {0}")]
    Claims(String),
    /// Hashing a secret failed.
    #[error("hashing the secret failed: {0}")]
    Hash(String),
}

impl IssuerError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        IssuerError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
