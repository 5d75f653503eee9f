//! Opaque, tamper-proof keyset cursors.
//!
//! A cursor is the position of the last event of a page (timestamp, sequence) plus a
//! fingerprint of the request it belongs to (endpoint, tenant, filters, order), authenticated
//! with an HMAC whose key lives in the data directory. Reused with other filters or altered,
//! it is refused (`invalid_cursor`); it never needs server-side state.
//!
//! `base64url( timestamp_us i64 LE | seq u64 LE | fingerprint u64 LE | HMAC-SHA256[..16] )`
//!
//! The fingerprint is the first 8 bytes (read little-endian) of the SHA-256 of the request's
//! [`CursorScope::encode`]d form, an explicit, versioned byte encoding, so that no formatting
//! change can invalidate cursors by accident:
//!
//! ```text
//! version        u8 = FINGERPRINT_VERSION (1)
//! endpoint       str            ("logs", "secrets", "identities")
//! tenant         str
//! from_us        opt(i64)
//! to_us          opt(i64)
//! actions        u64 count, then each action's ordinal as u64, in request order
//! identity_id    opt(str)
//! identity_type  opt(u64 ordinal)
//! path_prefix    opt(str)
//! secret_path    opt(str)
//! success        opt(bool)
//! source_ip      opt(ip network)
//! request_id     opt(str)
//! text           opt(str)
//! before_seq     opt(u64)
//! late           only when set (exports, never a listing): 0x01, i64 window start, u64 seq
//! direction      u8: 0 newest first, 1 oldest first
//!
//! integers       little-endian, 8 bytes (u8 where said)
//! str            u64 byte length, then the UTF-8 bytes
//! opt(x)         0x00 when absent; 0x01, then x
//! bool           0x00 false, 0x01 true
//! ip network     0x04 + 4 address bytes, or 0x06 + 16 address bytes (network order), then the
//!                prefix length as u8 (the address as given, not truncated to the network)
//! ordinals       the stable numbers the index stores (`Action::ordinal`, append only)
//! ```
//!
//! Changing the encoding means bumping [`FINGERPRINT_VERSION`]: outstanding cursors are then
//! refused (`invalid_cursor`) instead of silently continuing another result set.

use std::net::IpAddr;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use ipnet::IpNet;

use super::LogFilters;
use crate::store::search::{Direction, SortKey};

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

/// Why a configured cursor key file (`[cluster] cursor_key_file`) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CursorKeyError {
    #[error("cannot read the cursor key file {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the cursor key file {path} must hold one or more keys of 64 hex digits, one a line (the first signs, every one is accepted), or exactly 32 raw bytes: {problem}"
    )]
    Format {
        path: std::path::PathBuf,
        problem: String,
    },
}

/// Keys one cursor key file may hold at most (the signing key and previous keys still
/// accepted during a rotation).
pub const MAX_CURSOR_KEYS: usize = 8;

/// Signs and checks cursors.
#[derive(Clone)]
pub struct CursorCodec {
    key: [u8; 32],
    /// Keys of a rotation that are still accepted, never used to sign.
    previous: Vec<[u8; 32]>,
}

impl std::fmt::Debug for CursorCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorCodec { key: <redacted> }")
    }
}

impl CursorCodec {
    /// A codec signing and checking with `key` only.
    pub fn new(key: [u8; 32]) -> Self {
        CursorCodec {
            key,
            previous: Vec::new(),
        }
    }

    /// Reads `DIR/cursor.key`, or creates it (random, mode 0600), so cursors survive restarts.
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<Self> {
        crate::key_file::load_or_create(&data_dir.join(KEY_FILE)).map(Self::new)
    }

