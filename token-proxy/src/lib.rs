//! The auth domain of cedargate, transport-free: the gateway parses HTTP and calls in here;
//! answers come back as status, headers and body.
//!
//! Two parts: the embedded OAuth2 issuer (`client_credentials` clients with argon2id secrets,
//! RS256 keys persisted in the data dir, discovery and JWKS), and the token endpoint with its
//! two-tier cache keyed by the hashed credentials ([`cache`], [`endpoint`]), in front of the
//! embedded issuer or an upstream IdP ([`discovery`] rewrites the upstream's documents).

mod answer;
pub mod cache;
mod config;
pub mod discovery;
pub mod endpoint;
mod error;
mod issuer;
mod keys;
mod keystore;
mod secret;
mod token_request;

pub use answer::HttpAnswer;
pub use config::{ClientConfig, IssuerConfig};
pub use endpoint::{
    TokenCall, TokenEndpoint, TokenOutcome, TokenSource, TokenUpstream, enforce_no_store,
};
pub use error::IssuerError;
pub use issuer::Issuer;
pub use secret::{hash_secret, verify_secret};
pub use token_request::TokenRequest;
