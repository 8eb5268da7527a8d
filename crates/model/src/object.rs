//! Data objects (typed schemas) and the records that belong to them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The fields of a record, by field key. `null` clears a field.
pub type Fields = serde_json::Map<String, Value>;

/// The type of one field of a data object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    String,
    Number,
    Boolean,
    /// An RFC 3339 timestamp, stored as given.
    Datetime,
    /// Any JSON value.
    Json,
}

impl FieldType {
    pub fn name(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Number => "number",
            FieldType::Boolean => "boolean",
            FieldType::Datetime => "datetime",
            FieldType::Json => "json",
        }
    }

    /// Whether `value` is acceptable for a field of this type (`null` always is).
    pub fn accepts(self, value: &Value) -> bool {
        match (self, value) {
            (_, Value::Null) | (FieldType::Json, _) => true,
            (FieldType::String, Value::String(_)) => true,
            (FieldType::Number, Value::Number(_)) => true,
            (FieldType::Boolean, Value::Bool(_)) => true,
            (FieldType::Datetime, Value::String(s)) => humantime::parse_rfc3339_weak(s).is_ok(),
            _ => false,
        }
    }
}

/// One field of a data object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldDef {
    /// Stable machine name, used in records, scripts and templates (`e_email`).
    pub key: String,
    /// Human name, usable in conditions (`Email`). May contain spaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(rename = "type")]
    pub ty: FieldType,
}

/// A data object: a named, typed schema that records conform to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataObject {
    pub name: String,
    /// When set, a record's id is the value of this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_field: Option<String>,
    pub fields: Vec<FieldDef>,
}

/// A bad value or schema, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Path of the offending field, e.g. `fields.e_email` or `fields[2].key`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// Names usable for objects, webhooks, fields and record ids in keys and URLs.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl DataObject {
    /// Checks the schema itself: names, uniqueness, the id field.
    pub fn validate(&self) -> Result<(), FieldError> {
        if !valid_name(&self.name) {
            return Err(FieldError::new("name", "must be 1-128 characters of A-Z a-z 0-9 _ - ."));
        }
        if self.fields.is_empty() {
            return Err(FieldError::new("fields", "a data object needs at least one field"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, f) in self.fields.iter().enumerate() {
            if !valid_name(&f.key) || f.key == "id" {
                return Err(FieldError::new(
                    format!("fields[{i}].key"),
                    "must be 1-128 characters of A-Z a-z 0-9 _ - . and not `id`",
                ));
            }
            if !seen.insert(f.key.as_str()) {
                return Err(FieldError::new(format!("fields[{i}].key"), format!("duplicate key `{}`", f.key)));
            }
            if let Some(label) = &f.label
                && (label.trim().is_empty() || label.contains(['[', ']', '(', ')', ',', '"', '\'']))
            {
                return Err(FieldError::new(
                    format!("fields[{i}].label"),
                    "must be non-empty and contain none of [ ] ( ) , \" '",
                ));
            }
        }
        for (i, f) in self.fields.iter().enumerate() {
            if let Some(label) = &f.label {
                let clash = self.fields.iter().enumerate().any(|(j, g)| {
                    j != i && (g.label.as_deref() == Some(label.as_str()) || g.key == *label && g.key != f.key)
                });
                if clash {
                    return Err(FieldError::new(
                        format!("fields[{i}].label"),
                        format!("`{label}` names another field too"),
                    ));
                }
            }
        }
        if let Some(id) = &self.id_field {
            match self.field(id) {
                Some(f) if matches!(f.ty, FieldType::String | FieldType::Number) => {}
                Some(_) => return Err(FieldError::new("id_field", "the id field must be a string or a number")),
                None => return Err(FieldError::new("id_field", format!("`{id}` is not a field of this object"))),
            }
        }
        Ok(())
    }

    /// The field with this key.
    pub fn field(&self, key: &str) -> Option<&FieldDef> {
        self.fields.iter().find(|f| f.key == key)
    }

    /// The field with this key or label (keys first).
    pub fn resolve(&self, name: &str) -> Option<&FieldDef> {
        self.field(name).or_else(|| self.fields.iter().find(|f| f.label.as_deref() == Some(name)))
    }

    /// Checks every value against the schema. Paths in errors are `fields.<key>`.
    pub fn check_fields(&self, fields: &Fields) -> Result<(), FieldError> {
        for (key, value) in fields {
            let Some(def) = self.field(key) else {
                return Err(FieldError::new(
                    format!("fields.{key}"),
                    format!("unknown field of object `{}`", self.name),
                ));
            };
            if !def.ty.accepts(value) {
                let expected = match def.ty {
                    FieldType::Datetime => "an RFC 3339 datetime string".to_string(),
                    t => format!("a {}", t.name()),
                };
                return Err(FieldError::new(
                    format!("fields.{key}"),
                    format!("expected {expected}, got {}", json_kind(value)),
                ));
            }
        }
        Ok(())
    }

    /// The record id carried by `fields` when this object has an id field.
    pub fn id_from_fields(&self, fields: &Fields) -> Option<String> {
        let key = self.id_field.as_ref()?;
        match fields.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

/// A short name for the kind of a JSON value, for error messages.
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A stored record: its id, its version (1 on creation, +1 per accepted change) and fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub version: u64,
    pub fields: Fields,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn survey() -> DataObject {
        serde_json::from_value(json!({
            "name": "survey", "id_field": "a_surveyid",
            "fields": [
                {"key": "a_surveyid", "type": "string"},
                {"key": "status", "label": "Status", "type": "string"},
                {"key": "score", "label": "Transactional Satisfaction", "type": "number"},
                {"key": "at", "type": "datetime"}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn schema_checks() {
        assert!(survey().validate().is_ok());
        let mut o = survey();
        o.id_field = Some("nope".into());
        assert_eq!(o.validate().unwrap_err().field, "id_field");
        let mut o = survey();
        o.fields.push(o.fields[1].clone());
        assert_eq!(o.validate().unwrap_err().field, "fields[4].key");
    }

    #[test]
    fn values_are_typed_and_named_on_error() {
        let o = survey();
        let ok = json!({"status": "Open", "score": 3, "at": "2026-01-01T00:00:00Z", "a_surveyid": null});
        assert!(o.check_fields(ok.as_object().unwrap()).is_ok());
        let bad = json!({"score": "three"});
        let e = o.check_fields(bad.as_object().unwrap()).unwrap_err();
        assert_eq!(e.field, "fields.score");
        assert!(e.message.contains("expected a number"), "{e}");
        let unknown = json!({"nope": 1});
        assert_eq!(o.check_fields(unknown.as_object().unwrap()).unwrap_err().field, "fields.nope");
        let bad_date = json!({"at": "yesterday"});
        assert_eq!(o.check_fields(bad_date.as_object().unwrap()).unwrap_err().field, "fields.at");
    }

    #[test]
    fn resolve_by_key_or_label() {
        let o = survey();
        assert_eq!(o.resolve("Transactional Satisfaction").unwrap().key, "score");
        assert_eq!(o.resolve("status").unwrap().key, "status");
        assert!(o.resolve("nothing").is_none());
    }
}
