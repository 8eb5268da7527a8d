//! The Redis backend: streams with consumer groups for queues, Lua for every step that
//! must be atomic, hashes for records and definitions. Key names live in [`crate::keys`].
//!
//! One Redis or a Redis Cluster. [`RedisStore::connect`] takes
//!
//! - `redis://[user:password@]host:port[/db]` — one Redis (the default);
//! - `redis+cluster://[user:password@]host:port[,host:port…]` — a Redis Cluster, reached
//!   through any of the listed nodes (one is enough; the others are found from it);
//! - several comma-separated `redis://…` URLs — a Redis Cluster with those seed nodes;
//!
//! and [`RedisStore::connect_cluster`] takes the seed nodes as a list. Every command goes
//! through [`Conn`], which is a `ConnectionManager` (one Redis) or a cluster connection that
//! routes each command, pipeline and script to the node of its key's slot, so one code path
//! serves both. The key layout ([`crate::keys`]) keeps each script's and each pipeline's keys
//! on one slot; [`Store::enqueue`], the one call that writes to several webhooks at once,
//! sends one pipeline per webhook.
//!
//! A namespace written by a version before the write index has records without a position
//! and no index; scheduled webhooks, which find records through the index, would not see
//! them until they were written again. So connecting indexes them, once per object (see
//! [`RedisStore::index_unindexed_records`]), on one Redis and on a cluster alike.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use hookline_model::{DataObject, Fields, Record, StoredWebhook};
use hookline_proto::{Attempt, Change, Job, Message, WritebackJob};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamRangeReply, StreamReadReply};
use redis::{AsyncCommands, Cmd, Pipeline, RedisError, RedisFuture, Script, ScriptInvocation, Value};

use crate::keys::{DISPATCH_GROUP, Keys, TRIGGER_GROUP, WRITEBACK_GROUP};
use crate::{
    ATTEMPT_RETENTION, AttemptFilter, DeadLetter, DefEvent, Entry, FollowUp, IndexedRecord, Result, Store, StoreError,
    WriteResult, now_ms,
};

/// A connection to one Redis or to a Redis Cluster. Cheap to clone: both kinds are handles
/// to one multiplexed connection (per node, for a cluster) that reconnects by itself.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    /// Routes every command by its first key's slot (a script by its first key, a
    /// pipeline by its first command's key) and follows `MOVED`/`ASK` redirections.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Where dedicated connections for blocking reads come from.
enum Connector {
    Single(redis::Client),
    /// Built without a response timeout: a blocking read answers when its block ends.
    Cluster(Box<ClusterClient>),
}

impl Connector {
    async fn connect(&self) -> Result<Conn> {
        match self {
            Connector::Single(client) => ConnectionManager::new_with_config(client.clone(), config(None))
                .await
                .map(Conn::Single)
                .map_err(map_err),
            Connector::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster).map_err(map_err),
        }
    }
}

/// The atomic steps, loaded once; `Script` sends EVALSHA and falls back to EVAL after a
/// Redis restart flushed the script cache.
struct Scripts {
    write_record: Script,
    index_record: Script,
    put_webhook: Script,
    promote_due: Script,
    complete: Script,
    acquire_permit: Script,
    redrive: Script,
    requeue: Script,
    try_lock: Script,
    set_value_locked: Script,
    unlock: Script,
    rate: Script,
}

pub struct RedisStore {
    keys: Keys,
    connector: Connector,
    /// Shared multiplexed connection for every non-blocking command.
    conn: Conn,
    /// Dedicated connections for blocking reads (`XREADGROUP … BLOCK`), which would stall
    /// every other command on a multiplexed connection (on a cluster: every command to the
    /// same node). Taken per read, given back after.
    blocking: Mutex<Vec<Conn>>,
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

/// An invocation of `script` with `keys` as its `KEYS`, in order; on a cluster it is sent to
/// the node of the first key's slot (the others share it, see [`crate::keys`]).
fn invocation<'a>(script: &'a Script, keys: &[String]) -> ScriptInvocation<'a> {
    let mut inv = script.prepare_invoke();
    for key in keys {
        inv.key(key);
    }
    inv
}

fn config(response_timeout: Option<Duration>) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(response_timeout)
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1))
}

