//! The Redis backend: streams with consumer groups for queues, Lua for every step that
//! must be atomic, hashes for records and definitions. Key names live in [`crate::keys`].

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use hookline_model::{DataObject, Fields, Record, StoredWebhook};
use hookline_proto::{Attempt, Change, Job, Message, WritebackJob};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamRangeReply, StreamReadReply};
use redis::{AsyncCommands, RedisError, Script};

use crate::keys::{DISPATCH_GROUP, Keys, TRIGGER_GROUP, WRITEBACK_GROUP};
use crate::{
    ATTEMPT_RETENTION, AttemptFilter, DeadLetter, DefEvent, Entry, FollowUp, Result, Store, StoreError, WriteResult,
    now_ms,
};

/// The atomic steps, loaded once; `Script` sends EVALSHA and falls back to EVAL after a
/// Redis restart flushed the script cache.
struct Scripts {
    write_record: Script,
    put_webhook: Script,
    promote_due: Script,
    complete: Script,
    acquire_permit: Script,
    redrive: Script,
    requeue: Script,
    unlock: Script,
}

pub struct RedisStore {
    keys: Keys,
    client: redis::Client,
    /// Shared multiplexed connection for every non-blocking command.
    conn: ConnectionManager,
    /// Dedicated connections for blocking reads (`XREADGROUP … BLOCK`), which would stall
    /// every other command on a multiplexed connection. Taken per read, given back after.
    blocking: Mutex<Vec<ConnectionManager>>,
    scripts: Scripts,
}

fn map_err(e: RedisError) -> StoreError {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Backend(e.to_string())
    }
}

fn decode<T: Message + Default>(key: &str, bytes: &[u8]) -> Result<T> {
    T::decode(bytes).map_err(|e| StoreError::Corrupt { key: key.to_string(), reason: e.to_string() })
}

fn json<T: serde::de::DeserializeOwned>(key: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt { key: key.to_string(), reason: e.to_string() })
}

fn config(response_timeout: Option<Duration>) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(response_timeout)
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1))
}

