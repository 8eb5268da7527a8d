//! The two halves of the embedded store's work: reads, which run redb read transactions and
//! must be called off the async runtime (the async half wraps each in `spawn_blocking`), and
//! writes, closures over a write transaction that the [`Writer`] runs, many per commit.
//!
//! Lock order: a group's state lock may be taken inside a write transaction (a write checks
//! that the consumer finishing an entry still owns it), never the other way round — nothing
//! holding a group lock waits for the writer. The [`Locks`] mutex is also taken briefly
//! inside write transactions (`set_value_locked`, `put_webhook`'s delete).

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hookline_model::Record;
use hookline_proto::{Attempt, Job, Message, WritebackJob};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, WriteTransaction};
use tokio::sync::Notify;

use super::state::{Group, Groups, Locks, Pending, Permits, Rates, lock};
use super::tables::*;
use super::writer::Writer;
use crate::{
    AttemptFilter, DeadLetter, DefEvent, FailedWriteback, IndexedRecord, JOURNEY_KEPT, JourneyNote, QueueStats,
    RawEntry, Result, StoreError, WriteResult,
};

/// Maps any redb error to a [`StoreError`].
pub(super) fn db(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Corrupted(reason) => StoreError::Corrupt { key: "hookline.redb".into(), reason },
        redb::Error::Io(e) => StoreError::Unavailable(format!("embedded store I/O: {e}")),
        redb::Error::DatabaseAlreadyOpen => {
            StoreError::Backend("the embedded store is already open (another hookline process?)".into())
        }
        e => StoreError::Backend(format!("embedded store: {e}")),
    }
}

fn corrupt(key: impl Into<String>, reason: impl ToString) -> StoreError {
    StoreError::Corrupt { key: key.into(), reason: reason.to_string() }
}

pub(super) fn decode<T: Message + Default>(key: impl FnOnce() -> String, bytes: &[u8]) -> Result<T> {
    T::decode(bytes).map_err(|e| corrupt(key(), e))
}

fn json<T: serde::de::DeserializeOwned>(key: impl FnOnce() -> String, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| corrupt(key(), e))
}

fn now_ms() -> u64 {
    crate::now_ms().max(0) as u64
}

/// What a write transaction did that the in-memory state must follow once it commits.
#[derive(Debug)]
pub(crate) struct Effects {
    pub(super) last: Id,
    pub(super) allocated: bool,
    /// Queues that got entries: wake their readers.
    wake: Vec<(Queue, String)>,
    wake_events: bool,
    /// Entries acknowledged: no longer pending.
    settled: Vec<(Queue, String, Id)>,
    /// Webhooks deleted: nothing of theirs is pending, no permit held.
    forgotten: Vec<String>,
}

impl Effects {
    pub(super) fn new(last: Id) -> Effects {
        Effects { last, allocated: false, wake: vec![], wake_events: false, settled: vec![], forgotten: vec![] }
    }

    fn next_id(&mut self) -> Id {
        self.last = self.last.next(now_ms());
        self.allocated = true;
        self.last
    }

    #[cfg(test)]
    pub(super) fn next_id_for_test(&mut self) -> Id {
        self.next_id()
    }

    fn settle(&mut self, queue: Queue, owner: &str, id: Id) {
        self.settled.push((queue, owner.to_string(), id));
    }
}

/// The in-memory state shared by the store and its writer.
#[derive(Default)]
pub(super) struct Shared {
    pub(super) groups: Groups,
    pub(super) events: Notify,
    pub(super) permits: Permits,
    pub(super) locks: Locks,
    pub(super) rates: Rates,
    /// (webhook, node) → (calls in flight, report expiry): `report_in_flight`.
    pub(super) in_flight: std::sync::Mutex<std::collections::HashMap<(String, String), (u64, Instant)>>,
}

impl Shared {
    /// Brings the in-memory state up to date after a commit.
    fn committed(&self, fx: &Effects) {
        for (queue, owner, id) in &fx.settled {
            lock(&self.groups.get(*queue, owner).state).pending.remove(id);
        }
        for webhook in &fx.forgotten {
            // Its entries are gone, so nothing of them is pending. The delivered cursors
            // stay: ids only grow, so a re-created webhook's entries are all after them.
            for queue in [Queue::Jobs, Queue::Solo, Queue::Writebacks] {
                lock(&self.groups.get(queue, webhook).state).pending.clear();
            }
            self.permits.forget(webhook);
        }
        for (queue, owner) in &fx.wake {
            self.groups.get(*queue, owner).notify.notify_waiters();
        }
        if fx.wake_events {
            self.events.notify_waiters();
        }
    }
}

/// Appends one entry to an open queue table.
fn append(
    table: &mut Table<StreamKey, QueueValue>,
    fx: &mut Effects,
    queue: Queue,
    owner: &str,
    flags: u8,
    payload: &[u8],
) -> Result<Id> {
    let id = fx.next_id();
    table.insert(id.key(owner), (flags, payload)).map_err(db)?;
    if !fx.wake.iter().any(|(q, o)| *q == queue && o == owner) {
        fx.wake.push((queue, owner.to_string()));
    }
    Ok(id)
}

/// Appends one definition event, keeping the newest [`EVENTS_KEPT`], and bumps the
/// definitions' version.
fn event(txn: &WriteTransaction, fx: &mut Effects, kind: &str, name: &str) -> Result<()> {
    let mut events = txn.open_table(EVENTS).map_err(db)?;
    let id = fx.next_id();
    events.insert((id.ms, id.seq), (kind, name)).map_err(db)?;
    while events.len().map_err(db)? > EVENTS_KEPT {
        events.pop_first().map_err(db)?;
    }
    let mut meta = txn.open_table(META).map_err(db)?;
    let version = meta.get("definitions").map_err(db)?.map(|v| v.value().0).unwrap_or(0);
    meta.insert("definitions", (version + 1, 0)).map_err(db)?;
    fx.wake_events = true;
    Ok(())
}

