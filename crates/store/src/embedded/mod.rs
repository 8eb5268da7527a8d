//! The embedded backend: one process, one durable file (`<dir>/hookline.redb`, [redb]), the
//! same semantics as [`crate::RedisStore`], so `hookline serve` runs on a fresh machine with
//! nothing else installed.
//!
//! # Table layout
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `"last_id"`, `"format"`, `"definitions"`, `"position/<object>"`, `"cursor/<queue>/<webhook>"` | newest stream id handed out; layout version; the definitions' version; position of the object's latest record write; newest job entry ever handed out |
//! | `objects` | object name | DataObject JSON |
//! | `webhooks` | webhook id | (stored version, StoredWebhook JSON) — compare-and-set reads the version |
//! | `events` | stream id | (`object`\|`webhook`, name): definition events, newest 10 000 kept |
//! | `records` | (object, record id) | (version, fields JSON) |
//! | `record_positions` | (object, record id) | (position, origin webhook, other position) of the record's latest write |
//! | `written` | (object, position) | record id: the write index, each record at its latest write |
//! | `changes` | (object, stream id) | (flags, Change protobuf) |
//! | `jobs` | (webhook, stream id) | (flags, Job protobuf): fresh jobs, ready and handed-out-but-unacknowledged |
//! | `solo` | (webhook, stream id) | (flags, Job protobuf): due retries and redriven jobs, each sent alone |
//! | `writebacks` | (webhook, stream id) | (flags, WritebackJob protobuf) |
//! | `failed_writebacks` | (webhook, stream id) | (WritebackJob protobuf, reason) |
//! | `delayed` | (webhook, due ms, stream id) | Job protobuf: retries in due order, then insertion |
//! | `dead` | (webhook, stream id) | (Job protobuf, reason) |
//! | `handed` | (queue, webhook, stream id) | times a job entry was handed out, when more than once |
//! | `attempts` | (webhook, attempt id) | Attempt protobuf |
//! | `attempts_by_time` | (webhook, started ms, attempt id) | (): newest-first listing and trimming |
//! | `journey` | (object, record id, version) | the trigger's note on that change, the newest 50 per record kept |
//!
//! Stream ids are `<ms>-<seq>` like Redis's, strictly increasing across the whole file: they
//! are handed out inside write transactions, which run one at a time, and the newest is
//! stored with them so a restart (or a clock stepping back) never reuses one.
//!
//! # Group commit
//!
//! Every write goes through one writer thread ([`writer`]), which commits the writes that
//! queued up during the previous commit together, in one durable transaction
//! ([`redb::Durability::Immediate`]), and answers each caller only after that commit: once a
//! call returned `Ok`, a `kill -9` loses none of it, and a busy node pays one `fsync` for many
//! writes. `write_record` stores the record, appends its change and moves the record to its
//! object's next write position in one write; `complete` records an attempt, adds its retry,
//! dead letter and write-back and acknowledges the call's entries in one.
//!
//! The layout version is `"format"` in `meta`. Opening an older file upgrades it in one
//! transaction (see `tables::FORMAT`); a newer version than this build knows is refused.
//!
//! # Consumer groups live in memory
//!
//! Which consumer holds an entry and when it was last touched is kept in memory per queue — a
//! delivered cursor and a pending map — because a single process is the only consumer: after
//! a crash or restart the consumers that held entries are gone too, and an empty pending map
//! makes every unacknowledged entry undelivered again. That is the at-least-once redelivery
//! the engine expects after `kill -9`. What must survive is how often a *job* was handed out,
//! so that one which kills its node every time is dead-lettered: a job queue's newest entry
//! ever handed out is stored (in the same commit as the hand-out, before the job is sent), and
//! an entry at or before it that is handed out again after a restart counts once more, its
//! count kept in `handed`. Changes and write-backs cost no write per read.
//!
//! Blocking reads wait on a [`tokio::sync::Notify`] per queue (and one for definition
//! events), woken after a commit appended to it: no polling. Reads run in
//! [`tokio::task::spawn_blocking`]; in-memory state sits behind `std::sync::Mutex`es that are
//! never held across an `.await`. The concurrency permits, rate limits and locks are in memory
//! too (a restart frees them all, as lease expiry would).
//!
//! One difference from Redis a caller may notice: redriven jobs carry
//! [`crate::Entry::redriven`] here as there, but a first read of a queue returns entries
//! appended before anyone read it on both (Redis's groups are created from the start).

