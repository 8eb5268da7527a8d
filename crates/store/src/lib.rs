//! Hookline's store: everything that must survive a process and be shared by nodes.
//!
//! [`Store`] is the one interface the engine and the API use: data objects and webhook
//! definitions (versioned as a whole, with a change feed so every node's coordinator stays
//! current), versioned records whose every change lands on a change stream in the same atomic
//! step, per-webhook job queues with delayed retries and dead letters, write-back queues, the
//! attempt log, and the per-webhook concurrency permits and rate limit.
//!
//! # Queues and leases
//!
//! Every queue — an object's changes, a webhook's jobs, a webhook's write-backs — is read by
//! consumers of one group, and what a consumer is handed stays *its* until it finishes it:
//!
//! - a read hands entries to the consumer; [`Store::touch`] (and, for jobs, [`Store::renew`])
//!   keeps their idle time fresh while the work runs, however long it takes;
//! - [`Store::claim`] takes over entries idle longer than a lease: only a consumer that stopped
//!   heartbeating (a dead node) has such entries;
//! - finishing — [`Store::ack`], [`Store::complete`], [`Store::finish_writebacks`] — takes
//!   effect only for entries the consumer still owns, and a completion records its attempt and
//!   follow-ups only if its acknowledgement took effect, so an entry taken over by another
//!   consumer is never finished twice;
//! - [`Store::release`] gives entries back, claimable by anyone at once.
//!
//! [`queue`] wraps this in a typed handle whose reads return leases kept alive by one
//! heartbeat per consumer.
//!
//! Jobs come in two streams: fresh jobs (one record, never attempted), which a dispatcher may
//! group into bulk calls, and *solo* jobs — due retries and redriven jobs — which are sent
//! alone, each as the call it was. [`Store::take`] reads both in one atomic step together with
//! the concurrency permits and rate tokens the calls are sent under, and reads no more entries
//! than those calls can carry.
//!
//! Backends: [`RedisStore`] (clusters; [`keys`] documents its layout, `lua/` its atomic
//! steps) and [`EmbeddedStore`] (one process, a durable redb file, the default when no
//! Redis is configured; [`embedded`] documents its tables). Both pass one conformance suite,
//! `conformance` (this crate's tests; other crates' tests with the `conformance` feature).

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod embedded;
pub mod keys;
pub mod queue;
mod redis_store;

use std::time::Duration;

use async_trait::async_trait;
use hookline_model::{DataObject, Fields, Record, StoredWebhook};
use hookline_proto::{Attempt, Change, Job, Outcome, WritebackJob};

pub use embedded::EmbeddedStore;
pub use redis_store::RedisStore;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone, thiserror::Error)]
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

impl StoreError {
    /// Whether trying again later may succeed (the backend was unreachable or timed out).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// The three kinds of queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueKind {
    /// A data object's change stream, read by the trigger role.
    Changes,
    /// A webhook's jobs, read by the dispatcher role.
    Jobs,
    /// A webhook's write-backs, read by the writeback role.
    Writebacks,
}

impl QueueKind {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueKind::Changes => "changes",
            QueueKind::Jobs => "jobs",
            QueueKind::Writebacks => "writebacks",
        }
    }
}

/// One queue: its kind and owner (the data object of a change stream, the webhook of the others).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueName {
    pub kind: QueueKind,
    pub owner: String,
}

impl QueueName {
    pub fn changes(object: &str) -> Self {
        QueueName { kind: QueueKind::Changes, owner: object.to_string() }
    }
    pub fn jobs(webhook: &str) -> Self {
        QueueName { kind: QueueKind::Jobs, owner: webhook.to_string() }
    }
    pub fn writebacks(webhook: &str) -> Self {
        QueueName { kind: QueueKind::Writebacks, owner: webhook.to_string() }
    }
}

impl std::fmt::Display for QueueName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.owner)
    }
}

