//! Stage 2: the web application firewall. IP reputation, size limits, and attack detection on
//! the decoded request (see `detect`) — before authentication, so an attacker costs little.

pub mod detect;
