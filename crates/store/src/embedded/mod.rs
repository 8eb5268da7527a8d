//! The embedded backend: one process, one durable file (`<dir>/hookline.redb`, [redb]), the
//! same semantics as [`crate::RedisStore`], so `hookline serve` runs on a fresh machine with
//! nothing else installed.
//!
//! # Table layout
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `"last_id"`, `"format"`, `"position/<object>"` | newest stream id handed out; layout version; position of the object's latest record write |
//! | `objects` | object name | DataObject JSON |
//! | `webhooks` | webhook id | (stored version, StoredWebhook JSON) — compare-and-set reads the version |
//! | `events` | stream id | (`object`\|`webhook`, name): definition events, newest 10 000 kept |
//! | `records` | (object, record id) | (version, fields JSON) |
//! | `record_positions` | (object, record id) | (position, origin webhook, other position) of the record's latest write |
//! | `written` | (object, position) | record id: the write index, each record at its latest write |
//! | `changes` | (object, stream id) | (flags, Change protobuf) |
//! | `jobs` | (webhook, stream id) | (flags, Job protobuf): ready and delivered-but-unacknowledged |
//! | `writebacks` | (webhook, stream id) | (flags, WritebackJob protobuf) |
//! | `delayed` | (webhook, due ms, stream id) | Job protobuf: retries in due order, then insertion |
//! | `dead` | (webhook, stream id) | (Job protobuf, reason) |
//! | `attempts` | (webhook, attempt id) | Attempt protobuf |
//! | `attempts_by_time` | (webhook, started ms, attempt id) | (): newest-first listing and trimming |
//!
//! Stream ids are `<ms>-<seq>` like Redis's, strictly increasing across the whole file: they
//! are handed out inside write transactions, which redb runs one at a time, and the newest is
//! stored with them so a restart (or a clock stepping back) never reuses one. Every call that
//! changes something is one write transaction with [`redb::Durability::Immediate`] (redb's
//! default): once it returned `Ok`, a `kill -9` loses none of it. `write_record` stores the
//! record, appends its change and moves the record to its object's next write position in
//! one transaction; `complete` records the attempt, adds its retry, dead letter and
//! write-back and acknowledges the job in one.
//!
//! The layout version is `"format"` in `meta`. Opening a version 1 file (before the write
//! index) indexes its records in one transaction; a newer version than this build knows is
//! refused.
//!
//! # Consumer groups live in memory
//!
//! What a queue entry needs on disk is only that it exists until acknowledged (ack deletes
//! it). Which consumer holds it and since when is kept in memory per queue — a delivered
//! cursor and a pending map — because a single process is the only consumer: after a crash
//! or restart, the consumers that held entries are gone too, and an empty pending map makes
//! every unacknowledged entry undelivered again. That is the at-least-once redelivery the
//! engine expects after `kill -9`, and it costs no write per read. `claim_*` re-assigns
//! pending entries idle at least `min_idle` (monotonic clock), as `XAUTOCLAIM` does.
//!
//! Blocking reads wait on a [`tokio::sync::Notify`] per queue (and one for definition
//! events), woken after a commit appended to it: no polling. Every redb transaction runs in
//! [`tokio::task::spawn_blocking`]; in-memory state sits behind `std::sync::Mutex`es that are
//! never held across an `.await`. The concurrency permits and the locks are in memory too (a
//! restart frees them all, as lease expiry would).
//!
//! Differences from Redis a caller may notice: a first read of a queue returns entries that
//! were appended before anyone read it (Redis creates the group then and answers empty), and
//! redriven jobs carry [`crate::Entry::redriven`].

mod inner;
mod state;
mod tables;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hookline_model::{DataObject, Fields, Record, StoredWebhook};
use hookline_proto::{Attempt, Change, Job, Message, WritebackJob};
use tokio::time::Instant;

use self::inner::Inner;
use self::tables::{Id, Queue};
use crate::{
    ATTEMPT_RETENTION, AttemptFilter, DeadLetter, DefEvent, Entry, FollowUp, IndexedRecord, Result, Store, StoreError,
    WriteResult,
};

