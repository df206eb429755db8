//! `cedargate`: a policy-driven authorization and identity gateway.
//!
//! The binary (`src/main.rs`) only calls [`cli::main`]; the library exists so that benches and
//! tests can reach the pipeline stages directly.

mod admin;
mod audit;
mod auth_cli;
mod auth_domain;
pub mod authn;
pub mod authz;
mod bench;
mod bench_http;
mod bench_token;
#[doc(hidden)]
pub mod bench_waf;
pub mod cli;
pub mod config;
mod cors;
mod delegation;
mod drain;
mod error;
mod forward;
mod front;
mod lines;
mod log_level;
mod metrics;
mod openapi;
mod policy_cli;
mod proxy;
pub mod ratelimit;
mod reload;
pub mod request_id;
mod respond;
pub mod routes;
mod serve;
mod tls;
pub mod waf;

/// The configuration file used when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "config/cedargate.toml";
