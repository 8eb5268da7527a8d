//! The redb tables of the embedded store and the stream ids of its queues.
//!
//! Every queue-like table is keyed by `(owner, ms, seq)`: the webhook or data object it
//! belongs to, then the entry's stream id, so one owner's entries are one contiguous range in
//! id order. Values are protobuf (the same bytes the Redis backend stores) or JSON for
//! definitions and records.

use std::fmt;

use redb::TableDefinition;

use crate::{Result, StoreError};

/// Key of a queue entry: owner, then the stream id's two halves.
pub(super) type StreamKey = (&'static str, u64, u64);
/// Value of a queue entry: [`FLAG_REDRIVEN`] bits, then the protobuf.
pub(super) type QueueValue = (u8, &'static [u8]);

/// The entry came back from the dead letters.
pub(super) const FLAG_REDRIVEN: u8 = 1;

/// `"last_id"` → the newest stream id handed out; `"format"` → (layout version, 0);
/// `"definitions"` → (the definitions' version, 0); [`position_key`]`(object)` → (position of
/// the object's latest record write, 0); [`cursor_key`]`(queue, owner)` → the newest entry id
/// of a job queue ever handed out (entries up to it were handed out by an earlier process).
pub(super) const META: TableDefinition<&str, (u64, u64)> = TableDefinition::new("meta");
/// Object name → DataObject JSON.
pub(super) const OBJECTS: TableDefinition<&str, &str> = TableDefinition::new("objects");
/// Webhook id → (stored version, StoredWebhook JSON); the version is what compare-and-set reads.
pub(super) const WEBHOOKS: TableDefinition<&str, (u64, &str)> = TableDefinition::new("webhooks");
/// Stream id → (`object` | `webhook`, name): definition events, the newest [`EVENTS_KEPT`].
pub(super) const EVENTS: TableDefinition<(u64, u64), (&str, &str)> = TableDefinition::new("events");
/// (object, record id) → (version, fields JSON).
pub(super) const RECORDS: TableDefinition<(&str, &str), (u64, &str)> = TableDefinition::new("records");
/// (object, record id) → (position, origin webhook, other position) of the record's latest
/// write: origin `""` for none; other position: that of the record's latest write by a writer
/// other than the origin (0: none). Finds the record's [`WRITTEN`] entry to move when it is
/// written again.
pub(super) const RECORD_POSITIONS: TableDefinition<(&str, &str), (u64, &str, u64)> =
    TableDefinition::new("record_positions");
/// (object, position) → record id: the write index, one entry per record, at its latest write.
pub(super) const WRITTEN: TableDefinition<(&str, u64), &str> = TableDefinition::new("written");
/// (object, id) → Change: the change stream of one data object.
pub(super) const CHANGES: TableDefinition<StreamKey, QueueValue> = TableDefinition::new("changes");
/// (webhook, id) → Job: fresh jobs (one record, never attempted), ready and
/// delivered-but-unacknowledged.
pub(super) const JOBS: TableDefinition<StreamKey, QueueValue> = TableDefinition::new("jobs");
/// (webhook, id) → Job: solo jobs (due retries, redriven jobs), sent alone.
pub(super) const SOLO: TableDefinition<StreamKey, QueueValue> = TableDefinition::new("solo");
/// (webhook, id) → WritebackJob.
pub(super) const WRITEBACKS: TableDefinition<StreamKey, QueueValue> = TableDefinition::new("writebacks");
/// (webhook, id) → (WritebackJob, reason): write-backs that failed for good, until redriven.
pub(super) const FAILED_WRITEBACKS: TableDefinition<StreamKey, (&[u8], &str)> =
    TableDefinition::new("failed_writebacks");
/// (queue, owner, ms, seq) → times handed out, for job entries handed out more than once
/// (after a restart or a take-over), so the count survives the process: a job that kills its
/// node every time is dead-lettered after its fifth try.
pub(super) const HANDED: TableDefinition<(&str, &str, u64, u64), u32> = TableDefinition::new("handed");
/// (webhook, due ms, id) → Job: delayed retries in due order, then insertion order.
pub(super) const DELAYED: TableDefinition<(&str, i64, u64, u64), &[u8]> = TableDefinition::new("delayed");
/// (webhook, id) → (Job, reason): dead letters.
pub(super) const DEAD: TableDefinition<StreamKey, (&[u8], &str)> = TableDefinition::new("dead");
/// (webhook, attempt id) → Attempt.
pub(super) const ATTEMPTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("attempts");
/// (webhook, started ms, attempt id) → (): the attempt log's order and trimming index.
pub(super) const ATTEMPTS_BY_TIME: TableDefinition<(&str, i64, &str), ()> = TableDefinition::new("attempts_by_time");
/// (webhook, name) → (expires at, Unix ms; value): small shared values such as OAuth tokens.
pub(super) const VALUES: TableDefinition<(&str, &str), (i64, &[u8])> = TableDefinition::new("values");

/// (object, record id, version) → the trigger's note on that change: the record's journey,
/// the newest [`crate::JOURNEY_KEPT`] per record.
pub(super) const JOURNEY: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("journey");

/// Version of this layout, stored under `"format"` in [`META`]. Version 2 added the write
/// index ([`RECORD_POSITIONS`], [`WRITTEN`], the positions in [`META`]); a version 1 file is
/// indexed when it is opened. Version 3 added the solo job stream ([`SOLO`]), failed
/// write-backs, delivery counts ([`HANDED`]) and the definitions' version; opening a version
/// 2 file moves its attempted and multi-record jobs to [`SOLO`].
pub(super) const FORMAT: u64 = 3;

/// The [`META`] key of an object's write position counter.
pub(super) fn position_key(object: &str) -> String {
    format!("position/{object}")
}

/// The [`META`] key of the newest entry of a job queue ever handed out.
pub(super) fn cursor_key(queue: Queue, owner: &str) -> String {
    format!("cursor/{}/{owner}", queue.name())
}
/// Definition events kept (Redis: `XADD … MAXLEN ~ 10000`).
pub(super) const EVENTS_KEPT: u64 = 10_000;

/// The consumer-group queues: a job queue is two of them, fresh and solo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Queue {
    Changes,
    Jobs,
    Solo,
    Writebacks,
}

impl Queue {
    pub(super) fn table(self) -> TableDefinition<'static, StreamKey, QueueValue> {
        match self {
            Queue::Changes => CHANGES,
            Queue::Jobs => JOBS,
            Queue::Solo => SOLO,
            Queue::Writebacks => WRITEBACKS,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Queue::Changes => "changes",
            Queue::Jobs => "jobs",
            Queue::Solo => "solo",
            Queue::Writebacks => "writebacks",
        }
    }

    /// Whether how often an entry was handed out is kept on disk (job queues, whose entries
    /// are dead-lettered after too many hand-outs).
    pub(super) fn counts_deliveries(self) -> bool {
        matches!(self, Queue::Jobs | Queue::Solo)
    }

    /// The queues of a public queue name: a job queue's fresh and solo streams, or the one.
    pub(super) fn of(kind: crate::QueueKind) -> &'static [Queue] {
        match kind {
            crate::QueueKind::Changes => &[Queue::Changes],
            crate::QueueKind::Jobs => &[Queue::Jobs, Queue::Solo],
            crate::QueueKind::Writebacks => &[Queue::Writebacks],
        }
    }
}