    /// Reads a configured key file shared by every replica (a mounted Kubernetes Secret):
    /// one key of 64 hex digits a line, the first signs and every one is accepted (a rotation
    /// puts the new key first and drops the old one later); or exactly 32 raw bytes (a
    /// data directory's `cursor.key`, so its outstanding cursors stay valid).
    pub fn from_key_file(path: &Path) -> Result<Self, CursorKeyError> {
        let bytes = std::fs::read(path).map_err(|source| CursorKeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let format = |problem: String| CursorKeyError::Format {
            path: path.to_path_buf(),
            problem,
        };
        let mut keys = match <[u8; 32]>::try_from(bytes.as_slice()) {
            Ok(raw) if !is_hex_text(&bytes) => vec![raw],
            _ => hex_keys(&bytes).map_err(format)?,
        };
        if keys.is_empty() {
            return Err(format("it holds no key".into()));
        }
        if keys.len() > MAX_CURSOR_KEYS {
            return Err(format(format!(
                "it holds {} keys, at most {MAX_CURSOR_KEYS}",
                keys.len()
            )));
        }
        let key = keys.remove(0);
        Ok(CursorCodec {
            key,
            previous: keys,
        })
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
        let authentic = std::iter::once(&self.key).chain(&self.previous).any(|key| {
            let mut verifier = hmac_with(key);
            verifier.update(body);
            verifier.verify_truncated_left(mac).is_ok()
        });
        if !authentic {
            return Err(CursorError::Tampered);
        }
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

    fn mac(&self, body: &[u8]) -> Vec<u8> {
        let mut mac = hmac_with(&self.key);
        mac.update(body);
        mac.finalize().into_bytes().to_vec()
    }
}

fn hmac_with(key: &[u8; 32]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail for a 32-byte key.
    match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    }
}

/// Whether `bytes` are only hex digits and whitespace (a key file in the text format).
fn is_hex_text(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|byte| byte.is_ascii_hexdigit() || byte.is_ascii_whitespace())
}

/// The keys of the text format: one of 64 hex digits per non-empty line.
fn hex_keys(bytes: &[u8]) -> Result<Vec<[u8; 32]>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "it is neither text nor 32 bytes")?;
    let mut keys = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut key = [0u8; 32];
        hex::decode_to_slice(line, &mut key)
            .map_err(|_| format!("line {} is not 64 hex digits", index + 1))?;
        keys.push(key);
    }
    Ok(keys)
}

/// Version byte that starts every [`CursorScope::encode`]d form (see the module docs).
pub const FINGERPRINT_VERSION: u8 = 1;

/// Everything that defines a result set, and so the request a cursor is bound to.
#[derive(Debug, Clone, Copy)]
pub struct CursorScope<'a> {
    /// Separates endpoints that share parameters (`logs`, `secrets`, `identities`).
    pub endpoint: &'a str,
    /// The tenant the caller reads.
    pub tenant: &'a str,
    pub filters: &'a LogFilters,
    pub direction: Direction,
}

impl CursorScope<'_> {
    /// The stable 64-bit fingerprint carried by the cursor.
    pub fn fingerprint(&self) -> u64 {
        let digest = Sha256::digest(self.encode());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first)
    }

    /// The versioned, field-by-field encoding documented in the module docs.
    pub fn encode(&self) -> Vec<u8> {
        // Destructured without `..`: a new filter does not compile until it is encoded here.
        let LogFilters {
            from_us,
            to_us,
            actions,
            identity_id,
            identity_type,
            path_prefix,
            secret_path,
            success,
            source_ip,
            request_id,
            text,
            before_seq,
            late,
        } = self.filters;
        let mut out = ScopeEncoder(vec![FINGERPRINT_VERSION]);
        out.str(self.endpoint);
        out.str(self.tenant);
        out.option(*from_us, |out, value| out.u64(value as u64));
        out.option(*to_us, |out, value| out.u64(value as u64));
        out.u64(actions.len() as u64);
        for action in actions {
            out.u64(action.ordinal());
        }
        out.option(identity_id.as_deref(), ScopeEncoder::str);
        out.option(*identity_type, |out, value| out.u64(value.ordinal()));
        out.option(path_prefix.as_deref(), ScopeEncoder::str);
        out.option(secret_path.as_deref(), ScopeEncoder::str);
        out.option(*success, |out, value| out.byte(u8::from(value)));
        out.option(*source_ip, ScopeEncoder::network);
        out.option(request_id.as_deref(), ScopeEncoder::str);
        out.option(text.as_deref(), ScopeEncoder::str);
        out.option(*before_seq, ScopeEncoder::u64);
        // Only exports set it (never a listing): encoded only when set, so the fingerprints
        // of every cursor issued before it existed stay the same.
        if let Some((window_from_us, since_seq)) = late {
            out.byte(1);
            out.u64(*window_from_us as u64);
            out.u64(*since_seq);
        }
        out.byte(match self.direction {
            Direction::NewestFirst => 0,
            Direction::OldestFirst => 1,
        });
        out.0
    }
}

/// The primitives of the scope encoding.
struct ScopeEncoder(Vec<u8>);

impl ScopeEncoder {
    fn byte(&mut self, value: u8) {
        self.0.push(value);
    }