impl RedisStore {
    /// Connects to `url` (redis://…) with every key under `namespace`.
    pub async fn connect(url: &str, namespace: &str) -> Result<Self> {
        let client = redis::Client::open(url).map_err(|e| StoreError::Backend(format!("invalid Redis URL: {e}")))?;
        let conn = ConnectionManager::new_with_config(client.clone(), config(Some(Duration::from_secs(5))))
            .await
            .map_err(map_err)?;
        Ok(RedisStore {
            keys: Keys::new(namespace),
            client,
            conn,
            blocking: Mutex::new(Vec::new()),
            scripts: Scripts {
                write_record: Script::new(include_str!("lua/write_record.lua")),
                put_webhook: Script::new(include_str!("lua/put_webhook.lua")),
                promote_due: Script::new(include_str!("lua/promote_due.lua")),
                complete: Script::new(include_str!("lua/complete.lua")),
                acquire_permit: Script::new(include_str!("lua/acquire_permit.lua")),
                redrive: Script::new(include_str!("lua/redrive.lua")),
                requeue: Script::new(include_str!("lua/requeue.lua")),
                unlock: Script::new(include_str!("lua/unlock.lua")),
            },
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    async fn take_blocking(&self) -> Result<ConnectionManager> {
        // The lock is held only to pop; never across an await.
        let pooled = self.blocking.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match pooled {
            Some(c) => Ok(c),
            // No response timeout: the server answers a BLOCK read when its block ends.
            None => ConnectionManager::new_with_config(self.client.clone(), config(None)).await.map_err(map_err),
        }
    }

    fn give_back(&self, conn: ConnectionManager) {
        self.blocking.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
    }

    /// Creates `group` on `stream` (and the stream), reading from its start. Idempotent.
    async fn ensure_group(&self, stream: &str, group: &str) -> Result<()> {
        let r: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.conn())
            .await;
        match r {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            r => r.map_err(map_err),
        }
    }

    /// Reads new entries of `stream` for `group`, healing a missing group (a Redis restart,
    /// a deleted key) by creating it.
    async fn read_group(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<StreamId>> {
        let mut conn = self.take_blocking().await?;
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(group).arg(consumer).arg("COUNT").arg(count.max(1));
        if !block.is_zero() {
            cmd.arg("BLOCK").arg(block.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS").arg(stream).arg(">");
        let reply: redis::RedisResult<Option<StreamReadReply>> = cmd.query_async(&mut conn).await;
        match reply {
            Ok(reply) => {
                self.give_back(conn);
                Ok(reply.map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect()).unwrap_or_default())
            }
            Err(e) if e.code() == Some("NOGROUP") => {
                self.give_back(conn);
                self.ensure_group(stream, group).await?;
                Ok(Vec::new())
            }
            Err(e) => Err(map_err(e)),
        }
    }

    async fn autoclaim(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<StreamId>> {
        let reply: redis::RedisResult<StreamAutoClaimReply> = redis::cmd("XAUTOCLAIM")
            .arg(stream)
            .arg(group)
            .arg(consumer)
            .arg(min_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(count.max(1))
            .query_async(&mut self.conn())
            .await;
        match reply {
            Ok(r) => Ok(r.claimed),
            Err(e) if e.code() == Some("NOGROUP") => {
                self.ensure_group(stream, group).await?;
                Ok(Vec::new())
            }
            Err(e) => Err(map_err(e)),
        }
    }

    /// Decodes entries; an undecodable entry is logged and removed so it cannot wedge the queue.
    async fn decode_entries<T: Message + Default>(
        &self,
        stream: &str,
        group: &str,
        field: &str,
        ids: Vec<StreamId>,
    ) -> Result<Vec<Entry<T>>> {
        let mut out = Vec::with_capacity(ids.len());
        for sid in ids {
            let decoded = sid
                .get::<Vec<u8>>(field)
                .ok_or_else(|| StoreError::Corrupt { key: stream.to_string(), reason: format!("no field `{field}`") })
                .and_then(|b| decode::<T>(stream, &b));
            match decoded {
                Ok(value) => {
                    let redriven = sid.get::<String>("redriven").is_some();
                    out.push(Entry { id: sid.id, value, redriven, deliveries: 1 })
                }
                Err(e) => {
                    tracing::error!(stream, entry = %sid.id, error = %e, "dropping undecodable queue entry");
                    self.ack(stream, group, std::slice::from_ref(&sid.id)).await?;
                }
            }
        }
        Ok(out)
    }

    /// Fills in how often each claimed entry was delivered (XAUTOCLAIM counts the claim).
    async fn delivery_counts<T>(&self, stream: &str, group: &str, entries: &mut [Entry<T>]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for e in entries.iter() {
            pipe.cmd("XPENDING").arg(stream).arg(group).arg(&e.id).arg(&e.id).arg(1);
        }
        let replies: Vec<Vec<(String, String, u64, u32)>> =
            pipe.query_async(&mut self.conn()).await.map_err(map_err)?;
        for (e, reply) in entries.iter_mut().zip(replies) {
            if let Some((_, _, _, count)) = reply.first() {
                e.deliveries = *count;
            }
        }
        Ok(())
    }

    async fn ack(&self, stream: &str, group: &str, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        redis::pipe()
            .cmd("XACK")
            .arg(stream)
            .arg(group)
            .arg(ids)
            .ignore()
            .cmd("XDEL")
            .arg(stream)
            .arg(ids)
            .ignore()
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(map_err)
    }

    async fn event(&self, kind: &str, id: &str) -> Result<()> {
        redis::cmd("XADD")
            .arg(self.keys.events())
            .arg("MAXLEN")
            .arg("~")
            .arg(10_000)
            .arg("*")
            .arg("k")
            .arg(kind)
            .arg("id")
            .arg(id)
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(map_err)
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn ping(&self) -> Result<()> {
        redis::cmd("PING").query_async::<()>(&mut self.conn()).await.map_err(map_err)
    }

    async fn put_object(&self, object: &DataObject) -> Result<()> {
        let text = serde_json::to_string(object).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.conn().hset::<_, _, _, ()>(self.keys.objects(), &object.name, text).await.map_err(map_err)?;
        self.event("object", &object.name).await
    }

    async fn get_object(&self, name: &str) -> Result<Option<DataObject>> {
        let key = self.keys.objects();
        let text: Option<String> = self.conn().hget(&key, name).await.map_err(map_err)?;
        text.map(|t| json(&key, &t)).transpose()
    }

    async fn list_objects(&self) -> Result<Vec<DataObject>> {
        let key = self.keys.objects();
        let all: Vec<(String, String)> = self.conn().hgetall(&key).await.map_err(map_err)?;
        all.iter().map(|(_, t)| json(&key, t)).collect()
    }

    async fn put_webhook(&self, webhook: &StoredWebhook) -> Result<bool> {
        let text = serde_json::to_string(webhook).map_err(|e| StoreError::Backend(e.to_string()))?;
        let ok: i64 = self
            .scripts
            .put_webhook
            .key(self.keys.webhooks())
            .key(self.keys.webhook_versions())
            .key(self.keys.events())
            .arg(&webhook.definition.id)
            .arg(webhook.version.saturating_sub(1))
            .arg(text)
            .arg("put")
            .invoke_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        Ok(ok == 1)
    }

    async fn get_webhook(&self, id: &str) -> Result<Option<StoredWebhook>> {
        let key = self.keys.webhooks();
        let text: Option<String> = self.conn().hget(&key, id).await.map_err(map_err)?;
        text.map(|t| json(&key, &t)).transpose()
    }

    async fn list_webhooks(&self) -> Result<Vec<StoredWebhook>> {
        let key = self.keys.webhooks();
        let all: Vec<(String, String)> = self.conn().hgetall(&key).await.map_err(map_err)?;
        let mut out: Vec<StoredWebhook> = all.iter().map(|(_, t)| json(&key, t)).collect::<Result<_>>()?;
        out.sort_by(|a, b| a.definition.id.cmp(&b.definition.id));
        Ok(out)
    }

    async fn delete_webhook(&self, id: &str, version: u64) -> Result<bool> {
        let ok: i64 = self
            .scripts
            .put_webhook
            .key(self.keys.webhooks())
            .key(self.keys.webhook_versions())
            .key(self.keys.events())
            .arg(id)
            .arg(version)
            .arg("")
            .arg("delete")
            .invoke_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        if ok == 1 {
            self.conn().del::<_, ()>(self.keys.all_of_webhook(id)).await.map_err(map_err)?;
        }
        Ok(ok == 1)
    }

    async fn events_cursor(&self) -> Result<String> {
        let r: StreamRangeReply =
            self.conn().xrevrange_count(self.keys.events(), "+", "-", 1).await.map_err(map_err)?;
        Ok(r.ids.into_iter().next().map(|s| s.id).unwrap_or_else(|| "0-0".to_string()))
    }

    async fn next_events(&self, cursor: &mut String, block: Duration) -> Result<Vec<DefEvent>> {
        let mut conn = self.take_blocking().await?;
        let reply: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(block.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(self.keys.events())
            .arg(cursor.as_str())
            .query_async(&mut conn)
            .await
            .map_err(map_err)?;
        self.give_back(conn);
        let mut out = Vec::new();
        for sid in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
            let kind: Option<String> = sid.get("k");
            let id: Option<String> = sid.get("id");
            match (kind.as_deref(), id) {
                (Some("object"), Some(id)) => out.push(DefEvent::Object(id)),
                (Some("webhook"), Some(id)) => out.push(DefEvent::Webhook(id)),
                _ => {}
            }
            *cursor = sid.id;
        }
        Ok(out)
    }

    async fn get_record(&self, object: &str, id: &str) -> Result<Option<Record>> {
        let key = self.keys.record(object, id);
        let (v, f): (Option<u64>, Option<String>) =
            redis::cmd("HMGET").arg(&key).arg("v").arg("f").query_async(&mut self.conn()).await.map_err(map_err)?;
        match (v, f) {
            (Some(version), Some(f)) => Ok(Some(Record { id: id.to_string(), version, fields: json(&key, &f)? })),
            _ => Ok(None),
        }
    }

    async fn write_record(
        &self,
        object: &str,
        id: &str,
        expected: u64,
        fields: &Fields,
        change: &Change,
    ) -> Result<WriteResult> {
        let text = serde_json::to_string(fields).map_err(|e| StoreError::Backend(e.to_string()))?;
        let (ok, version): (i64, u64) = self
            .scripts
            .write_record
            .key(self.keys.record(object, id))
            .key(self.keys.changes(object))
            .arg(expected)
            .arg(text)
            .arg(change.encode_to_vec())
            .invoke_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        Ok(if ok == 1 { WriteResult::Written { version } } else { WriteResult::Conflict { current: version } })
    }

    async fn read_changes(
        &self,
        object: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Entry<Change>>> {
        let stream = self.keys.changes(object);
        let ids = self.read_group(&stream, TRIGGER_GROUP, consumer, count, block).await?;
        self.decode_entries(&stream, TRIGGER_GROUP, "c", ids).await
    }

    async fn claim_changes(&self, object: &str, consumer: &str, min_idle: Duration) -> Result<Vec<Entry<Change>>> {
        let stream = self.keys.changes(object);
        let ids = self.autoclaim(&stream, TRIGGER_GROUP, consumer, min_idle, 100).await?;
        self.decode_entries(&stream, TRIGGER_GROUP, "c", ids).await
    }

    async fn ack_changes(&self, object: &str, ids: &[String]) -> Result<()> {
        self.ack(&self.keys.changes(object), TRIGGER_GROUP, ids).await
    }

    async fn enqueue(&self, jobs: &[Job]) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for job in jobs {
            pipe.cmd("XADD").arg(self.keys.jobs(&job.webhook_id)).arg("*").arg("j").arg(job.encode_to_vec()).ignore();
        }
        pipe.query_async::<()>(&mut self.conn()).await.map_err(map_err)
    }

    async fn read_jobs(&self, webhook: &str, consumer: &str, count: usize, block: Duration) -> Result<Vec<Entry<Job>>> {
        let stream = self.keys.jobs(webhook);
        let ids = self.read_group(&stream, DISPATCH_GROUP, consumer, count, block).await?;
        self.decode_entries(&stream, DISPATCH_GROUP, "j", ids).await
    }

    async fn claim_jobs(
        &self,
        webhook: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Entry<Job>>> {
        let stream = self.keys.jobs(webhook);
        let ids = self.autoclaim(&stream, DISPATCH_GROUP, consumer, min_idle, count).await?;
        let mut entries = self.decode_entries(&stream, DISPATCH_GROUP, "j", ids).await?;
        self.delivery_counts(&stream, DISPATCH_GROUP, &mut entries).await?;
        Ok(entries)
    }

    async fn requeue_jobs(&self, webhook: &str, entries: &[Entry<Job>]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut inv = self.scripts.requeue.key(self.keys.jobs(webhook));
        inv.arg(DISPATCH_GROUP);
        for e in entries {
            inv.arg(&e.id).arg(e.value.encode_to_vec());
        }
        inv.invoke_async::<i64>(&mut self.conn()).await.map_err(map_err)?;
        Ok(())
    }

    async fn promote_due(&self, webhook: &str, now_ms: i64) -> Result<Option<i64>> {
        let (_moved, next): (i64, i64) = self
            .scripts
            .promote_due
            .key(self.keys.delayed(webhook))
            .key(self.keys.jobs(webhook))
            .arg(now_ms)
            .arg(500)
            .invoke_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        Ok((next >= 0).then_some(next))
    }

    async fn complete(&self, webhook: &str, entry_id: &str, attempt: &Attempt, follow_up: FollowUp) -> Result<()> {
        let (retry, due) = follow_up.retry.map(|(j, due)| (j.encode_to_vec(), due)).unwrap_or_default();
        let (dead, reason) = follow_up.dead_letter.map(|(j, r)| (j.encode_to_vec(), r)).unwrap_or_default();
        let writeback = follow_up.writeback.map(|w| w.encode_to_vec()).unwrap_or_default();
        let cutoff = now_ms() - ATTEMPT_RETENTION.as_millis() as i64;
        self.scripts
            .complete
            .key(self.keys.jobs(webhook))
            .key(self.keys.attempts(webhook))
            .key(self.keys.attempts_by_time(webhook))
            .key(self.keys.delayed(webhook))
            .key(self.keys.dead(webhook))
            .key(self.keys.writeback(webhook))
            .arg(entry_id)
            .arg(DISPATCH_GROUP)
            .arg(&attempt.attempt_id)
            .arg(attempt.encode_to_vec())
            .arg(attempt.started_at_ms)
            .arg(cutoff)
            .arg(retry)
            .arg(due)
            .arg(dead)
            .arg(reason)
            .arg(writeback)
            .invoke_async::<()>(&mut self.conn())
            .await
            .map_err(map_err)
    }

    async fn queue_depth(&self, webhook: &str) -> Result<u64> {
        let (ready, delayed): (u64, u64) = redis::pipe()
            .cmd("XLEN")
            .arg(self.keys.jobs(webhook))
            .cmd("ZCARD")
            .arg(self.keys.delayed(webhook))
            .query_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        Ok(ready + delayed)
    }

    async fn read_writebacks(
        &self,
        webhook: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Entry<WritebackJob>>> {
        let stream = self.keys.writeback(webhook);
        let ids = self.read_group(&stream, WRITEBACK_GROUP, consumer, count, block).await?;
        self.decode_entries(&stream, WRITEBACK_GROUP, "w", ids).await
    }

    async fn claim_writebacks(
        &self,
        webhook: &str,
        consumer: &str,
        min_idle: Duration,
    ) -> Result<Vec<Entry<WritebackJob>>> {
        let stream = self.keys.writeback(webhook);
        let ids = self.autoclaim(&stream, WRITEBACK_GROUP, consumer, min_idle, 100).await?;
        self.decode_entries(&stream, WRITEBACK_GROUP, "w", ids).await
    }

    async fn finish_writeback(
        &self,
        webhook: &str,
        entry_id: &str,
        attempt_id: &str,
        error: Option<&str>,
    ) -> Result<()> {
        if let Some(mut attempt) = self.get_attempt(webhook, attempt_id).await? {
            attempt.writeback_status = if error.is_some() { "error" } else { "done" }.to_string();
            attempt.writeback_error = error.unwrap_or_default().to_string();
            self.conn()
                .hset::<_, _, _, ()>(self.keys.attempts(webhook), attempt_id, attempt.encode_to_vec())
                .await
                .map_err(map_err)?;
        }
        self.ack(&self.keys.writeback(webhook), WRITEBACK_GROUP, &[entry_id.to_string()]).await
    }

    async fn list_attempts(&self, webhook: &str, filter: &AttemptFilter) -> Result<Vec<Attempt>> {
        let key = self.keys.attempts(webhook);
        let limit = filter.limit.clamp(1, 10_000);
        let min = filter.since_ms.map(|s| s.to_string()).unwrap_or_else(|| "-inf".to_string());
        let mut out = Vec::new();
        let mut offset = 0usize;
        const PAGE: usize = 500;
        // Newest first; pages until `limit` matches or the log (bounded by retention) ends.
        loop {
            let ids: Vec<String> = redis::cmd("ZREVRANGEBYSCORE")
                .arg(self.keys.attempts_by_time(webhook))
                .arg("+inf")
                .arg(&min)
                .arg("LIMIT")
                .arg(offset)
                .arg(PAGE)
                .query_async(&mut self.conn())
                .await
                .map_err(map_err)?;
            if ids.is_empty() {
                break;
            }
            offset += ids.len();
            let blobs: Vec<Option<Vec<u8>>> =
                redis::cmd("HMGET").arg(&key).arg(&ids).query_async(&mut self.conn()).await.map_err(map_err)?;
            for blob in blobs.into_iter().flatten() {
                let a: Attempt = decode(&key, &blob)?;
                let record_ok = filter.record_id.as_ref().is_none_or(|r| a.record_ids.contains(r));
                let outcome_ok = filter.outcome.is_none_or(|o| a.outcome() == o);
                if record_ok && outcome_ok {
                    out.push(a);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn get_attempt(&self, webhook: &str, attempt_id: &str) -> Result<Option<Attempt>> {
        let key = self.keys.attempts(webhook);
        let blob: Option<Vec<u8>> = self.conn().hget(&key, attempt_id).await.map_err(map_err)?;
        blob.map(|b| decode(&key, &b)).transpose()
    }

    async fn dead_letters(&self, webhook: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        let key = self.keys.dead(webhook);
        let r: StreamRangeReply =
            self.conn().xrange_count(&key, "-", "+", limit.clamp(1, 10_000)).await.map_err(map_err)?;
        let mut out = Vec::new();
        for sid in r.ids {
            let Some(bytes) = sid.get::<Vec<u8>>("j") else { continue };
            out.push(DeadLetter {
                job: decode(&key, &bytes)?,
                reason: sid.get::<String>("r").unwrap_or_default(),
                id: sid.id,
            });
        }
        Ok(out)
    }

    async fn redrive(&self, webhook: &str) -> Result<u64> {
        let mut moved = 0;
        loop {
            let batch = self.dead_letters(webhook, 500).await?;
            if batch.is_empty() {
                return Ok(moved);
            }
            let mut inv = self.scripts.redrive.key(self.keys.dead(webhook));
            inv.key(self.keys.jobs(webhook));
            for d in &batch {
                let job = Job { attempts: 0, ..d.job.clone() };
                inv.arg(&d.id).arg(job.encode_to_vec());
            }
            let n: u64 = inv.invoke_async(&mut self.conn()).await.map_err(map_err)?;
            moved += n;
        }
    }

    async fn get_value(&self, webhook: &str, name: &str) -> Result<Option<Vec<u8>>> {
        self.conn().get(self.keys.value(webhook, name)).await.map_err(map_err)
    }

    async fn set_value(&self, webhook: &str, name: &str, value: &[u8], ttl: Duration) -> Result<()> {
        redis::cmd("SET")
            .arg(self.keys.value(webhook, name))
            .arg(value)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(map_err)
    }

    async fn try_lock(&self, webhook: &str, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let set: Option<String> = redis::cmd("SET")
            .arg(self.keys.lock(webhook, name))
            .arg(holder)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        Ok(set.is_some())
    }

    async fn unlock(&self, webhook: &str, name: &str, holder: &str) -> Result<()> {
        // Only the holder may release: compare and delete in one step.
        self.scripts
            .unlock
            .key(self.keys.lock(webhook, name))
            .arg(holder)
            .invoke_async::<i64>(&mut self.conn())
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn acquire_permit(&self, webhook: &str, holder: &str, limit: u32, lease: Duration) -> Result<bool> {
        let ok: i64 = self
            .scripts
            .acquire_permit
            .key(self.keys.permits(webhook))
            .arg(holder)
            .arg(lease.as_millis() as u64)
            .arg(limit)
            .invoke_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        Ok(ok == 1)
    }

    async fn release_permit(&self, webhook: &str, holder: &str) -> Result<()> {
        self.conn().zrem::<_, _, ()>(self.keys.permits(webhook), holder).await.map_err(map_err)
    }
}
