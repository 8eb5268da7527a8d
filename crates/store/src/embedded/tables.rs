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
/// [`position_key`]`(object)` → (position of the object's latest record write, 0).
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
/// (webhook, id) → Job: ready and delivered-but-unacknowledged jobs.
pub(super) const JOBS: TableDefinition<StreamKey, QueueValue> = TableDefinition::new("jobs");
/// (webhook, id) → WritebackJob.
pub(super) const WRITEBACKS: TableDefinition<StreamKey, QueueValue> = TableDefinition::new("writebacks");
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

/// Version of this layout, stored under `"format"` in [`META`]. Version 2 added the write
/// index ([`RECORD_POSITIONS`], [`WRITTEN`], the positions in [`META`]); a version 1 file is
/// indexed when it is opened.
pub(super) const FORMAT: u64 = 2;

/// The [`META`] key of an object's write position counter.
pub(super) fn position_key(object: &str) -> String {
    format!("position/{object}")
}
/// Definition events kept (Redis: `XADD … MAXLEN ~ 10000`).
pub(super) const EVENTS_KEPT: u64 = 10_000;

/// The three consumer-group queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Queue {
    Changes,
    Jobs,
    Writebacks,
}

impl Queue {
    pub(super) fn table(self) -> TableDefinition<'static, StreamKey, QueueValue> {
        match self {
            Queue::Changes => CHANGES,
            Queue::Jobs => JOBS,
            Queue::Writebacks => WRITEBACKS,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Queue::Changes => "changes",
            Queue::Jobs => "jobs",
            Queue::Writebacks => "writebacks",
        }
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
