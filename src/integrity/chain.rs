//! The per-tenant hash chain: `chain_hash(n) = SHA-256(chain_hash(n-1) ‖ canonical bytes of
//! event n)`, with 32 zero bytes before a tenant's first event and `n` the event's position in
//! its tenant's chain (`chain_seq`, from 1) in ingest order.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use super::canonical;
use crate::event::AuditEvent;

/// Length of a chain hash.
pub const HASH_BYTES: usize = 32;

/// A position in a tenant's chain: `seq` events so far, the last one hashing to `hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainLink {
    pub seq: u64,
    pub hash: [u8; HASH_BYTES],
}

impl ChainLink {
    /// Before a tenant's first event.
    pub const GENESIS: ChainLink = ChainLink {
        seq: 0,
        hash: [0; HASH_BYTES],
    };

    /// The link of the event whose canonical bytes are `canonical`, following `self`.
    pub fn next(&self, canonical: &[u8]) -> ChainLink {
        let mut hasher = Sha256::new();
        hasher.update(self.hash);
        hasher.update(canonical);
        ChainLink {
            seq: self.seq + 1,
            hash: hasher.finalize().into(),
        }
    }

    /// The hash in lowercase hex, as records and checkpoints carry it.
    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }
}

impl Default for ChainLink {
    fn default() -> Self {
        ChainLink::GENESIS
    }
}

/// Parses a hex chain hash.
pub fn parse_hash(text: &str) -> Option<[u8; HASH_BYTES]> {
    let mut hash = [0u8; HASH_BYTES];
    hex::decode_to_slice(text, &mut hash).ok()?;
    Some(hash)
}

/// The head of every tenant's chain, advanced one event at a time (the store's index stage
/// owns one; `verify --data-dir` another).
#[derive(Debug, Clone, Default)]
pub struct ChainHeads {
    /// Each tenant's head, and whether it moved since [`ChainHeads::take_moved`].
    heads: HashMap<String, (ChainLink, bool)>,
    scratch: Vec<u8>,
}

impl ChainHeads {
    /// Heads recovered from storage.
    pub fn from_heads(heads: HashMap<String, ChainLink>) -> Self {
        ChainHeads {
            heads: heads
                .into_iter()
                .map(|(tenant, link)| (tenant, (link, false)))
                .collect(),
            scratch: Vec::new(),
        }
    }

    /// Chains `event` onto its tenant's head and returns its link.
    pub fn append(&mut self, event: &AuditEvent) -> ChainLink {
        self.scratch.clear();
        canonical::write_event(event, &mut self.scratch);
        // Look up before inserting: no key allocation on the hot path.
        if let Some((head, moved)) = self.heads.get_mut(&event.tenant_id) {
            *head = head.next(&self.scratch);
            *moved = true;
            return *head;
        }
        let head = ChainLink::GENESIS.next(&self.scratch);
        self.heads.insert(event.tenant_id.clone(), (head, true));
        head
    }

    /// The head of `tenant`'s chain (`GENESIS` before its first event).
    pub fn head(&self, tenant: &str) -> ChainLink {
        self.heads
            .get(tenant)
            .map_or(ChainLink::GENESIS, |(head, _)| *head)
    }

    /// The heads that moved since the last call; forgets that they did.
    pub fn take_moved(&mut self) -> Vec<(String, ChainLink)> {
        self.heads
            .iter_mut()
            .filter(|(_, (_, moved))| *moved)
            .map(|(tenant, (head, moved))| {
                *moved = false;
                (tenant.clone(), *head)
            })
            .collect()
    }

    /// Rolls every moved head back to its entry in `committed` (or to before the tenant's
    /// first event).
    pub fn roll_back_moved(&mut self, committed: &HashMap<String, ChainLink>) {
        for (tenant, (head, moved)) in self.heads.iter_mut() {
            if *moved {
                *head = committed.get(tenant).copied().unwrap_or(ChainLink::GENESIS);
                *moved = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Action, IdentityType};

    fn event(tenant: &str, id: &str) -> AuditEvent {
        AuditEvent {
            id: id.into(),
            tenant_id: tenant.into(),
            timestamp_us: 1_767_225_600_000_000,
            action: Action::Write,
            secret_path: Some("a/b".into()),
            identity_type: IdentityType::ServiceAccount,
            identity_id: "sa".into(),
            source_ip: None,
            user_agent: None,
            success: true,
            duration_ms: None,
            request_id: None,
            extra_data: Default::default(),
        }
    }

    #[test]
    fn each_tenant_has_its_own_chain_from_zero() {
        let mut heads = ChainHeads::default();
        let a1 = heads.append(&event("a", "1"));
        let b1 = heads.append(&event("b", "1"));
        let a2 = heads.append(&event("a", "2"));
        assert_eq!((a1.seq, b1.seq, a2.seq), (1, 1, 2));
        let mut bytes = Vec::new();
        canonical::write_event(&event("a", "1"), &mut bytes);
        let expected: [u8; 32] = Sha256::new()
            .chain_update([0u8; 32])
            .chain_update(&bytes)
            .finalize()
            .into();
        assert_eq!(a1.hash, expected);
        assert_ne!(
            a1.hash, b1.hash,
            "the tenant is part of the canonical bytes"
        );
        assert_eq!(heads.head("a"), a2);
        assert_eq!(parse_hash(&a2.hash_hex()), Some(a2.hash));
    }
}