mod inner;
mod state;
mod tables;
mod writer;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hookline_model::{DataObject, Fields, Record, StoredWebhook};
use hookline_proto::{Attempt, Change, Job, Message};
use tokio::time::Instant;

#[cfg(test)]
pub(crate) use self::inner::Effects;
use self::inner::{CompleteItem, HandedOut, Inner, WritebackItem};
use self::tables::{Id, Queue, parse_public_id};
use crate::{
    ATTEMPT_RETENTION, AttemptFilter, ClaimScan, Completion, DeadLetter, DefEvent, Definitions, FailedWriteback,
    IndexedRecord, JourneyNote, QueueKind, QueueName, QueueStats, Rate, RawEntry, Renew, Renewed, Result, Store,
    StoreError, Take, Taken, WriteResult, WritebackDone,
};

/// The embedded store: a redb file, its writer thread, and in-memory consumer groups and
/// permits. Cheap to clone (clones share the open file).
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").field("path", &self.inner.path()).finish()
    }
}

fn encode_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend(e.to_string()))
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir`, file `hookline.redb`. Blocks while redb
    /// opens the file, which includes a repair after an unclean shutdown; call it from
    /// `spawn_blocking` where that matters. Fails if another process has the file open.
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(EmbeddedStore { inner: Arc::new(Inner::open(dir)?) })
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        self.inner.path()
    }

    /// Write transactions committed since the store was opened (each carries one or more
    /// writes).
    pub fn commits(&self) -> u64 {
        self.inner.writer.commits()
    }

    /// Runs a read on the blocking pool.
    async fn run<T: Send + 'static>(&self, f: impl FnOnce(&Inner) -> Result<T> + Send + 'static) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Backend(format!("embedded store task failed: {e}")))?
    }

    #[cfg(test)]
    pub(crate) async fn write_for_test(
        &self,
        f: impl FnMut(&redb::WriteTransaction, &mut Effects) -> Result<()> + Send + 'static,
    ) -> Result<()> {
        self.inner.writer.write(f).await
    }

    /// Hands out up to `count` entries of one queue, noting job hand-outs on disk before
    /// returning them. Undecodable entries are the caller's to drop.
    async fn hand_out(&self, queue: Queue, owner: &str, consumer: &str, count: usize) -> Result<Vec<RawEntry>> {
        let (o, c) = (owner.to_string(), consumer.to_string());
        let handed = self
            .run(move |i| {
                let group = i.shared.groups.get(queue, &o);
                i.hand_out(queue, &o, &group, &c, count)
            })
            .await?;
        self.noted(owner, handed).await
    }

    /// Stores what a job queue handed out (see the module docs) and returns the entries; if
    /// that fails, the entries are given back (claimable at once) and the error returned.
    async fn noted(&self, owner: &str, handed: Vec<HandedOut>) -> Result<Vec<RawEntry>> {
        let to_note: Vec<(Queue, Id, u32)> = handed
            .iter()
            .filter(|h| h.queue.counts_deliveries())
            .map(|h| (h.queue, h.id, h.entry.deliveries))
            .collect();
        if !to_note.is_empty() {
            let o = owner.to_string();
            if let Err(e) = self.inner.writer.write(move |txn, _fx| inner::note_handed_out(txn, &o, &to_note)).await {
                for h in &handed {
                    let group = self.inner.shared.groups.get(h.queue, owner);
                    if let Some(p) = state::lock(&group.state).pending.get_mut(&h.id) {
                        p.released = true;
                    }
                }
                return Err(e);
            }
        }
        Ok(handed.into_iter().map(|h| h.entry).collect())
    }

    /// Waits until one of `queues` of `owner` has an entry after its id in `after`, or the
    /// deadline passed.
    async fn wait_for(&self, owner: &str, after: &[(Queue, Id)], deadline: Instant) -> Result<()> {
        let groups: Vec<_> = after.iter().map(|(q, _)| self.inner.shared.groups.get(*q, owner)).collect();
        loop {
            // Listen before looking, so an append between the look and the wait is not missed.
            let mut waits: Vec<_> = groups.iter().map(|g| Box::pin(g.notify.notified())).collect();
            for w in &mut waits {
                w.as_mut().enable();
            }
            let (o, marks) = (owner.to_string(), after.to_vec());
            let arrived = self
                .run(move |i| {
                    for (queue, id) in &marks {
                        if i.has_after(*queue, &o, *id)? {
                            return Ok(true);
                        }
                    }
                    Ok(false)
                })
                .await?;
            if arrived {
                return Ok(());
            }
            let any = futures_util::future::select_all(waits);
            if tokio::time::timeout_at(deadline, any).await.is_err() {
                return Ok(());
            }
        }
    }

    /// The reading half of a take: due retries to the solo queue, the take-over scan (when
    /// asked and `calls` allow), then solo entries (a call each) and fresh ones (`batch` to
    /// a call), into `entries`. Returns when the next retry is due, the scan's cursor, and
    /// the queue's mark.
    async fn take_entries(
        &self,
        t: &Take<'_>,
        calls: u32,
        entries: &mut Vec<RawEntry>,
    ) -> Result<(Option<i64>, Option<String>, String)> {
        let webhook = t.webhook.to_string();
        let now = crate::now_ms();
        let w = webhook.clone();
        let mut next_due = self.run(move |i| i.first_due(&w)).await?;
        if next_due.is_some_and(|due| due <= now) {
            let w = webhook.clone();
            next_due = self.inner.writer.write(move |txn, fx| inner::promote_due(txn, fx, &w, now)).await?;
        }
        let batch = t.batch.max(1);
        let max_entries = t.max_entries.max(1) as usize;
        let counts = |entries: &[RawEntry]| {
            let solos = entries.iter().filter(|e| e.solo).count() as u32;
            (solos, entries.len() as u32 - solos)
        };
        let room_for_fresh = |entries: &[RawEntry]| {
            let (solos, fresh) = counts(entries);
            ((calls.saturating_sub(solos) * batch).saturating_sub(fresh) as usize)
                .min(max_entries.saturating_sub(entries.len()))
        };
        let mut cursor = None;
        if let (Some(scan), true) = (&t.claim, calls > 0) {
            let parts: Vec<&str> = scan.cursor.split('|').collect();
            let mut next = [Id::default(); 2];
            let mut done = true;
            // Solo first (a call each), then fresh, as the Redis script does.
            for (k, q) in [(1, Queue::Solo), (0, Queue::Jobs)] {
                let room = match q {
                    Queue::Solo => (calls as usize).min(max_entries),
                    _ => room_for_fresh(entries),
                };
                let from = Id::parse(parts.get(k).copied().unwrap_or("")).unwrap_or_default();
                let (o, c, min_idle) = (webhook.clone(), t.consumer.to_string(), scan.min_idle);
                let (handed, next_id) = self.run(move |i| i.claim(q, &o, &c, min_idle, from, room)).await?;
                entries.extend(self.noted(&webhook, handed).await?);
                done &= next_id.is_none();
                next[k] = next_id.unwrap_or_default();
            }
            cursor = Some(if done { String::new() } else { format!("{}|{}", next[0], next[1]) });
        }
        let room = (calls.saturating_sub(counts(entries).0) as usize).min(max_entries.saturating_sub(entries.len()));
        if room > 0 {
            entries.extend(self.hand_out(Queue::Solo, &webhook, t.consumer, room).await?);
        }
        let room = room_for_fresh(entries);
        if room > 0 {
            entries.extend(self.hand_out(Queue::Jobs, &webhook, t.consumer, room).await?);
        }
        let w = webhook.clone();
        let (fresh_last, solo_last) =
            self.run(move |i| Ok((i.last_id(Queue::Jobs, &w)?, i.last_id(Queue::Solo, &w)?))).await?;
        Ok((next_due, cursor, format!("{fresh_last}|{solo_last}")))
    }

    fn parse_ids(&self, kind: QueueKind, ids: &[String]) -> Result<Vec<(Queue, Id)>> {
        ids.iter().map(|id| parse_public_id(kind, id)).collect()
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn ping(&self) -> Result<()> {
        self.run(|i| i.ping()).await
    }

    async fn put_object(&self, object: &DataObject) -> Result<()> {
        let (name, text) = (object.name.clone(), encode_json(object)?);
        self.inner.writer.write(move |txn, fx| inner::put_object(txn, fx, &name, &text)).await
    }

    async fn get_object(&self, name: &str) -> Result<Option<DataObject>> {
        let name = name.to_string();
        self.run(move |i| i.get_object(&name)).await
    }

    async fn list_objects(&self) -> Result<Vec<DataObject>> {
        self.run(|i| i.list_objects()).await
    }

    async fn put_webhook(&self, webhook: &StoredWebhook) -> Result<bool> {
        let (id, expected, text) =
            (webhook.definition.id.clone(), webhook.version.saturating_sub(1), encode_json(webhook)?);
        let shared = self.inner.shared.clone();
        self.inner
            .writer
            .write(move |txn, fx| inner::put_webhook(txn, fx, &shared.locks, &id, expected, Some(&text)))
            .await
    }

    async fn get_webhook(&self, id: &str) -> Result<Option<StoredWebhook>> {
        let id = id.to_string();
        self.run(move |i| i.get_webhook(&id)).await
    }

    async fn list_webhooks(&self) -> Result<Vec<StoredWebhook>> {
        self.run(|i| i.list_webhooks()).await
    }

    async fn delete_webhook(&self, id: &str, version: u64) -> Result<bool> {
        let id = id.to_string();
        let shared = self.inner.shared.clone();
        self.inner.writer.write(move |txn, fx| inner::put_webhook(txn, fx, &shared.locks, &id, version, None)).await
    }

    async fn definitions(&self) -> Result<Definitions> {
        let (version, objects, webhooks) = self.run(|i| i.definitions()).await?;
        Ok(Definitions { version, objects, webhooks })
    }

    async fn definitions_version(&self) -> Result<u64> {
        self.run(|i| i.definitions_version()).await
    }

    async fn events_cursor(&self) -> Result<String> {
        self.run(|i| i.events_cursor()).await
    }

    async fn next_events(&self, cursor: &mut String, block: Duration) -> Result<Vec<DefEvent>> {
        let from = Id::parse(cursor)?;
        let deadline = Instant::now() + block;
        loop {
            let notified = self.inner.shared.events.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (events, last) = self.run(move |i| i.events_after(from)).await?;
            if let Some(last) = last {
                *cursor = last.to_string();
                return Ok(events);
            }
            if block.is_zero() || tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn get_record(&self, object: &str, id: &str) -> Result<Option<Record>> {
        let (object, id) = (object.to_string(), id.to_string());
        self.run(move |i| i.get_record(&object, &id)).await
    }

    async fn write_record(
        &self,
        object: &str,
        id: &str,
        expected: u64,
        fields: &Fields,
        change: &Change,
    ) -> Result<WriteResult> {
        let (object, id, text, origin, change) = (
            object.to_string(),
            id.to_string(),
            encode_json(fields)?,
            change.origin_webhook.clone(),
            change.encode_to_vec(),
        );
        self.inner
            .writer
            .write(move |txn, fx| inner::write_record(txn, fx, &object, &id, expected, &text, &change, &origin))
            .await
    }

    async fn get_records(&self, object: &str, ids: &[String]) -> Result<Vec<Option<Record>>> {
        let (object, ids) = (object.to_string(), ids.to_vec());
        self.run(move |i| i.get_records(&object, &ids)).await
    }

    async fn write_records(&self, object: &str, writes: &[crate::RecordWrite]) -> Result<Vec<WriteResult>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let object = object.to_string();
        let writes: Vec<(String, u64, String, Vec<u8>, String)> = writes
            .iter()
            .map(|w| {
                Ok((
                    w.id.clone(),
                    w.expected,
                    String::from_utf8(w.change.new_json.clone())
                        .map_err(|_| StoreError::Backend(format!("the fields of record {} are not UTF-8", w.id)))?,
                    w.change.encode_to_vec(),
                    w.change.origin_webhook.clone(),
                ))
            })
            .collect::<Result<_>>()?;
        self.inner
            .writer
            .write(move |txn, fx| {
                writes
                    .iter()
                    .map(|(id, expected, text, change, origin)| {
                        inner::write_record(txn, fx, &object, id, *expected, text, change, origin)
                    })
                    .collect()
            })
            .await
    }

    async fn write_position(&self, object: &str) -> Result<u64> {
        let object = object.to_string();
        self.run(move |i| i.write_position(&object)).await
    }

    async fn records_written(&self, object: &str, after: u64, limit: usize) -> Result<Vec<IndexedRecord>> {
        let object = object.to_string();
        self.run(move |i| i.records_written(&object, after, limit)).await
    }

    async fn read(&self, queue: &QueueName, consumer: &str, count: usize, block: Duration) -> Result<Vec<RawEntry>> {
        // A job queue's reads are of its fresh jobs (filling a bulk call).
        let q = Queue::of(queue.kind)[0];
        let deadline = Instant::now() + block;
        let group = self.inner.shared.groups.get(q, &queue.owner);
        loop {
            let notified = group.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let got = self.hand_out(q, &queue.owner, consumer, count.max(1)).await?;
            if !got.is_empty() || block.is_zero() {
                return Ok(got);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn claim(
        &self,
        queue: &QueueName,
        consumer: &str,
        scan: &ClaimScan,
        count: usize,
    ) -> Result<(Vec<RawEntry>, String)> {
        let queues = Queue::of(queue.kind);
        let cursors: Vec<Id> = scan.cursor.split('|').map(|c| Id::parse(c).unwrap_or_default()).collect();
        let mut out = Vec::new();
        let mut next = Vec::new();
        let mut done = true;
        for (k, q) in queues.iter().enumerate() {
            let (o, c, q, min_idle) = (queue.owner.clone(), consumer.to_string(), *q, scan.min_idle);
            let from = cursors.get(k).copied().unwrap_or_default();
            let left = count.saturating_sub(out.len());
            let (handed, cursor) = self.run(move |i| i.claim(q, &o, &c, min_idle, from, left)).await?;
            out.extend(self.noted(&queue.owner, handed).await?);
            done &= cursor.is_none();
            next.push(cursor.unwrap_or_default().to_string());
        }
        Ok((out, if done { String::new() } else { next.join("|") }))
    }

    async fn touch(&self, queue: &QueueName, consumer: &str, ids: &[String]) -> Result<Vec<String>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let parsed = self.parse_ids(queue.kind, ids)?;
        let (owner, consumer, texts) = (queue.owner.clone(), consumer.to_string(), ids.to_vec());
        // Group locks are also held by reads on the blocking pool: not on an async thread.
        self.run(move |i| {
            let now = std::time::Instant::now();
            let mut lost = Vec::new();
            for ((q, id), text) in parsed.iter().zip(&texts) {
                let group = i.shared.groups.get(*q, &owner);
                let mut state = state::lock(&group.state);
                match state.pending.get_mut(id) {
                    Some(p) if p.consumer == consumer => {
                        p.touched = now;
                        p.released = false;
                    }
                    Some(_) => lost.push(text.clone()),
                    // Finished meanwhile: nothing to keep.
                    None => {}
                }
            }
            Ok(lost)
        })
        .await
    }

    async fn ack(&self, queue: &QueueName, consumer: &str, ids: &[String]) -> Result<Vec<String>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let parsed = self.parse_ids(queue.kind, ids)?;
        let (owner, consumer, shared, texts) =
            (queue.owner.clone(), consumer.to_string(), self.inner.shared.clone(), ids.to_vec());
        self.inner
            .writer
            .write(move |txn, fx| {
                let mut done = Vec::new();
                for ((q, id), text) in parsed.iter().zip(&texts) {
                    if inner::owns_all(&shared.groups, &owner, &consumer, &[(*q, *id)]) {
                        inner::remove_entries(txn, fx, &owner, &[(*q, *id)])?;
                        done.push(text.clone());
                    }
                }
                Ok(done)
            })
            .await
    }

    async fn release(&self, queue: &QueueName, consumer: &str, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let parsed = self.parse_ids(queue.kind, ids)?;
        let (owner, consumer) = (queue.owner.clone(), consumer.to_string());
        self.run(move |i| {
            for (q, id) in parsed {
                let group = i.shared.groups.get(q, &owner);
                if let Some(p) = state::lock(&group.state).pending.get_mut(&id)
                    && p.consumer == consumer
                {
                    p.released = true;
                }
            }
            Ok(())
        })
        .await
    }

    async fn enqueue(&self, jobs: &[Job]) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let jobs: Vec<(String, bool, Vec<u8>)> =
            jobs.iter().map(|j| (j.webhook_id.clone(), inner::is_solo(j), j.encode_to_vec())).collect();
        self.inner.writer.write(move |txn, fx| inner::enqueue(txn, fx, &jobs)).await
    }

    async fn take(&self, t: &Take<'_>) -> Result<Taken> {
        let shared = &self.inner.shared;
        let granted = shared.permits.take(t);
        let mut calls = granted.free + granted.names.len() as u32;
        let mut rate_wait = None;
        let mut reserved = 0;
        if let (Some(rate), true) = (t.rate, calls > 0) {
            match shared.rates.reserve(t.webhook, rate.interval, rate.burst, calls) {
                Ok(tokens) => {
                    calls = calls.min(tokens);
                    reserved = calls;
                }
                Err(wait) => {
                    rate_wait = Some(wait);
                    calls = 0;
                }
            }
        }
        let mut entries: Vec<RawEntry> = Vec::new();
        let read = self.take_entries(t, calls, &mut entries).await;
        let (solos, fresh) =
            (entries.iter().filter(|e| e.solo).count() as u32, entries.iter().filter(|e| !e.solo).count() as u32);
        let used = solos + fresh.div_ceil(t.batch.max(1));
        if let Some(rate) = t.rate {
            shared.rates.refund(t.webhook, rate.interval, reserved.saturating_sub(used));
        }
        let (next_due_ms, cursor, mark) = match read {
            Ok(r) => r,
            Err(e) => {
                // As if the step had not run: the permits it granted go back, and what it
                // handed out is given back for the next take-over scan.
                shared.permits.undo(t.webhook, &granted.names);
                let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
                let _ = self.release(&QueueName::jobs(t.webhook), t.consumer, &ids).await;
                return Err(e);
            }
        };
        Ok(Taken { granted: granted.names, fair_share: granted.share, entries, cursor, next_due_ms, rate_wait, mark })
    }

    async fn wait_for_jobs(&self, webhook: &str, mark: &str, timeout: Duration) -> Result<()> {
        let (fresh, solo) = mark.split_once('|').unwrap_or(("0-0", "0-0"));
        let marks =
            [(Queue::Jobs, Id::parse(fresh).unwrap_or_default()), (Queue::Solo, Id::parse(solo).unwrap_or_default())];
        self.wait_for(webhook, &marks, Instant::now() + timeout).await
    }

    async fn renew(&self, r: &Renew<'_>) -> Result<Renewed> {
        let (lost_permits, fair_share) =
            self.inner.shared.permits.renew(r.webhook, r.consumer, r.permits, r.contending, r.limit, r.lease);
        let lost_entries = self.touch(&QueueName::jobs(r.webhook), r.consumer, r.entries).await?;
        Ok(Renewed { lost_permits, fair_share, lost_entries })
    }

    async fn rate_wait(&self, webhook: &str, rate: Rate) -> Result<Option<Duration>> {
        match self.inner.shared.rates.reserve(webhook, rate.interval, rate.burst, 1) {
            Ok(_) => Ok(None),
            Err(wait) => Ok(Some(wait)),
        }
    }

    async fn release_permits(&self, webhook: &str, consumer: &str, permits: &[String], leave: bool) -> Result<()> {
        self.inner.shared.permits.release(webhook, consumer, permits, leave);
        Ok(())
    }

    async fn complete(&self, webhook: &str, consumer: &str, items: &[Completion]) -> Result<Vec<bool>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let items: Vec<CompleteItem> = items
            .iter()
            .map(|c| {
                Ok(CompleteItem {
                    entries: self.parse_ids(QueueKind::Jobs, &c.entries)?,
                    attempt: c.attempt.clone(),
                    retry: c.follow_up.retry.as_ref().map(|(j, due)| (j.encode_to_vec(), *due)),
                    dead: c.follow_up.dead_letter.as_ref().map(|(j, r)| (j.encode_to_vec(), r.clone())),
                    writeback: c.follow_up.writeback.as_ref().map(|w| w.encode_to_vec()),
                })
            })
            .collect::<Result<_>>()?;
        let cutoff = crate::now_ms() - ATTEMPT_RETENTION.as_millis() as i64;
        let (webhook, consumer, shared) = (webhook.to_string(), consumer.to_string(), self.inner.shared.clone());
        self.inner
            .writer
            .write(move |txn, fx| inner::complete(txn, fx, &shared.groups, &webhook, &consumer, &items, cutoff))
            .await
    }

    async fn oldest_job_ms(&self, webhook: &str) -> Result<Option<i64>> {
        let webhook = webhook.to_string();
        self.run(move |i| i.oldest_job_ms(&webhook)).await
    }

    async fn queue_depth(&self, webhook: &str) -> Result<u64> {
        let webhook = webhook.to_string();
        self.run(move |i| i.queue_depth(&webhook)).await
    }

    async fn queue_stats(&self, webhooks: &[String]) -> Result<Vec<QueueStats>> {
        let webhooks = webhooks.to_vec();
        self.run(move |i| i.queue_stats(&webhooks)).await
    }

    async fn finish_writebacks(&self, webhook: &str, consumer: &str, items: &[WritebackDone]) -> Result<Vec<bool>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let items: Vec<WritebackItem> = items
            .iter()
            .map(|w| {
                Ok(WritebackItem {
                    entry: Id::parse(&w.entry)?,
                    attempt_id: w.attempt_id.clone(),
                    status: w.status.clone(),
                    error: w.error.clone(),
                    failed: w.failed.as_ref().map(|(j, r)| (j.encode_to_vec(), r.clone())),
                })
            })
            .collect::<Result<_>>()?;
        let (webhook, consumer, shared) = (webhook.to_string(), consumer.to_string(), self.inner.shared.clone());
        self.inner
            .writer
            .write(move |txn, fx| inner::finish_writebacks(txn, fx, &shared.groups, &webhook, &consumer, &items))
            .await
    }

    async fn failed_writebacks(&self, webhook: &str, limit: usize) -> Result<Vec<FailedWriteback>> {
        let webhook = webhook.to_string();
        self.run(move |i| i.failed_writebacks(&webhook, limit)).await
    }

    async fn redrive_writebacks(&self, webhook: &str) -> Result<u64> {
        let mut total = 0;
        loop {
            let w = webhook.to_string();
            let moved = self.inner.writer.write(move |txn, fx| inner::redrive_writebacks(txn, fx, &w)).await?;
            if moved == 0 {
                return Ok(total);
            }
            total += moved;
        }
    }

    async fn list_attempts(&self, webhook: &str, filter: &AttemptFilter) -> Result<Vec<Attempt>> {
        let (webhook, filter) = (webhook.to_string(), filter.clone());
        self.run(move |i| i.list_attempts(&webhook, &filter)).await
    }

    async fn get_attempt(&self, webhook: &str, attempt_id: &str) -> Result<Option<Attempt>> {
        let (webhook, attempt_id) = (webhook.to_string(), attempt_id.to_string());
        self.run(move |i| i.get_attempt(&webhook, &attempt_id)).await
    }

    async fn report_in_flight(&self, node: &str, counts: &[(String, u64)], ttl: Duration) -> Result<()> {
        let now = std::time::Instant::now();
        let until = now + ttl;
        let mut map = self.inner.shared.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, (_, u)| *u > now);
        for (webhook, n) in counts {
            map.insert((webhook.clone(), node.to_string()), (*n, until));
        }
        Ok(())
    }

    async fn note_changes(&self, notes: &[JourneyNote]) -> Result<()> {
        if notes.is_empty() {
            return Ok(());
        }
        let notes = notes.to_vec();
        self.inner.writer.write(move |txn, _fx| inner::note_changes(txn, &notes)).await
    }

    async fn journey(&self, object: &str, record_id: &str, limit: usize) -> Result<Vec<JourneyNote>> {
        let (object, record_id) = (object.to_string(), record_id.to_string());
        self.run(move |i| i.journey(&object, &record_id, limit)).await
    }

    async fn dead_letters(&self, webhook: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        let webhook = webhook.to_string();
        self.run(move |i| i.dead_letters(&webhook, limit)).await
    }

    async fn redrive_some(&self, webhook: &str, ids: &[String]) -> Result<u64> {
        // Ids that do not parse name no dead letter.
        let ids: Vec<Id> = ids.iter().filter_map(|id| Id::parse(id).ok()).collect();
        let w = webhook.to_string();
        self.inner.writer.write(move |txn, fx| inner::redrive_some(txn, fx, &w, &ids)).await
    }

    async fn redrive(&self, webhook: &str) -> Result<u64> {
        let mut total = 0;
        loop {
            let w = webhook.to_string();
            let moved = self.inner.writer.write(move |txn, fx| inner::redrive(txn, fx, &w)).await?;
            if moved == 0 {
                return Ok(total);
            }
            total += moved;
        }
    }

    async fn get_value(&self, webhook: &str, name: &str) -> Result<Option<Vec<u8>>> {
        let (webhook, name) = (webhook.to_string(), name.to_string());
        self.run(move |i| i.get_value(&webhook, &name, crate::now_ms())).await
    }

    async fn set_value(&self, webhook: &str, name: &str, value: &[u8], ttl: Duration) -> Result<()> {
        let (webhook, name, value) = (webhook.to_string(), name.to_string(), value.to_vec());
        let expires = crate::now_ms() + ttl.as_millis() as i64;
        self.inner.writer.write(move |txn, _fx| inner::set_value(txn, &webhook, &name, &value, expires)).await
    }

    async fn try_lock(&self, webhook: &str, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        Ok(self.inner.shared.locks.try_lock(webhook, name, holder, ttl))
    }

    async fn set_value_locked(
        &self,
        webhook: &str,
        name: &str,
        value: &[u8],
        ttl: Duration,
        lock: &str,
        holder: &str,
    ) -> Result<bool> {
        let (webhook, name, value, lock, holder) =
            (webhook.to_string(), name.to_string(), value.to_vec(), lock.to_string(), holder.to_string());
        let expires = crate::now_ms() + ttl.as_millis() as i64;
        let shared = self.inner.shared.clone();
        // The lock is checked inside the write transaction, which makes the check and the
        // write one step for every value writer: writes run one at a time, and the locks
        // mutex is held for the check only. If the lock expires right after the check, a
        // successor can take it only after it, so its own value write commits after this one
        // and overwrites it, not the other way round. A delete of the webhook forgets its
        // locks inside its transaction, so this either runs before it (and the delete removes
        // the value) or finds no lock.
        self.inner
            .writer
            .write(move |txn, _fx| {
                if !shared.locks.holds(&webhook, &lock, &holder) {
                    return Ok(false);
                }
                inner::set_value(txn, &webhook, &name, &value, expires)?;
                Ok(true)
            })
            .await
    }

    async fn unlock(&self, webhook: &str, name: &str, holder: &str) -> Result<()> {
        self.inner.shared.locks.unlock(webhook, name, holder);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