/// One entry as a queue handed it out, still encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct RawEntry {
    /// Its id, for touching and finishing it. Unique within its queue (a job queue's solo
    /// entries carry a prefix that tells the two streams apart).
    pub id: String,
    pub payload: Vec<u8>,
    /// How many times the entry has been handed out, this time included (1 on a first read;
    /// more after take-overs of entries whose consumer died).
    pub deliveries: u32,
    /// Set on jobs redriven from the dead letters.
    pub redriven: bool,
    /// A job to send alone (a due retry, a redriven job), never grouped with others.
    pub solo: bool,
}

/// One entry taken from a queue: its id (to finish it with) and its decoded value.
#[derive(Debug, Clone)]
pub struct Entry<T> {
    pub id: String,
    pub value: T,
    /// Set on entries that were redriven from the dead letters.
    pub redriven: bool,
    /// How many times the entry has been handed out, this time included.
    pub deliveries: u32,
    /// A job to send alone.
    pub solo: bool,
}

/// One record write of [`Store::write_records`].
#[derive(Debug, Clone)]
pub struct RecordWrite {
    pub id: String,
    /// The version the record must be at (0: it must not exist).
    pub expected: u64,
    /// Its change, already carrying version `expected + 1`. Its `new_json`, the record's
    /// fields after the write, is what the store keeps as the record's fields (as it is:
    /// it is not encoded a second time).
    pub change: Change,
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

/// One finished call: the entries it carried, its attempt and what follows it.
#[derive(Debug, Clone)]
pub struct Completion {
    pub entries: Vec<String>,
    pub attempt: Attempt,
    pub follow_up: FollowUp,
}

/// A webhook's rate limit: one call per `interval`, with `burst` calls of slack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub interval: Duration,
    pub burst: u32,
}

/// A take-over scan of a queue's entries whose consumer stopped heartbeating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimScan {
    /// Entries idle at least this long are taken over.
    pub min_idle: Duration,
    /// Where the scan goes on (`""`: from the start); the answer says where to go on next.
    pub cursor: String,
}

/// One step of a dispatcher: give permits back, take more, then take the entries the free
/// permits and the rate tokens can carry — all in one atomic step.
#[derive(Debug, Clone)]
pub struct Take<'a> {
    pub webhook: &'a str,
    pub consumer: &'a str,
    /// How long a permit lasts without renewal; also how long the consumer counts as a
    /// contender for its fair share.
    pub lease: Duration,
    /// The webhook's `max_concurrency`, across the cluster.
    pub limit: u32,
    /// Permits the consumer holds and has free for this step's calls: only those the store
    /// still holds for it carry calls (and they are renewed).
    pub free: &'a [String],
    /// More free permits the consumer knows the store holds for it (renewed recently enough
    /// that their lease cannot have run out): they carry calls without being looked at.
    pub known_free: u32,
    /// More permits it would like (granted only within the limit and its fair share).
    pub want: u32,
    /// Permits it gives back first.
    pub release: &'a [String],
    /// Jobs per call (`max_batch_size`).
    pub batch: u32,
    /// At most this many entries in all.
    pub max_entries: u32,
    pub rate: Option<Rate>,
    /// A take-over scan to run first, if due.
    pub claim: Option<ClaimScan>,
}

/// What a [`Take`] got.
#[derive(Debug, Clone, Default)]
pub struct Taken {
    /// New permits, to renew and release by these names.
    pub granted: Vec<String>,
    /// How many permits this consumer may hold now: its share of the limit among the
    /// consumers that want permits. A holder of more gives the excess back.
    pub fair_share: u32,
    /// Entries taken over (first), solo entries, then fresh ones. Solo entries travel alone;
    /// fresh ones in calls of up to `batch`: they make at most as many calls as there were
    /// free and granted permits (and rate tokens).
    pub entries: Vec<RawEntry>,
    /// Where the take-over scan goes on, when one ran (none runs in a step that can make no
    /// call).
    pub cursor: Option<String>,
    /// When the next delayed retry is due (Unix ms).
    pub next_due_ms: Option<i64>,
    /// No rate token was left: wait this long before taking again.
    pub rate_wait: Option<Duration>,
    /// The queue's position after this step, for [`Store::wait_for_jobs`]. A store may
    /// leave it empty when the step read entries (its worker goes straight on); a worker
    /// holding an empty mark takes again instead of waiting.
    pub mark: String,
}

