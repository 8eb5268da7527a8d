//! The one path by which records change — from the API and from write-backs alike: check
//! the values against the schema, merge, and store the new version together with its
//! change (compare-and-set on the version, retried on a conflict).

use std::sync::Arc;

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

/// Writes one patch, reading the record again after a conflict (at most 32 times).
async fn write_one(
    store: &dyn Store,
    object: &DataObject,
    p: &Patch<'_>,
    mode: WriteMode,
    origin: Origin<'_>,
    definitions_version: u64,
) -> Result<Written, RecordError> {
    let (id, patch) = (p.id, p.fields);
    check(object, id, patch)?;
    for _ in 0..32 {
        let current = store.get_record(&object.name, id).await?;
        let planned = match plan(object, id, patch, current, mode, origin, &p.traceparent, definitions_version)? {
            Plan::Unchanged(w) => return Ok(w),
            Plan::Write(p) => p,
        };
        match store.write_record(&object.name, id, planned.expected, &planned.fields, &planned.change).await? {
            WriteResult::Written { version } => return Ok(planned.written(id, version)),
            WriteResult::Conflict { .. } => continue,
        }
    }
    Err(RecordError::Contended { id: id.to_string() })
}

/// A write worked out against the record as read.
struct Planned {
    expected: u64,
    fields: Fields,
    change: Change,
}

impl Planned {
    fn written(self, id: &str, version: u64) -> Written {
        Written {
            record: Record { id: id.to_string(), version, fields: self.fields },
            created: self.expected == 0,
            changed: true,
        }
    }
}

enum Plan {
    /// The values are as asked already: nothing to write.
    Unchanged(Written),
    Write(Planned),
}

/// What writing `patch` onto `current` (as read) stores: the merged fields and the change.
#[allow(clippy::too_many_arguments)]
fn plan(
    object: &DataObject,
    id: &str,
    patch: &Fields,
    current: Option<Record>,
    mode: WriteMode,
    origin: Origin<'_>,
    traceparent: &str,
    definitions_version: u64,
) -> Result<Plan, RecordError> {
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
    if current.as_ref().is_some_and(|r| r.fields == fields) {
        let record =
            current.unwrap_or_else(|| Record { id: id.to_string(), version: expected, fields: fields.clone() });
        return Ok(Plan::Unchanged(Written { record, created: false, changed: false }));
    }
    let change = Change {
        object: object.name.clone(),
        record_id: id.to_string(),
        version: expected + 1,
        old_json: old.map(|o| serde_json::to_vec(o).unwrap_or_default()).unwrap_or_default(),
        new_json: serde_json::to_vec(&fields).unwrap_or_default(),
        origin_webhook: origin.webhook.unwrap_or_default().to_string(),
        traceparent: traceparent.to_string(),
        at_ms: now_ms(),
        definitions_version,
        hops: origin.hops,
    };
    Ok(Plan::Write(Planned { expected, fields, change }))
}

/// Who wrote a change: the webhook whose write-back it is, and how many write-backs lead
/// to it from the user's change.
#[derive(Clone, Copy)]
struct Origin<'a> {
    webhook: Option<&'a str>,
    hops: u32,
}

/// One record of a [`write_many`]: its id, the patch, and the trace context of its change.
pub struct Patch<'a> {
    pub id: &'a str,
    pub fields: &'a Fields,
    pub traceparent: String,
    /// Write-backs from the user's change to this write (0 for a user's own write).
    pub hops: u32,
}

/// Applies each patch (null clears a field) to its record, storing a new version and its
/// change, for many records of one object in one store read and one store write (plus a
/// single write for each that conflicted with another writer, or appears twice): what a
/// bulk request costs is two round trips, not two per record. Results are in order.
/// `origin_webhook` marks write-backs, so they cannot re-fire that webhook.
/// `definitions_version` is [`Store::definitions_version`] read after the request that
/// asked for the writes began (once per request is enough): the changes carry it, so the
/// trigger decides on them against every webhook saved before.
pub async fn write_many(
    store: &dyn Store,
    object: &DataObject,
    patches: &[Patch<'_>],
    mode: WriteMode,
    origin_webhook: Option<&str>,
    definitions_version: u64,
) -> Result<Vec<Result<Written, RecordError>>, StoreError> {
    let mut out: Vec<Option<Result<Written, RecordError>>> = (0..patches.len()).map(|_| None).collect();
    let ids: Vec<String> = patches.iter().map(|p| p.id.to_string()).collect();
    let current = store.get_records(&object.name, &ids).await?;
    let mut planned = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, (p, current)) in patches.iter().zip(current).enumerate() {
        if let Err(e) = check(object, p.id, p.fields) {
            out[i] = Some(Err(e.into()));
            continue;
        }
        // A second write of one record in the request goes after the first, on its own.
        if !seen.insert(p.id) {
            continue;
        }
        let origin = Origin { webhook: origin_webhook, hops: p.hops };
        match plan(object, p.id, p.fields, current, mode, origin, &p.traceparent, definitions_version) {
            Ok(Plan::Unchanged(w)) => out[i] = Some(Ok(w)),
            Ok(Plan::Write(w)) => planned.push((i, w)),
            Err(e) => out[i] = Some(Err(e)),
        }
    }
    // Each change moves into its write: what a write returns needs its fields only.
    let writes: Vec<hookline_store::RecordWrite> = planned
        .iter_mut()
        .map(|(i, w)| hookline_store::RecordWrite {
            id: patches[*i].id.to_string(),
            expected: w.expected,
            change: std::mem::take(&mut w.change),
        })
        .collect();
    let results = store.write_records(&object.name, &writes).await?;
    for ((i, w), result) in planned.into_iter().zip(results) {
        if let WriteResult::Written { version } = result {
            out[i] = Some(Ok(w.written(patches[i].id, version)));
        }
    }
    // What is left (conflicts, repeated ids) goes one by one, in request order.
    for (i, slot) in out.iter_mut().enumerate() {
        if slot.is_none() {
            let p = &patches[i];
            let origin = Origin { webhook: origin_webhook, hops: p.hops };
            *slot = Some(write_one(store, object, p, mode, origin, definitions_version).await);
        }
    }
    Ok(out.into_iter().map(|r| r.unwrap_or_else(|| Err(RecordError::Contended { id: String::new() }))).collect())
}

