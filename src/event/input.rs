//! Incoming events as an ingest body holds them, read in one pass: each known member goes
//! straight into its slot, unknown members are only named. Building a whole `serde_json`
//! object first (a map with an owned key per member, then a lookup and a removal per field)
//! was a fifth of the server's ingest CPU.

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::{API_FIELDS, TENANT_FIELD};

/// Every member an incoming event may have: the SPEC §2 fields and `tenant_id`.
const MEMBERS: [&str; API_FIELDS.len() + 1] = {
    let mut members = [TENANT_FIELD; API_FIELDS.len() + 1];
    let mut index = 0;
    while index < API_FIELDS.len() {
        members[index] = API_FIELDS[index];
        index += 1;
    }
    members
};

fn member_index(name: &str) -> Option<usize> {
    MEMBERS.iter().position(|member| *member == name)
}

/// One element of an ingest batch: an event object's members, or anything else (which
/// validation refuses as "must be a JSON object").
#[derive(Debug)]
pub enum EventInput {
    /// Boxed: 13 member slots, while a batch's other elements are only refused.
    Object(Box<EventMembers>),
    NotAnObject,
}

/// The members of an incoming event object. A member given twice keeps its last value, as
/// in a parsed JSON object.
#[derive(Debug, Default)]
pub struct EventMembers {
    known: [Option<Value>; MEMBERS.len()],
    unknown: Vec<String>,
}

impl EventMembers {
    /// The members of an already parsed object.
    pub fn from_map(map: Map<String, Value>) -> Self {
        let mut members = EventMembers::default();
        for (name, value) in map {
            members.insert(name, value);
        }
        members
    }

    fn insert(&mut self, name: String, value: Value) {
        match member_index(&name) {
            Some(index) => self.known[index] = Some(value),
            None => self.unknown.push(name),
        }
    }

    /// Takes member `name`'s value; `null` counts as absent.
    pub fn take(&mut self, name: &str) -> Option<Value> {
        match self.known[member_index(name)?].take() {
            Some(Value::Null) | None => None,
            value => value,
        }
    }

    /// Names of the members that are not event fields.
    pub fn unknown(&self) -> &[String] {
        &self.unknown
    }
}

impl From<Value> for EventInput {
    fn from(value: Value) -> Self {
        match value {
            Value::Object(map) => EventInput::Object(Box::new(EventMembers::from_map(map))),
            _ => EventInput::NotAnObject,
        }
    }
}

impl<'de> Deserialize<'de> for EventInput {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(EventInputVisitor)
    }
}

struct EventInputVisitor;

impl<'de> Visitor<'de> for EventInputVisitor {
    type Value = EventInput;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("an audit event")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EventInput, A::Error> {
        let mut members = Box::<EventMembers>::default();
        while let Some(key) = map.next_key::<MemberKey>()? {
            match key {
                MemberKey::Known(index) => members.known[index] = Some(map.next_value()?),
                MemberKey::Unknown(name) => {
                    map.next_value::<IgnoredAny>()?;
                    members.unknown.push(name);
                }
            }
        }
        Ok(EventInput::Object(members))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EventInput, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(EventInput::NotAnObject)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<EventInput, E> {
        Ok(EventInput::NotAnObject)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<EventInput, E> {
        Ok(EventInput::NotAnObject)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<EventInput, E> {
        Ok(EventInput::NotAnObject)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<EventInput, E> {
        Ok(EventInput::NotAnObject)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<EventInput, E> {
        Ok(EventInput::NotAnObject)
    }

    fn visit_unit<E: de::Error>(self) -> Result<EventInput, E> {
        Ok(EventInput::NotAnObject)
    }
}

/// A member name: the index of a known member (no allocation), or an unknown name.
enum MemberKey {
    Known(usize),
    Unknown(String),
}

impl<'de> Deserialize<'de> for MemberKey {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_identifier(MemberKeyVisitor)
    }
}

struct MemberKeyVisitor;

impl Visitor<'_> for MemberKeyVisitor {
    type Value = MemberKey;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a member name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<MemberKey, E> {
        Ok(match member_index(name) {
            Some(index) => MemberKey::Known(index),
            None => MemberKey::Unknown(name.to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parsed(text: &str) -> EventInput {
        serde_json::from_str(text).expect("valid JSON")
    }

    fn members(input: EventInput) -> EventMembers {
        match input {
            EventInput::Object(members) => *members,
            EventInput::NotAnObject => panic!("expected an object"),
        }
    }

    #[test]
    fn reads_known_members_names_unknown_ones_and_keeps_the_last_duplicate() {
        let mut members = members(parsed(
            r#"{"action":"read","colour":[1,{"a":2}],"action":"write","tenant_id":"t1",
                "duration_ms":null,"extra_data":{"k":"v"},"id\u0073":1}"#,
        ));
        assert_eq!(members.take("action"), Some(json!("write")));
        assert_eq!(members.take("action"), None, "taken once");
        assert_eq!(members.take("tenant_id"), Some(json!("t1")));
        assert_eq!(members.take("duration_ms"), None, "null is absent");
        assert_eq!(members.take("extra_data"), Some(json!({"k": "v"})));
        assert_eq!(members.take("timestamp"), None);
        assert_eq!(members.take("nonsense"), None);
        assert_eq!(members.unknown(), ["colour", "ids"]);
    }

    #[test]
    fn anything_but_an_object_is_not_an_object() {
        for text in ["1", "-1", "1.5", "true", "null", "\"text\"", "[1, [2], {}]"] {
            assert!(
                matches!(parsed(text), EventInput::NotAnObject),
                "{text} should not be an object"
            );
        }
        let in_a_batch: Vec<EventInput> =
            serde_json::from_str(r#"[[{"action":"read"}], {}]"#).expect("valid JSON");
        assert!(matches!(in_a_batch[0], EventInput::NotAnObject));
        assert!(matches!(in_a_batch[1], EventInput::Object(_)));
    }

    #[test]
    fn agrees_with_a_parsed_object() {
        let text = r#"{"action":"read","x":1,"success":true,"identity_id":"u","y":{}}"#;
        let value: Value = serde_json::from_str(text).expect("valid JSON");
        let (mut streamed, mut converted) =
            (members(parsed(text)), members(EventInput::from(value)));
        assert_eq!(streamed.unknown(), converted.unknown());
        for name in MEMBERS {
            assert_eq!(streamed.take(name), converted.take(name), "{name}");
        }
    }
}
