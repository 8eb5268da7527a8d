//! The one path by which records change — from the API and from write-backs alike: check
//! the values against the schema, merge, and store the new version together with its
//! change (compare-and-set on the version, retried on a conflict).

use hookline_model::{DataObject, FieldError, Fields, Record};
use hookline_proto::Change;
use hookline_store::{Store, StoreError, WriteResult, now_ms};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Create the record or update it (the API's POST).
    Upsert,
    /// The record must exist (PATCH, write-backs).
    Update,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("record `{id}` of `{object}` does not exist")]
    NotFound { object: String, id: String },
    #[error("record `{id}` is being changed by others too often; try again")]
    Contended { id: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a write did.
#[derive(Debug, Clone)]
pub struct Written {
    pub record: Record,
    pub created: bool,
    /// False when the values were already as asked: no new version, no change event.
    pub changed: bool,
}

impl Written {
    /// `created`, `updated` or `unchanged`, as the API reports it.
    pub fn status(&self) -> &'static str {
        if self.created {
            "created"
        } else if self.changed {
            "updated"
        } else {
            "unchanged"
        }
    }
}

/// Checks a patch before anything is written, so a batch can be refused whole.
pub fn check(object: &DataObject, id: &str, patch: &Fields) -> Result<(), FieldError> {
    if id.is_empty() || id.len() > 512 {
        return Err(FieldError::new("id", "must be 1-512 characters"));
    }
    object.check_fields(patch)?;
    if let Some(id_field) = &object.id_field
        && let Some(v) = patch.get(id_field)
    {
        let matches = match v {
            Value::String(s) => s == id,
            Value::Number(n) => n.to_string() == id,
            _ => false,
        };
        if !matches {
            return Err(FieldError::new(
                format!("fields.{id_field}"),
                format!("is the record id and cannot differ from `{id}`"),
            ));
        }
    }
    Ok(())
}

/// Applies `patch` (null clears a field) to record `id`, storing a new version and its
/// change. `origin_webhook` marks a write-back so it cannot re-fire that webhook.
/// `definitions_version` is [`Store::definitions_version`] read after the request that
/// asked for the write began (once per request is enough): the change carries it, so the
/// trigger decides on it against every webhook saved before.
#[allow(clippy::too_many_arguments)]
pub async fn write(
    store: &dyn Store,
    object: &DataObject,
    id: &str,
    patch: &Fields,
    mode: WriteMode,
    origin_webhook: Option<&str>,
    traceparent: &str,
    definitions_version: u64,
) -> Result<Written, RecordError> {
    check(object, id, patch)?;
    for _ in 0..32 {
        let current = store.get_record(&object.name, id).await?;
        let (expected, old) = match &current {
            Some(r) => (r.version, Some(&r.fields)),
            None if mode == WriteMode::Update => {
                return Err(RecordError::NotFound { object: object.name.clone(), id: id.to_string() });
            }
            None => (0, None),
        };
        let mut fields = old.cloned().unwrap_or_default();
        for (k, v) in patch {
            if v.is_null() {
                fields.remove(k);
            } else {
                fields.insert(k.clone(), v.clone());
            }
        }
        // A new record of an object with an id field carries its id in that field.
        if let (Some(id_field), None) = (&object.id_field, old)
            && !fields.contains_key(id_field)
        {
            let is_number = object.field(id_field).is_some_and(|f| f.ty == hookline_model::FieldType::Number);
            let value = match id.parse::<serde_json::Number>() {
                Ok(n) if is_number => Value::Number(n),
                _ => Value::String(id.to_string()),
            };
            fields.insert(id_field.clone(), value);
        }
        if let Some(current) = current.as_ref().filter(|r| r.fields == fields) {
            return Ok(Written { record: current.clone(), created: false, changed: false });
        }
        let change = Change {
            object: object.name.clone(),
            record_id: id.to_string(),
            version: expected + 1,
            old_json: old.map(|o| serde_json::to_vec(o).unwrap_or_default()).unwrap_or_default(),
            new_json: serde_json::to_vec(&fields).unwrap_or_default(),
            origin_webhook: origin_webhook.unwrap_or_default().to_string(),
            traceparent: traceparent.to_string(),
            at_ms: now_ms(),
            definitions_version,
        };
        match store.write_record(&object.name, id, expected, &fields, &change).await? {
            WriteResult::Written { version } => {
                return Ok(Written {
                    record: Record { id: id.to_string(), version, fields },
                    created: expected == 0,
                    changed: true,
                });
            }
            WriteResult::Conflict { .. } => continue,
        }
    }
    Err(RecordError::Contended { id: id.to_string() })
}