/// A heartbeat of a dispatcher: renews its permits and its job entries.
#[derive(Debug, Clone)]
pub struct Renew<'a> {
    pub webhook: &'a str,
    pub consumer: &'a str,
    pub lease: Duration,
    pub limit: u32,
    pub permits: &'a [String],
    pub entries: &'a [String],
    /// Whether the consumer still wants permits (counts as a contender for a fair share).
    pub contending: bool,
}

/// What a [`Renew`] found.
#[derive(Debug, Clone, Default)]
pub struct Renewed {
    /// Permits that had expired (or were never held): the holder may not send under them.
    pub lost_permits: Vec<String>,
    pub fair_share: u32,
    /// Entries another consumer holds now (taken over).
    pub lost_entries: Vec<String>,
}

/// A write-back finished: its entry, its result to note on its attempt (`writeback_status`
/// and `writeback_error`, if the attempt is still kept) and, when it failed, the job to keep
/// among the failed write-backs with the reason.
#[derive(Debug, Clone)]
pub struct WritebackDone {
    pub entry: String,
    pub attempt_id: String,
    /// `done` or `error`.
    pub status: String,
    pub error: String,
    pub failed: Option<(WritebackJob, String)>,
}

/// Filters of the attempt log; newest first.
#[derive(Debug, Clone, Default)]
pub struct AttemptFilter {
    pub record_id: Option<String>,
    pub outcome: Option<Outcome>,
    pub since_ms: Option<i64>,
    /// Only attempts whose response had this status.
    pub status: Option<u32>,
    /// A page's cursor: only attempts listed after this one (its start ms and id), i.e.
    /// older, or as old with a smaller id.
    pub before: Option<(i64, String)>,
    pub limit: usize,
}

impl AttemptFilter {
    /// Whether `a` passes the filters that are not the log's order (record, outcome, status).
    pub fn matches(&self, a: &Attempt) -> bool {
        self.record_id.as_ref().is_none_or(|r| a.record_ids.contains(r))
            && self.outcome.is_none_or(|o| a.outcome() == o)
            && self.status.is_none_or(|s| a.response.as_ref().is_some_and(|r| r.status == s))
    }
}

/// One change of a record as the trigger decided it, for the record's journey: what
/// changed and, for each webhook of the object, whether it fired and why not. The note is
/// the engine's JSON; the store keeps the newest [`JOURNEY_KEPT`] per record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JourneyNote {
    pub object: String,
    pub record_id: String,
    pub version: u64,
    pub note: Vec<u8>,
}

/// How many changes of one record the journey keeps (the newest).
pub const JOURNEY_KEPT: usize = 50;
/// How long Redis keeps a record's journey after its last change.
pub const JOURNEY_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// A webhook's queue at a glance, for `/metrics` and the dashboard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Jobs waiting: ready, pending and delayed.
    pub depth: u64,
    /// When the oldest job on the queue (ready or being delivered) was queued, Unix ms.
    pub oldest_ms: Option<i64>,
    pub dead_letters: u64,
    /// Calls in flight across the cluster, as the dispatcher nodes last reported
    /// ([`Store::report_in_flight`]).
    pub in_flight: u64,
}

/// A job in the dead letters.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: String,
    pub job: Job,
    pub reason: String,
}

/// A write-back that failed for good (the record or a field did not exist, the script
/// failed), kept so it can be redriven once the cause is fixed.
#[derive(Debug, Clone)]
pub struct FailedWriteback {
    pub id: String,
    pub job: WritebackJob,
    pub reason: String,
}

/// A change of a definition, announced to every coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefEvent {
    Object(String),
    Webhook(String),
}