/// Cluster connections: a few quick retries (redirections during a failover or a
/// resharding are retried at once and do not wait).
fn cluster_client(nodes: &[String], response_timeout: Option<Duration>) -> Result<ClusterClient> {
    let mut builder = ClusterClient::builder(nodes.iter().map(String::as_str))
        .connection_timeout(Duration::from_secs(2))
        .retries(4)
        .min_retry_wait(50)
        .max_retry_wait(1_000);
    if let Some(t) = response_timeout {
        builder = builder.response_timeout(t);
    }
    builder.build().map_err(|e| StoreError::Backend(format!("invalid Redis Cluster nodes {nodes:?}: {e}")))
}

/// The seed nodes of a cluster URL (see the module docs), or `None` for a single Redis.
fn cluster_nodes(url: &str) -> Result<Option<Vec<String>>> {
    let invalid = |why: &str| StoreError::Backend(format!("invalid Redis Cluster URL `{url}`: {why}"));
    let url = url.trim();
    for (scheme, node_scheme) in [("redis+cluster://", "redis://"), ("rediss+cluster://", "rediss://")] {
        let Some(rest) = url.strip_prefix(scheme) else { continue };
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((u, r)) => (format!("{u}@"), r),
            None => (String::new(), rest),
        };
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (hosts, suffix) = rest.split_at(end);
        let nodes: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .map(|h| {
                if h.is_empty() {
                    Err(invalid("an empty host"))
                } else {
                    Ok(format!("{node_scheme}{userinfo}{h}{suffix}"))
                }
            })
            .collect::<Result<_>>()?;
        return Ok(Some(nodes));
    }
    if url.contains(',') {
        let nodes: Vec<String> = url.split(',').map(|u| u.trim().to_string()).collect();
        if nodes.iter().any(|n| !(n.starts_with("redis://") || n.starts_with("rediss://"))) {
            return Err(invalid("a list of nodes must be redis:// URLs, or use redis+cluster://host:port,host:port"));
        }
        return Ok(Some(nodes));
    }
    Ok(None)
}

fn check_namespace(namespace: &str) -> Result<()> {
    // A brace would become (part of) the hash tag and split the keys of one tag over slots.
    if namespace.is_empty() || namespace.contains(['{', '}']) {
        return Err(StoreError::Backend(format!("invalid namespace `{namespace}`: empty or with braces")));
    }
    Ok(())
}

impl RedisStore {
    /// Connects with every key under `namespace` to one Redis (`redis://host:port`) or to a
    /// Redis Cluster: `redis+cluster://host:port[,host:port…]` or several comma-separated
    /// `redis://host:port` URLs (the cluster's seed nodes; one reachable node is enough).
    /// On one Redis, also renames definition keys of the layout before hash tags
    /// ([`Keys::legacy_renames`]). On both, puts the records an earlier version wrote into the
    /// write index, once per object ([`Keys::indexed`]); this scans the keyspace the first
    /// time, so the first connect after an upgrade takes longer.
    pub async fn connect(url: &str, namespace: &str) -> Result<Self> {
        if let Some(nodes) = cluster_nodes(url)? {
            return Self::connect_cluster(&nodes, namespace).await;
        }
        check_namespace(namespace)?;
        let client = redis::Client::open(url).map_err(|e| StoreError::Backend(format!("invalid Redis URL: {e}")))?;
        let conn = ConnectionManager::new_with_config(client.clone(), config(Some(Duration::from_secs(5))))
            .await
            .map_err(map_err)?;
        let store = Self::new(namespace, Connector::Single(client), Conn::Single(conn));
        // First the renames: the objects to index are listed from the renamed definitions.
        store.migrate_legacy_keys().await?;
        store.index_unindexed_records().await?;
        Ok(store)
    }

    /// Connects to the Redis Cluster that `nodes` (`redis://host:port` URLs, or `host:port`)
    /// belong to, with every key under `namespace`. Indexes the records an earlier version
    /// wrote, like [`RedisStore::connect`].
    pub async fn connect_cluster(nodes: &[String], namespace: &str) -> Result<Self> {
        check_namespace(namespace)?;
        if nodes.is_empty() {
            return Err(StoreError::Backend("no Redis Cluster nodes given".into()));
        }
        let nodes: Vec<String> =
            nodes.iter().map(|n| if n.contains("://") { n.clone() } else { format!("redis://{n}") }).collect();
        let shared = cluster_client(&nodes, Some(Duration::from_secs(5)))?;
        let conn = shared.get_async_connection().await.map_err(map_err)?;
        let blocking = cluster_client(&nodes, None)?;
        let store = Self::new(namespace, Connector::Cluster(Box::new(blocking)), Conn::Cluster(conn));
        store.index_unindexed_records().await?;
        Ok(store)
    }

