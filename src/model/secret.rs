//! A value of a task's `environment` or `headers`, which the client may mark secret: write
//! only through the API (every view shows [`REDACTED`]), hidden from every log (its
//! `Debug` never prints it), and handed as written only to the worker that runs the task.
//!
//! Two encodings. JSON (the API, and the assignments a worker polls): a plain value is a
//! string, a secret `{"value": "...", "secret": true}`. bincode (log entries, snapshots,
//! node-to-node RPC), which is not self-describing: an ordinary enum, the variant and then
//! the string — never an untagged form, which bincode cannot read back. The plain variant
//! carries its tag too, so a plain value is no longer encoded as the bare string of earlier
//! commits: deliberately, as format 2 is unreleased and this is part of it (see
//! [`crate::raft::FORMAT_VERSION`]).

#![deny(clippy::disallowed_methods, clippy::disallowed_types)] // part of the deterministic apply path

use std::fmt;

use serde::ser::SerializeStruct;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// What a view shows in place of a secret, and what an update sends back to keep the
/// stored one. Never a secret's value itself.
pub const REDACTED: &str = "***";

/// The JSON forms, for error messages.
const EXPECTED: &str = "expected a string, or {\"value\": string, \"secret\": true or false}";

/// One value of `environment` or `headers`.
#[derive(Clone, PartialEq, Eq)]
pub enum EnvValue {
    Plain(String),
    Secret(String),
}

impl EnvValue {
    /// The value as written: what the job (or the HTTP request) gets.
    pub fn value(&self) -> &str {
        match self {
            EnvValue::Plain(v) | EnvValue::Secret(v) => v,
        }
    }

    pub fn is_secret(&self) -> bool {
        matches!(self, EnvValue::Secret(_))
    }

    /// A secret whose value is [`REDACTED`]: in an update, "keep the stored secret".
    pub fn is_redaction_marker(&self) -> bool {
        matches!(self, EnvValue::Secret(v) if v == REDACTED)
    }

    /// What an API view shows: a plain value as it is, a secret as [`REDACTED`].
    pub fn redacted(&self) -> EnvValue {
        match self {
            EnvValue::Plain(v) => EnvValue::Plain(v.clone()),
            EnvValue::Secret(_) => EnvValue::Secret(REDACTED.to_string()),
        }
    }

    /// Reads one value as a client writes it: a string, or an object with a string
    /// `value` and an optional boolean `secret` (false or absent: plain). The reason given
    /// for a refusal never quotes the value, which may be a secret.
    pub fn from_json(v: Value) -> Result<EnvValue, String> {
        let map = match v {
            Value::String(s) => return Ok(EnvValue::Plain(s)),
            Value::Object(map) => map,
            _ => return Err(EXPECTED.to_string()),
        };
        let (mut value, mut secret) = (None, false);
        for (key, v) in map {
            match (key.as_str(), v) {
                ("value", Value::String(s)) => value = Some(s),
                ("value", _) => return Err("value must be a string".to_string()),
                ("secret", Value::Bool(b)) => secret = b,
                ("secret", _) => return Err("secret must be true or false".to_string()),
                _ => return Err(format!("unknown key {key:?}; {EXPECTED}")),
            }
        }
        match value {
            Some(v) if secret => Ok(EnvValue::Secret(v)),
            Some(v) => Ok(EnvValue::Plain(v)),
            None => Err(format!("value is required; {EXPECTED}")),
        }
    }
}

/// A secret shows as `secret("***")`, so tracing a command, a spec or an apply outcome
/// with `{:?}` never writes one to a log.
impl fmt::Debug for EnvValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvValue::Plain(v) => fmt::Debug::fmt(v, f),
            EnvValue::Secret(_) => write!(f, "secret({REDACTED:?})"),
        }
    }
}

