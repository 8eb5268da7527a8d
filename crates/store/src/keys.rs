//! Every Redis key Hookline uses, in one place.
//!
//! All keys start with the namespace (`--namespace`, default `hookline`) so several
//! deployments can share one Redis. The layout works on Redis Cluster: every key carries a
//! hash tag, and every multi-key Lua script and every pipeline touches keys of one tag only:
//!
//! - `{def}` for the definitions: the objects and webhooks hashes, the webhook versions, the
//!   definitions' version and the definition event stream (`put_webhook.lua`,
//!   `put_object.lua` and `definitions.lua` touch them together);
//! - `{wh:<id>}` for everything of one webhook: its queues (fresh and solo jobs), delayed
//!   set, dead letters, write-backs and failed write-backs, attempts, permits, rate limit,
//!   values and locks (`take.lua`, `renew.lua`, `complete.lua`, `redrive.lua`,
//!   `finish_writebacks.lua`, `set_value_locked.lua`, the `DEL` of a deleted webhook);
//! - `{obj:<name>}` for one data object's records, its change stream, its write-position
//!   counter, its write index and its "indexed" marker (`write_record.lua` touches a record
//!   and the change stream, counter and index; `index_record.lua` a record, the counter and
//!   the index; `records_written` reads the index, then the records it lists in one
//!   pipeline). On a cluster all of one object's keys are on one node, so a `SCAN` of that
//!   node finds all of its records.
//!
//! Redis Cluster hashes only the text between the first `{` and the next `}`, so keys of
//! one tag are on one slot whatever the namespace (which has no braces) and whatever ids
//! follow. The `*_keys` functions list the keys of each multi-key script in `KEYS` order;
//! the store passes exactly those, and this file's tests check that each list is one slot.
//!
//! Before the `{def}` tag the definition keys were `<ns>:objects`, `<ns>:webhooks`,
//! `<ns>:webhook-versions` and `<ns>:events`; [`Keys::legacy_renames`] maps them to the new
//! names, and a single-Redis store renames them on connect.
//!
//! Before the write index, record hashes had no `p` and the object had no position counter
//! or index. On connect the store indexes such records of every object without its
//! [`Keys::indexed`] marker, found by `SCAN MATCH` [`Keys::records_pattern`], then sets it.

/// Consumer group of the trigger role on change streams.
pub const TRIGGER_GROUP: &str = "trigger";
/// Consumer group of the dispatcher role on job streams.
pub const DISPATCH_GROUP: &str = "dispatch";
/// Consumer group of the writeback role on write-back streams.
pub const WRITEBACK_GROUP: &str = "writeback";

/// The hash tag of the definition keys.
pub const DEFINITIONS_TAG: &str = "{def}";

#[derive(Debug, Clone)]
pub struct Keys {
    ns: String,
}

impl Keys {
    pub fn new(namespace: &str) -> Self {
        Keys { ns: namespace.to_string() }
    }

    /// HASH object name → DataObject JSON.
    pub fn objects(&self) -> String {
        format!("{}:{DEFINITIONS_TAG}:objects", self.ns)
    }

    /// HASH webhook id → StoredWebhook JSON.
    pub fn webhooks(&self) -> String {
        format!("{}:{DEFINITIONS_TAG}:webhooks", self.ns)
    }

    /// HASH webhook id → stored version (read by the compare-and-set script).
    pub fn webhook_versions(&self) -> String {
        format!("{}:{DEFINITIONS_TAG}:webhook-versions", self.ns)
    }

    /// STREAM of definition changes (`k` = object|webhook, `id`), read by every coordinator.
    pub fn events(&self) -> String {
        format!("{}:{DEFINITIONS_TAG}:events", self.ns)
    }

    /// STRING: the definitions' version, `INCR`ed by every change of an object or a webhook in
    /// the same step (`put_object.lua`, `put_webhook.lua`). A change of a record carries the
    /// version read before it was written; the trigger decides on it only against
    /// definitions at least that new.
    pub fn definitions_version(&self) -> String {
        format!("{}:{DEFINITIONS_TAG}:version", self.ns)
    }

    /// HASH `v` (version), `f` (fields JSON) of one record, and of its latest write `o` (the
    /// change's origin webhook, `""` for none), `p` (its position in [`Keys::written`]) and
    /// `q` (the position of the record's latest write by a writer other than `o`; 0: none;
    /// missing in hashes written before it, which reads as 0).
    pub fn record(&self, object: &str, id: &str) -> String {
        format!("{}:{{obj:{object}}}:rec:{id}", self.ns)
    }

