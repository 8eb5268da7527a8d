//! Hookline's store: everything that must survive a process and be shared by nodes.
//!
//! [`Store`] is the one interface the engine and the API use: data objects and webhook
//! definitions (with a change feed so every node's coordinator stays current), versioned
//! records whose every change lands on a change stream in the same atomic step, per-webhook
//! job queues with acknowledgement, delayed retries and dead letters, write-back queues,
//! the attempt log, and a lease-based concurrency semaphore.
//!
//! Backends: [`RedisStore`] (clusters; [`keys`] documents its layout, `lua/` its atomic
//! steps) and [`EmbeddedStore`] (one process, a durable redb file, the default when no
//! Redis is configured; [`embedded`] documents its tables and why its consumer-group state
//! is in memory). Both pass one conformance suite, `conformance` (this crate's tests; other
//! crates' tests with the `conformance` feature). Delivery is at-least-once: a queued entry
//! stays pending until it is acknowledged, and a consumer that died holding one is taken
//! over by another through `claim_*` once the entry has been idle long enough.

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod embedded;
pub mod keys;
mod redis_store;

use std::time::Duration;

use async_trait::async_trait;
use hookline_model::{DataObject, Fields, Record, StoredWebhook};
use hookline_proto::{Attempt, Change, Job, Outcome, WritebackJob};

pub use embedded::EmbeddedStore;
pub use redis_store::RedisStore;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached right now; callers retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored value could not be decoded.
    #[error("corrupt value at {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("store error: {0}")]
    Backend(String),
}

/// One entry taken from a queue: its id (for acknowledgement) and its value.
#[derive(Debug, Clone)]
pub struct Entry<T> {
    pub id: String,
    pub value: T,
    /// Set on entries that were redriven from the dead letters.
    pub redriven: bool,
    /// How many times the entry has been handed out, this time included (1 on a first
    /// read; more after claims of entries whose consumer died).
    pub deliveries: u32,
}

/// The result of a conditional record write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteResult {
    Written {
        version: u64,
    },
    /// Another writer got there first; re-read and retry.
    Conflict {
        current: u64,
    },
}

/// What follows an attempt; enqueued atomically with the attempt record and the ack.
/// A final failure may both dead-letter the job and hand the response to the write-back.
#[derive(Debug, Clone, Default)]
pub struct FollowUp {
    /// Another attempt, due at the given Unix ms.
    pub retry: Option<(Job, i64)>,
    /// The job goes to the dead letters, with the reason.
    pub dead_letter: Option<(Job, String)>,
    /// The final attempt's result goes to the write-back role.
    pub writeback: Option<WritebackJob>,
}

/// Filters of the attempt log; newest first.
#[derive(Debug, Clone, Default)]
pub struct AttemptFilter {
    pub record_id: Option<String>,
    pub outcome: Option<Outcome>,
    pub since_ms: Option<i64>,
    pub limit: usize,
}

/// A job in the dead letters.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: String,
    pub job: Job,
    pub reason: String,
}

/// A change of a definition, announced to every coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefEvent {
    Object(String),
    Webhook(String),
}

/// A record as the write index lists it (scheduled webhooks select records through it).
#[derive(Debug, Clone, PartialEq)]
pub struct IndexedRecord {
    /// Where the record was listed in its object's write order: every write of a record of
    /// the object takes the next position (1, 2, …), in the same atomic step.
    pub position: u64,
    pub record: Record,
    /// The webhook whose write-back made the record's latest write; empty for any other
    /// writer (the API, an import).
    pub origin_webhook: String,
    /// The position of the record's latest write by a writer other than `origin_webhook`
    /// (0: none). A scheduled webhook skips a record whose latest write is its own
    /// write-back only if nobody else wrote it since the webhook last looked: a user's
    /// change made while a call was in flight must not hide behind the write-back after it.
    pub other_position: u64,
}