    fn new(namespace: &str, connector: Connector, conn: Conn) -> Self {
        RedisStore {
            keys: Keys::new(namespace),
            connector,
            conn,
            blocking: Mutex::new(Vec::new()),
            scripts: Scripts {
                write_record: Script::new(include_str!("lua/write_record.lua")),
                index_record: Script::new(include_str!("lua/index_record.lua")),
                put_webhook: Script::new(include_str!("lua/put_webhook.lua")),
                promote_due: Script::new(include_str!("lua/promote_due.lua")),
                complete: Script::new(include_str!("lua/complete.lua")),
                acquire_permit: Script::new(include_str!("lua/acquire_permit.lua")),
                redrive: Script::new(include_str!("lua/redrive.lua")),
                requeue: Script::new(include_str!("lua/requeue.lua")),
                try_lock: Script::new(include_str!("lua/try_lock.lua")),
                set_value_locked: Script::new(include_str!("lua/set_value_locked.lua")),
                unlock: Script::new(include_str!("lua/unlock.lua")),
                rate: Script::new(include_str!("lua/rate.lua")),
            },
        }
    }

    /// Whether this store talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    /// Renames the definition keys of the layout before hash tags to their new names, once
    /// (on one Redis; a cluster could not run that layout). Keeps the new key if both exist.
    async fn migrate_legacy_keys(&self) -> Result<()> {
        for (old, new) in self.keys.legacy_renames() {
            let exists: bool = self.conn().exists(&old).await.map_err(map_err)?;
            if !exists {
                continue;
            }
            let renamed: redis::RedisResult<bool> = self.conn().rename_nx(&old, &new).await;
            match renamed {
                Ok(true) => tracing::info!(from = %old, to = %new, "renamed a key to the cluster-ready layout"),
                Ok(false) => {
                    tracing::warn!(old = %old, new = %new, "both the old and the new key exist; using the new")
                }
                // Another node renamed it meanwhile.
                Err(e) if e.to_string().contains("no such key") => {}
                Err(e) => return Err(map_err(e)),
            }
        }
        Ok(())
    }

    /// Puts the records of every data object that a version before the write index wrote
    /// (hashes without `p`, absent from [`Keys::written`]) into the index, once: objects with
    /// their [`Keys::indexed`] marker are skipped, the others are scanned and then marked.
    ///
    /// Safe with several nodes starting at once and with live writes meanwhile:
    /// `index_record.lua` indexes a record only if it has no `p` yet, in one atomic step, and
    /// every live write sets `p` itself. A record gets the next position of its object, like a
    /// new write, so a scheduled webhook paging from an earlier position meets it once more.
    ///
    /// The marker is set only after a complete scan: a connect that fails halfway is redone in
    /// full by the next one. Records that a node of the earlier version writes after the marker
    /// is set (a rolling upgrade) are not indexed until written again; deleting the markers
    /// makes the next connect scan again.
    async fn index_unindexed_records(&self) -> Result<()> {
        for object in self.list_objects().await? {
            let marker = self.keys.indexed(&object.name);
            let done: bool = self.conn().exists(&marker).await.map_err(map_err)?;
            if done {
                continue;
            }
            let indexed = self.index_records_of(&object.name).await?;
            self.conn().set::<_, _, ()>(&marker, 1).await.map_err(map_err)?;
            if indexed > 0 {
                tracing::info!(object = %object.name, records = indexed, "indexed records written before the write index");
            }
        }
        Ok(())
    }