/// The bincode form, written.
#[derive(Serialize)]
#[serde(rename = "EnvValue")]
enum StoredRef<'a> {
    Plain(&'a str),
    Secret(&'a str),
}

/// The bincode form, read (the same variants, in the same order, as [`StoredRef`]).
#[derive(Deserialize)]
#[serde(rename = "EnvValue")]
enum Stored {
    Plain(String),
    Secret(String),
}

impl Serialize for EnvValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if !serializer.is_human_readable() {
            return match self {
                EnvValue::Plain(v) => StoredRef::Plain(v),
                EnvValue::Secret(v) => StoredRef::Secret(v),
            }
            .serialize(serializer);
        }
        match self {
            EnvValue::Plain(v) => serializer.serialize_str(v),
            EnvValue::Secret(v) => {
                let mut s = serializer.serialize_struct("EnvValue", 2)?;
                s.serialize_field("value", v)?;
                s.serialize_field("secret", &true)?;
                s.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if !deserializer.is_human_readable() {
            return Ok(match Stored::deserialize(deserializer)? {
                Stored::Plain(v) => EnvValue::Plain(v),
                Stored::Secret(v) => EnvValue::Secret(v),
            });
        }
        EnvValue::from_json(Value::deserialize(deserializer)?).map_err(de::Error::custom)
    }
}

/// The JSON forms, for the generated OpenAPI document (`api::contract` states the same
/// with its bounds).
impl utoipa::PartialSchema for EnvValue {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Schema, Type};
        let secret = ObjectBuilder::new()
            .schema_type(Type::Object)
            .property("value", ObjectBuilder::new().schema_type(Type::String))
            .property("secret", ObjectBuilder::new().schema_type(Type::Boolean))
            .required("value")
            .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)));
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::String))
            .item(secret)
            .description(Some("a plain value, or {\"value\": ..., \"secret\": true}: a secret, shown as \"***\""))
            .into()
    }
}

impl utoipa::ToSchema for EnvValue {}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn json_forms_are_read_and_written_back_alike() {
        let cases = [
            (json!("plain"), EnvValue::Plain("plain".into())),
            (json!({"value": "plain"}), EnvValue::Plain("plain".into())),
            (json!({"value": "plain", "secret": false}), EnvValue::Plain("plain".into())),
            (json!({"value": "hunter2", "secret": true}), EnvValue::Secret("hunter2".into())),
        ];
        for (written, expected) in cases {
            let read = EnvValue::from_json(written.clone()).unwrap();
            assert_eq!(read, expected, "{written}");
            let back: EnvValue = serde_json::from_value(serde_json::to_value(&read).unwrap()).unwrap();
            assert_eq!(back, read, "{written}");
        }
        // A worker reads the secret as written; only views redact.
        assert_eq!(
            serde_json::to_value(EnvValue::Secret("hunter2".into())).unwrap(),
            json!({"value": "hunter2", "secret": true})
        );
        assert_eq!(
            serde_json::to_value(EnvValue::Secret("hunter2".into()).redacted()).unwrap(),
            json!({"value": "***", "secret": true})
        );
    }

    #[test]
    fn malformed_json_forms_are_refused_without_quoting_the_value() {
        for bad in [
            json!(7),
            json!(null),
            json!(["hunter2"]),
            json!({"secret": true}),
            json!({"value": "hunter2", "secret": "yes"}),
            json!({"value": 7, "secret": true}),
            json!({"value": "hunter2", "secret": true, "note": "x"}),
        ] {
            let reason = EnvValue::from_json(bad.clone()).unwrap_err();
            assert!(!reason.contains("hunter2"), "{bad}: {reason}");
        }
        assert!(EnvValue::from_json(json!({"value": "x", "sekret": true})).unwrap_err().contains("\"sekret\""));
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let shown = format!("{:?}", [EnvValue::Plain("visible".into()), EnvValue::Secret("hunter2".into())]);
        assert_eq!(shown, "[\"visible\", secret(\"***\")]");
    }

    /// Pins the stored (bincode) form: the variant, then the string. Changing it changes
    /// the log and snapshot format.
    #[test]
    fn the_stored_form_is_a_tagged_enum() {
        let plain = crate::storage::encode(&EnvValue::Plain("ab".into())).unwrap();
        let secret = crate::storage::encode(&EnvValue::Secret("ab".into())).unwrap();
        assert_eq!(plain, [0, 2, b'a', b'b']);
        assert_eq!(secret, [1, 2, b'a', b'b']);
        assert_eq!(crate::storage::decode::<EnvValue>(&secret).unwrap(), EnvValue::Secret("ab".into()));
        assert_eq!(crate::storage::decode::<EnvValue>(&plain).unwrap(), EnvValue::Plain("ab".into()));
    }
}