/// Gives record `id` the object's next write position and moves its write index entry there,
/// noting `origin` (`""`: none) and the position of the record's latest write by a writer
/// other than `origin`: the previous write's own such position when it had the same origin,
/// else the previous write's position (0 for a new record). Returns the position.
fn index_write(
    meta: &mut Table<&'static str, (u64, u64)>,
    positions: &mut Table<(&'static str, &'static str), (u64, &'static str, u64)>,
    written: &mut Table<(&'static str, u64), &'static str>,
    object: &str,
    id: &str,
    origin: &str,
) -> Result<u64> {
    let key = position_key(object);
    let position = meta.get(key.as_str()).map_err(db)?.map(|v| v.value().0).unwrap_or(0) + 1;
    meta.insert(key.as_str(), (position, 0)).map_err(db)?;
    let previous = positions.get((object, id)).map_err(db)?.map(|v| {
        let (p, o, q) = v.value();
        (p, if o == origin { q } else { p })
    });
    let other = previous.map_or(0, |(_, other)| other);
    positions.insert((object, id), (position, origin, other)).map_err(db)?;
    if let Some((previous, _)) = previous {
        written.remove((object, previous)).map_err(db)?;
    }
    written.insert((object, position), id).map_err(db)?;
    Ok(position)
}

/// Indexes every record of a version 1 file, which has none of the write index: in
/// [`RECORDS`] order (so each object's records take positions 1, 2, … by id), origin `""`,
/// other position 0 (no earlier write is known).
/// Returns how many records it indexed.
fn index_records(txn: &WriteTransaction, meta: &mut Table<&'static str, (u64, u64)>) -> Result<u64> {
    let records = txn.open_table(RECORDS).map_err(db)?;
    let mut positions = txn.open_table(RECORD_POSITIONS).map_err(db)?;
    let mut written = txn.open_table(WRITTEN).map_err(db)?;
    let mut n = 0;
    for item in records.iter().map_err(db)? {
        let (k, _) = item.map_err(db)?;
        let (object, id) = k.value();
        index_write(meta, &mut positions, &mut written, object, id, "")?;
        n += 1;
    }
    Ok(n)
}

/// Moves the jobs of a version 2 file that are to be sent alone (attempted before, or whole
/// batches) from the fresh table to [`SOLO`], keeping their ids. Returns how many it moved.
fn split_solo_jobs(txn: &WriteTransaction) -> Result<u64> {
    let mut jobs = txn.open_table(JOBS).map_err(db)?;
    let mut solo = txn.open_table(SOLO).map_err(db)?;
    let mut moving = Vec::new();
    for item in jobs.iter().map_err(db)? {
        let (k, v) = item.map_err(db)?;
        let (owner, ms, seq) = k.value();
        let (flags, bytes) = v.value();
        if let Ok(job) = Job::decode(bytes)
            && is_solo(&job)
        {
            moving.push((owner.to_string(), ms, seq, flags, bytes.to_vec()));
        }
    }
    for (owner, ms, seq, flags, bytes) in &moving {
        jobs.remove((owner.as_str(), *ms, *seq)).map_err(db)?;
        solo.insert((owner.as_str(), *ms, *seq), (*flags, bytes.as_slice())).map_err(db)?;
    }
    Ok(moving.len() as u64)
}

/// Whether a job goes to the solo queue: attempted before, or a whole batch.
pub(super) fn is_solo(job: &Job) -> bool {
    job.attempts > 0 || job.record_ids.len() > 1
}

/// Every key of one owner in a queue-like table.
fn owner_range(owner: &str) -> std::ops::RangeInclusive<(&str, u64, u64)> {
    Id::default().key(owner)..=Id::MAX.key(owner)
}

/// An entry handed out, as the store returns it and as it must be noted on disk.
pub(super) struct HandedOut {
    pub queue: Queue,
    pub id: Id,
    pub entry: RawEntry,
}

pub(super) struct Inner {
    db: Arc<Database>,
    path: PathBuf,
    pub(super) writer: Writer,
    pub(super) shared: Arc<Shared>,
}

impl Inner {
    pub(super) fn open(dir: &Path) -> Result<Inner> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Backend(format!("cannot create the data directory {}: {e}", dir.display())))?;
        let path = dir.join("hookline.redb");
        let database = Database::create(&path).map_err(db)?;
        let txn = database.begin_write().map_err(db)?;
        let last = {
            // Create every table, so readers never meet a missing one.
            for def in [CHANGES, JOBS, SOLO, WRITEBACKS] {
                txn.open_table(def).map_err(db)?;
            }
            txn.open_table(OBJECTS).map_err(db)?;
            txn.open_table(WEBHOOKS).map_err(db)?;
            txn.open_table(EVENTS).map_err(db)?;
            txn.open_table(RECORDS).map_err(db)?;
            txn.open_table(RECORD_POSITIONS).map_err(db)?;
            txn.open_table(WRITTEN).map_err(db)?;
            txn.open_table(DELAYED).map_err(db)?;
            txn.open_table(DEAD).map_err(db)?;
            txn.open_table(FAILED_WRITEBACKS).map_err(db)?;
            txn.open_table(HANDED).map_err(db)?;
            txn.open_table(ATTEMPTS).map_err(db)?;
            txn.open_table(ATTEMPTS_BY_TIME).map_err(db)?;
            txn.open_table(VALUES).map_err(db)?;
            txn.open_table(JOURNEY).map_err(db)?;
            let mut meta = txn.open_table(META).map_err(db)?;
            let format = meta.get("format").map_err(db)?.map(|v| v.value().0);
            match format {
                None => {
                    meta.insert("format", (FORMAT, 0)).map_err(db)?;
                }
                Some(FORMAT) => {}
                Some(old @ (1 | 2)) => {
                    if old == 1 {
                        // Version 2 added the write index: build it, in this same transaction.
                        let indexed = index_records(&txn, &mut meta)?;
                        tracing::info!(path = %path.display(), records = indexed, "indexed the records of a layout version 1 store");
                    }
                    // Version 3 sends retried and redriven jobs from a queue of their own.
                    let moved = split_solo_jobs(&txn)?;
                    meta.insert("format", (FORMAT, 0)).map_err(db)?;
                    tracing::info!(path = %path.display(), solo_jobs = moved, "upgraded a layout version {old} store to version {FORMAT}");
                }
                Some(other) => {
                    return Err(StoreError::Backend(format!(
                        "{} has layout version {other}; this build reads versions 1 to {FORMAT}",
                        path.display()
                    )));
                }
            }
            let last = meta.get("last_id").map_err(db)?.map(|v| v.value());
            last.map(|(ms, seq)| Id { ms, seq }).unwrap_or_default()
        };
        txn.commit().map_err(db)?;
        let database = Arc::new(database);
        let shared = Arc::new(Shared::default());
        let on_commit = {
            let shared = shared.clone();
            Box::new(move |fx: &Effects| shared.committed(fx))
        };
        let writer = Writer::start(database.clone(), last, on_commit)?;
        Ok(Inner { db: database, path, writer, shared })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> Result<redb::ReadTransaction> {
        self.db.begin_read().map_err(db)
    }

    pub(super) fn ping(&self) -> Result<()> {
        self.read()?.open_table(META).map_err(db)?;
        Ok(())
    }

    // --- definitions ---

    pub(super) fn get_value(&self, webhook: &str, name: &str, now_ms: i64) -> Result<Option<Vec<u8>>> {
        let txn = self.read()?;
        let table = txn.open_table(VALUES).map_err(db)?;
        let value = table.get((webhook, name)).map_err(db)?;
        Ok(value.and_then(|v| {
            let (expires, bytes) = v.value();
            (expires > now_ms).then(|| bytes.to_vec())
        }))
    }

    pub(super) fn get_object<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        let txn = self.read()?;
        let table = txn.open_table(OBJECTS).map_err(db)?;
        let text = table.get(name).map_err(db)?;
        text.map(|t| json(|| format!("objects/{name}"), t.value())).transpose()
    }

    pub(super) fn list_objects<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<T>> {
        Self::objects_in(&self.read()?)
    }

    fn objects_in<T: serde::de::DeserializeOwned>(txn: &redb::ReadTransaction) -> Result<Vec<T>> {
        let table = txn.open_table(OBJECTS).map_err(db)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(db)? {
            let (k, v) = item.map_err(db)?;
            out.push(json(|| format!("objects/{}", k.value()), v.value())?);
        }
        Ok(out)
    }

    pub(super) fn get_webhook<T: serde::de::DeserializeOwned>(&self, id: &str) -> Result<Option<T>> {
        let txn = self.read()?;
        let table = txn.open_table(WEBHOOKS).map_err(db)?;
        let value = table.get(id).map_err(db)?;
        value.map(|v| json(|| format!("webhooks/{id}"), v.value().1)).transpose()
    }

    pub(super) fn list_webhooks<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<T>> {
        Self::webhooks_in(&self.read()?)
    }

    fn webhooks_in<T: serde::de::DeserializeOwned>(txn: &redb::ReadTransaction) -> Result<Vec<T>> {
        let table = txn.open_table(WEBHOOKS).map_err(db)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(db)? {
            let (k, v) = item.map_err(db)?;
            out.push(json(|| format!("webhooks/{}", k.value()), v.value().1)?);
        }
        Ok(out)
    }

    /// The definitions' version, objects and webhooks, from one snapshot.
    pub(super) fn definitions<O, W>(&self) -> Result<(u64, Vec<O>, Vec<W>)>
    where
        O: serde::de::DeserializeOwned,
        W: serde::de::DeserializeOwned,
    {
        let txn = self.read()?;
        let version = Self::definitions_version_in(&txn)?;
        Ok((version, Self::objects_in(&txn)?, Self::webhooks_in(&txn)?))
    }

    pub(super) fn definitions_version(&self) -> Result<u64> {
        Self::definitions_version_in(&self.read()?)
    }

    fn definitions_version_in(txn: &redb::ReadTransaction) -> Result<u64> {
        let meta = txn.open_table(META).map_err(db)?;
        Ok(meta.get("definitions").map_err(db)?.map(|v| v.value().0).unwrap_or(0))
    }

    pub(super) fn events_cursor(&self) -> Result<String> {
        let txn = self.read()?;
        let table = txn.open_table(EVENTS).map_err(db)?;
        let last = table.last().map_err(db)?.map(|(k, _)| k.value());
        Ok(last.map(|(ms, seq)| Id { ms, seq }).unwrap_or_default().to_string())
    }

    /// Events after `cursor` (at most 1000), and the id of the last one read.
    pub(super) fn events_after(&self, cursor: Id) -> Result<(Vec<DefEvent>, Option<Id>)> {
        let txn = self.read()?;
        let table = txn.open_table(EVENTS).map_err(db)?;
        let mut out = Vec::new();
        let mut last = None;
        let range = (Bound::Excluded((cursor.ms, cursor.seq)), Bound::Unbounded::<(u64, u64)>);
        for item in table.range(range).map_err(db)?.take(1000) {
            let (k, v) = item.map_err(db)?;
            let (ms, seq) = k.value();
            last = Some(Id { ms, seq });
            match v.value() {
                ("object", name) => out.push(DefEvent::Object(name.to_string())),
                ("webhook", name) => out.push(DefEvent::Webhook(name.to_string())),
                _ => {}
            }
        }
        Ok((out, last))
    }

    // --- records ---

    pub(super) fn get_record(&self, object: &str, id: &str) -> Result<Option<Record>> {
        let txn = self.read()?;
        let table = txn.open_table(RECORDS).map_err(db)?;
        let Some(v) = table.get((object, id)).map_err(db)? else { return Ok(None) };
        let (version, fields) = v.value();
        Ok(Some(Record { id: id.to_string(), version, fields: json(|| format!("records/{object}/{id}"), fields)? }))
    }

    pub(super) fn get_records(&self, object: &str, ids: &[String]) -> Result<Vec<Option<Record>>> {
        let txn = self.read()?;
        let table = txn.open_table(RECORDS).map_err(db)?;
        ids.iter()
            .map(|id| {
                let Some(v) = table.get((object, id.as_str())).map_err(db)? else { return Ok(None) };
                let (version, fields) = v.value();
                Ok(Some(Record { id: id.clone(), version, fields: json(|| format!("records/{object}/{id}"), fields)? }))
            })
            .collect()
    }

    // --- the write index ---

    pub(super) fn write_position(&self, object: &str) -> Result<u64> {
        let txn = self.read()?;
        let meta = txn.open_table(META).map_err(db)?;
        let position = meta.get(position_key(object).as_str()).map_err(db)?.map(|v| v.value().0);
        Ok(position.unwrap_or(0))
    }

    /// Up to `limit` records whose latest write stands after `after`, in position order, read
    /// from one snapshot (so each entry agrees with its record).
    pub(super) fn records_written(&self, object: &str, after: u64, limit: usize) -> Result<Vec<IndexedRecord>> {
        if limit == 0 || after == u64::MAX {
            return Ok(Vec::new());
        }
        let txn = self.read()?;
        let written = txn.open_table(WRITTEN).map_err(db)?;
        let records = txn.open_table(RECORDS).map_err(db)?;
        let positions = txn.open_table(RECORD_POSITIONS).map_err(db)?;
        let range = (Bound::Excluded((object, after)), Bound::Included((object, u64::MAX)));
        let mut out = Vec::new();
        for item in written.range(range).map_err(db)?.take(limit) {
            let (k, v) = item.map_err(db)?;
            let (position, id) = (k.value().1, v.value());
            // A record and its index entry are written in one transaction: this only skips an
            // entry left without its record (as Redis skips a vanished hash).
            let Some(record) = records.get((object, id)).map_err(db)? else { continue };
            let (version, fields) = record.value();
            let (origin, other) = match positions.get((object, id)).map_err(db)? {
                Some(p) => {
                    let (_, origin, other) = p.value();
                    (origin.to_string(), other)
                }
                None => (String::new(), 0),
            };
            out.push(IndexedRecord {
                position,
                record: Record {
                    id: id.to_string(),
                    version,
                    fields: json(|| format!("records/{object}/{id}"), fields)?,
                },
                origin_webhook: origin,
                other_position: other,
            });
        }
        Ok(out)
    }

    // --- queues: reads ---

    /// Hands up to `count` entries of `queue` not yet handed to anyone to `consumer`, marking
    /// them pending. Undecodable entries are not handed out: they are returned apart, for the
    /// caller to remove. What a job queue hands out must then be noted on disk
    /// ([`note_handed_out`]) before the entries are used.
    pub(super) fn hand_out(
        &self,
        queue: Queue,
        owner: &str,
        group: &Group,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<HandedOut>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let txn = self.read()?;
        let table = txn.open_table(queue.table()).map_err(db)?;
        let handed = txn.open_table(HANDED).map_err(db)?;
        let mut state = lock(&group.state);
        if queue.counts_deliveries() && state.earlier.is_none() {
            let meta = txn.open_table(META).map_err(db)?;
            let earlier = meta.get(cursor_key(queue, owner).as_str()).map_err(db)?.map(|v| v.value());
            state.earlier = Some(earlier.map(|(ms, seq)| Id { ms, seq }).unwrap_or_default());
        }
        let earlier = state.earlier.unwrap_or_default();
        let range = (Bound::Excluded(state.delivered.key(owner)), Bound::Included(Id::MAX.key(owner)));
        let now = Instant::now();
        let mut out = Vec::new();
        for item in table.range(range).map_err(db)?.take(count) {
            let (k, v) = item.map_err(db)?;
            let (_, ms, seq) = k.value();
            let id = Id { ms, seq };
            state.delivered = id;
            let (flags, bytes) = v.value();
            // Handed out by an earlier process and never finished: once more now.
            let deliveries = if queue.counts_deliveries() && id <= earlier {
                let before = handed.get((queue.name(), owner, ms, seq)).map_err(db)?.map(|c| c.value()).unwrap_or(1);
                before + 1
            } else {
                1
            };
            state
                .pending
                .insert(id, Pending { consumer: consumer.to_string(), touched: now, deliveries, released: false });
            out.push(HandedOut {
                queue,
                id,
                entry: RawEntry {
                    id: public_id(queue, id),
                    payload: bytes.to_vec(),
                    deliveries,
                    redriven: flags & FLAG_REDRIVEN != 0,
                    solo: queue == Queue::Solo,
                },
            });
        }
        Ok(out)
    }

    /// Re-assigns to `consumer` up to `count` pending entries idle at least `min_idle` (or
    /// released), from after `cursor`; returns them and the id to go on from (None: the end).
    pub(super) fn claim(
        &self,
        queue: Queue,
        owner: &str,
        consumer: &str,
        min_idle: Duration,
        cursor: Id,
        count: usize,
    ) -> Result<(Vec<HandedOut>, Option<Id>)> {
        if count == 0 {
            return Ok((Vec::new(), Some(cursor)));
        }
        let txn = self.read()?;
        let table = txn.open_table(queue.table()).map_err(db)?;
        let group = self.shared.groups.get(queue, owner);
        let mut state = lock(&group.state);
        let now = Instant::now();
        let idle: Vec<Id> = state
            .pending
            .range((Bound::Excluded(cursor), Bound::Unbounded))
            .filter(|(_, p)| p.released || now.saturating_duration_since(p.touched) >= min_idle)
            .map(|(id, _)| *id)
            .take(count)
            .collect();
        let next = if idle.len() == count { idle.last().copied() } else { None };
        let mut out = Vec::new();
        for id in idle {
            let Some(v) = table.get(id.key(owner)).map_err(db)? else {
                // Acknowledged in the meantime.
                state.pending.remove(&id);
                continue;
            };
            let (flags, bytes) = v.value();
            // A given-back entry was not delivered again by being given back.
            let deliveries =
                state.pending.get(&id).map_or(1, |p| if p.released { p.deliveries } else { p.deliveries + 1 });
            if let Some(p) = state.pending.get(&id) {
                tracing::debug!(queue = queue.name(), owner, entry = %id, from = %p.consumer, to = consumer, "taking over an idle entry");
            }
            state
                .pending
                .insert(id, Pending { consumer: consumer.to_string(), touched: now, deliveries, released: false });
            out.push(HandedOut {
                queue,
                id,
                entry: RawEntry {
                    id: public_id(queue, id),
                    payload: bytes.to_vec(),
                    deliveries,
                    redriven: flags & FLAG_REDRIVEN != 0,
                    solo: queue == Queue::Solo,
                },
            });
        }
        Ok((out, next))
    }

    /// Whether any entry of `queue` of `owner` is newer than `after`.
    pub(super) fn has_after(&self, queue: Queue, owner: &str, after: Id) -> Result<bool> {
        let txn = self.read()?;
        let table = txn.open_table(queue.table()).map_err(db)?;
        let range = (Bound::Excluded(after.key(owner)), Bound::Included(Id::MAX.key(owner)));
        Ok(table.range(range).map_err(db)?.next().is_some())
    }

    /// The newest entry id of `queue` of `owner`, or the default id.
    pub(super) fn last_id(&self, queue: Queue, owner: &str) -> Result<Id> {
        let txn = self.read()?;
        let table = txn.open_table(queue.table()).map_err(db)?;
        let last = table.range(owner_range(owner)).map_err(db)?.next_back().transpose().map_err(db)?;
        Ok(last
            .map(|(k, _)| {
                let (_, ms, seq) = k.value();
                Id { ms, seq }
            })
            .unwrap_or_default())
    }

    /// The first delayed job's due time.
    fn next_due(
        table: &impl ReadableTable<(&'static str, i64, u64, u64), &'static [u8]>,
        webhook: &str,
    ) -> Result<Option<i64>> {
        let range = (webhook, i64::MIN, 0, 0)..=(webhook, i64::MAX, u64::MAX, u64::MAX);
        let first = table.range(range).map_err(db)?.next().transpose().map_err(db)?;
        Ok(first.map(|(k, _)| k.value().1))
    }

    /// When the first delayed job of `webhook` is due, from a snapshot.
    pub(super) fn first_due(&self, webhook: &str) -> Result<Option<i64>> {
        let txn = self.read()?;
        let table = txn.open_table(DELAYED).map_err(db)?;
        Self::next_due(&table, webhook)
    }

    pub(super) fn oldest_job_ms(&self, webhook: &str) -> Result<Option<i64>> {
        let txn = self.read()?;
        let mut oldest = None::<i64>;
        for def in [JOBS, SOLO] {
            let table = txn.open_table(def).map_err(db)?;
            let first = table.range(owner_range(webhook)).map_err(db)?.next().transpose().map_err(db)?;
            if let Some((k, _)) = first {
                let ms = k.value().1 as i64;
                oldest = Some(oldest.map_or(ms, |o| o.min(ms)));
            }
        }
        Ok(oldest)
    }

    pub(super) fn queue_depth(&self, webhook: &str) -> Result<u64> {
        let txn = self.read()?;
        let mut n = 0u64;
        for def in [JOBS, SOLO] {
            let table = txn.open_table(def).map_err(db)?;
            for item in table.range(owner_range(webhook)).map_err(db)? {
                item.map_err(db)?;
                n += 1;
            }
        }
        let delayed = txn.open_table(DELAYED).map_err(db)?;
        for item in delayed.range((webhook, i64::MIN, 0, 0)..=(webhook, i64::MAX, u64::MAX, u64::MAX)).map_err(db)? {
            item.map_err(db)?;
            n += 1;
        }
        Ok(n)
    }

    pub(super) fn queue_stats(&self, webhooks: &[String]) -> Result<Vec<QueueStats>> {
        let mut out = Vec::with_capacity(webhooks.len());
        for webhook in webhooks {
            let txn = self.read()?;
            let dead = txn.open_table(DEAD).map_err(db)?;
            let mut dead_letters = 0;
            for item in dead.range(owner_range(webhook)).map_err(db)? {
                item.map_err(db)?;
                dead_letters += 1;
            }
            let in_flight = lock(&self.shared.in_flight)
                .iter()
                .filter(|((w, _), (_, until))| w == webhook && *until > Instant::now())
                .map(|(_, (n, _))| n)
                .sum();
            out.push(QueueStats {
                depth: self.queue_depth(webhook)?,
                oldest_ms: self.oldest_job_ms(webhook)?,
                dead_letters,
                in_flight,
            });
        }
        Ok(out)
    }

    pub(super) fn journey(&self, object: &str, record_id: &str, limit: usize) -> Result<Vec<JourneyNote>> {
        let txn = self.read()?;
        let table = txn.open_table(JOURNEY).map_err(db)?;
        let mut out = Vec::new();
        let range = table.range((object, record_id, 0)..=(object, record_id, u64::MAX)).map_err(db)?;
        for item in range.rev().take(limit.clamp(1, JOURNEY_KEPT)) {
            let (k, v) = item.map_err(db)?;
            out.push(JourneyNote {
                object: object.to_string(),
                record_id: record_id.to_string(),
                version: k.value().2,
                note: v.value().to_vec(),
            });
        }
        Ok(out)
    }

    // --- attempt log, dead letters, failed write-backs ---

    pub(super) fn list_attempts(&self, webhook: &str, filter: &AttemptFilter) -> Result<Vec<Attempt>> {
        let limit = filter.limit.clamp(1, 10_000);
        let txn = self.read()?;
        let by_time = txn.open_table(ATTEMPTS_BY_TIME).map_err(db)?;
        let attempts = txn.open_table(ATTEMPTS).map_err(db)?;
        let end = after(webhook);
        let since = filter.since_ms.unwrap_or(i64::MIN);
        let mut out = Vec::new();
        let range = match &filter.before {
            Some((ms, id)) => by_time.range((webhook, since, "")..(webhook, *ms, id.as_str())),
            None => by_time.range((webhook, since, "")..(end.as_str(), i64::MIN, "")),
        };
        for item in range.map_err(db)?.rev() {
            let (k, _) = item.map_err(db)?;
            let (_, _, id) = k.value();
            let Some(blob) = attempts.get((webhook, id)).map_err(db)? else { continue };
            let a: Attempt = decode(|| format!("attempts/{webhook}/{id}"), blob.value())?;
            if filter.matches(&a) {
                out.push(a);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    pub(super) fn get_attempt(&self, webhook: &str, attempt_id: &str) -> Result<Option<Attempt>> {
        let txn = self.read()?;
        let attempts = txn.open_table(ATTEMPTS).map_err(db)?;
        let blob = attempts.get((webhook, attempt_id)).map_err(db)?;
        blob.map(|b| decode(|| format!("attempts/{webhook}/{attempt_id}"), b.value())).transpose()
    }

    pub(super) fn dead_letters(&self, webhook: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        let txn = self.read()?;
        let dead = txn.open_table(DEAD).map_err(db)?;
        let mut out = Vec::new();
        for item in dead.range(owner_range(webhook)).map_err(db)?.take(limit.clamp(1, 10_000)) {
            let (k, v) = item.map_err(db)?;
            let (_, ms, seq) = k.value();
            let id = Id { ms, seq };
            let (job, reason) = v.value();
            out.push(DeadLetter {
                job: decode(|| format!("dead/{webhook}/{id}"), job)?,
                reason: reason.to_string(),
                id: id.to_string(),
            });
        }
        Ok(out)
    }

    pub(super) fn failed_writebacks(&self, webhook: &str, limit: usize) -> Result<Vec<FailedWriteback>> {
        let txn = self.read()?;
        let failed = txn.open_table(FAILED_WRITEBACKS).map_err(db)?;
        let mut out = Vec::new();
        for item in failed.range(owner_range(webhook)).map_err(db)?.take(limit.clamp(1, 10_000)) {
            let (k, v) = item.map_err(db)?;
            let (_, ms, seq) = k.value();
            let id = Id { ms, seq };
            let (job, reason) = v.value();
            out.push(FailedWriteback {
                job: decode(|| format!("failed_writebacks/{webhook}/{id}"), job)?,
                reason: reason.to_string(),
                id: id.to_string(),
            });
        }
        Ok(out)
    }
}

// --- writes: closures over a write transaction, run by the writer ---

pub(super) fn set_value(
    txn: &WriteTransaction,
    webhook: &str,
    name: &str,
    value: &[u8],
    expires_at_ms: i64,
) -> Result<()> {
    txn.open_table(VALUES).map_err(db)?.insert((webhook, name), (expires_at_ms, value)).map_err(db)?;
    Ok(())
}

/// Keeps each note, and the newest [`JOURNEY_KEPT`] of each record it touches.
pub(super) fn note_changes(txn: &WriteTransaction, notes: &[JourneyNote]) -> Result<()> {
    let mut table = txn.open_table(JOURNEY).map_err(db)?;
    let mut touched = std::collections::BTreeSet::new();
    for n in notes {
        table.insert((n.object.as_str(), n.record_id.as_str(), n.version), n.note.as_slice()).map_err(db)?;
        touched.insert((n.object.as_str(), n.record_id.as_str()));
    }
    for (object, id) in touched {
        let versions: Vec<u64> = table
            .range((object, id, 0)..=(object, id, u64::MAX))
            .map_err(db)?
            .rev()
            .skip(JOURNEY_KEPT)
            .map(|item| item.map(|(k, _)| k.value().2).map_err(db))
            .collect::<Result<_>>()?;
        for v in versions {
            table.remove((object, id, v)).map_err(db)?;
        }
    }
    Ok(())
}

pub(super) fn put_object(txn: &WriteTransaction, fx: &mut Effects, name: &str, json: &str) -> Result<()> {
    txn.open_table(OBJECTS).map_err(db)?.insert(name, json).map_err(db)?;
    event(txn, fx, "object", name)
}

/// Compare-and-set on the stored version; `json = None` deletes the webhook and all of its
/// queues, attempts, values, permits and locks.
pub(super) fn put_webhook(
    txn: &WriteTransaction,
    fx: &mut Effects,
    locks: &Locks,
    id: &str,
    expected: u64,
    json: Option<&str>,
) -> Result<bool> {
    let mut webhooks = txn.open_table(WEBHOOKS).map_err(db)?;
    let current = webhooks.get(id).map_err(db)?.map(|v| v.value().0).unwrap_or(0);
    if current != expected {
        return Ok(false);
    }
    match json {
        Some(json) => {
            webhooks.insert(id, (current + 1, json)).map_err(db)?;
        }
        None => {
            webhooks.remove(id).map_err(db)?;
            drop(webhooks);
            for def in [JOBS, SOLO, WRITEBACKS] {
                txn.open_table(def).map_err(db)?.retain_in(owner_range(id), |_, _| false).map_err(db)?;
            }
            txn.open_table(DEAD).map_err(db)?.retain_in(owner_range(id), |_, _| false).map_err(db)?;
            txn.open_table(FAILED_WRITEBACKS).map_err(db)?.retain_in(owner_range(id), |_, _| false).map_err(db)?;
            txn.open_table(DELAYED)
                .map_err(db)?
                .retain_in((id, i64::MIN, 0, 0)..=(id, i64::MAX, u64::MAX, u64::MAX), |_, _| false)
                .map_err(db)?;
            for queue in [Queue::Jobs, Queue::Solo] {
                txn.open_table(HANDED)
                    .map_err(db)?
                    .retain_in((queue.name(), id, 0, 0)..=(queue.name(), id, u64::MAX, u64::MAX), |_, _| false)
                    .map_err(db)?;
            }
            let end = after(id);
            txn.open_table(ATTEMPTS).map_err(db)?.retain_in((id, "")..(end.as_str(), ""), |_, _| false).map_err(db)?;
            txn.open_table(ATTEMPTS_BY_TIME)
                .map_err(db)?
                .retain_in((id, i64::MIN, "")..(end.as_str(), i64::MIN, ""), |_, _| false)
                .map_err(db)?;
            txn.open_table(VALUES).map_err(db)?.retain_in((id, "")..(end.as_str(), ""), |_, _| false).map_err(db)?;
            // Its locks go inside the transaction, after everything else of it: a
            // `set_value_locked` (which checks its lock inside its own transaction) then runs
            // wholly before the delete, which removes its value, or finds no lock. (Should the
            // commit itself fail, the webhook stays and its holders have lost their locks
            // early: their `set_value_locked` calls fail, as after an expiry.)
            locks.forget(id);
            fx.forgotten.push(id.to_string());
        }
    }
    event(txn, fx, "webhook", id)?;
    Ok(true)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn write_record(
    txn: &WriteTransaction,
    fx: &mut Effects,
    object: &str,
    id: &str,
    expected: u64,
    fields: &str,
    change: &[u8],
    origin: &str,
) -> Result<WriteResult> {
    let mut records = txn.open_table(RECORDS).map_err(db)?;
    let current = records.get((object, id)).map_err(db)?.map(|v| v.value().0).unwrap_or(0);
    if current != expected {
        return Ok(WriteResult::Conflict { current });
    }
    let version = current + 1;
    records.insert((object, id), (version, fields)).map_err(db)?;
    let mut changes = txn.open_table(CHANGES).map_err(db)?;
    append(&mut changes, fx, Queue::Changes, object, 0, change)?;
    let mut meta = txn.open_table(META).map_err(db)?;
    let mut positions = txn.open_table(RECORD_POSITIONS).map_err(db)?;
    let mut written = txn.open_table(WRITTEN).map_err(db)?;
    index_write(&mut meta, &mut positions, &mut written, object, id, origin)?;
    Ok(WriteResult::Written { version })
}

/// Appends jobs to their webhooks' queues: solo ones to [`SOLO`], fresh ones to [`JOBS`].
pub(super) fn enqueue(txn: &WriteTransaction, fx: &mut Effects, jobs: &[(String, bool, Vec<u8>)]) -> Result<()> {
    let mut fresh = txn.open_table(JOBS).map_err(db)?;
    let mut solo = txn.open_table(SOLO).map_err(db)?;
    for (webhook, is_solo, job) in jobs {
        if *is_solo {
            append(&mut solo, fx, Queue::Solo, webhook, 0, job)?;
        } else {
            append(&mut fresh, fx, Queue::Jobs, webhook, 0, job)?;
        }
    }
    Ok(())
}

/// Notes on disk what a job queue handed out: the newest entry id ever handed out of each
/// queue, and the count of each entry handed out more than once.
pub(super) fn note_handed_out(txn: &WriteTransaction, owner: &str, handed: &[(Queue, Id, u32)]) -> Result<()> {
    let mut meta = txn.open_table(META).map_err(db)?;
    let mut counts = txn.open_table(HANDED).map_err(db)?;
    for queue in [Queue::Jobs, Queue::Solo] {
        let Some(newest) = handed.iter().filter(|(q, _, _)| *q == queue).map(|(_, id, _)| *id).max() else {
            continue;
        };
        let key = cursor_key(queue, owner);
        let stored = meta.get(key.as_str()).map_err(db)?.map(|v| v.value());
        let stored = stored.map(|(ms, seq)| Id { ms, seq }).unwrap_or_default();
        if newest > stored {
            meta.insert(key.as_str(), (newest.ms, newest.seq)).map_err(db)?;
        }
    }
    for (queue, id, deliveries) in handed {
        if *deliveries > 1 {
            counts.insert((queue.name(), owner, id.ms, id.seq), *deliveries).map_err(db)?;
        }
    }
    Ok(())
}

/// Moves due delayed jobs of `webhook` to [`SOLO`]; returns when the next one is due.
pub(super) fn promote_due(txn: &WriteTransaction, fx: &mut Effects, webhook: &str, now: i64) -> Result<Option<i64>> {
    let mut delayed = txn.open_table(DELAYED).map_err(db)?;
    let mut solo = txn.open_table(SOLO).map_err(db)?;
    let range = (webhook, i64::MIN, 0, 0)..=(webhook, now, u64::MAX, u64::MAX);
    let mut due = Vec::new();
    for item in delayed.range(range).map_err(db)?.take(500) {
        let (k, v) = item.map_err(db)?;
        let (_, at, ms, seq) = k.value();
        due.push((at, ms, seq, v.value().to_vec()));
    }
    for (at, ms, seq, job) in due {
        delayed.remove((webhook, at, ms, seq)).map_err(db)?;
        append(&mut solo, fx, Queue::Solo, webhook, 0, &job)?;
    }
    Inner::next_due(&delayed, webhook)
}

/// Whether `consumer` owns every one of `ids` (queue, id) of `owner`.
pub(super) fn owns_all(groups: &Groups, owner: &str, consumer: &str, ids: &[(Queue, Id)]) -> bool {
    owned(groups, owner, consumer, ids).len() == ids.len()
}

/// Those of `ids` (queue, id) of `owner` that `consumer` owns.
pub(super) fn owned(groups: &Groups, owner: &str, consumer: &str, ids: &[(Queue, Id)]) -> Vec<(Queue, Id)> {
    ids.iter()
        .filter(|(queue, id)| {
            let group = groups.get(*queue, owner);
            let state = lock(&group.state);
            state.pending.get(id).is_some_and(|p| p.consumer == consumer)
        })
        .copied()
        .collect()
}

/// Removes acknowledged entries (and their delivery counts) and notes them settled.
pub(super) fn remove_entries(txn: &WriteTransaction, fx: &mut Effects, owner: &str, ids: &[(Queue, Id)]) -> Result<()> {
    for (queue, id) in ids {
        txn.open_table(queue.table()).map_err(db)?.remove(id.key(owner)).map_err(db)?;
        if queue.counts_deliveries() {
            txn.open_table(HANDED).map_err(db)?.remove((queue.name(), owner, id.ms, id.seq)).map_err(db)?;
        }
        fx.settle(*queue, owner, *id);
    }
    Ok(())
}

/// One call's attempt, follow-ups and acknowledgement.
pub(super) struct CompleteItem {
    pub entries: Vec<(Queue, Id)>,
    pub attempt: Attempt,
    pub retry: Option<(Vec<u8>, i64)>,
    pub dead: Option<(Vec<u8>, String)>,
    pub writeback: Option<Vec<u8>>,
}

/// Finishes calls of which `consumer` owns any entry (or that have none), acknowledging the
/// entries it owns; says for each whether it did.
pub(super) fn complete(
    txn: &WriteTransaction,
    fx: &mut Effects,
    groups: &Groups,
    webhook: &str,
    consumer: &str,
    items: &[CompleteItem],
    cutoff_ms: i64,
) -> Result<Vec<bool>> {
    let mut done = Vec::with_capacity(items.len());
    for item in items {
        let mine = owned(groups, webhook, consumer, &item.entries);
        if mine.is_empty() && !item.entries.is_empty() {
            done.push(false);
            continue;
        }
        put_attempt(txn, webhook, &item.attempt)?;
        if let Some((job, due)) = &item.retry {
            let id = fx.next_id();
            txn.open_table(DELAYED).map_err(db)?.insert((webhook, *due, id.ms, id.seq), job.as_slice()).map_err(db)?;
        }
        if let Some((job, reason)) = &item.dead {
            let id = fx.next_id();
            txn.open_table(DEAD).map_err(db)?.insert(id.key(webhook), (job.as_slice(), reason.as_str())).map_err(db)?;
        }
        if let Some(wb) = &item.writeback {
            let mut table = txn.open_table(WRITEBACKS).map_err(db)?;
            append(&mut table, fx, Queue::Writebacks, webhook, 0, wb)?;
        }
        remove_entries(txn, fx, webhook, &mine)?;
        done.push(true);
    }
    trim_attempts(txn, webhook, cutoff_ms)?;
    Ok(done)
}

/// Attempts past the retention, a few at a time (as complete.lua does).
fn trim_attempts(txn: &WriteTransaction, webhook: &str, cutoff_ms: i64) -> Result<()> {
    let mut by_time = txn.open_table(ATTEMPTS_BY_TIME).map_err(db)?;
    let mut old = Vec::new();
    for item in by_time.range((webhook, i64::MIN, "")..(webhook, cutoff_ms, "")).map_err(db)?.take(100) {
        let (k, _) = item.map_err(db)?;
        let (_, at, id) = k.value();
        old.push((at, id.to_string()));
    }
    let mut attempts = txn.open_table(ATTEMPTS).map_err(db)?;
    for (at, id) in old {
        by_time.remove((webhook, at, id.as_str())).map_err(db)?;
        attempts.remove((webhook, id.as_str())).map_err(db)?;
    }
    Ok(())
}

/// One write-back's result.
pub(super) struct WritebackItem {
    pub entry: Id,
    pub attempt_id: String,
    pub status: String,
    pub error: String,
    pub failed: Option<(Vec<u8>, String)>,
}

/// Finishes write-backs `consumer` owns; says for each whether it did.
pub(super) fn finish_writebacks(
    txn: &WriteTransaction,
    fx: &mut Effects,
    groups: &Groups,
    webhook: &str,
    consumer: &str,
    items: &[WritebackItem],
) -> Result<Vec<bool>> {
    let mut done = Vec::with_capacity(items.len());
    for item in items {
        let entry = [(Queue::Writebacks, item.entry)];
        if !owns_all(groups, webhook, consumer, &entry) {
            done.push(false);
            continue;
        }
        if !item.attempt_id.is_empty() {
            let mut attempts = txn.open_table(ATTEMPTS).map_err(db)?;
            let key = (webhook, item.attempt_id.as_str());
            let kept = attempts.get(key).map_err(db)?.map(|bytes| {
                let mut bytes = bytes.value().to_vec();
                bytes.extend(Attempt::writeback_patch(&item.status, &item.error));
                bytes
            });
            if let Some(bytes) = kept {
                attempts.insert(key, bytes.as_slice()).map_err(db)?;
            }
        }
        if let Some((job, reason)) = &item.failed {
            let id = fx.next_id();
            txn.open_table(FAILED_WRITEBACKS)
                .map_err(db)?
                .insert(id.key(webhook), (job.as_slice(), reason.as_str()))
                .map_err(db)?;
        }
        remove_entries(txn, fx, webhook, &entry)?;
        done.push(true);
    }
    Ok(done)
}

/// Moves dead letters back to the solo queue with `attempts = 0`, 500 at a time; returns how
/// many moved (0: none left).
pub(super) fn redrive(txn: &WriteTransaction, fx: &mut Effects, webhook: &str) -> Result<u64> {
    let mut dead = txn.open_table(DEAD).map_err(db)?;
    let mut batch = Vec::new();
    for item in dead.range(owner_range(webhook)).map_err(db)?.take(500) {
        let (k, v) = item.map_err(db)?;
        let (_, ms, seq) = k.value();
        let id = Id { ms, seq };
        let job: Job = decode(|| format!("dead/{webhook}/{id}"), v.value().0)?;
        batch.push((id, Job { attempts: 0, ..job }));
    }
    let mut solo = txn.open_table(SOLO).map_err(db)?;
    for (id, job) in &batch {
        dead.remove(id.key(webhook)).map_err(db)?;
        append(&mut solo, fx, Queue::Solo, webhook, FLAG_REDRIVEN, &job.encode_to_vec())?;
    }
    Ok(batch.len() as u64)
}

/// Moves the dead letters `ids` back to the queue (those not dead any more are skipped).
pub(super) fn redrive_some(txn: &WriteTransaction, fx: &mut Effects, webhook: &str, ids: &[Id]) -> Result<u64> {
    let mut dead = txn.open_table(DEAD).map_err(db)?;
    let mut solo = txn.open_table(SOLO).map_err(db)?;
    let mut moved = 0;
    for id in ids {
        let Some(removed) = dead.remove(id.key(webhook)).map_err(db)? else { continue };
        let job: Job = decode(|| format!("dead/{webhook}/{id}"), removed.value().0)?;
        drop(removed);
        append(&mut solo, fx, Queue::Solo, webhook, FLAG_REDRIVEN, &Job { attempts: 0, ..job }.encode_to_vec())?;
        moved += 1;
    }
    Ok(moved)
}

/// Moves failed write-backs back to the write-back queue, 500 at a time.
pub(super) fn redrive_writebacks(txn: &WriteTransaction, fx: &mut Effects, webhook: &str) -> Result<u64> {
    let mut failed = txn.open_table(FAILED_WRITEBACKS).map_err(db)?;
    let mut batch = Vec::new();
    for item in failed.range(owner_range(webhook)).map_err(db)?.take(500) {
        let (k, v) = item.map_err(db)?;
        let (_, ms, seq) = k.value();
        let id = Id { ms, seq };
        let job: WritebackJob = decode(|| format!("failed_writebacks/{webhook}/{id}"), v.value().0)?;
        batch.push((id, job));
    }
    let mut queue = txn.open_table(WRITEBACKS).map_err(db)?;
    for (id, job) in &batch {
        failed.remove(id.key(webhook)).map_err(db)?;
        append(&mut queue, fx, Queue::Writebacks, webhook, 0, &job.encode_to_vec())?;
    }
    Ok(batch.len() as u64)
}

/// Stores an attempt and its time index entry (moving it if the attempt was stored before).
fn put_attempt(txn: &WriteTransaction, webhook: &str, attempt: &Attempt) -> Result<()> {
    let id = attempt.attempt_id.as_str();
    let bytes = attempt.encode_to_vec();
    let mut attempts = txn.open_table(ATTEMPTS).map_err(db)?;
    let mut by_time = txn.open_table(ATTEMPTS_BY_TIME).map_err(db)?;
    let previous =
        attempts.insert((webhook, id), bytes.as_slice()).map_err(db)?.map(|old| Attempt::decode(old.value()));
    if let Some(Ok(previous)) = previous {
        by_time.remove((webhook, previous.started_at_ms, id)).map_err(db)?;
    }
    by_time.insert((webhook, attempt.started_at_ms, id), ()).map_err(db)?;
    Ok(())
}