    fn u64(&mut self, value: u64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn str(&mut self, value: &str) {
        self.u64(value.len() as u64);
        self.0.extend_from_slice(value.as_bytes());
    }

    fn option<T>(&mut self, value: Option<T>, encode: impl FnOnce(&mut Self, T)) {
        match value {
            None => self.byte(0),
            Some(value) => {
                self.byte(1);
                encode(self, value);
            }
        }
    }

    fn network(&mut self, network: IpNet) {
        match network.addr() {
            IpAddr::V4(address) => {
                self.byte(4);
                self.0.extend_from_slice(&address.octets());
            }
            IpAddr::V6(address) => {
                self.byte(6);
                self.0.extend_from_slice(&address.octets());
            }
        }
        self.byte(network.prefix_len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Action, IdentityType};

    /// The fingerprint of an unfiltered, newest-first `logs` listing of `tnt_acme`.
    const PINNED_EMPTY_LOGS_FINGERPRINT: u64 = 4_487_752_003_692_661_221;

    #[test]
    fn a_key_file_holds_a_signing_key_and_previous_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cursor-key");
        let position = SortKey {
            timestamp_us: 1,
            seq: 2,
        };
        let old = CursorCodec::new([1; 32]).encode(position, 5);
        std::fs::write(
            &path,
            format!("{}\n\n{}\n", hex::encode([2; 32]), hex::encode([1; 32])),
        )
        .unwrap();
        let rotated = CursorCodec::from_key_file(&path).unwrap();
        assert_eq!(
            rotated.decode(&old, 5),
            Ok(position),
            "a previous key is accepted"
        );
        let new = rotated.encode(position, 5);
        assert_eq!(
            CursorCodec::new([2; 32]).decode(&new, 5),
            Ok(position),
            "the first key signs"
        );
        assert_eq!(
            CursorCodec::new([1; 32]).decode(&new, 5),
            Err(CursorError::Tampered)
        );
        // A data directory's raw cursor.key keeps its cursors valid.
        std::fs::write(&path, [1u8; 32]).unwrap();
        assert_eq!(
            CursorCodec::from_key_file(&path).unwrap().decode(&old, 5),
            Ok(position)
        );
        for bad in [&b""[..], b"\n", b"abcd\n", b"zz", &[0xff; 31]] {
            std::fs::write(&path, bad).unwrap();
            let error = CursorCodec::from_key_file(&path).unwrap_err();
            assert!(
                matches!(error, CursorKeyError::Format { .. }),
                "{bad:?}: {error}"
            );
        }
        let many: String = (0..=MAX_CURSOR_KEYS)
            .map(|n| format!("{}\n", hex::encode([n as u8; 32])))
            .collect();
        std::fs::write(&path, many).unwrap();
        assert!(CursorCodec::from_key_file(&path).is_err());
        assert!(matches!(
            CursorCodec::from_key_file(&dir.path().join("missing")),
            Err(CursorKeyError::Read { .. })
        ));
    }

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

    fn scope<'a>(filters: &'a LogFilters, direction: Direction) -> CursorScope<'a> {
        CursorScope {
            endpoint: "logs",
            tenant: "tnt_acme",
            filters,
            direction,
        }
    }

    fn every_filter() -> LogFilters {
        LogFilters {
            from_us: Some(-2),
            to_us: Some(0x0102),
            actions: vec![Action::Write, Action::Read],
            identity_id: Some("sa:ci".into()),
            identity_type: Some(IdentityType::ServiceAccount),
            path_prefix: Some("a/".into()),
            secret_path: Some("a/b".into()),
            success: Some(false),
            source_ip: Some("10.1.2.3/24".parse().unwrap()),
            request_id: Some("r".into()),
            text: Some("é".into()),
            before_seq: Some(7),
            late: None,
        }
    }

    /// Pins the encoding byte for byte: if this test fails, bump FINGERPRINT_VERSION (and
    /// update the expected bytes) rather than changing the encoding silently.
    #[test]
    fn encoding_is_pinned_field_by_field() {
        let filters = every_filter();
        let encoded = scope(&filters, Direction::OldestFirst).encode();
        let expected = concat!(
            "01", // version
            "0400000000000000",
            "6c6f6773", // endpoint "logs"
            "0800000000000000",
            "746e745f61636d65", // tenant "tnt_acme"
            "01",
            "feffffffffffffff", // from_us -2
            "01",
            "0201000000000000", // to_us 0x0102
            "0200000000000000", // two actions
            "0100000000000000",
            "0000000000000000", // write (1), read (0)
            "01",
            "0500000000000000",
            "73613a6369", // identity_id "sa:ci"
            "01",
            "0100000000000000", // identity_type service_account (1)
            "01",
            "0200000000000000",
            "612f", // path_prefix "a/"
            "01",
            "0300000000000000",
            "612f62", // secret_path "a/b"
            "01",
            "00", // success false
            "01",
            "04",
            "0a010203",
            "18", // source_ip 10.1.2.3/24
            "01",
            "0100000000000000",
            "72", // request_id "r"
            "01",
            "0200000000000000",
            "c3a9", // text "é"
            "01",
            "0700000000000000", // before_seq 7
            "01",               // oldest first
        );
        assert_eq!(hex::encode(encoded), expected);
        let empty = LogFilters::default();
        let encoded = scope(&empty, Direction::NewestFirst).encode();
        let expected = concat!(
            "01",
            "0400000000000000",
            "6c6f6773",
            "0800000000000000",
            "746e745f61636d65",
            "00",
            "00",
            "0000000000000000",
            "00",
            "00",
            "00",
            "00",
            "00",
            "00",
            "00",
            "00",
            "00",
            "00",
        );
        assert_eq!(hex::encode(encoded), expected);
    }

    #[test]
    fn ipv6_networks_are_encoded_with_their_family() {
        let filters = LogFilters {
            source_ip: Some("fd00::1/128".parse().unwrap()),
            ..LogFilters::default()
        };
        let encoded = hex::encode(scope(&filters, Direction::NewestFirst).encode());
        assert!(
            encoded.contains("0106fd00000000000000000000000000000180"),
            "{encoded}"
        );
    }

    #[test]
    fn fingerprint_is_pinned() {
        let empty = LogFilters::default();
        let digest = Sha256::digest(scope(&empty, Direction::NewestFirst).encode());
        let expected = u64::from_le_bytes(digest[..8].try_into().unwrap());
        assert_eq!(
            scope(&empty, Direction::NewestFirst).fingerprint(),
            expected
        );
        assert_eq!(
            scope(&empty, Direction::NewestFirst).fingerprint(),
            PINNED_EMPTY_LOGS_FINGERPRINT
        );
    }

    #[test]
    fn every_part_of_the_scope_changes_the_fingerprint() {
        let base = every_filter();
        let reference = scope(&base, Direction::OldestFirst).fingerprint();
        let variants: Vec<LogFilters> = vec![
            LogFilters {
                from_us: None,
                ..base.clone()
            },
            LogFilters {
                to_us: Some(0x0103),
                ..base.clone()
            },
            LogFilters {
                actions: vec![Action::Read, Action::Write],
                ..base.clone()
            },
            LogFilters {
                identity_id: Some("sa:cd".into()),
                ..base.clone()
            },
            LogFilters {
                identity_type: Some(IdentityType::User),
                ..base.clone()
            },
            LogFilters {
                path_prefix: None,
                ..base.clone()
            },
            LogFilters {
                secret_path: Some("a/c".into()),
                ..base.clone()
            },
            LogFilters {
                success: Some(true),
                ..base.clone()
            },
            LogFilters {
                source_ip: Some("10.1.2.0/24".parse().unwrap()),
                ..base.clone()
            },
            LogFilters {
                request_id: Some("s".into()),
                ..base.clone()
            },
            LogFilters {
                text: None,
                ..base.clone()
            },
            LogFilters {
                before_seq: Some(8),
                ..base.clone()
            },
        ];
        for filters in &variants {
            assert_ne!(
                scope(filters, Direction::OldestFirst).fingerprint(),
                reference,
                "{filters:?}"
            );
        }
        assert_ne!(
            scope(&base, Direction::NewestFirst).fingerprint(),
            reference
        );
        let other_endpoint = CursorScope {
            endpoint: "secrets",
            ..scope(&base, Direction::OldestFirst)
        };
        assert_ne!(other_endpoint.fingerprint(), reference);
        let other_tenant = CursorScope {
            tenant: "tnt_globex",
            ..scope(&base, Direction::OldestFirst)
        };
        assert_ne!(other_tenant.fingerprint(), reference);
        // Length prefixes keep strings apart: ("ab", "c") is not ("a", "bc").
        let split = |endpoint, tenant| CursorScope {
            endpoint,
            tenant,
            ..scope(&base, Direction::OldestFirst)
        };
        assert_ne!(
            split("ab", "c").fingerprint(),
            split("a", "bc").fingerprint()
        );
        assert_eq!(
            scope(&base, Direction::OldestFirst).fingerprint(),
            reference
        );
    }

    #[test]
    fn key_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let first = CursorCodec::load_or_create(dir.path()).unwrap();
        let second = CursorCodec::load_or_create(dir.path()).unwrap();
        assert_eq!(first.key, second.key);
    }
}