    /// STRING: the position of the object's latest record write, `INCR`ed by every write
    /// (`write_record.lua`); missing before the first.
    pub fn position(&self, object: &str) -> String {
        format!("{}:{{obj:{object}}}:position", self.ns)
    }

    /// ZSET record id scored by the position of the record's latest write: the write index.
    /// A record written again moves to its new position (`ZADD` overwrites the score).
    pub fn written(&self, object: &str) -> String {
        format!("{}:{{obj:{object}}}:written", self.ns)
    }

    /// STRING, present once every record of the object is known to be in the write index:
    /// set when a store's connect-time scan for records written before the index completed,
    /// and when the object is created. Objects without it are scanned on connect.
    pub fn indexed(&self, object: &str) -> String {
        format!("{}:{{obj:{object}}}:indexed", self.ns)
    }

    /// The `SCAN MATCH` pattern of every [`Keys::record`] of `object`: the keys' common
    /// prefix, with the glob characters of the namespace and the name escaped, then `*`.
    pub fn records_pattern(&self, object: &str) -> String {
        format!("{}:{{obj:{}}}:rec:*", escape_glob(&self.ns), escape_glob(object))
    }

    /// The record id in `key`, a [`Keys::record`] of `object`; `None` for any other key.
    /// (The whole prefix is stripped, not split at `:rec:`, which an id may contain.)
    pub fn record_id<'k>(&self, object: &str, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(&self.record(object, ""))
    }

    /// LIST of the trigger's notes on a record's changes (`JourneyNote` JSON, each prefixed
    /// by its version and a space), newest first, trimmed to `JOURNEY_KEPT`, with a TTL.
    pub fn journey(&self, object: &str, id: &str) -> String {
        format!("{}:{{obj:{object}}}:journey:{id}", self.ns)
    }

    /// STREAM of accepted changes of one object (`c` = Change protobuf), group [`TRIGGER_GROUP`].
    pub fn changes(&self, object: &str) -> String {
        format!("{}:{{obj:{object}}}:changes", self.ns)
    }

    /// STREAM of fresh jobs of one webhook (`j` = Job protobuf: one record, never attempted),
    /// group [`DISPATCH_GROUP`]; a dispatcher groups them into bulk calls.
    pub fn jobs(&self, webhook: &str) -> String {
        format!("{}:{{wh:{webhook}}}:jobs", self.ns)
    }

    /// STREAM of solo jobs of one webhook (`j` = Job protobuf, `redriven` = 1 on redriven
    /// ones): due retries and redriven jobs, each sent alone as the call it was; group
    /// [`DISPATCH_GROUP`]. Their entry ids carry [`crate::SOLO_PREFIX`] outside Redis.
    pub fn solo(&self, webhook: &str) -> String {
        format!("{}:{{wh:{webhook}}}:solo", self.ns)
    }

    /// ZSET of delayed jobs (member = Job protobuf) scored by due time in ms.
    pub fn delayed(&self, webhook: &str) -> String {
        format!("{}:{{wh:{webhook}}}:delayed", self.ns)
    }

    /// STREAM of dead-lettered jobs (`j` = Job protobuf, `r` = reason).
    pub fn dead(&self, webhook: &str) -> String {
        format!("{}:{{wh:{webhook}}}:dead", self.ns)
    }

    /// STREAM of write-back jobs (`w` = WritebackJob protobuf), group [`WRITEBACK_GROUP`].
    pub fn writeback(&self, webhook: &str) -> String {
        format!("{}:{{wh:{webhook}}}:writeback", self.ns)
    }

    /// STREAM of write-backs that failed for good (`w` = WritebackJob protobuf, `r` = reason),
    /// until redriven.
    pub fn failed_writebacks(&self, webhook: &str) -> String {
        format!("{}:{{wh:{webhook}}}:writeback:failed", self.ns)
    }

    /// HASH attempt id → Attempt protobuf.
    pub fn attempts(&self, webhook: &str) -> String {
        format!("{}:{{wh:{webhook}}}:attempts", self.ns)
    }

    /// ZSET attempt id scored by start time in ms: the attempt log's order and trimming index.
    pub fn attempts_by_time(&self, webhook: &str) -> String {
        format!("{}:{{wh:{webhook}}}:attempts:t", self.ns)
    }

    /// STRING: the GCRA theoretical arrival time (Redis server time, µs) of the rate limit.
    pub fn rate(&self, webhook: &str) -> String {
        format!("{}:{{wh:{webhook}}}:rate", self.ns)
    }

    /// ZSET permit name (`<consumer>/<n>`) scored by lease expiry (Redis server time, ms): the
    /// concurrency semaphore.
    pub fn permits(&self, webhook: &str) -> String {
        format!("{}:{{wh:{webhook}}}:permits", self.ns)
    }

    /// HASH consumer → how many of [`Keys::permits`] it holds.
    pub fn permit_holders(&self, webhook: &str) -> String {
        format!("{}:{{wh:{webhook}}}:permits:holders", self.ns)
    }

    /// ZSET consumer scored by the expiry (ms) of its wish for permits: who shares the limit.
    pub fn permit_contenders(&self, webhook: &str) -> String {
        format!("{}:{{wh:{webhook}}}:permits:contenders", self.ns)
    }

    /// STRING counter naming new permits.
    pub fn permit_seq(&self, webhook: &str) -> String {
        format!("{}:{{wh:{webhook}}}:permits:seq", self.ns)
    }

    /// HASH node → `<calls in flight>:<report expiry, Unix ms>`: what each dispatcher node
    /// last reported, summed by `queue_stats`.
    pub fn in_flight(&self, webhook: &str) -> String {
        format!("{}:{{wh:{webhook}}}:inflight", self.ns)
    }

    /// STRING holding a small value of one webhook (`oauth-token`), with a TTL.
    pub fn value(&self, webhook: &str, name: &str) -> String {
        format!("{}:{{wh:{webhook}}}:value:{name}", self.ns)
    }

    /// STRING holding a lock's holder id, with a TTL.
    pub fn lock(&self, webhook: &str, name: &str) -> String {
        format!("{}:{{wh:{webhook}}}:lock:{name}", self.ns)
    }

    /// Every key of one webhook, for deletion.
    pub fn all_of_webhook(&self, webhook: &str) -> Vec<String> {
        vec![
            self.jobs(webhook),
            self.solo(webhook),
            self.delayed(webhook),
            self.dead(webhook),
            self.writeback(webhook),
            self.failed_writebacks(webhook),
            self.attempts(webhook),
            self.attempts_by_time(webhook),
            self.permits(webhook),
            self.permit_holders(webhook),
            self.permit_contenders(webhook),
            self.permit_seq(webhook),
            self.rate(webhook),
            self.in_flight(webhook),
            // The values the engine keeps: its OAuth token, its schedule's progress.
            self.value(webhook, "oauth-token"),
            self.value(webhook, "schedule"),
            // The locks the engine takes: its OAuth token's refresh, its schedule's ticks. A
            // holder that outlives the webhook then cannot store a value for it
            // (`set_value_locked.lua`), and a webhook created again with the id starts free.
            self.lock(webhook, "oauth-refresh"),
            self.lock(webhook, "schedule"),
        ]
    }

    /// `KEYS` of `put_webhook.lua`: webhooks, versions, events, definitions version.
    pub fn put_webhook_keys(&self) -> [String; 4] {
        [self.webhooks(), self.webhook_versions(), self.events(), self.definitions_version()]
    }

    /// `KEYS` of `put_object.lua`: objects, definitions version, events.
    pub fn put_object_keys(&self) -> [String; 3] {
        [self.objects(), self.definitions_version(), self.events()]
    }

    /// `KEYS` of `definitions.lua`: definitions version, objects, webhooks.
    pub fn definitions_keys(&self) -> [String; 3] {
        [self.definitions_version(), self.objects(), self.webhooks()]
    }

    /// `KEYS` of `write_record.lua`: the record, the object's change stream, its position
    /// counter, its write index.
    pub fn write_record_keys(&self, object: &str, id: &str) -> [String; 4] {
        [self.record(object, id), self.changes(object), self.position(object), self.written(object)]
    }

    /// `KEYS` of `index_record.lua`: the record, the object's position counter, its write index.
    pub fn index_record_keys(&self, object: &str, id: &str) -> [String; 3] {
        [self.record(object, id), self.position(object), self.written(object)]
    }

    /// `KEYS` of `set_value_locked.lua`: the lock `lock`, the value `name`, both of `webhook`.
    pub fn set_value_locked_keys(&self, webhook: &str, lock: &str, name: &str) -> [String; 2] {
        [self.lock(webhook, lock), self.value(webhook, name)]
    }

    /// `KEYS` of `take.lua`: fresh and solo streams, delayed set, permits, holders,
    /// contenders, permit sequence, rate.
    pub fn take_keys(&self, webhook: &str) -> [String; 8] {
        [
            self.jobs(webhook),
            self.solo(webhook),
            self.delayed(webhook),
            self.permits(webhook),
            self.permit_holders(webhook),
            self.permit_contenders(webhook),
            self.permit_seq(webhook),
            self.rate(webhook),
        ]
    }

    /// `KEYS` of `renew.lua`: fresh and solo streams, permits, holders, contenders, sequence.
    pub fn renew_keys(&self, webhook: &str) -> [String; 6] {
        [
            self.jobs(webhook),
            self.solo(webhook),
            self.permits(webhook),
            self.permit_holders(webhook),
            self.permit_contenders(webhook),
            self.permit_seq(webhook),
        ]
    }

    /// `KEYS` of `release_permits.lua`: permits, holders, contenders.
    pub fn release_permits_keys(&self, webhook: &str) -> [String; 3] {
        [self.permits(webhook), self.permit_holders(webhook), self.permit_contenders(webhook)]
    }

    /// `KEYS` of `complete.lua`: fresh and solo streams, attempts, attempts by time, delayed,
    /// dead, write-backs.
    pub fn complete_keys(&self, webhook: &str) -> [String; 7] {
        [
            self.jobs(webhook),
            self.solo(webhook),
            self.attempts(webhook),
            self.attempts_by_time(webhook),
            self.delayed(webhook),
            self.dead(webhook),
            self.writeback(webhook),
        ]
    }

    /// `KEYS` of `redrive.lua`: dead letters, solo stream.
    pub fn redrive_keys(&self, webhook: &str) -> [String; 2] {
        [self.dead(webhook), self.solo(webhook)]
    }

    /// `KEYS` of `finish_writebacks.lua`: write-backs, attempts, failed write-backs.
    pub fn finish_writebacks_keys(&self, webhook: &str) -> [String; 3] {
        [self.writeback(webhook), self.attempts(webhook), self.failed_writebacks(webhook)]
    }

    /// `KEYS` of `redrive_writebacks.lua`: failed write-backs, write-backs.
    pub fn redrive_writebacks_keys(&self, webhook: &str) -> [String; 2] {
        [self.failed_writebacks(webhook), self.writeback(webhook)]
    }

    /// The keys `queue_depth` reads in one pipeline: fresh and solo streams, delayed set.
    pub fn queue_depth_keys(&self, webhook: &str) -> [String; 3] {
        [self.jobs(webhook), self.solo(webhook), self.delayed(webhook)]
    }

    /// The streams of a queue, for `touch.lua`, `ack.lua`, `release.lua` and `claim.lua`:
    /// a job queue's fresh and solo streams; the one stream of the others.
    pub fn queue_streams(&self, queue: &crate::QueueName) -> Vec<String> {
        match queue.kind {
            crate::QueueKind::Changes => vec![self.changes(&queue.owner)],
            crate::QueueKind::Jobs => vec![self.jobs(&queue.owner), self.solo(&queue.owner)],
            crate::QueueKind::Writebacks => vec![self.writeback(&queue.owner)],
        }
    }

    /// The definition keys' names before they had a hash tag, and their names now.
    pub fn legacy_renames(&self) -> [(String, String); 4] {
        [
            (format!("{}:objects", self.ns), self.objects()),
            (format!("{}:webhooks", self.ns), self.webhooks()),
            (format!("{}:webhook-versions", self.ns), self.webhook_versions()),
            (format!("{}:events", self.ns), self.events()),
        ]
    }
}