/// Every definition as of one version of them all.
#[derive(Debug, Clone, Default)]
pub struct Definitions {
    /// Incremented by every change of an object or a webhook, in the same atomic step.
    pub version: u64,
    pub objects: Vec<DataObject>,
    pub webhooks: Vec<StoredWebhook>,
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
    /// Saves an object (new or changed), bumping the definitions' version.
    async fn put_object(&self, object: &DataObject) -> Result<()>;
    async fn get_object(&self, name: &str) -> Result<Option<DataObject>>;
    async fn list_objects(&self) -> Result<Vec<DataObject>>;
    /// Saves `webhook` if the stored version is `webhook.version - 1` (0: new), bumping the
    /// definitions' version. False on a conflict.
    async fn put_webhook(&self, webhook: &StoredWebhook) -> Result<bool>;
    async fn get_webhook(&self, id: &str) -> Result<Option<StoredWebhook>>;
    async fn list_webhooks(&self) -> Result<Vec<StoredWebhook>>;
    /// Deletes a webhook stored at `version`, with its queues, attempts, values and locks,
    /// bumping the definitions' version. False on a conflict.
    async fn delete_webhook(&self, id: &str, version: u64) -> Result<bool>;
    /// Every definition and their version, read in one consistent step.
    async fn definitions(&self) -> Result<Definitions>;
    /// The definitions' version now: a record change stamped with it is decided on against
    /// definitions at least this new.
    async fn definitions_version(&self) -> Result<u64>;
    /// The position of the newest definition event, to follow from.
    async fn events_cursor(&self) -> Result<String>;
    /// Definition events after `cursor`, waiting up to `block` for one; advances `cursor`.
    async fn next_events(&self, cursor: &mut String, block: Duration) -> Result<Vec<DefEvent>>;

    // --- records and changes ---
    async fn get_record(&self, object: &str, id: &str) -> Result<Option<Record>>;
    /// Stores `fields` as version `expected + 1` of the record and appends `change` to the
    /// object's change stream, atomically.
    async fn write_record(
        &self,
        object: &str,
        id: &str,
        expected: u64,
        fields: &Fields,
        change: &Change,
    ) -> Result<WriteResult>;

    /// Several records of one object, read in one step (`None` for those that do not exist).
    async fn get_records(&self, object: &str, ids: &[String]) -> Result<Vec<Option<Record>>>;
    /// Many [`Store::write_record`]s of one object in one step, each checked on its own: a
    /// conflict refuses only its write. In order, so a later write of the same record sees
    /// the earlier one (and conflicts if it expected the older version).
    async fn write_records(&self, object: &str, writes: &[RecordWrite]) -> Result<Vec<WriteResult>>;

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

    // --- every queue ---
    /// New entries of `queue` for `consumer`, at most `count`, waiting up to `block` for one.
    /// On a job queue it reads fresh jobs only (a dispatcher filling a bulk call).
    async fn read(&self, queue: &QueueName, consumer: &str, count: usize, block: Duration) -> Result<Vec<RawEntry>>;
    /// Takes over for `consumer` up to `count` entries that other consumers were handed and
    /// have left idle at least `scan.min_idle`, going on from `scan.cursor`. Returns the
    /// entries and where the next scan goes on (`""` once it came round to the start).
    async fn claim(
        &self,
        queue: &QueueName,
        consumer: &str,
        scan: &ClaimScan,
        count: usize,
    ) -> Result<(Vec<RawEntry>, String)>;
    /// Keeps `consumer`'s entries `ids` from going idle; returns those another consumer holds
    /// now (taken over). Entries no longer pending at all (finished) are not listed.
    async fn touch(&self, queue: &QueueName, consumer: &str, ids: &[String]) -> Result<Vec<String>>;
    /// Acknowledges (and removes) those of `ids` that `consumer` owns; returns them.
    async fn ack(&self, queue: &QueueName, consumer: &str, ids: &[String]) -> Result<Vec<String>>;
    /// Gives back those of `ids` that `consumer` owns, undone: any consumer's next take-over
    /// scan takes them, however fresh. A give-back does not count as a delivery.
    async fn release(&self, queue: &QueueName, consumer: &str, ids: &[String]) -> Result<()>;