    /// Runs `index_record.lua` on every record key of `object` that `SCAN` finds; returns how
    /// many records it indexed. Each page's records go out side by side (one pipeline's worth
    /// on the multiplexed connection), not one round trip after the other.
    async fn index_records_of(&self, object: &str) -> Result<u64> {
        let pattern = self.keys.records_pattern(object);
        let mut cursor = 0u64;
        let mut indexed = 0;
        loop {
            let (next, keys) = self.scan_records(object, &pattern, cursor).await?;
            let runs = keys.iter().filter_map(|key| self.keys.record_id(object, key)).map(|id| {
                let mut conn = self.conn();
                async move {
                    let mut inv = invocation(&self.scripts.index_record, &self.keys.index_record_keys(object, id));
                    inv.arg(id);
                    inv.invoke_async::<u64>(&mut conn).await
                }
            });
            indexed += futures_util::future::try_join_all(runs).await.map_err(map_err)?.iter().sum::<u64>();
            // SCAN returns every key present for the whole scan at least once (some twice,
            // which the script's check absorbs); cursor 0 ends it.
            if next == 0 {
                return Ok(indexed);
            }
            cursor = next;
        }
    }

    /// One `SCAN` page of the keys matching `pattern`, all of `object`'s records. On a cluster
    /// the page comes from the master holding the object's slot: `SCAN` lists one node's
    /// keys, and every key of the object is on that node (see [`crate::keys`]). It would
    /// otherwise go to a random node.
    async fn scan_records(&self, object: &str, pattern: &str, cursor: u64) -> Result<(u64, Vec<String>)> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000);
        match self.conn() {
            Conn::Single(mut conn) => cmd.query_async(&mut conn).await.map_err(map_err),
            Conn::Cluster(mut conn) => {
                let route = Route::with_key(self.keys.position(object), SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let reply = conn.route_command(cmd, routing).await.map_err(map_err)?;
                redis::from_redis_value(reply)
                    .map_err(|e| StoreError::Corrupt { key: format!("SCAN {pattern}"), reason: e.to_string() })
            }
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    fn conn(&self) -> Conn {
        self.conn.clone()
    }

    async fn take_blocking(&self) -> Result<Conn> {
        // The lock is held only to pop; never across an await.
        let pooled = self.blocking.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match pooled {
            Some(c) => Ok(c),
            // No response timeout: the server answers a BLOCK read when its block ends.
            None => self.connector.connect().await,
        }
    }

    fn give_back(&self, conn: Conn) {
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
        let created: u64 = self.conn().hset(self.keys.objects(), &object.name, text).await.map_err(map_err)?;
        if created == 1 {
            // A new object has only records written through the index: no connect need scan
            // for older ones. (Not on an update: an existing object may still be unscanned.
            // A crash before this only costs a later, harmless scan.)
            self.conn().set::<_, _, ()>(self.keys.indexed(&object.name), 1).await.map_err(map_err)?;
        }
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
        let ok: i64 = invocation(&self.scripts.put_webhook, &self.keys.put_webhook_keys())
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
        let ok: i64 = invocation(&self.scripts.put_webhook, &self.keys.put_webhook_keys())
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
        let (ok, version): (i64, u64) =
            invocation(&self.scripts.write_record, &self.keys.write_record_keys(object, id))
                .arg(expected)
                .arg(text)
                .arg(change.encode_to_vec())
                .arg(&change.origin_webhook)
                .arg(id)
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

    async fn write_position(&self, object: &str) -> Result<u64> {
        let position: Option<u64> = self.conn().get(self.keys.position(object)).await.map_err(map_err)?;
        Ok(position.unwrap_or(0))
    }

    async fn records_written(&self, object: &str, after: u64, limit: usize) -> Result<Vec<IndexedRecord>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Positions are zset scores (doubles): exact up to 2^53 writes of one object.
        let listed: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(self.keys.written(object))
            .arg(format!("({after}"))
            .arg("+inf")
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .arg("WITHSCORES")
            .query_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        if listed.is_empty() {
            return Ok(Vec::new());
        }
        // One pipeline for every listed record: all of them share the index's slot.
        let mut pipe = redis::pipe();
        for (id, _) in &listed {
            pipe.cmd("HMGET").arg(self.keys.record(object, id)).arg("v").arg("f").arg("o").arg("q");
        }
        type Hash = (Option<u64>, Option<String>, Option<String>, Option<u64>);
        let hashes: Vec<Hash> = pipe.query_async(&mut self.conn()).await.map_err(map_err)?;
        let mut out = Vec::with_capacity(listed.len());
        for ((id, score), (version, fields, origin, other)) in listed.into_iter().zip(hashes) {
            // The two reads are not one atomic step. A record whose hash vanished is skipped.
            let (Some(version), Some(fields)) = (version, fields) else { continue };
            // A record rewritten between the two reads comes with its newer write but at the
            // position it was listed at, so positions stay ascending and a caller paging from
            // the last one misses nothing; it is listed again at its new position later (an
            // at-least-once reader sends it twice, never zero times).
            let position = score as u64;
            let key = self.keys.record(object, &id);
            out.push(IndexedRecord {
                position,
                record: Record { fields: json(&key, &fields)?, id, version },
                origin_webhook: origin.unwrap_or_default(),
                // Missing in a hash last written before `q` was kept: no other writer known.
                other_position: other.unwrap_or(0),
            });
        }
        Ok(out)
    }

    async fn enqueue(&self, jobs: &[Job]) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        // One pipeline per webhook: a webhook's keys share a slot, different webhooks' need not.
        // In order within each webhook; the pipelines go out side by side.
        let mut pipes: HashMap<&str, Pipeline> = HashMap::new();
        for job in jobs {
            pipes
                .entry(job.webhook_id.as_str())
                .or_insert_with(redis::pipe)
                .cmd("XADD")
                .arg(self.keys.jobs(&job.webhook_id))
                .arg("*")
                .arg("j")
                .arg(job.encode_to_vec())
                .ignore();
        }
        let sends = pipes.values().map(|pipe| {
            let mut conn = self.conn();
            async move { pipe.query_async::<()>(&mut conn).await }
        });
        futures_util::future::try_join_all(sends).await.map_err(map_err)?;
        Ok(())
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
        let (_moved, next): (i64, i64) = invocation(&self.scripts.promote_due, &self.keys.promote_due_keys(webhook))
            .arg(now_ms)
            .arg(500)
            .invoke_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        Ok((next >= 0).then_some(next))
    }

    async fn complete_batch(
        &self,
        webhook: &str,
        entry_ids: &[String],
        attempt: &Attempt,
        follow_up: FollowUp,
    ) -> Result<()> {
        let (retry, due) = follow_up.retry.map(|(j, due)| (j.encode_to_vec(), due)).unwrap_or_default();
        let (dead, reason) = follow_up.dead_letter.map(|(j, r)| (j.encode_to_vec(), r)).unwrap_or_default();
        let writeback = follow_up.writeback.map(|w| w.encode_to_vec()).unwrap_or_default();
        let cutoff = now_ms() - ATTEMPT_RETENTION.as_millis() as i64;
        invocation(&self.scripts.complete, &self.keys.complete_keys(webhook))
            .arg(entry_ids.join(" "))
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

    async fn oldest_job_ms(&self, webhook: &str) -> Result<Option<i64>> {
        let r: StreamRangeReply =
            self.conn().xrange_count(self.keys.jobs(webhook), "-", "+", 1).await.map_err(map_err)?;
        Ok(r.ids.first().and_then(|e| e.id.split('-').next()?.parse().ok()))
    }

    async fn queue_depth(&self, webhook: &str) -> Result<u64> {
        let [jobs, delayed] = self.keys.queue_depth_keys(webhook);
        let (ready, delayed): (u64, u64) = redis::pipe()
            .cmd("XLEN")
            .arg(jobs)
            .cmd("ZCARD")
            .arg(delayed)
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
            let mut inv = invocation(&self.scripts.redrive, &self.keys.redrive_keys(webhook));
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
        // Re-entrant: the holder renews its own lock; compare and take or renew in one step.
        let ok: i64 = self
            .scripts
            .try_lock
            .key(self.keys.lock(webhook, name))
            .arg(holder)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        Ok(ok == 1)
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
        // Compare the lock's holder and store in one step (a separate GET, then SET, would
        // let the lock expire and change hands in between).
        let ok: i64 = invocation(&self.scripts.set_value_locked, &self.keys.set_value_locked_keys(webhook, lock, name))
            .arg(holder)
            .arg(value)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        Ok(ok == 1)
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

    async fn rate_wait(&self, webhook: &str, interval: Duration, burst: u32) -> Result<Duration> {
        let interval_ms = interval.as_millis().max(1) as u64;
        let wait: u64 = self
            .scripts
            .rate
            .key(self.keys.rate(webhook))
            .arg(interval_ms)
            .arg(interval_ms * burst as u64)
            .invoke_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        Ok(Duration::from_millis(wait))
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn nodes(url: &str) -> Option<Vec<String>> {
        cluster_nodes(url).expect("a valid URL")
    }

    #[test]
    fn cluster_urls() {
        assert_eq!(nodes("redis://127.0.0.1:6379"), None);
        assert_eq!(nodes("redis://:secret@127.0.0.1:6379/2"), None);
        assert_eq!(nodes("redis+cluster://10.0.0.1:7000"), Some(vec!["redis://10.0.0.1:7000".to_string()]));
        assert_eq!(
            nodes("redis+cluster://user:p%40ss@a:7000, b:7001?protocol=resp3"),
            Some(vec![
                "redis://user:p%40ss@a:7000?protocol=resp3".to_string(),
                "redis://user:p%40ss@b:7001?protocol=resp3".to_string()
            ])
        );
        assert_eq!(nodes("rediss+cluster://a:7000"), Some(vec!["rediss://a:7000".to_string()]));
        assert_eq!(
            nodes("redis://a:7000,redis://b:7001"),
            Some(vec!["redis://a:7000".to_string(), "redis://b:7001".to_string()])
        );
        assert!(cluster_nodes("redis+cluster://a:7000,,b:7001").is_err());
        assert!(cluster_nodes("redis://a:7000,b:7001").is_err(), "a list of nodes needs a scheme on each");
    }

    #[test]
    fn namespaces_without_braces() {
        assert!(check_namespace("hookline").is_ok());
        for bad in ["", "a{b", "a}b", "{x}"] {
            assert!(check_namespace(bad).is_err(), "{bad}");
        }
    }

    /// `records_written` reads the index, then the records: a record written again after the
    /// index was read (simulated: its hash moved on) comes with its newer write at the
    /// position it was listed at, and a record whose hash vanished is skipped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_changed_between_the_two_reads() {
        let url = std::env::var("HOOKLINE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
        let ns = format!("hl-test-{}", uuid::Uuid::new_v4().simple());
        let store = RedisStore::connect(&url, &ns).await.expect("a Redis at HOOKLINE_TEST_REDIS");
        let fields: Fields = serde_json::json!({"status": "Open"}).as_object().cloned().unwrap_or_default();
        for (id, origin) in [("A", "wh"), ("B", ""), ("C", "")] {
            let change = Change {
                object: "o".into(),
                record_id: id.into(),
                version: 1,
                origin_webhook: origin.into(),
                ..Default::default()
            };
            let w = store.write_record("o", id, 0, &fields, &change).await.expect("write_record");
            assert_eq!(w, WriteResult::Written { version: 1 });
        }
        let mut raw = redis::Client::open(url.as_str())
            .expect("Redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let stored: (String, u64) = redis::cmd("HMGET")
            .arg(store.keys().record("o", "A"))
            .arg("o")
            .arg("p")
            .query_async(&mut raw)
            .await
            .expect("HMGET");
        assert_eq!(stored, ("wh".to_string(), 1), "origin and position next to the record");
        let listed = |after| store.records_written("o", after, 10);
        let ids = |v: Vec<IndexedRecord>| v.into_iter().map(|r| (r.record.id, r.position)).collect::<Vec<_>>();
        assert_eq!(ids(listed(0).await.expect("records_written")), [("A".into(), 1), ("B".into(), 2), ("C".into(), 3)]);

        let _: () = raw
            .hset_multiple(store.keys().record("o", "A"), &[("v", "2"), ("f", r#"{"status":"Closed"}"#), ("p", "9")])
            .await
            .expect("HSET");
        let _: () = raw.del(store.keys().record("o", "C")).await.expect("DEL");
        let page = listed(0).await.expect("records_written");
        assert_eq!(page[0].record.version, 2, "the newer write");
        assert_eq!(ids(page), [("A".to_string(), 1), ("B".to_string(), 2)]);

        let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{ns}:*")).query_async(&mut raw).await.expect("KEYS");
        let _: () = raw.del(keys).await.expect("DEL");
    }

    /// Records of a namespace written before the write index (hashes with `v` and `f` only,
    /// no position counter, no index) are indexed on connect, once, and later writes follow
    /// on. Three objects whose keys are in the three slot ranges of `redis-cli --cluster
    /// create`, so on a cluster each object's scan must go to its own node. `ns` should carry
    /// glob characters: unescaped, they would make the scans miss the records. `raw` talks to
    /// the same Redis (a cluster connection for a cluster). The caller removes the keys.
    pub(crate) async fn legacy_records_are_indexed<C: AsyncCommands>(url: &str, ns: &str, raw: &mut C) {
        let store = RedisStore::connect(url, ns).await.expect("connect");
        let keys = store.keys().clone();
        let objects: Vec<String> = [0..5461u16, 5461..10923, 10923..16384]
            .into_iter()
            .map(|range| {
                (0..)
                    .map(|n| format!("legacy-{n}"))
                    .find(|o| range.contains(&crate::keys::slot(keys.position(o).as_bytes())))
                    .expect("an object name in every slot range")
            })
            .collect();
        let fields: Fields = serde_json::json!({"status": "Open"}).as_object().cloned().unwrap_or_default();
        // Ids as a record id may be: with the separator of the key, with glob characters.
        let old_ids = ["r1", "r2", "r3", "x:rec:y", "*", "[a]"];
        for object in &objects {
            let def: DataObject = serde_json::from_value(
                serde_json::json!({"name": object, "fields": [{"key": "status", "type": "string"}]}),
            )
            .expect("a data object");
            store.put_object(&def).await.expect("put_object");
            let marked: bool = raw.exists(keys.indexed(object)).await.expect("EXISTS");
            assert!(marked, "a new object needs no scan");
        }
        // One record of the first object written through the index before the upgrade ran
        // (it keeps its position); then the old version's records; then no markers.
        let change = |object: &str, id: &str, version| Change {
            object: object.into(),
            record_id: id.into(),
            version,
            ..Default::default()
        };
        let w = store.write_record(&objects[0], "new", 0, &fields, &change(&objects[0], "new", 1)).await;
        assert_eq!(w.expect("write_record"), WriteResult::Written { version: 1 });
        for object in &objects {
            for id in old_ids {
                let _: () = raw
                    .hset_multiple(keys.record(object, id), &[("v", "3"), ("f", r#"{"status":"Old"}"#)])
                    .await
                    .expect("HSET");
            }
            let _: () = raw.del(keys.indexed(object)).await.expect("DEL");
        }

        async fn positions(store: &RedisStore, object: &str) -> Vec<(String, u64)> {
            let listed = store.records_written(object, 0, 100).await.expect("records_written");
            listed.into_iter().map(|r| (r.record.id, r.position)).collect()
        }
        // Two nodes starting at once: each record is indexed once all the same.
        let (a, b) = tokio::join!(RedisStore::connect(url, ns), RedisStore::connect(url, ns));
        let (a, _b) = (a.expect("connect"), b.expect("connect"));
        let mut before = Vec::new();
        for (n, object) in objects.iter().enumerate() {
            let listed = positions(&a, object).await;
            let mut ids: Vec<&str> = listed.iter().map(|(id, _)| id.as_str()).collect();
            ids.sort_unstable();
            let mut want: Vec<&str> = old_ids.to_vec();
            if n == 0 {
                want.push("new");
            }
            want.sort_unstable();
            assert_eq!(ids, want, "every record of {object} is listed once");
            let at: Vec<u64> = listed.iter().map(|(_, p)| *p).collect();
            assert_eq!(at, (1..=want.len() as u64).collect::<Vec<_>>(), "distinct ascending positions: {listed:?}");
            if n == 0 {
                assert_eq!(listed[0], ("new".to_string(), 1), "an indexed record stays where it was");
            }
            assert_eq!(a.write_position(object).await.expect("write_position"), want.len() as u64);
            let page = a.records_written(object, 0, 100).await.expect("records_written");
            assert!(page.iter().all(|r| r.origin_webhook.is_empty()));
            assert!(page.iter().all(|r| r.other_position == 0), "no other writer known: {page:?}");
            assert!(page.iter().filter(|r| r.record.id != "new").all(|r| r.record.version == 3));
            let marked: bool = raw.exists(keys.indexed(object)).await.expect("EXISTS");
            assert!(marked, "{object} is marked indexed");
            before.push(listed);
        }

        // Connecting again indexes nothing: the markers skip the scan; without them, the
        // scan finds every record indexed already.
        RedisStore::connect(url, ns).await.expect("connect");
        for object in &objects {
            let _: () = raw.del(keys.indexed(object)).await.expect("DEL");
        }
        let again = RedisStore::connect(url, ns).await.expect("connect");
        for (object, listed) in objects.iter().zip(&before) {
            assert_eq!(&positions(&again, object).await, listed, "{object} unchanged");
            assert_eq!(again.write_position(object).await.expect("write_position"), listed.len() as u64);
        }

        // Writes go on from the last position: a new record, then an old one rewritten.
        let object = &objects[1];
        let n = before[1].len() as u64;
        let w = again.write_record(object, "later", 0, &fields, &change(object, "later", 1)).await;
        assert_eq!(w.expect("write_record"), WriteResult::Written { version: 1 });
        let w = again.write_record(object, "r1", 3, &fields, &change(object, "r1", 4)).await;
        assert_eq!(w.expect("write_record"), WriteResult::Written { version: 4 });
        let after = positions(&again, object).await;
        assert_eq!(after.len() as u64, n + 1, "{after:?}");
        assert_eq!(after[after.len() - 2..], [("later".to_string(), n + 1), ("r1".to_string(), n + 2)]);
        assert_eq!(again.write_position(object).await.expect("write_position"), n + 2);
        // A write-back after the API's write: the other writer's write is the previous one.
        let c = Change { origin_webhook: "wh".into(), ..change(object, "r1", 5) };
        let w = again.write_record(object, "r1", 4, &fields, &c).await;
        assert_eq!(w.expect("write_record"), WriteResult::Written { version: 5 });
        let last = again.records_written(object, n + 2, 10).await.expect("records_written");
        let last: Vec<_> =
            last.into_iter().map(|r| (r.record.id, r.position, r.origin_webhook, r.other_position)).collect();
        assert_eq!(last, [("r1".to_string(), n + 3, "wh".to_string(), n + 2)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn legacy_records_are_indexed_on_connect() {
        let url = std::env::var("HOOKLINE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
        let ns = format!("hl-test-{}-[x]*?\\", uuid::Uuid::new_v4().simple());
        let client = redis::Client::open(url.as_str()).expect("Redis URL");
        let mut raw = client.get_multiplexed_async_connection().await.expect("a Redis at HOOKLINE_TEST_REDIS");
        legacy_records_are_indexed(&url, &ns, &mut raw).await;
        let pattern = format!("{}:*", crate::keys::escape_glob(&ns));
        let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query_async(&mut raw).await.expect("KEYS");
        assert!(keys.len() > 20, "{keys:?}");
        let _: () = raw.del(keys).await.expect("DEL");
    }

    /// Definitions stored under the key names from before the `{def}` hash tag are renamed
    /// on connect, and read back through the store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn legacy_definition_keys_are_renamed() {
        let url = std::env::var("HOOKLINE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string());
        let ns = format!("hl-test-{}", uuid::Uuid::new_v4().simple());
        let client = redis::Client::open(url.as_str()).expect("Redis URL");
        let mut raw = client.get_multiplexed_async_connection().await.expect("a Redis at HOOKLINE_TEST_REDIS");
        let object = r#"{"name":"survey","fields":[{"key":"a","type":"string"}]}"#;
        let _: () = raw.hset(format!("{ns}:objects"), "survey", object).await.expect("HSET");
        let _: () = raw.hset(format!("{ns}:webhook-versions"), "w", 3).await.expect("HSET");
        let _: String =
            raw.xadd(format!("{ns}:events"), "*", &[("k", "object"), ("id", "survey")]).await.expect("XADD");

        let store = RedisStore::connect(&url, &ns).await.expect("connect");
        let objects = store.list_objects().await.expect("list_objects");
        assert_eq!(objects.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["survey"]);
        assert_ne!(store.events_cursor().await.expect("events_cursor"), "0-0", "the event stream moved along");
        let version: Option<u64> = raw.hget(store.keys().webhook_versions(), "w").await.expect("HGET");
        assert_eq!(version, Some(3));
        for (old, _) in store.keys().legacy_renames() {
            let exists: bool = raw.exists(&old).await.expect("EXISTS");
            assert!(!exists, "{old} is gone");
        }
        // Connecting again (another node starting) changes nothing.
        let again = RedisStore::connect(&url, &ns).await.expect("connect");
        assert_eq!(again.list_objects().await.expect("list_objects").len(), 1);

        let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{ns}:*")).query_async(&mut raw).await.expect("KEYS");
        let _: () = raw.del(keys).await.expect("DEL");
    }
}
