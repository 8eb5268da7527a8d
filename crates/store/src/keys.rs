//! Every Redis key Hookline uses, in one place.
//!
//! All keys start with the namespace (`--namespace`, default `hookline`) so several
//! deployments can share one Redis. Keys that a multi-key Lua script touches together share
//! a hash tag, so the layout works on Redis Cluster: `{wh:<id>}` for everything of one
//! webhook, `{obj:<name>}` for one data object's records and its change stream.

/// Consumer group of the trigger role on change streams.
pub const TRIGGER_GROUP: &str = "trigger";
/// Consumer group of the dispatcher role on job streams.
pub const DISPATCH_GROUP: &str = "dispatch";
/// Consumer group of the writeback role on write-back streams.
pub const WRITEBACK_GROUP: &str = "writeback";

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
        format!("{}:objects", self.ns)
    }

    /// HASH webhook id → StoredWebhook JSON.
    pub fn webhooks(&self) -> String {
        format!("{}:webhooks", self.ns)
    }

    /// HASH webhook id → stored version (read by the compare-and-set script).
    pub fn webhook_versions(&self) -> String {
        format!("{}:webhook-versions", self.ns)
    }

    /// STREAM of definition changes (`k` = object|webhook, `id`), read by every coordinator.
    pub fn events(&self) -> String {
        format!("{}:events", self.ns)
    }

    /// HASH `v` (version), `f` (fields JSON) of one record.
    pub fn record(&self, object: &str, id: &str) -> String {
        format!("{}:{{obj:{object}}}:rec:{id}", self.ns)
    }

    /// STREAM of accepted changes of one object (`c` = Change protobuf), group [`TRIGGER_GROUP`].
    pub fn changes(&self, object: &str) -> String {
        format!("{}:{{obj:{object}}}:changes", self.ns)
    }

    /// STREAM of ready jobs of one webhook (`j` = Job protobuf), group [`DISPATCH_GROUP`].
    pub fn jobs(&self, webhook: &str) -> String {
        format!("{}:{{wh:{webhook}}}:jobs", self.ns)
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

    /// HASH attempt id → Attempt protobuf.
    pub fn attempts(&self, webhook: &str) -> String {
        format!("{}:{{wh:{webhook}}}:attempts", self.ns)
    }

    /// ZSET attempt id scored by start time in ms: the attempt log's order and trimming index.
    pub fn attempts_by_time(&self, webhook: &str) -> String {
        format!("{}:{{wh:{webhook}}}:attempts:t", self.ns)
    }

    /// ZSET holder id scored by lease expiry (Redis server time, ms): the concurrency semaphore.
    pub fn permits(&self, webhook: &str) -> String {
        format!("{}:{{wh:{webhook}}}:permits", self.ns)
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
            self.delayed(webhook),
            self.dead(webhook),
            self.writeback(webhook),
            self.attempts(webhook),
            self.attempts_by_time(webhook),
            self.permits(webhook),
            self.value(webhook, "oauth-token"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Redis Cluster hashes only the part inside the first `{…}`.
    fn hash_tag(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = key[open..].find('}').unwrap() + open;
        &key[open + 1..close]
    }

    #[test]
    fn keys_of_one_webhook_share_a_slot() {
        let k = Keys::new("ns");
        for key in k.all_of_webhook("it") {
            assert_eq!(hash_tag(&key), "wh:it", "{key}");
        }
        assert_eq!(hash_tag(&k.record("survey", "{x}")), hash_tag(&k.changes("survey")));
    }
}
