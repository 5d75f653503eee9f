//! The verifiable trail (SPEC §8, docs/integrity.md): what a sceptic can check without trusting
//! the service.
//!
//! ```text
//! event ─▶ canonical bytes ─▶ chain (per tenant, in the store's index stage)
//!   committed heads ─▶ signed checkpoints (checkpoint log) ─▶ GET /v1/audit/integrity/…
//!   export files ─▶ signed manifest (chained per destination) ─▶ `scaivault-audit verify`
//! ```
//!
//! [`canonical`] fixes the bytes that are hashed and signed, [`chain`] the hash chain, [`keys`]
//! the Ed25519 key ring, its JWKS and signed JSON objects, [`checkpoint`] the signed checkpoints
//! and their log, [`checkpointer`] the service's periodic and final checkpoints, [`verify`]
//! the checks of an export at its destination.

pub mod canonical;
pub mod chain;
pub mod checkpoint;
pub mod checkpointer;
pub mod keys;
pub mod verify;
