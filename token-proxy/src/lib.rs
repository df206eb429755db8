//! The auth domain of cedargate, transport-free: the gateway parses HTTP and calls in here;
//! answers come back as status, headers and body.
//!
//! Today this is the embedded OAuth2 issuer (`client_credentials` clients with argon2id
//! secrets, RS256 keys persisted in the data dir, discovery and JWKS). The caching token
//! proxy in front of an external IdP will live beside it.

mod answer;
mod config;
mod error;
mod issuer;
mod keys;
mod keystore;
mod secret;
mod token_request;

pub use answer::HttpAnswer;
pub use config::{ClientConfig, IssuerConfig};
pub use error::IssuerError;
pub use issuer::Issuer;
pub use secret::{hash_secret, verify_secret};
pub use token_request::TokenRequest;