    // --- jobs ---
    /// Appends jobs to their webhooks' queues: fresh jobs to the fresh stream, jobs already
    /// attempted or holding several records to the solo stream.
    async fn enqueue(&self, jobs: &[Job]) -> Result<()>;
    /// One dispatcher step; see [`Take`].
    async fn take(&self, take: &Take<'_>) -> Result<Taken>;
    /// Waits until a job may have arrived on the webhook's queue after `mark` (a
    /// [`Taken::mark`]), or `timeout` passed.
    async fn wait_for_jobs(&self, webhook: &str, mark: &str, timeout: Duration) -> Result<()>;
    /// A dispatcher's heartbeat; see [`Renew`].
    async fn renew(&self, renew: &Renew<'_>) -> Result<Renewed>;
    /// Counts one call under the webhook's rate limit if it may start now (None); else how
    /// long to wait, nothing counted. For calls outside a [`Store::take`] (a resend after a
    /// refused OAuth token).
    async fn rate_wait(&self, webhook: &str, rate: Rate) -> Result<Option<Duration>>;
    /// Gives permits back. With `leave`, the consumer stops contending for a share.
    async fn release_permits(&self, webhook: &str, consumer: &str, permits: &[String], leave: bool) -> Result<()>;
    /// Finishes calls: for each completion of which `consumer` still owns any entry (or one
    /// with no entries), records the attempt, enqueues its follow-ups and acknowledges the
    /// entries it owns, atomically. A call whose entries were all taken over is not
    /// finished: its new owner does that. Says for each whether it took effect.
    async fn complete(&self, webhook: &str, consumer: &str, items: &[Completion]) -> Result<Vec<bool>>;
    /// When the oldest job on the queue (ready or being delivered) was queued, Unix ms.
    async fn oldest_job_ms(&self, webhook: &str) -> Result<Option<i64>>;
    /// Number of jobs waiting: ready, pending and delayed.
    async fn queue_depth(&self, webhook: &str) -> Result<u64>;

    /// [`QueueStats`] of each of `webhooks`, in order, in one store step however many there
    /// are.
    async fn queue_stats(&self, webhooks: &[String]) -> Result<Vec<QueueStats>>;
    /// Notes how many calls of each webhook node `node` has in flight; a report counts in
    /// [`QueueStats::in_flight`] for `ttl` (the node reports again before).
    async fn report_in_flight(&self, node: &str, counts: &[(String, u64)], ttl: Duration) -> Result<()>;

    // --- write-backs ---
    /// Finishes write-backs `consumer` still owns: notes each result on its attempt, keeps
    /// the failed ones among the failed write-backs, acknowledges the entries, atomically per
    /// item, all in one store step. Says for each whether it took effect.
    async fn finish_writebacks(&self, webhook: &str, consumer: &str, items: &[WritebackDone]) -> Result<Vec<bool>>;
    /// Failed write-backs, oldest first.
    async fn failed_writebacks(&self, webhook: &str, limit: usize) -> Result<Vec<FailedWriteback>>;
    /// Moves every failed write-back back to the write-back queue.
    async fn redrive_writebacks(&self, webhook: &str) -> Result<u64>;

    // --- attempt log and dead letters ---
    async fn list_attempts(&self, webhook: &str, filter: &AttemptFilter) -> Result<Vec<Attempt>>;
    async fn get_attempt(&self, webhook: &str, attempt_id: &str) -> Result<Option<Attempt>>;
    async fn dead_letters(&self, webhook: &str, limit: usize) -> Result<Vec<DeadLetter>>;
    /// Moves every dead letter back to the queue with a fresh attempt budget.
    async fn redrive(&self, webhook: &str) -> Result<u64>;
    /// [`Store::redrive`] for the dead letters with these ids only (ids no longer dead are
    /// skipped). Says how many moved.
    async fn redrive_some(&self, webhook: &str, ids: &[String]) -> Result<u64>;

    // --- record journeys ---
    /// Keeps the trigger's notes on changes (several records and objects at once).
    async fn note_changes(&self, notes: &[JourneyNote]) -> Result<()>;
    /// The notes kept for one record, newest first, at most `limit`.
    async fn journey(&self, object: &str, record_id: &str, limit: usize) -> Result<Vec<JourneyNote>>;

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
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The prefix of a job queue's solo entry ids (`s:<stream id>`); fresh entries have none.
pub const SOLO_PREFIX: &str = "s:";
