//! End-to-end harness: starts the real `cedargate` binary on loopback ports and talks HTTP to it.
//!
//! Test files in `tests/tests/*.rs` share this crate. Run them with
//! `cargo build -p gateway && cargo test -p e2e-tests` (or point `CEDARGATE_BIN` at a binary).

pub mod claims;
pub mod echo;
pub mod gateway;
pub mod http;
pub mod jwt;

pub use claims::{DEMO_WS, OTHER_WS, human, m2m, with, without};
pub use gateway::{
    Gateway, binary, default_config, free_ports, metric_value, run_cli, workspace_root,
};
pub use http::{Answer, bearer, client, client_credentials, raw_request, read_answer, send};