/// The embedded store: a redb file plus in-memory consumer groups and permits. Cheap to
/// clone (clones share the open file).
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

    /// Runs `f` on the blocking pool.
    async fn run<T: Send + 'static>(&self, f: impl FnOnce(&Inner) -> Result<T> + Send + 'static) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Backend(format!("embedded store task failed: {e}")))?
    }

    /// Reads a consumer-group queue, waiting up to `block` for an entry when none is there.
    async fn read_queue<T: Message + Default + Send + 'static>(
        &self,
        queue: Queue,
        owner: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Entry<T>>> {
        let deadline = Instant::now() + block;
        let group = self.inner.groups.get(queue, owner);
        loop {
            // Listen before looking, so an append between the look and the wait is not missed.
            let notified = group.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (owner_, consumer_, group_) = (owner.to_string(), consumer.to_string(), group.clone());
            let got = self.run(move |i| i.read_group(queue, &owner_, &group_, &consumer_, count)).await?;
            if !got.is_empty() || block.is_zero() {
                return Ok(got);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn claim<T: Message + Default + Send + 'static>(
        &self,
        queue: Queue,
        owner: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Entry<T>>> {
        let group = self.inner.groups.get(queue, owner);
        let (owner, consumer) = (owner.to_string(), consumer.to_string());
        self.run(move |i| i.claim(queue, &owner, &group, &consumer, min_idle, count)).await
    }
}

fn parse_ids(ids: &[String]) -> Result<Vec<Id>> {
    ids.iter().map(|id| Id::parse(id)).collect()
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn ping(&self) -> Result<()> {
        self.run(|i| i.ping()).await
    }

    async fn put_object(&self, object: &DataObject) -> Result<()> {
        let (name, text) = (object.name.clone(), encode_json(object)?);
        self.run(move |i| i.put_object(&name, &text)).await
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
        self.run(move |i| i.put_webhook(&id, expected, Some(&text))).await
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
        self.run(move |i| i.put_webhook(&id, version, None)).await
    }

    async fn events_cursor(&self) -> Result<String> {
        self.run(|i| i.events_cursor()).await
    }

    async fn next_events(&self, cursor: &mut String, block: Duration) -> Result<Vec<DefEvent>> {
        let from = Id::parse(cursor)?;
        let deadline = Instant::now() + block;
        loop {
            let notified = self.inner.events.notified();
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
        self.run(move |i| i.write_record(&object, &id, expected, &text, &change, &origin)).await
    }

    async fn read_changes(
        &self,
        object: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Entry<Change>>> {
        self.read_queue(Queue::Changes, object, consumer, count, block).await
    }

    async fn claim_changes(&self, object: &str, consumer: &str, min_idle: Duration) -> Result<Vec<Entry<Change>>> {
        self.claim(Queue::Changes, object, consumer, min_idle, 100).await
    }

    async fn ack_changes(&self, object: &str, ids: &[String]) -> Result<()> {
        let (object, ids) = (object.to_string(), parse_ids(ids)?);
        self.run(move |i| i.ack(Queue::Changes, &object, &ids)).await
    }

    async fn write_position(&self, object: &str) -> Result<u64> {
        let object = object.to_string();
        self.run(move |i| i.write_position(&object)).await
    }

    async fn records_written(&self, object: &str, after: u64, limit: usize) -> Result<Vec<IndexedRecord>> {
        let object = object.to_string();
        self.run(move |i| i.records_written(&object, after, limit)).await
    }

    async fn enqueue(&self, jobs: &[Job]) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let jobs: Vec<(String, Vec<u8>)> = jobs.iter().map(|j| (j.webhook_id.clone(), j.encode_to_vec())).collect();
        self.run(move |i| i.enqueue(&jobs)).await
    }

    async fn read_jobs(&self, webhook: &str, consumer: &str, count: usize, block: Duration) -> Result<Vec<Entry<Job>>> {
        self.read_queue(Queue::Jobs, webhook, consumer, count, block).await
    }

    async fn claim_jobs(
        &self,
        webhook: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Entry<Job>>> {
        self.claim(Queue::Jobs, webhook, consumer, min_idle, count).await
    }

    async fn requeue_jobs(&self, webhook: &str, entries: &[Entry<Job>]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let entries: Vec<(Id, Vec<u8>, bool)> = entries
            .iter()
            .map(|e| Ok((Id::parse(&e.id)?, e.value.encode_to_vec(), e.redriven)))
            .collect::<Result<_>>()?;
        let webhook = webhook.to_string();
        self.run(move |i| i.requeue(&webhook, &entries)).await
    }

    async fn promote_due(&self, webhook: &str, now_ms: i64) -> Result<Option<i64>> {
        let webhook = webhook.to_string();
        self.run(move |i| i.promote_due(&webhook, now_ms)).await
    }

    async fn complete_batch(
        &self,
        webhook: &str,
        entry_ids: &[String],
        attempt: &Attempt,
        follow_up: FollowUp,
    ) -> Result<()> {
        let entry = entry_ids.iter().map(|id| Id::parse(id)).collect::<Result<Vec<Id>>>()?;
        let cutoff = crate::now_ms() - ATTEMPT_RETENTION.as_millis() as i64;
        let retry = follow_up.retry.map(|(j, due)| (j.encode_to_vec(), due));
        let dead = follow_up.dead_letter.map(|(j, r)| (j.encode_to_vec(), r));
        let writeback = follow_up.writeback.map(|w| w.encode_to_vec());
        let (webhook, attempt) = (webhook.to_string(), attempt.clone());
        self.run(move |i| i.complete(&webhook, entry, &attempt, cutoff, retry, dead, writeback)).await
    }

    async fn oldest_job_ms(&self, webhook: &str) -> Result<Option<i64>> {
        let webhook = webhook.to_string();
        self.run(move |i| i.oldest_job_ms(&webhook)).await
    }

    async fn queue_depth(&self, webhook: &str) -> Result<u64> {
        let webhook = webhook.to_string();
        self.run(move |i| i.queue_depth(&webhook)).await
    }

    async fn read_writebacks(
        &self,
        webhook: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Entry<WritebackJob>>> {
        self.read_queue(Queue::Writebacks, webhook, consumer, count, block).await
    }

    async fn claim_writebacks(
        &self,
        webhook: &str,
        consumer: &str,
        min_idle: Duration,
    ) -> Result<Vec<Entry<WritebackJob>>> {
        self.claim(Queue::Writebacks, webhook, consumer, min_idle, 100).await
    }

    async fn finish_writeback(
        &self,
        webhook: &str,
        entry_id: &str,
        attempt_id: &str,
        error: Option<&str>,
    ) -> Result<()> {
        let entry = Id::parse(entry_id)?;
        let (webhook, attempt_id, error) = (webhook.to_string(), attempt_id.to_string(), error.map(str::to_string));
        self.run(move |i| i.finish_writeback(&webhook, entry, &attempt_id, error.as_deref())).await
    }

    async fn list_attempts(&self, webhook: &str, filter: &AttemptFilter) -> Result<Vec<Attempt>> {
        let (webhook, filter) = (webhook.to_string(), filter.clone());
        self.run(move |i| i.list_attempts(&webhook, &filter)).await
    }

    async fn get_attempt(&self, webhook: &str, attempt_id: &str) -> Result<Option<Attempt>> {
        let (webhook, attempt_id) = (webhook.to_string(), attempt_id.to_string());
        self.run(move |i| i.get_attempt(&webhook, &attempt_id)).await
    }

    async fn dead_letters(&self, webhook: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        let webhook = webhook.to_string();
        self.run(move |i| i.dead_letters(&webhook, limit)).await
    }

    async fn redrive(&self, webhook: &str) -> Result<u64> {
        let webhook = webhook.to_string();
        self.run(move |i| i.redrive(&webhook)).await
    }

    async fn get_value(&self, webhook: &str, name: &str) -> Result<Option<Vec<u8>>> {
        let (webhook, name) = (webhook.to_string(), name.to_string());
        self.run(move |i| i.get_value(&webhook, &name, crate::now_ms())).await
    }

    async fn set_value(&self, webhook: &str, name: &str, value: &[u8], ttl: Duration) -> Result<()> {
        let (webhook, name, value) = (webhook.to_string(), name.to_string(), value.to_vec());
        let expires = crate::now_ms() + ttl.as_millis() as i64;
        self.run(move |i| i.set_value(&webhook, &name, &value, expires)).await
    }

    async fn try_lock(&self, webhook: &str, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        Ok(self.inner.locks.try_lock(webhook, name, holder, ttl))
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
        self.run(move |i| i.set_value_locked(&webhook, &name, &value, expires, &lock, &holder)).await
    }

    async fn unlock(&self, webhook: &str, name: &str, holder: &str) -> Result<()> {
        self.inner.locks.unlock(webhook, name, holder);
        Ok(())
    }

    async fn rate_wait(&self, webhook: &str, interval: Duration, burst: u32) -> Result<Duration> {
        Ok(self.inner.rates.wait(webhook, interval, burst))
    }

    async fn acquire_permit(&self, webhook: &str, holder: &str, limit: u32, lease: Duration) -> Result<bool> {
        // In memory and quick: no blocking pool needed.
        Ok(self.inner.permits.acquire(webhook, holder, limit, lease))
    }

    async fn release_permit(&self, webhook: &str, holder: &str) -> Result<()> {
        self.inner.permits.release(webhook, holder);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
