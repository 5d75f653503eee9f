//! Black-box harness: runs the real `scaivault-audit` binary and talks to it over HTTP.
//!
//! Every wait is bounded. A failing test prints the logs of every server it started (see
//! [`TestDir`]) and keeps its temporary directory for inspection.

pub mod events;
pub mod export;
pub mod http;
pub mod nats;
pub mod replicas;
pub mod server;
pub mod tokens;

pub use events::*;
pub use http::*;
pub use server::*;
pub use tokens::*;
