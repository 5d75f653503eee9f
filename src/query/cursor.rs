//! Opaque, tamper-proof keyset cursors.
//!
//! A cursor is the position of the last event of a page (timestamp, sequence) plus a
//! fingerprint of the request it belongs to (endpoint, tenant, filters, order), authenticated
//! with an HMAC whose key lives in the data directory. Reused with other filters or altered,
//! it is refused (`invalid_cursor`); it never needs server-side state.
//!
//! `base64url( timestamp_us i64 LE | seq u64 LE | fingerprint u64 LE | HMAC-SHA256[..16] )`

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::store::search::SortKey;

const KEY_FILE: &str = "cursor.key";
const BODY_BYTES: usize = 24;
const MAC_BYTES: usize = 16;

/// Why a cursor was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("the cursor is malformed")]
    Malformed,
    #[error("the cursor was altered or issued by another server")]
    Tampered,
    #[error("the cursor belongs to a request with other filters")]
    OtherRequest,
}

/// Signs and checks cursors.
#[derive(Clone)]
pub struct CursorCodec {
    key: [u8; 32],
}

impl std::fmt::Debug for CursorCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorCodec { key: <redacted> }")
    }
}

impl CursorCodec {
    pub fn new(key: [u8; 32]) -> Self {
        CursorCodec { key }
    }

    /// Reads `DIR/cursor.key`, or creates it (random, mode 0600), so cursors survive restarts.
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<Self> {
        crate::key_file::load_or_create(&data_dir.join(KEY_FILE)).map(|key| CursorCodec { key })
    }

    /// The cursor continuing after `position` for the request with `fingerprint`.
    pub fn encode(&self, position: SortKey, fingerprint: u64) -> String {
        let mut bytes = Vec::with_capacity(BODY_BYTES + MAC_BYTES);
        bytes.extend_from_slice(&position.timestamp_us.to_le_bytes());
        bytes.extend_from_slice(&position.seq.to_le_bytes());
        bytes.extend_from_slice(&fingerprint.to_le_bytes());
        let mac = self.mac(&bytes);
        bytes.extend_from_slice(&mac[..MAC_BYTES]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The position encoded in `cursor`, if it is authentic and belongs to `fingerprint`.
    pub fn decode(&self, cursor: &str, fingerprint: u64) -> Result<SortKey, CursorError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(cursor)
            .map_err(|_| CursorError::Malformed)?;
        if bytes.len() != BODY_BYTES + MAC_BYTES {
            return Err(CursorError::Malformed);
        }
        let (body, mac) = bytes.split_at(BODY_BYTES);
        let mut verifier = self.hmac();
        verifier.update(body);
        verifier
            .verify_truncated_left(mac)
            .map_err(|_| CursorError::Tampered)?;
        let field = |range: std::ops::Range<usize>| {
            let mut buf = [0u8; 8];
            buf.copy_from_slice(&body[range]);
            buf
        };
        if u64::from_le_bytes(field(16..24)) != fingerprint {
            return Err(CursorError::OtherRequest);
        }
        Ok(SortKey {
            timestamp_us: i64::from_le_bytes(field(0..8)),
            seq: u64::from_le_bytes(field(8..16)),
        })
    }

    fn hmac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail for a 32-byte key.
        match <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        }
    }

    fn mac(&self, body: &[u8]) -> Vec<u8> {
        let mut mac = self.hmac();
        mac.update(body);
        mac.finalize().into_bytes().to_vec()
    }
}

/// A stable 64-bit fingerprint of everything that defines a result set.
pub fn fingerprint(parts: &[&str]) -> u64 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_tampering_is_caught() {
        let codec = CursorCodec::new([7; 32]);
        let position = SortKey {
            timestamp_us: 1_776_967_200_123_456,
            seq: 42,
        };
        let cursor = codec.encode(position, 99);
        assert_eq!(codec.decode(&cursor, 99), Ok(position));
        assert_eq!(codec.decode(&cursor, 98), Err(CursorError::OtherRequest));
        let bytes = URL_SAFE_NO_PAD.decode(&cursor).unwrap();
        for index in 0..bytes.len() {
            let mut altered = bytes.clone();
            altered[index] ^= 1;
            assert_eq!(
                codec.decode(&URL_SAFE_NO_PAD.encode(altered), 99),
                Err(CursorError::Tampered)
            );
        }
        assert_eq!(
            CursorCodec::new([8; 32]).decode(&cursor, 99),
            Err(CursorError::Tampered)
        );
        assert_eq!(
            codec.decode("not a cursor!", 99),
            Err(CursorError::Malformed)
        );
        assert_eq!(codec.decode("abcd", 99), Err(CursorError::Malformed));
    }

    #[test]
    fn fingerprints_separate_parts() {
        assert_ne!(fingerprint(&["ab", "c"]), fingerprint(&["a", "bc"]));
        assert_eq!(fingerprint(&["x"]), fingerprint(&["x"]));
    }

    #[test]
    fn key_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let first = CursorCodec::load_or_create(dir.path()).unwrap();
        let second = CursorCodec::load_or_create(dir.path()).unwrap();
        assert_eq!(first.key, second.key);
    }
}
