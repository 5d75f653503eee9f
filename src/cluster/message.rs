//! One ingest request as one JetStream message: the batch is all or nothing because JetStream
//! stores a message whole or not at all.
//!
//! Payload: deflate of one line per event, `p` (the producer chose the id) or `s` (the service
//! did) followed by the event's storage JSON (which never holds a raw newline). The message id
//! (`Nats-Msg-Id`) is a digest of the request's tenant-scoped ids in order, so a retried request
//! with the same ids is recognised by JetStream's duplicate window; what slips past the window
//! is dropped by the consumers' own id deduplication (see `crate::store::log`).

use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use sha2::{Digest, Sha256};

use crate::event::AuditEvent;
use crate::store::PreparedEvent;
use crate::store::schema::id_key;

/// Header naming the payload format, so a later version can change it.
pub const FORMAT_HEADER: &str = "Scaivault-Audit-Format";
/// The payload format written by this version.
pub const FORMAT: &str = "1";
/// A decoded message is refused above this size (a bound on what a foreign publisher on the
/// subject can make every replica inflate).
pub const MAX_DECODED_BYTES: u64 = 256 << 20;

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown payload format {0:?}")]
    Format(String),
    #[error("the payload does not inflate: {0}")]
    Inflate(#[source] std::io::Error),
    #[error("the payload inflates beyond {MAX_DECODED_BYTES} bytes")]
    TooLarge,
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
}

/// The message id of a request: hex SHA-256 over its tenant-scoped ids in order.
pub fn message_id(events: &[PreparedEvent]) -> String {
    let mut digest = Sha256::new();
    for prepared in events {
        digest.update(id_key(&prepared.event.tenant_id, &prepared.event.id).as_bytes());
        digest.update(b"\n");
    }
    hex::encode(digest.finalize())
}

/// The compressed payload of a request.
pub fn encode(events: &[PreparedEvent]) -> Vec<u8> {
    let mut encoder = DeflateEncoder::new(Vec::new(), Compression::fast());
    for prepared in events {
        let flag: &[u8] = if prepared.producer_id { b"p" } else { b"s" };
        // Writing to a Vec cannot fail.
        let _ = encoder.write_all(flag);
        let _ = encoder.write_all(&prepared.source);
        let _ = encoder.write_all(b"\n");
    }
    encoder.finish().unwrap_or_default()
}

/// The events of a payload written by [`encode`] in `format` (the header's value; none is 1).
pub fn decode(format: Option<&str>, payload: &[u8]) -> Result<Vec<PreparedEvent>, DecodeError> {
    if let Some(format) = format
        && format != FORMAT
    {
        return Err(DecodeError::Format(format.to_string()));
    }
    let mut text = Vec::new();
    DeflateDecoder::new(payload)
        .take(MAX_DECODED_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(DecodeError::Inflate)?;
    if text.len() as u64 > MAX_DECODED_BYTES {
        return Err(DecodeError::TooLarge);
    }
    let mut events = Vec::new();
    for (index, line) in text.split(|byte| *byte == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let failed = |message: String| DecodeError::Line {
            line: index + 1,
            message,
        };
        let (flag, source) = line.split_at(1);
        let producer_id = match flag {
            b"p" => true,
            b"s" => false,
            _ => return Err(failed("unknown event flag".into())),
        };
        let event: AuditEvent =
            serde_json::from_slice(source).map_err(|error| failed(error.to_string()))?;
        events.push(PreparedEvent {
            event,
            source: source.to_vec(),
            producer_id,
        });
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Action, IdentityType};

    pub(crate) fn event(tenant: &str, id: &str, producer_id: bool) -> PreparedEvent {
        let event = AuditEvent {
            id: id.to_string(),
            tenant_id: tenant.into(),
            timestamp_us: 1_700_000_000_000_000,
            action: Action::Read,
            secret_path: Some("a/b\nc".into()),
            identity_type: IdentityType::User,
            identity_id: "user:a".into(),
            source_ip: None,
            user_agent: None,
            success: true,
            duration_ms: None,
            request_id: None,
            extra_data: Default::default(),
        };
        PreparedEvent::new(event, producer_id)
    }

    #[test]
    fn a_request_round_trips_with_its_id_flags() {
        let events = vec![event("tnt_a", "e1", true), event("tnt_a", "e2", false)];
        let payload = encode(&events);
        let decoded = decode(Some(FORMAT), &payload).unwrap();
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded[0].event, events[0].event);
        assert_eq!(decoded[0].source, events[0].source);
        assert!(decoded[0].producer_id);
        assert!(!decoded[1].producer_id);
        assert_eq!(decode(None, &payload).unwrap().len(), 2);
    }

    #[test]
    fn unknown_formats_and_damaged_payloads_are_refused() {
        let payload = encode(&[event("tnt_a", "e1", true)]);
        assert!(matches!(
            decode(Some("2"), &payload),
            Err(DecodeError::Format(_))
        ));
        assert!(decode(Some(FORMAT), b"not deflate at all").is_err());
        let mut encoder = DeflateEncoder::new(Vec::new(), Compression::fast());
        encoder.write_all(b"x{}\n").unwrap();
        let bad_flag = encoder.finish().unwrap();
        assert!(matches!(
            decode(None, &bad_flag),
            Err(DecodeError::Line { line: 1, .. })
        ));
    }

    #[test]
    fn the_message_id_follows_the_tenant_scoped_ids_only() {
        let a = vec![event("tnt_a", "e1", true), event("tnt_a", "e2", true)];
        let same_ids = vec![event("tnt_a", "e1", false), event("tnt_a", "e2", true)];
        assert_eq!(message_id(&a), message_id(&same_ids));
        let other_tenant = vec![event("tnt_b", "e1", true), event("tnt_a", "e2", true)];
        assert_ne!(message_id(&a), message_id(&other_tenant));
        let reordered = vec![event("tnt_a", "e2", true), event("tnt_a", "e1", true)];
        assert_ne!(message_id(&a), message_id(&reordered));
        assert_eq!(message_id(&a).len(), 64);
    }
}
