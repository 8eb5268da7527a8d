//! The blocking half of the embedded store: every method runs redb transactions and must be
//! called off the async runtime (the async half wraps each call in `spawn_blocking`).
//!
//! Lock order: a group's state lock may be held while beginning a write transaction, never
//! the other way round — group locks touched because of a commit are taken after it. The
//! [`Locks`] mutex is the other way round: it is taken briefly inside write transactions
//! (`set_value_locked`, `put_webhook`'s delete), and nothing begins a transaction holding it.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hookline_model::Record;
use hookline_proto::{Attempt, Job, Message};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, WriteTransaction};
use tokio::sync::Notify;

use super::state::{Group, Groups, Locks, Pending, Permits, Rates, lock};
use super::tables::*;
use crate::{AttemptFilter, DeadLetter, DefEvent, Entry, IndexedRecord, Result, StoreError, WriteResult};

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

fn decode<T: Message + Default>(key: impl FnOnce() -> String, bytes: &[u8]) -> Result<T> {
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
pub(super) struct Effects {
    last: Id,
    allocated: bool,
    /// Queues that got entries: wake their readers.
    wake: Vec<(Queue, String)>,
    wake_events: bool,
    /// Entries acknowledged: no longer pending.
    settled: Vec<(Queue, String, Id)>,
}

impl Effects {
    fn next_id(&mut self) -> Id {
        self.last = self.last.next(now_ms());
        self.allocated = true;
        self.last
    }

    #[cfg(test)]
    pub(super) fn next_id_for_test(&mut self) -> Id {
        self.next_id()
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

/// Appends one definition event, keeping the newest [`EVENTS_KEPT`].
fn event(txn: &WriteTransaction, fx: &mut Effects, kind: &str, name: &str) -> Result<()> {
    let mut events = txn.open_table(EVENTS).map_err(db)?;
    let id = fx.next_id();
    events.insert((id.ms, id.seq), (kind, name)).map_err(db)?;
    while events.len().map_err(db)? > EVENTS_KEPT {
        events.pop_first().map_err(db)?;
    }
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

/// Every key of one owner in a queue-like table.
fn owner_range(owner: &str) -> std::ops::RangeInclusive<(&str, u64, u64)> {
    Id::default().key(owner)..=Id::MAX.key(owner)
}

pub(super) struct Inner {
    db: Database,
    path: PathBuf,
    last_id: Mutex<Id>,
    pub(super) groups: Groups,
    pub(super) events: Notify,
    pub(super) permits: Permits,
    pub(super) locks: Locks,
    pub(super) rates: Rates,
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
            for def in [CHANGES, JOBS, WRITEBACKS] {
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
            txn.open_table(ATTEMPTS).map_err(db)?;
            txn.open_table(ATTEMPTS_BY_TIME).map_err(db)?;
            txn.open_table(VALUES).map_err(db)?;
            let mut meta = txn.open_table(META).map_err(db)?;
            let format = meta.get("format").map_err(db)?.map(|v| v.value().0);
            match format {
                None => {
                    meta.insert("format", (FORMAT, 0)).map_err(db)?;
                }
                Some(FORMAT) => {}
                Some(1) => {
                    // Version 2 added the write index: build it, in this same transaction.
                    let indexed = index_records(&txn, &mut meta)?;
                    meta.insert("format", (FORMAT, 0)).map_err(db)?;
                    tracing::info!(path = %path.display(), records = indexed, "indexed the records of a layout version 1 store; now version {FORMAT}");
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
        Ok(Inner {
            db: database,
            path,
            last_id: Mutex::new(last),
            groups: Groups::default(),
            events: Notify::new(),
            permits: Permits::default(),
            locks: Locks::default(),
            rates: Rates::default(),
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in one durable write transaction, then brings the in-memory state up to date.
    /// An error from `f` aborts the transaction: nothing of it is written.
    fn write<T>(&self, f: impl FnOnce(&WriteTransaction, &mut Effects) -> Result<T>) -> Result<T> {
        let txn = self.db.begin_write().map_err(db)?;
        // Write transactions run one at a time, so ids handed out inside them increase in
        // commit order: a reader's snapshot always holds a prefix of every queue.
        let mut fx =
            Effects { last: *lock(&self.last_id), allocated: false, wake: vec![], wake_events: false, settled: vec![] };
        let out = f(&txn, &mut fx)?;
        if fx.allocated {
            txn.open_table(META).map_err(db)?.insert("last_id", (fx.last.ms, fx.last.seq)).map_err(db)?;
            // Before the commit: the next writer may begin the moment it releases redb's
            // writer lock, and must see these ids as taken. (A failed commit only skips ids.)
            *lock(&self.last_id) = fx.last;
        }
        txn.commit().map_err(db)?;
        for (queue, owner, id) in &fx.settled {
            lock(&self.groups.get(*queue, owner).state).pending.remove(id);
        }
        for (queue, owner) in &fx.wake {
            self.groups.get(*queue, owner).notify.notify_waiters();
        }
        if fx.wake_events {
            self.events.notify_waiters();
        }
        Ok(out)
    }

    #[cfg(test)]
    pub(super) fn write_for_test(&self, f: impl FnOnce(&WriteTransaction, &mut Effects) -> Result<()>) -> Result<()> {
        self.write(f)
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

    pub(super) fn set_value(&self, webhook: &str, name: &str, value: &[u8], expires_at_ms: i64) -> Result<()> {
        self.write(|txn, _fx| {
            txn.open_table(VALUES).map_err(db)?.insert((webhook, name), (expires_at_ms, value)).map_err(db)?;
            Ok(())
        })
    }

    /// Stores a value if `holder` holds the lock `lock_name` of `webhook`; false, and nothing
    /// stored, if not.
    ///
    /// The lock is checked inside the write transaction, which makes the check and the write
    /// one step for every value writer: redb runs write transactions one at a time, and the
    /// locks mutex is held for the check only (never through the commit's I/O, which would
    /// stall `try_lock` callers on the async runtime). If the lock expires right after the
    /// check, a successor can take it only after the check, so its own value write begins
    /// after this transaction committed and overwrites this value, not the other way round.
    /// A delete of the webhook forgets its locks inside its transaction (see `put_webhook`),
    /// so this either runs before it (and the delete removes the value) or finds no lock.
    pub(super) fn set_value_locked(
        &self,
        webhook: &str,
        name: &str,
        value: &[u8],
        expires_at_ms: i64,
        lock_name: &str,
        holder: &str,
    ) -> Result<bool> {
        self.write(|txn, _fx| {
            if !self.locks.holds(webhook, lock_name, holder) {
                return Ok(false);
            }
            txn.open_table(VALUES).map_err(db)?.insert((webhook, name), (expires_at_ms, value)).map_err(db)?;
            Ok(true)
        })
    }

    pub(super) fn put_object(&self, name: &str, json: &str) -> Result<()> {
        self.write(|txn, fx| {
            txn.open_table(OBJECTS).map_err(db)?.insert(name, json).map_err(db)?;
            event(txn, fx, "object", name)
        })
    }

    pub(super) fn get_object<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        let txn = self.read()?;
        let table = txn.open_table(OBJECTS).map_err(db)?;
        let text = table.get(name).map_err(db)?;
        text.map(|t| json(|| format!("objects/{name}"), t.value())).transpose()
    }

    pub(super) fn list_objects<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<T>> {
        let txn = self.read()?;
        let table = txn.open_table(OBJECTS).map_err(db)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(db)? {
            let (k, v) = item.map_err(db)?;
            out.push(json(|| format!("objects/{}", k.value()), v.value())?);
        }
        Ok(out)
    }

    /// Compare-and-set on the stored version; `json = None` deletes the webhook and all of
    /// its queues, attempts, values, permits and locks.
    pub(super) fn put_webhook(&self, id: &str, expected: u64, json: Option<&str>) -> Result<bool> {
        let done = self.write(|txn, fx| {
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
                    for def in [JOBS, WRITEBACKS] {
                        txn.open_table(def).map_err(db)?.retain_in(owner_range(id), |_, _| false).map_err(db)?;
                    }
                    txn.open_table(DEAD).map_err(db)?.retain_in(owner_range(id), |_, _| false).map_err(db)?;
                    txn.open_table(DELAYED)
                        .map_err(db)?
                        .retain_in((id, i64::MIN, 0, 0)..=(id, i64::MAX, u64::MAX, u64::MAX), |_, _| false)
                        .map_err(db)?;
                    let end = after(id);
                    txn.open_table(ATTEMPTS)
                        .map_err(db)?
                        .retain_in((id, "")..(end.as_str(), ""), |_, _| false)
                        .map_err(db)?;
                    txn.open_table(ATTEMPTS_BY_TIME)
                        .map_err(db)?
                        .retain_in((id, i64::MIN, "")..(end.as_str(), i64::MIN, ""), |_, _| false)
                        .map_err(db)?;
                    txn.open_table(VALUES)
                        .map_err(db)?
                        .retain_in((id, "")..(end.as_str(), ""), |_, _| false)
                        .map_err(db)?;
                    // Its locks go inside the transaction, after everything else of it: a
                    // `set_value_locked` (which checks its lock inside its own transaction)
                    // then runs wholly before the delete, which removes its value, or finds
                    // no lock. Forgotten after the commit, they would leave a moment in which
                    // a holder could store a value for the deleted webhook. (Should the
                    // commit itself fail, the webhook stays and its holders have lost their
                    // locks early: their `set_value_locked` calls fail, as after an expiry.)
                    self.locks.forget(id);
                }
            }
            event(txn, fx, "webhook", id)?;
            Ok(true)
        })?;
        if done && json.is_none() {
            // Its entries are gone, so nothing of them is pending. The delivered cursor
            // stays: ids only grow, so a re-created webhook's entries are all after it.
            for queue in [Queue::Jobs, Queue::Writebacks] {
                lock(&self.groups.get(queue, id).state).pending.clear();
            }
            self.permits.forget(id);
        }
        Ok(done)
    }

    pub(super) fn get_webhook<T: serde::de::DeserializeOwned>(&self, id: &str) -> Result<Option<T>> {
        let txn = self.read()?;
        let table = txn.open_table(WEBHOOKS).map_err(db)?;
        let value = table.get(id).map_err(db)?;
        value.map(|v| json(|| format!("webhooks/{id}"), v.value().1)).transpose()
    }

    pub(super) fn list_webhooks<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<T>> {
        let txn = self.read()?;
        let table = txn.open_table(WEBHOOKS).map_err(db)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(db)? {
            let (k, v) = item.map_err(db)?;
            out.push(json(|| format!("webhooks/{}", k.value()), v.value().1)?);
        }
        Ok(out)
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

    pub(super) fn write_record(
        &self,
        object: &str,
        id: &str,
        expected: u64,
        fields: &str,
        change: &[u8],
        origin: &str,
    ) -> Result<WriteResult> {
        self.write(|txn, fx| {
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
        })
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

    // --- queues ---

    /// Appends jobs to their webhooks' queues, all in one transaction.
    pub(super) fn enqueue(&self, jobs: &[(String, Vec<u8>)]) -> Result<()> {
        self.write(|txn, fx| {
            let mut table = txn.open_table(JOBS).map_err(db)?;
            for (webhook, job) in jobs {
                append(&mut table, fx, Queue::Jobs, webhook, 0, job)?;
            }
            Ok(())
        })
    }

    /// Delivers up to `count` entries not yet delivered to anyone, marking them pending for
    /// `consumer`. Undecodable entries are logged and removed so they cannot wedge the queue.
    pub(super) fn read_group<T: Message + Default>(
        &self,
        queue: Queue,
        owner: &str,
        group: &Group,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<Entry<T>>> {
        let mut out = Vec::new();
        let mut bad = Vec::new();
        {
            let mut state = lock(&group.state);
            let txn = self.read()?;
            let table = txn.open_table(queue.table()).map_err(db)?;
            let range = (Bound::Excluded(state.delivered.key(owner)), Bound::Included(Id::MAX.key(owner)));
            let now = Instant::now();
            for item in table.range(range).map_err(db)?.take(count.max(1)) {
                let (k, v) = item.map_err(db)?;
                let (_, ms, seq) = k.value();
                let id = Id { ms, seq };
                state.delivered = id;
                let (flags, bytes) = v.value();
                match T::decode(bytes) {
                    Ok(value) => {
                        state
                            .pending
                            .insert(id, Pending { consumer: consumer.to_string(), delivered: now, deliveries: 1 });
                        out.push(Entry {
                            id: id.to_string(),
                            value,
                            redriven: flags & FLAG_REDRIVEN != 0,
                            deliveries: 1,
                        });
                    }
                    Err(e) => {
                        tracing::error!(queue = queue.name(), owner, entry = %id, error = %e, "dropping undecodable queue entry");
                        bad.push(id);
                    }
                }
            }
        }
        self.ack(queue, owner, &bad)?;
        Ok(out)
    }

    /// Re-assigns to `consumer` up to `count` pending entries idle at least `min_idle`.
    pub(super) fn claim<T: Message + Default>(
        &self,
        queue: Queue,
        owner: &str,
        group: &Group,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Entry<T>>> {
        let mut out = Vec::new();
        let mut bad = Vec::new();
        {
            let mut state = lock(&group.state);
            let now = Instant::now();
            let idle: Vec<Id> = state
                .pending
                .iter()
                .filter(|(_, p)| now.saturating_duration_since(p.delivered) >= min_idle)
                .map(|(id, p)| {
                    tracing::debug!(queue = queue.name(), owner, entry = %id, from = %p.consumer, to = consumer, "claiming an idle entry");
                    *id
                })
                .take(count.max(1))
                .collect();
            if idle.is_empty() {
                return Ok(out);
            }
            let txn = self.read()?;
            let table = txn.open_table(queue.table()).map_err(db)?;
            for id in idle {
                let Some(v) = table.get(id.key(owner)).map_err(db)? else {
                    // Acknowledged in the meantime.
                    state.pending.remove(&id);
                    continue;
                };
                let (flags, bytes) = v.value();
                match T::decode(bytes) {
                    Ok(value) => {
                        let deliveries = state.pending.get(&id).map_or(1, |p| p.deliveries + 1);
                        state
                            .pending
                            .insert(id, Pending { consumer: consumer.to_string(), delivered: now, deliveries });
                        out.push(Entry { id: id.to_string(), value, redriven: flags & FLAG_REDRIVEN != 0, deliveries });
                    }
                    Err(e) => {
                        tracing::error!(queue = queue.name(), owner, entry = %id, error = %e, "dropping undecodable queue entry");
                        state.pending.remove(&id);
                        bad.push(id);
                    }
                }
            }
        }
        self.ack(queue, owner, &bad)?;
        Ok(out)
    }

    /// Acknowledges (deletes) entries, pending or not.
    pub(super) fn ack(&self, queue: Queue, owner: &str, ids: &[Id]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.write(|txn, fx| {
            let mut table = txn.open_table(queue.table()).map_err(db)?;
            for id in ids {
                table.remove(id.key(owner)).map_err(db)?;
                fx.settled.push((queue, owner.to_string(), *id));
            }
            Ok(())
        })
    }

    /// Hands pending jobs back to the end of the queue; entries no longer pending (acknowledged,
    /// or after a restart) are left alone, so a requeue never duplicates a job.
    pub(super) fn requeue(&self, webhook: &str, entries: &[(Id, Vec<u8>, bool)]) -> Result<()> {
        let group = self.groups.get(Queue::Jobs, webhook);
        // Held through the transaction, so no claim or read of these entries interleaves.
        let mut state = lock(&group.state);
        let candidates: Vec<_> = entries.iter().filter(|(id, _, _)| state.pending.contains_key(id)).collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let moved = self.write(|txn, fx| {
            let mut table = txn.open_table(JOBS).map_err(db)?;
            let mut moved = Vec::new();
            for (id, job, redriven) in candidates {
                // Absent: acknowledged by a `complete` whose pending state is still settling.
                if table.remove(id.key(webhook)).map_err(db)?.is_some() {
                    let flags = if *redriven { FLAG_REDRIVEN } else { 0 };
                    append(&mut table, fx, Queue::Jobs, webhook, flags, job)?;
                }
                moved.push(*id);
            }
            Ok(moved)
        })?;
        for id in moved {
            state.pending.remove(&id);
        }
        Ok(())
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

    pub(super) fn promote_due(&self, webhook: &str, now: i64) -> Result<Option<i64>> {
        // Most calls find nothing due: answer those from a snapshot, without a write.
        {
            let txn = self.read()?;
            let table = txn.open_table(DELAYED).map_err(db)?;
            match Self::next_due(&table, webhook)? {
                Some(due) if due <= now => {}
                next => return Ok(next),
            }
        }
        self.write(|txn, fx| {
            let mut delayed = txn.open_table(DELAYED).map_err(db)?;
            let mut jobs = txn.open_table(JOBS).map_err(db)?;
            let range = (webhook, i64::MIN, 0, 0)..=(webhook, now, u64::MAX, u64::MAX);
            let mut due = Vec::new();
            for item in delayed.range(range).map_err(db)?.take(500) {
                let (k, v) = item.map_err(db)?;
                let (_, at, ms, seq) = k.value();
                due.push((at, ms, seq, v.value().to_vec()));
            }
            for (at, ms, seq, job) in due {
                delayed.remove((webhook, at, ms, seq)).map_err(db)?;
                append(&mut jobs, fx, Queue::Jobs, webhook, 0, &job)?;
            }
            Self::next_due(&delayed, webhook)
        })
    }

    /// The attempt, its follow-ups and the acknowledgement, in one transaction.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn complete(
        &self,
        webhook: &str,
        entries: Vec<Id>,
        attempt: &Attempt,
        cutoff_ms: i64,
        retry: Option<(Vec<u8>, i64)>,
        dead: Option<(Vec<u8>, String)>,
        writeback: Option<Vec<u8>>,
    ) -> Result<()> {
        self.write(|txn, fx| {
            put_attempt(txn, webhook, attempt)?;
            if let Some((job, due)) = &retry {
                let id = fx.next_id();
                txn.open_table(DELAYED)
                    .map_err(db)?
                    .insert((webhook, *due, id.ms, id.seq), job.as_slice())
                    .map_err(db)?;
            }
            if let Some((job, reason)) = &dead {
                let id = fx.next_id();
                txn.open_table(DEAD)
                    .map_err(db)?
                    .insert(id.key(webhook), (job.as_slice(), reason.as_str()))
                    .map_err(db)?;
            }
            if let Some(wb) = &writeback {
                let mut table = txn.open_table(WRITEBACKS).map_err(db)?;
                append(&mut table, fx, Queue::Writebacks, webhook, 0, wb)?;
            }
            for id in entries {
                txn.open_table(JOBS).map_err(db)?.remove(id.key(webhook)).map_err(db)?;
                fx.settled.push((Queue::Jobs, webhook.to_string(), id));
            }
            // Attempts past the retention, a few at a time (as complete.lua does).
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
        })
    }

    pub(super) fn oldest_job_ms(&self, webhook: &str) -> Result<Option<i64>> {
        let txn = self.read()?;
        let jobs = txn.open_table(JOBS).map_err(db)?;
        let first = jobs.range(owner_range(webhook)).map_err(db)?.next().transpose().map_err(db)?;
        Ok(first.map(|(k, _)| k.value().1 as i64))
    }

    pub(super) fn queue_depth(&self, webhook: &str) -> Result<u64> {
        let txn = self.read()?;
        let jobs = txn.open_table(JOBS).map_err(db)?;
        let mut n = 0u64;
        for item in jobs.range(owner_range(webhook)).map_err(db)? {
            item.map_err(db)?;
            n += 1;
        }
        let delayed = txn.open_table(DELAYED).map_err(db)?;
        for item in delayed.range((webhook, i64::MIN, 0, 0)..=(webhook, i64::MAX, u64::MAX, u64::MAX)).map_err(db)? {
            item.map_err(db)?;
            n += 1;
        }
        Ok(n)
    }

    pub(super) fn finish_writeback(
        &self,
        webhook: &str,
        entry: Id,
        attempt_id: &str,
        error: Option<&str>,
    ) -> Result<()> {
        self.write(|txn, fx| {
            let found = {
                let attempts = txn.open_table(ATTEMPTS).map_err(db)?;
                let blob = attempts.get((webhook, attempt_id)).map_err(db)?;
                blob.map(|b| decode::<Attempt>(|| format!("attempts/{webhook}/{attempt_id}"), b.value())).transpose()?
            };
            if let Some(mut attempt) = found {
                attempt.writeback_status = if error.is_some() { "error" } else { "done" }.to_string();
                attempt.writeback_error = error.unwrap_or_default().to_string();
                let bytes = attempt.encode_to_vec();
                txn.open_table(ATTEMPTS).map_err(db)?.insert((webhook, attempt_id), bytes.as_slice()).map_err(db)?;
            }
            txn.open_table(WRITEBACKS).map_err(db)?.remove(entry.key(webhook)).map_err(db)?;
            fx.settled.push((Queue::Writebacks, webhook.to_string(), entry));
            Ok(())
        })
    }

    // --- attempt log and dead letters ---

    pub(super) fn list_attempts(&self, webhook: &str, filter: &AttemptFilter) -> Result<Vec<Attempt>> {
        let limit = filter.limit.clamp(1, 10_000);
        let txn = self.read()?;
        let by_time = txn.open_table(ATTEMPTS_BY_TIME).map_err(db)?;
        let attempts = txn.open_table(ATTEMPTS).map_err(db)?;
        let end = after(webhook);
        let since = filter.since_ms.unwrap_or(i64::MIN);
        let mut out = Vec::new();
        for item in by_time.range((webhook, since, "")..(end.as_str(), i64::MIN, "")).map_err(db)?.rev() {
            let (k, _) = item.map_err(db)?;
            let (_, _, id) = k.value();
            let Some(blob) = attempts.get((webhook, id)).map_err(db)? else { continue };
            let a: Attempt = decode(|| format!("attempts/{webhook}/{id}"), blob.value())?;
            let record_ok = filter.record_id.as_ref().is_none_or(|r| a.record_ids.contains(r));
            let outcome_ok = filter.outcome.is_none_or(|o| a.outcome() == o);
            if record_ok && outcome_ok {
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

    /// Moves dead letters back to the queue with `attempts = 0`, 500 per transaction.
    pub(super) fn redrive(&self, webhook: &str) -> Result<u64> {
        let mut total = 0;
        loop {
            let moved = self.write(|txn, fx| {
                let mut dead = txn.open_table(DEAD).map_err(db)?;
                let mut batch = Vec::new();
                for item in dead.range(owner_range(webhook)).map_err(db)?.take(500) {
                    let (k, v) = item.map_err(db)?;
                    let (_, ms, seq) = k.value();
                    let id = Id { ms, seq };
                    let job: Job = decode(|| format!("dead/{webhook}/{id}"), v.value().0)?;
                    batch.push((id, Job { attempts: 0, ..job }));
                }
                let mut jobs = txn.open_table(JOBS).map_err(db)?;
                for (id, job) in &batch {
                    dead.remove(id.key(webhook)).map_err(db)?;
                    append(&mut jobs, fx, Queue::Jobs, webhook, FLAG_REDRIVEN, &job.encode_to_vec())?;
                }
                Ok(batch.len() as u64)
            })?;
            if moved == 0 {
                return Ok(total);
            }
            total += moved;
        }
    }
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