/// An entry id as the store hands it out: solo job entries carry [`crate::SOLO_PREFIX`].
pub(super) fn public_id(queue: Queue, id: Id) -> String {
    match queue {
        Queue::Solo => format!("{}{id}", crate::SOLO_PREFIX),
        _ => id.to_string(),
    }
}

/// The queue and id of a public entry id of a queue of `kind`.
pub(super) fn parse_public_id(kind: crate::QueueKind, text: &str) -> Result<(Queue, Id)> {
    match (kind, text.strip_prefix(crate::SOLO_PREFIX)) {
        (crate::QueueKind::Jobs, Some(rest)) => Ok((Queue::Solo, Id::parse(rest)?)),
        (crate::QueueKind::Jobs, None) => Ok((Queue::Jobs, Id::parse(text)?)),
        (crate::QueueKind::Changes, _) => Ok((Queue::Changes, Id::parse(text)?)),
        (crate::QueueKind::Writebacks, _) => Ok((Queue::Writebacks, Id::parse(text)?)),
    }
}

/// A stream id, `<ms>-<seq>` like Redis: strictly increasing across the whole store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Id {
    pub ms: u64,
    pub seq: u64,
}

impl Id {
    pub(super) const MAX: Id = Id { ms: u64::MAX, seq: u64::MAX };

    /// The next id after `self`, at wall-clock `now_ms` if that is later.
    pub(super) fn next(self, now_ms: u64) -> Id {
        if now_ms > self.ms { Id { ms: now_ms, seq: 0 } } else { Id { ms: self.ms, seq: self.seq + 1 } }
    }

    /// Parses `<ms>-<seq>` (or `<ms>`, as Redis accepts).
    pub(super) fn parse(text: &str) -> Result<Id> {
        let bad = || StoreError::Backend(format!("invalid stream entry id `{text}`"));
        let (ms, seq) = match text.split_once('-') {
            Some((ms, seq)) => (ms, seq),
            None => (text, "0"),
        };
        Ok(Id { ms: ms.parse().map_err(|_| bad())?, seq: seq.parse().map_err(|_| bad())? })
    }

    pub(super) fn key(self, owner: &str) -> (&str, u64, u64) {
        (owner, self.ms, self.seq)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// The smallest string greater than every `(owner, …)` key: bounds one owner's range in a
/// table whose next key part is a string.
pub(super) fn after(owner: &str) -> String {
    format!("{owner}\0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_round_trip() {
        let a = Id { ms: 5, seq: 3 };
        assert_eq!(a.next(4), Id { ms: 5, seq: 4 });
        assert_eq!(a.next(5), Id { ms: 5, seq: 4 });
        assert_eq!(a.next(9), Id { ms: 9, seq: 0 });
        assert_eq!(Id::parse(&a.to_string()).unwrap(), a);
        assert_eq!(Id::parse("7").unwrap(), Id { ms: 7, seq: 0 });
        assert!(Id::parse("x-1").is_err());
        assert!(Id::parse("").is_err());
        assert!(after("wh").as_str() > "wh" && after("wh").as_str() < "wh0");
    }
}