/// `text` as a Redis glob pattern matching exactly `text`: `*`, `?`, `[`, `]` and `\`
/// escaped with a backslash.
pub fn escape_glob(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The Redis Cluster slot of `key`: CRC16 (XMODEM) of its hash tag — the text between the
/// first `{` and the next `}`, when not empty — or of the whole key, modulo 16384.
pub fn slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16_xmodem(hashed) % 16384
}

fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn one_slot(what: &str, keys: &[String]) {
        let slots: Vec<u16> = keys.iter().map(|k| slot(k.as_bytes())).collect();
        assert!(slots.windows(2).all(|w| w[0] == w[1]), "{what}: keys on several slots: {keys:?} → {slots:?}");
    }

    #[test]
    fn slots_are_computed_as_redis_does() {
        // Values from Redis Cluster's specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31c3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), crc16_xmodem(b"foo{}{bar}") % 16384, "an empty tag hashes the whole key");
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
    }

    #[test]
    fn keys_of_one_webhook_share_a_slot() {
        for ns in ["hookline", "ns", "a:b"] {
            let k = Keys::new(ns);
            for wh in ["it", "it-negative-feedback", "", "a}b", "{x}", "ünï"] {
                let mut all = k.all_of_webhook(wh);
                all.extend([k.value(wh, "x"), k.lock(wh, "refresh")]);
                one_slot("every key of one webhook", &all);
                assert!(all.iter().all(|key| key.contains(&format!("{{wh:{wh}}}"))), "{all:?}");
                one_slot("complete.lua", &k.complete_keys(wh));
                one_slot("take.lua", &k.take_keys(wh));
                one_slot("renew.lua", &k.renew_keys(wh));
                one_slot("release_permits.lua", &k.release_permits_keys(wh));
                one_slot("redrive.lua", &k.redrive_keys(wh));
                one_slot("finish_writebacks.lua", &k.finish_writebacks_keys(wh));
                one_slot("redrive_writebacks.lua", &k.redrive_writebacks_keys(wh));
                one_slot("queue_depth", &k.queue_depth_keys(wh));
                one_slot("job queue streams", &k.queue_streams(&crate::QueueName::jobs(wh)));
                for key in k.take_keys(wh).iter().chain(&k.complete_keys(wh)).chain(&k.finish_writebacks_keys(wh)) {
                    assert!(all.contains(key), "{key} is deleted with the webhook");
                }
                let locked = k.set_value_locked_keys(wh, "schedule", "schedule");
                one_slot("set_value_locked.lua", &locked);
                assert_eq!(locked, [k.lock(wh, "schedule"), k.value(wh, "schedule")], "KEYS order");
                assert_eq!(slot(locked[0].as_bytes()), slot(all[0].as_bytes()), "with the webhook's other keys");
                for name in ["oauth-refresh", "schedule"] {
                    assert!(all.contains(&k.lock(wh, name)), "the engine's lock {name} goes with the webhook");
                }
            }
        }
    }

    #[test]
    fn records_share_a_slot_with_their_change_stream() {
        for ns in ["hookline", "ns", "a:b"] {
            let k = Keys::new(ns);
            for (object, id) in [("survey", "S1"), ("survey", "{x}"), ("a}b", "1"), ("", ""), ("ünï", "}")] {
                let keys = k.write_record_keys(object, id);
                one_slot("write_record.lua", &keys);
                let index = k.index_record_keys(object, id);
                one_slot("index_record.lua", &index);
                assert_eq!(slot(index[0].as_bytes()), slot(keys[0].as_bytes()));
                assert_eq!(slot(k.indexed(object).as_bytes()), slot(keys[0].as_bytes()), "the marker");
                assert!(k.indexed(object).contains(&format!("{{obj:{object}}}")));
                assert_eq!(k.record_id(object, &keys[0]), Some(id));
                assert!(keys.iter().all(|key| key.contains(&format!("{{obj:{object}}}"))), "{keys:?}");
                // `records_written`: the index, then several records of the object in one pipeline.
                let read = [k.written(object), k.record(object, id), k.record(object, "other"), k.record(object, "")];
                one_slot("records_written", &read);
                assert_eq!(slot(keys[0].as_bytes()), slot(read[0].as_bytes()));
            }
        }
    }

    #[test]
    fn record_patterns_escape_globs() {
        assert_eq!(Keys::new("hookline").records_pattern("survey"), "hookline:{obj:survey}:rec:*");
        assert_eq!(Keys::new(r"a*b?[c]\d").records_pattern("x*"), r"a\*b\?\[c\]\\d:{obj:x\*}:rec:*");
        assert_eq!(escape_glob("plain-name_1.0"), "plain-name_1.0");
        let k = Keys::new("ns");
        assert_eq!(k.record_id("survey", "ns:{obj:survey}:rec:a:rec:b"), Some("a:rec:b"));
        assert_eq!(k.record_id("survey", "ns:{obj:other}:rec:a"), None);
        assert_eq!(k.record_id("survey", "ns:{obj:survey}:position"), None);
    }

    #[test]
    fn definition_keys_share_a_slot() {
        for ns in ["hookline", "ns", "a:b"] {
            let k = Keys::new(ns);
            one_slot("put_webhook.lua", &k.put_webhook_keys());
            one_slot("put_object.lua", &k.put_object_keys());
            one_slot("definitions.lua", &k.definitions_keys());
            one_slot("definitions", &[k.objects(), k.webhooks(), k.webhook_versions(), k.events()]);
            assert_eq!(slot(k.events().as_bytes()), slot(b"def"));
            for (old, new) in k.legacy_renames() {
                assert_ne!(old, new);
                assert!(!old.contains('{'), "{old}");
            }
        }
    }
}