/// Single record writes (the API's one-record POST and PATCH) that arrive while others are
/// being written go to the store together, through [`write_many`]: a busy API writes many
/// records per store read and write, an idle one writes each at once. At most
/// [`Batcher::IN_FLIGHT`] steps run at a time; writes that arrive meanwhile wait for a free
/// one and go in it together. Each write keeps its own result, trace context and checks;
/// a step carries the newest definitions' version of its writes (every webhook saved
/// before any of them is at or below it).
pub struct Batcher {
    tx: tokio::sync::mpsc::UnboundedSender<Pending>,
}

/// One record's write, as the API asks for it.
pub struct SingleWrite {
    pub object: Arc<DataObject>,
    pub id: String,
    pub fields: Fields,
    pub mode: WriteMode,
    pub traceparent: String,
    /// [`Store::definitions_version`], read once the request arrived.
    pub definitions_version: u64,
}

/// A write waiting for its step.
struct Pending {
    write: SingleWrite,
    done: tokio::sync::oneshot::Sender<Result<Written, RecordError>>,
}

impl Batcher {
    /// Store steps of batched writes running at once.
    pub const IN_FLIGHT: usize = 4;
    /// Writes in one step at most.
    const MAX_BATCH: usize = 256;

    /// Starts the task that writes the batches (on the current Tokio runtime); it ends when
    /// the batcher is dropped and every write taken is done.
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(run_batches(store, rx));
        Self { tx }
    }

    /// Writes `write` in a step with whatever other writes are waiting; its result is its
    /// own, as [`write_many`] gives each.
    pub async fn write(&self, write: SingleWrite) -> Result<Written, RecordError> {
        let stopped = || RecordError::Store(StoreError::Unavailable("the record writer is stopping".into()));
        let (done, result) = tokio::sync::oneshot::channel();
        self.tx.send(Pending { write, done }).map_err(|_| stopped())?;
        result.await.unwrap_or_else(|_| Err(stopped()))
    }
}

async fn run_batches(store: Arc<dyn Store>, mut rx: tokio::sync::mpsc::UnboundedReceiver<Pending>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(Batcher::IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut batch = vec![first];
        while batch.len() < Batcher::MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let store = store.clone();
        tokio::spawn(async move {
            write_batch(store.as_ref(), batch).await;
            drop(slot);
        });
    }
}

/// Writes a batch, one [`write_many`] per object definition and mode, in arrival order.
async fn write_batch(store: &dyn Store, mut batch: Vec<Pending>) {
    while !batch.is_empty() {
        let (object, mode) = (batch[0].write.object.clone(), batch[0].write.mode);
        let (mut group, rest): (Vec<Pending>, Vec<Pending>) =
            batch.into_iter().partition(|p| Arc::ptr_eq(&p.write.object, &object) && p.write.mode == mode);
        batch = rest;
        let version = group.iter().map(|p| p.write.definitions_version).max().unwrap_or(0);
        let patches: Vec<Patch<'_>> = group
            .iter_mut()
            .map(|p| {
                let SingleWrite { id, fields, traceparent, .. } = &mut p.write;
                Patch { id, fields, traceparent: std::mem::take(traceparent), hops: 0 }
            })
            .collect();
        let results = write_many(store, &object, &patches, mode, None, version).await;
        drop(patches);
        let results: Vec<Result<Written, RecordError>> = match results {
            Ok(results) => results,
            Err(e) => group.iter().map(|_| Err(RecordError::Store(e.clone()))).collect(),
        };
        for (p, result) in group.into_iter().zip(results) {
            let _ = p.done.send(result);
        }
    }
}