/// How long attempts are kept.
pub const ATTEMPT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Fails when the backend is unreachable (for `/readyz`).
    async fn ping(&self) -> Result<()>;

    // --- definitions ---
    async fn put_object(&self, object: &DataObject) -> Result<()>;
    async fn get_object(&self, name: &str) -> Result<Option<DataObject>>;
    async fn list_objects(&self) -> Result<Vec<DataObject>>;
    /// Saves `webhook` if the stored version is `webhook.version - 1` (0: new). False on a conflict.
    async fn put_webhook(&self, webhook: &StoredWebhook) -> Result<bool>;
    async fn get_webhook(&self, id: &str) -> Result<Option<StoredWebhook>>;
    async fn list_webhooks(&self) -> Result<Vec<StoredWebhook>>;
    /// Deletes a webhook stored at `version`, with its queues, attempts, values and locks.
    /// False on a conflict.
    async fn delete_webhook(&self, id: &str, version: u64) -> Result<bool>;
    /// The position of the newest definition event, to follow from.
    async fn events_cursor(&self) -> Result<String>;
    /// Definition events after `cursor`, waiting up to `block` for one; advances `cursor`.
    async fn next_events(&self, cursor: &mut String, block: Duration) -> Result<Vec<DefEvent>>;

    // --- records and changes ---
    async fn get_record(&self, object: &str, id: &str) -> Result<Option<Record>>;
    /// Stores `fields` as version `expected + 1` of the record and appends `change`, atomically.
    async fn write_record(
        &self,
        object: &str,
        id: &str,
        expected: u64,
        fields: &Fields,
        change: &Change,
    ) -> Result<WriteResult>;
    async fn read_changes(
        &self,
        object: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Entry<Change>>>;
    /// Takes over changes another consumer read but did not acknowledge within `min_idle`.
    async fn claim_changes(&self, object: &str, consumer: &str, min_idle: Duration) -> Result<Vec<Entry<Change>>>;
    async fn ack_changes(&self, object: &str, ids: &[String]) -> Result<()>;

    // --- the write index (scheduled webhooks) ---
    /// The position of the object's latest record write; 0 before the first.
    async fn write_position(&self, object: &str) -> Result<u64>;
    /// Records whose latest write stands at a position after `after`, in ascending position,
    /// at most `limit` (fewer only at the end). A record written again moves to its new
    /// position, so paging with the last position returned as the next `after` meets every
    /// record whose latest write is later than the first `after`. A record rewritten while it
    /// is being listed may come with its newer write at its older position, and then again
    /// at the newer one: readers are at-least-once.
    async fn records_written(&self, object: &str, after: u64, limit: usize) -> Result<Vec<IndexedRecord>>;

    // --- jobs ---
    /// Appends jobs to their webhooks' queues.
    async fn enqueue(&self, jobs: &[Job]) -> Result<()>;
    async fn read_jobs(&self, webhook: &str, consumer: &str, count: usize, block: Duration) -> Result<Vec<Entry<Job>>>;
    async fn claim_jobs(
        &self,
        webhook: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Entry<Job>>>;
    /// Gives jobs read by `read_jobs` back to the queue undelivered (the reader is stopping).
    async fn requeue_jobs(&self, webhook: &str, entries: &[Entry<Job>]) -> Result<()>;
    /// Moves due delayed jobs to the queue; returns when the next one is due (Unix ms).
    async fn promote_due(&self, webhook: &str, now_ms: i64) -> Result<Option<i64>>;
    /// Records `attempt`, enqueues `follow_up` and acknowledges entry `entry_id` (`""`: a
    /// job that was never on the queue), atomically.
    async fn complete(&self, webhook: &str, entry_id: &str, attempt: &Attempt, follow_up: FollowUp) -> Result<()> {
        let ids: Vec<String> = if entry_id.is_empty() { vec![] } else { vec![entry_id.to_string()] };
        self.complete_batch(webhook, &ids, attempt, follow_up).await
    }
    /// Like [`Store::complete`] for a bulk call: every entry of the batch is acknowledged
    /// in the same atomic step as the one attempt and its follow-up.
    async fn complete_batch(
        &self,
        webhook: &str,
        entry_ids: &[String],
        attempt: &Attempt,
        follow_up: FollowUp,
    ) -> Result<()>;
    /// When the oldest job on the queue (ready or being delivered) was queued, Unix ms.
    async fn oldest_job_ms(&self, webhook: &str) -> Result<Option<i64>>;
    /// Number of jobs waiting: ready, pending and delayed.
    async fn queue_depth(&self, webhook: &str) -> Result<u64>;

    // --- write-backs ---
    async fn read_writebacks(
        &self,
        webhook: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Entry<WritebackJob>>>;
    async fn claim_writebacks(
        &self,
        webhook: &str,
        consumer: &str,
        min_idle: Duration,
    ) -> Result<Vec<Entry<WritebackJob>>>;
    /// Notes the write-back's result on its attempt and acknowledges it.
    async fn finish_writeback(
        &self,
        webhook: &str,
        entry_id: &str,
        attempt_id: &str,
        error: Option<&str>,
    ) -> Result<()>;

    // --- attempt log and dead letters ---
    async fn list_attempts(&self, webhook: &str, filter: &AttemptFilter) -> Result<Vec<Attempt>>;
    async fn get_attempt(&self, webhook: &str, attempt_id: &str) -> Result<Option<Attempt>>;
    async fn dead_letters(&self, webhook: &str, limit: usize) -> Result<Vec<DeadLetter>>;
    /// Moves every dead letter back to the queue with a fresh attempt budget.
    async fn redrive(&self, webhook: &str) -> Result<u64>;

    // --- small shared values and locks (OAuth tokens, their refresh) ---
    /// A value stored under the webhook's keys, unless it expired.
    async fn get_value(&self, webhook: &str, name: &str) -> Result<Option<Vec<u8>>>;
    /// Stores a value that expires after `ttl`.
    async fn set_value(&self, webhook: &str, name: &str, value: &[u8], ttl: Duration) -> Result<()>;
    /// Takes the lock `name` for `holder` unless someone else holds it; it expires after `ttl`.
    /// Taking a lock `holder` already holds succeeds and renews it for `ttl`.
    async fn try_lock(&self, webhook: &str, name: &str, holder: &str, ttl: Duration) -> Result<bool>;
    /// Stores a value like [`Store::set_value`], but only while `holder` holds the lock
    /// `lock` of the same webhook, in one atomic step: a holder that lost its lock (it
    /// stalled past the TTL, or the webhook was deleted) cannot overwrite its successor's
    /// value. False, and nothing stored, when it does not hold the lock.
    async fn set_value_locked(
        &self,
        webhook: &str,
        name: &str,
        value: &[u8],
        ttl: Duration,
        lock: &str,
        holder: &str,
    ) -> Result<bool>;
    /// Releases the lock if `holder` still holds it.
    async fn unlock(&self, webhook: &str, name: &str, holder: &str) -> Result<()>;

    // --- rate limits ---
    /// GCRA: asks to make one call under a limit of one call per `interval` (with `burst`
    /// calls of slack). Zero: go, the call is counted. Otherwise how long to wait before
    /// asking again (nothing was counted).
    async fn rate_wait(&self, webhook: &str, interval: Duration, burst: u32) -> Result<Duration>;

    // --- concurrency ---
    /// Takes or renews one of `limit` permits for `holder`, leased for `lease`.
    async fn acquire_permit(&self, webhook: &str, holder: &str, limit: u32, lease: Duration) -> Result<bool>;
    async fn release_permit(&self, webhook: &str, holder: &str) -> Result<()>;
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
