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
//! # Connections that cannot hang
//!
//! Sockets have `TCP_NODELAY`, keepalive probes and a `TCP_USER_TIMEOUT`, so a dead peer is
//! noticed by the kernel. A peer that stops answering but keeps its socket open (a stalled
//! proxy, a frozen server) is noticed by time: every command has a response timeout, and a
//! timeout on the shared connection replaces it with a fresh one (the client library only
//! reconnects after I/O errors, and a half-open connection gives none). Blocking reads run on
//! dedicated connections, each bounded by its block time plus a margin; one that overruns is
//! dropped, never reused.
//!
//! A namespace written by a version before the write index has records without a position
//! and no index; scheduled webhooks, which find records through the index, would not see
//! them until they were written again. So connecting indexes them, once per object (see
//! [`RedisStore::index_unindexed_records`]), on one Redis and on a cluster alike.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use hookline_model::{DataObject, Fields, Record, StoredWebhook};
use hookline_proto::{Attempt, Change, Job, Message};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::io::tcp::{TcpSettings, socket2};
use redis::streams::{StreamRangeReply, StreamReadReply};
use redis::{
    AsyncCommands, AsyncConnectionConfig, Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, Script,
    ScriptInvocation, Value,
};

use crate::keys::{DISPATCH_GROUP, Keys, TRIGGER_GROUP, WRITEBACK_GROUP};
use crate::{
    ATTEMPT_RETENTION, AttemptFilter, ClaimScan, Completion, DeadLetter, DefEvent, Definitions, FailedWriteback,
    IndexedRecord, JOURNEY_KEPT, JOURNEY_TTL, JourneyNote, QueueKind, QueueName, QueueStats, Rate, RawEntry, Renew,
    Renewed, Result, Store, StoreError, Take, Taken, WriteResult, WritebackDone, now_ms,
};

/// How long a command may take to answer before its connection counts as stalled.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How much longer than its block time a blocking read may take.
const BLOCK_MARGIN: Duration = Duration::from_secs(3);
/// Retries promoted to the solo stream per dispatcher step, at most.
const PROMOTE_MAX: u32 = 500;

/// A connection to one Redis or to a Redis Cluster. Cheap to clone: both kinds are handles
/// to one multiplexed connection (per node, for a cluster).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    /// A dedicated connection for blocking reads (one Redis).
    Plain(MultiplexedConnection),
    /// Routes every command by its first key's slot (a script by its first key, a
    /// pipeline by its first command's key) and follows `MOVED`/`ASK` redirections.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Plain(c) => c.req_packed_command(cmd),
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
            Conn::Plain(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Plain(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Socket settings of every connection: no Nagle delay on small commands, keepalive probes
/// after 10 s of silence, and unacknowledged data failing the socket after 10 s.
fn tcp_settings() -> TcpSettings {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(3))
        .with_retries(3);
    TcpSettings::default().set_nodelay(true).set_keepalive(keepalive).set_user_timeout(Duration::from_secs(10))
}

/// Where connections come from.
enum Connector {
    Single(redis::Client),
    Cluster { shared: Box<ClusterClient>, blocking: Box<ClusterClient> },
}

impl Connector {
    /// The connection every non-blocking command shares.
    async fn shared(&self) -> Result<Conn> {
        match self {
            Connector::Single(client) => {
                ConnectionManager::new_with_config(client.clone(), manager_config(Some(RESPONSE_TIMEOUT)))
                    .await
                    .map(Conn::Single)
                    .map_err(map_err)
            }
            Connector::Cluster { shared, .. } => {
                shared.get_async_connection().await.map(Conn::Cluster).map_err(map_err)
            }
        }
    }

    /// A dedicated connection for blocking reads, without a response timeout of its own (a
    /// blocking read answers when its block ends; its caller bounds it).
    async fn blocking(&self) -> Result<Conn> {
        match self {
            Connector::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(None);
                client.get_multiplexed_async_connection_with_config(&config).await.map(Conn::Plain).map_err(map_err)
            }
            Connector::Cluster { blocking, .. } => {
                blocking.get_async_connection().await.map(Conn::Cluster).map_err(map_err)
            }
        }
    }
}

/// The atomic steps, loaded once; `Script` sends EVALSHA and falls back to EVAL after a
/// Redis restart flushed the script cache. The queue scripts share the prelude `lib.lua`.
struct Scripts {
    write_record: Script,
    write_records: Script,
    index_record: Script,
    put_webhook: Script,
    put_object: Script,
    definitions: Script,
    take: Script,
    renew: Script,
    release_permits: Script,
    rate: Script,
    touch: Script,
    ack: Script,
    release: Script,
    claim: Script,
    complete: Script,
    finish_writebacks: Script,
    note_changes: Script,
    redrive: Script,
    redrive_writebacks: Script,
    try_lock: Script,
    set_value_locked: Script,
    unlock: Script,
}

macro_rules! queue_script {
    ($name:literal) => {
        Script::new(concat!(include_str!("lua/lib.lua"), "\n", include_str!(concat!("lua/", $name))))
    };
}

impl Scripts {
    fn load() -> Scripts {
        Scripts {
            write_record: Script::new(include_str!("lua/write_record.lua")),
            write_records: Script::new(include_str!("lua/write_records.lua")),
            index_record: Script::new(include_str!("lua/index_record.lua")),
            put_webhook: Script::new(include_str!("lua/put_webhook.lua")),
            put_object: Script::new(include_str!("lua/put_object.lua")),
            definitions: Script::new(include_str!("lua/definitions.lua")),
            take: queue_script!("take.lua"),
            renew: queue_script!("renew.lua"),
            release_permits: queue_script!("release_permits.lua"),
            rate: Script::new(include_str!("lua/rate.lua")),
            touch: queue_script!("touch.lua"),
            ack: queue_script!("ack.lua"),
            release: queue_script!("release.lua"),
            claim: queue_script!("claim.lua"),
            complete: queue_script!("complete.lua"),
            finish_writebacks: queue_script!("finish_writebacks.lua"),
            note_changes: Script::new(include_str!("lua/note_changes.lua")),
            redrive: Script::new(include_str!("lua/redrive.lua")),
            redrive_writebacks: Script::new(include_str!("lua/redrive_writebacks.lua")),
            try_lock: Script::new(include_str!("lua/try_lock.lua")),
            set_value_locked: Script::new(include_str!("lua/set_value_locked.lua")),
            unlock: Script::new(include_str!("lua/unlock.lua")),
        }
    }
}

/// The shared connection, replaced when it stalls.
struct Shared {
    conn: RwLock<Conn>,
    /// Set while a replacement is being made, so a burst of timeouts makes one.
    healing: AtomicBool,
}

pub struct RedisStore {
    keys: Keys,
    connector: Arc<Connector>,
    shared: Arc<Shared>,
    /// Dedicated connections for blocking reads (`XREADGROUP … BLOCK`), which would stall
    /// every other command on a multiplexed connection (on a cluster: every command to the
    /// same node). Taken per read, given back after one that answered in time.
    blocking: Mutex<Vec<Conn>>,
    scripts: Scripts,
}

/// Maps a Redis error, naming no URL (one may carry a password).
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

fn reply<T: redis::FromRedisValue>(what: &str, v: Value) -> Result<T> {
    redis::from_redis_value(v).map_err(|e| StoreError::Corrupt { key: what.to_string(), reason: e.to_string() })
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

fn manager_config(response_timeout: Option<Duration>) -> ConnectionManagerConfig {
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
        .tcp_settings(tcp_settings())
        .retries(4)
        .min_retry_wait(50)
        .max_retry_wait(1_000);
    if let Some(t) = response_timeout {
        builder = builder.response_timeout(t);
    }
    builder.build().map_err(|e| StoreError::Backend(format!("invalid Redis Cluster nodes: {e}")))
}

/// The seed nodes of a cluster URL (see the module docs), or `None` for a single Redis.
fn cluster_nodes(url: &str) -> Result<Option<Vec<String>>> {
    let invalid = |why: &str| StoreError::Backend(format!("invalid Redis Cluster URL: {why}"));
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

/// The consumer group of a queue kind.
fn group_of(kind: QueueKind) -> &'static str {
    match kind {
        QueueKind::Changes => TRIGGER_GROUP,
        QueueKind::Jobs => DISPATCH_GROUP,
        QueueKind::Writebacks => WRITEBACK_GROUP,
    }
}

/// The payload field of a queue kind's stream entries.
fn field_of(kind: QueueKind) -> &'static str {
    match kind {
        QueueKind::Changes => "c",
        QueueKind::Jobs => "j",
        QueueKind::Writebacks => "w",
    }
}

/// Whether a job goes to the solo stream: it was attempted before, or it is a whole batch.
pub(crate) fn is_solo(job: &Job) -> bool {
    job.attempts > 0 || job.record_ids.len() > 1
}

/// Entries as the queue scripts return them: `{id, payload, deliveries, redriven, solo}`.
/// Entries as the take and claim scripts return them, flat to keep the reply small: three
/// values each, the id (`s:<id>` on the solo stream), the payload, and the delivery count
/// times two plus one if the entry was redriven.
fn script_entries(what: &str, v: Value) -> Result<Vec<RawEntry>> {
    let flat: Vec<Value> = reply(what, v)?;
    let mut entries = Vec::with_capacity(flat.len() / 3);
    let mut values = flat.into_iter();
    while let Some(id) = values.next() {
        let (Some(payload), Some(counts)) = (values.next(), values.next()) else {
            return Err(StoreError::Corrupt { key: what.to_string(), reason: "a partial entry".into() });
        };
        let (id, payload, counts): (String, Vec<u8>, u64) =
            (reply(what, id)?, reply(what, payload)?, reply(what, counts)?);
        entries.push(RawEntry {
            solo: id.starts_with("s:"),
            id,
            payload,
            deliveries: u32::try_from(counts / 2).unwrap_or(u32::MAX).max(1),
            redriven: counts % 2 == 1,
        });
    }
    Ok(entries)
}

fn ms(d: Duration) -> u64 {
    d.as_millis().max(1) as u64
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
        let info = url
            .into_connection_info()
            .map_err(|e| StoreError::Backend(format!("invalid Redis URL: {e}")))?
            .set_tcp_settings(tcp_settings());
        let client = redis::Client::open(info).map_err(|e| StoreError::Backend(format!("invalid Redis URL: {e}")))?;
        let store = Self::new(namespace, Connector::Single(client)).await?;
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
        let connector = Connector::Cluster {
            shared: Box::new(cluster_client(&nodes, Some(RESPONSE_TIMEOUT))?),
            blocking: Box::new(cluster_client(&nodes, None)?),
        };
        let store = Self::new(namespace, connector).await?;
        store.index_unindexed_records().await?;
        Ok(store)
    }

    async fn new(namespace: &str, connector: Connector) -> Result<Self> {
        let conn = connector.shared().await?;
        Ok(RedisStore {
            keys: Keys::new(namespace),
            connector: Arc::new(connector),
            shared: Arc::new(Shared { conn: RwLock::new(conn), healing: AtomicBool::new(false) }),
            blocking: Mutex::new(Vec::new()),
            scripts: Scripts::load(),
        })
    }

    /// Whether this store talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(*self.shared.conn.read().unwrap_or_else(|p| p.into_inner()), Conn::Cluster(_))
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
        match self.conn().conn {
            Conn::Single(mut conn) => cmd.query_async(&mut conn).await.map_err(map_err),
            Conn::Plain(mut conn) => cmd.query_async(&mut conn).await.map_err(map_err),
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

    /// The shared connection, which replaces itself when a command on it times out.
    fn conn(&self) -> Healing {
        let conn = self.shared.conn.read().unwrap_or_else(|p| p.into_inner()).clone();
        Healing { conn, shared: self.shared.clone(), connector: self.connector.clone() }
    }

    async fn take_blocking(&self) -> Result<Conn> {
        // The lock is held only to pop; never across an await.
        let pooled = self.blocking.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match pooled {
            Some(c) => Ok(c),
            None => self.connector.blocking().await,
        }
    }

    fn give_back(&self, conn: Conn) {
        self.blocking.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
    }

    /// Runs a blocking command on a dedicated connection, bounded by `block` plus a margin:
    /// a connection that overruns it (its peer stopped answering) is dropped, not reused.
    async fn blocking_query<T: redis::FromRedisValue>(&self, cmd: &Cmd, block: Duration) -> redis::RedisResult<T> {
        let mut conn = match self.take_blocking().await {
            Ok(c) => c,
            Err(e) => return Err(RedisError::from((redis::ErrorKind::Io, "no connection", e.to_string()))),
        };
        match tokio::time::timeout(block + BLOCK_MARGIN, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => {
                self.give_back(conn);
                Ok(v)
            }
            Ok(Err(e)) => {
                // A server error leaves the connection usable; an I/O error does not.
                if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                    drop(conn);
                } else {
                    self.give_back(conn);
                }
                Err(e)
            }
            Err(_) => {
                tracing::warn!(
                    block_ms = block.as_millis() as u64,
                    "a blocking Redis read overran its block; dropping its connection"
                );
                Err(RedisError::from((redis::ErrorKind::Io, "blocking read timed out")))
            }
        }
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
    /// a deleted key) by creating it and reading again.
    async fn read_group(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        field: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<RawEntry>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(group).arg(consumer).arg("COUNT").arg(count.max(1));
        if !block.is_zero() {
            cmd.arg("BLOCK").arg(ms(block));
        }
        cmd.arg("STREAMS").arg(stream).arg(">");
        for _ in 0..2 {
            let reply: redis::RedisResult<Value> = self.blocking_query(&cmd, block).await;
            match reply {
                Ok(reply) => return Ok(read_reply_entries(reply, field)),
                Err(e) if e.code() == Some("NOGROUP") => self.ensure_group(stream, group).await?,
                Err(e) => return Err(map_err(e)),
            }
        }
        Ok(Vec::new())
    }

    /// An invocation of a queue script on `queue`'s streams: KEYS are the stream and (for a
    /// job queue) its solo stream, or the one stream twice; ARGV starts with group and consumer.
    fn queue_invocation<'a>(&self, script: &'a Script, queue: &QueueName, consumer: &str) -> ScriptInvocation<'a> {
        let mut streams = self.keys.queue_streams(queue);
        if streams.len() == 1 {
            streams.push(streams[0].clone());
        }
        let mut inv = invocation(script, &streams);
        inv.arg(group_of(queue.kind)).arg(consumer);
        inv
    }
}

/// The lowest and highest of job entry ids, per stream: `[fresh lo, fresh hi, solo lo, solo
/// hi]` (`s:<id>` names a solo entry; `''` where a stream has none). The queue scripts look at
/// a consumer's pending entries in these ranges once, rather than at each entry: working the
/// bounds out here costs less than in Lua. Ids that are not stream ids are left out (such an
/// entry is never found pending, so never counts as owned).
fn id_bounds<'a>(ids: impl IntoIterator<Item = &'a str>) -> [String; 4] {
    type Id = (u64, u64);
    fn parse(id: &str) -> Option<Id> {
        let (ms, seq) = id.split_once('-')?;
        Some((ms.parse().ok()?, seq.parse().ok()?))
    }
    let mut bounds: [Option<(Id, Id)>; 2] = [None, None];
    for full in ids {
        let (slot, id) = match full.strip_prefix("s:") {
            Some(id) => (1, id),
            None => (0, full),
        };
        let Some(key) = parse(id) else { continue };
        bounds[slot] = Some(match bounds[slot] {
            Some((lo, hi)) => (lo.min(key), hi.max(key)),
            None => (key, key),
        });
    }
    let text = |b: Option<(Id, Id)>| match b {
        Some((lo, hi)) => [format!("{}-{}", lo.0, lo.1), format!("{}-{}", hi.0, hi.1)],
        None => [String::new(), String::new()],
    };
    let [fresh_lo, fresh_hi] = text(bounds[0]);
    let [solo_lo, solo_hi] = text(bounds[1]);
    [fresh_lo, fresh_hi, solo_lo, solo_hi]
}

/// The entries of an `XREADGROUP` (or `XREAD`) reply, walked straight from its values: no
/// map per entry (as `StreamReadReply` builds, hashing every field name), and each payload
/// moved out rather than copied. RESP2 gives `[[stream, entries], …]`, RESP3 `{stream:
/// entries}`; each entry is `[id, [field, value, …]]`; no reply (a timeout) is no entries.
fn read_reply_entries(reply: Value, field: &str) -> Vec<RawEntry> {
    let per_stream: Vec<Value> = match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for entries in per_stream {
        let Value::Array(entries) = entries else { continue };
        out.reserve(entries.len());
        for entry in entries {
            let Value::Array(parts) = entry else { continue };
            let mut parts = parts.into_iter();
            let (Some(id), Some(fields)) = (parts.next(), parts.next()) else { continue };
            let Ok(id) = redis::from_redis_value::<String>(id) else { continue };
            let pairs: Vec<(Value, Value)> = match fields {
                Value::Array(flat) => {
                    let mut flat = flat.into_iter();
                    std::iter::from_fn(|| Some((flat.next()?, flat.next()?))).collect()
                }
                Value::Map(pairs) => pairs,
                _ => Vec::new(),
            };
            let (mut payload, mut redriven) = (Vec::new(), false);
            for (name, value) in pairs {
                match value_bytes(&name) {
                    Some(n) if n == field.as_bytes() => payload = redis::from_redis_value(value).unwrap_or_default(),
                    Some(b"redriven") => redriven = true,
                    _ => {}
                }
            }
            out.push(RawEntry { id, payload, deliveries: 1, redriven, solo: false });
        }
    }
    out
}

/// A string reply's bytes, borrowed.
fn value_bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// A handle to the shared connection that replaces it after a response timeout: a peer that
/// stops answering without closing (half-open) gives the client no I/O error to reconnect on.
#[derive(Clone)]
struct Healing {
    conn: Conn,
    shared: Arc<Shared>,
    connector: Arc<Connector>,
}

impl Healing {
    fn check<T>(&self, result: &redis::RedisResult<T>) {
        if let Err(e) = result
            && e.is_timeout()
            && !self.shared.healing.swap(true, Ordering::SeqCst)
        {
            let (shared, connector) = (self.shared.clone(), self.connector.clone());
            tokio::spawn(async move {
                tracing::warn!("Redis stopped answering on the shared connection; opening a new one");
                match connector.shared().await {
                    Ok(fresh) => *shared.conn.write().unwrap_or_else(|p| p.into_inner()) = fresh,
                    Err(error) => tracing::warn!(%error, "cannot reconnect to Redis yet; the next timeout tries again"),
                }
                shared.healing.store(false, Ordering::SeqCst);
            });
        }
    }
}

impl ConnectionLike for Healing {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.conn.req_packed_command(cmd).await;
            self.check(&result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self.conn.req_packed_commands(pipeline, offset, count).await;
            self.check(&result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn ping(&self) -> Result<()> {
        redis::cmd("PING").query_async::<()>(&mut self.conn()).await.map_err(map_err)
    }

    async fn put_object(&self, object: &DataObject) -> Result<()> {
        let text = serde_json::to_string(object).map_err(|e| StoreError::Backend(e.to_string()))?;
        let created: u64 = invocation(&self.scripts.put_object, &self.keys.put_object_keys())
            .arg(&object.name)
            .arg(text)
            .invoke_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        if created == 1 {
            // A new object has only records written through the index: no connect need scan
            // for older ones. (Not on an update: an existing object may still be unscanned.
            // A crash before this only costs a later, harmless scan.)
            self.conn().set::<_, _, ()>(self.keys.indexed(&object.name), 1).await.map_err(map_err)?;
        }
        Ok(())
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

    async fn definitions(&self) -> Result<Definitions> {
        let (version, objects, webhooks): (u64, Vec<(String, String)>, Vec<(String, String)>) =
            invocation(&self.scripts.definitions, &self.keys.definitions_keys())
                .invoke_async(&mut self.conn())
                .await
                .map_err(map_err)?;
        let (okey, wkey) = (self.keys.objects(), self.keys.webhooks());
        let objects = objects.iter().map(|(_, t)| json(&okey, t)).collect::<Result<Vec<DataObject>>>()?;
        let mut webhooks = webhooks.iter().map(|(_, t)| json(&wkey, t)).collect::<Result<Vec<StoredWebhook>>>()?;
        webhooks.sort_by(|a, b| a.definition.id.cmp(&b.definition.id));
        Ok(Definitions { version, objects, webhooks })
    }

    async fn definitions_version(&self) -> Result<u64> {
        let v: Option<u64> = self.conn().get(self.keys.definitions_version()).await.map_err(map_err)?;
        Ok(v.unwrap_or(0))
    }

    async fn events_cursor(&self) -> Result<String> {
        let r: StreamRangeReply =
            self.conn().xrevrange_count(self.keys.events(), "+", "-", 1).await.map_err(map_err)?;
        Ok(r.ids.into_iter().next().map(|s| s.id).unwrap_or_else(|| "0-0".to_string()))
    }

    async fn next_events(&self, cursor: &mut String, block: Duration) -> Result<Vec<DefEvent>> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(ms(block))
            .arg("STREAMS")
            .arg(self.keys.events())
            .arg(cursor.as_str());
        let reply: Option<StreamReadReply> = self.blocking_query(&cmd, block).await.map_err(map_err)?;
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

    async fn get_records(&self, object: &str, ids: &[String]) -> Result<Vec<Option<Record>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // One pipeline: every record of an object shares its slot.
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HMGET").arg(self.keys.record(object, id)).arg("v").arg("f");
        }
        let rows: Vec<(Option<u64>, Option<String>)> = pipe.query_async(&mut self.conn()).await.map_err(map_err)?;
        ids.iter()
            .zip(rows)
            .map(|(id, row)| match row {
                (Some(version), Some(f)) => {
                    let key = self.keys.record(object, id);
                    Ok(Some(Record { id: id.clone(), version, fields: json(&key, &f)? }))
                }
                _ => Ok(None),
            })
            .collect()
    }

    async fn write_records(&self, object: &str, writes: &[crate::RecordWrite]) -> Result<Vec<WriteResult>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        let mut keys: Vec<String> = writes.iter().map(|w| self.keys.record(object, &w.id)).collect();
        keys.extend([self.keys.changes(object), self.keys.position(object), self.keys.written(object)]);
        let mut inv = invocation(&self.scripts.write_records, &keys);
        for w in writes {
            inv.arg(w.expected)
                .arg(&w.change.new_json)
                .arg(w.change.encode_to_vec())
                .arg(&w.change.origin_webhook)
                .arg(&w.id);
        }
        let rows: Vec<(i64, u64)> = inv.invoke_async(&mut self.conn()).await.map_err(map_err)?;
        Ok(rows
            .into_iter()
            .map(
                |(ok, version)| {
                    if ok == 1 { WriteResult::Written { version } } else { WriteResult::Conflict { current: version } }
                },
            )
            .collect())
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

    async fn read(&self, queue: &QueueName, consumer: &str, count: usize, block: Duration) -> Result<Vec<RawEntry>> {
        let stream = self.keys.queue_streams(queue).swap_remove(0);
        self.read_group(&stream, group_of(queue.kind), consumer, field_of(queue.kind), count, block).await
    }

    async fn claim(
        &self,
        queue: &QueueName,
        consumer: &str,
        scan: &ClaimScan,
        count: usize,
    ) -> Result<(Vec<RawEntry>, String)> {
        let streams = self.keys.queue_streams(queue);
        let (entries, cursor): (Value, String) = invocation(&self.scripts.claim, &streams)
            .arg(group_of(queue.kind))
            .arg(consumer)
            .arg(scan.min_idle.as_millis() as u64)
            .arg(&scan.cursor)
            .arg(count.max(1))
            .invoke_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        Ok((script_entries("claim", entries)?, cursor))
    }

    async fn touch(&self, queue: &QueueName, consumer: &str, ids: &[String]) -> Result<Vec<String>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.queue_invocation(&self.scripts.touch, queue, consumer);
        inv.arg(&id_bounds(ids.iter().map(String::as_str))).arg(ids);
        inv.invoke_async(&mut self.conn()).await.map_err(map_err)
    }

    async fn ack(&self, queue: &QueueName, consumer: &str, ids: &[String]) -> Result<Vec<String>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.queue_invocation(&self.scripts.ack, queue, consumer);
        inv.arg(&id_bounds(ids.iter().map(String::as_str))).arg(ids);
        inv.invoke_async(&mut self.conn()).await.map_err(map_err)
    }

    async fn release(&self, queue: &QueueName, consumer: &str, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut inv = self.queue_invocation(&self.scripts.release, queue, consumer);
        inv.arg(&id_bounds(ids.iter().map(String::as_str))).arg(ids);
        inv.invoke_async::<i64>(&mut self.conn()).await.map_err(map_err)?;
        Ok(())
    }

    async fn enqueue(&self, jobs: &[Job]) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        // One pipeline per webhook: a webhook's keys share a slot, different webhooks' need not.
        // In order within each webhook; the pipelines go out side by side.
        let mut pipes: HashMap<&str, Pipeline> = HashMap::new();
        for job in jobs {
            let stream = if is_solo(job) { self.keys.solo(&job.webhook_id) } else { self.keys.jobs(&job.webhook_id) };
            pipes
                .entry(job.webhook_id.as_str())
                .or_insert_with(redis::pipe)
                .cmd("XADD")
                .arg(stream)
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

    async fn take(&self, t: &Take<'_>) -> Result<Taken> {
        let mut inv = invocation(&self.scripts.take, &self.keys.take_keys(t.webhook));
        inv.arg(DISPATCH_GROUP)
            .arg(t.consumer)
            .arg(ms(t.lease))
            .arg(t.limit)
            .arg(t.free.len())
            .arg(t.want)
            .arg(t.batch.max(1))
            .arg(t.max_entries.max(1));
        match t.rate {
            // Microseconds, rounded up so the limit is never exceeded.
            Some(r) => inv
                .arg(r.interval.as_nanos().div_ceil(1000).max(1) as u64)
                .arg((r.interval.as_nanos().div_ceil(1000) as u64).saturating_mul(r.burst as u64)),
            None => inv.arg("").arg(0),
        };
        match &t.claim {
            Some(scan) => inv.arg(scan.min_idle.as_millis() as u64).arg(&scan.cursor),
            None => inv.arg("").arg(""),
        };
        inv.arg(PROMOTE_MAX).arg(t.known_free).arg(t.free).arg(t.release);
        let (granted, fair_share, entries, cursor, next_due, rate_wait, mark): (
            Vec<String>,
            u32,
            Value,
            String,
            i64,
            i64,
            String,
        ) = inv.invoke_async(&mut self.conn()).await.map_err(map_err)?;
        Ok(Taken {
            granted,
            fair_share,
            entries: script_entries("take", entries)?,
            cursor: (t.claim.is_some() && cursor != "-").then_some(cursor),
            next_due_ms: (next_due >= 0).then_some(next_due),
            rate_wait: (rate_wait >= 0).then(|| Duration::from_micros(rate_wait as u64)),
            mark,
        })
    }

    async fn wait_for_jobs(&self, webhook: &str, mark: &str, timeout: Duration) -> Result<()> {
        let (fresh, solo) = mark.split_once('|').unwrap_or(("$", "$"));
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(ms(timeout))
            .arg("STREAMS")
            .arg(self.keys.jobs(webhook))
            .arg(self.keys.solo(webhook))
            .arg(fresh)
            .arg(solo);
        let _: Option<Value> = self.blocking_query(&cmd, timeout).await.map_err(map_err)?;
        Ok(())
    }

    async fn renew(&self, r: &Renew<'_>) -> Result<Renewed> {
        let mut inv = invocation(&self.scripts.renew, &self.keys.renew_keys(r.webhook));
        inv.arg(DISPATCH_GROUP)
            .arg(r.consumer)
            .arg(ms(r.lease))
            .arg(r.limit)
            .arg(if r.contending { "1" } else { "0" })
            .arg(r.permits.len())
            .arg(r.permits)
            .arg(&id_bounds(r.entries.iter().map(String::as_str)))
            .arg(r.entries);
        let (lost_permits, fair_share, lost_entries): (Vec<String>, u32, Vec<String>) =
            inv.invoke_async(&mut self.conn()).await.map_err(map_err)?;
        Ok(Renewed { lost_permits, fair_share, lost_entries })
    }

    async fn rate_wait(&self, webhook: &str, rate: Rate) -> Result<Option<Duration>> {
        let interval = rate.interval.as_nanos().div_ceil(1000).max(1) as u64;
        let wait: u64 = self
            .scripts
            .rate
            .key(self.keys.rate(webhook))
            .arg(interval)
            .arg(interval.saturating_mul(rate.burst as u64))
            .invoke_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        Ok((wait > 0).then(|| Duration::from_micros(wait)))
    }

    async fn release_permits(&self, webhook: &str, consumer: &str, permits: &[String], leave: bool) -> Result<()> {
        if permits.is_empty() && !leave {
            return Ok(());
        }
        invocation(&self.scripts.release_permits, &self.keys.release_permits_keys(webhook))
            .arg(consumer)
            .arg("")
            .arg(if leave { "1" } else { "0" })
            .arg(permits)
            .invoke_async::<i64>(&mut self.conn())
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn complete(&self, webhook: &str, consumer: &str, items: &[Completion]) -> Result<Vec<bool>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let cutoff = now_ms() - ATTEMPT_RETENTION.as_millis() as i64;
        let mut inv = invocation(&self.scripts.complete, &self.keys.complete_keys(webhook));
        inv.arg(DISPATCH_GROUP).arg(consumer).arg(cutoff);
        inv.arg(&id_bounds(items.iter().flat_map(|c| c.entries.iter().map(String::as_str))));
        for c in items {
            let f = &c.follow_up;
            let follow = [(f.retry.is_some(), 'r'), (f.dead_letter.is_some(), 'd'), (f.writeback.is_some(), 'w')];
            let follow: String = follow.iter().filter(|(on, _)| *on).map(|(_, c)| *c).collect();
            inv.arg(c.entries.join(" "))
                .arg(&c.attempt.attempt_id)
                .arg(c.attempt.encode_to_vec())
                .arg(c.attempt.started_at_ms)
                .arg(follow);
            if let Some((job, due)) = &f.retry {
                inv.arg(job.encode_to_vec()).arg(*due);
            }
            if let Some((job, reason)) = &f.dead_letter {
                inv.arg(job.encode_to_vec()).arg(reason.as_str());
            }
            if let Some(w) = &f.writeback {
                inv.arg(w.encode_to_vec());
            }
        }
        let done: Vec<i64> = inv.invoke_async(&mut self.conn()).await.map_err(map_err)?;
        Ok(done.into_iter().map(|d| d == 1).collect())
    }

    async fn oldest_job_ms(&self, webhook: &str) -> Result<Option<i64>> {
        let (fresh, solo): (StreamRangeReply, StreamRangeReply) = redis::pipe()
            .cmd("XRANGE")
            .arg(self.keys.jobs(webhook))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .cmd("XRANGE")
            .arg(self.keys.solo(webhook))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        let first = |r: &StreamRangeReply| r.ids.first().and_then(|e| e.id.split('-').next()?.parse::<i64>().ok());
        Ok([first(&fresh), first(&solo)].into_iter().flatten().min())
    }

    async fn queue_depth(&self, webhook: &str) -> Result<u64> {
        let [fresh, solo, delayed] = self.keys.queue_depth_keys(webhook);
        let (fresh, solo, delayed): (u64, u64, u64) = redis::pipe()
            .cmd("XLEN")
            .arg(fresh)
            .cmd("XLEN")
            .arg(solo)
            .cmd("ZCARD")
            .arg(delayed)
            .query_async(&mut self.conn())
            .await
            .map_err(map_err)?;
        Ok(fresh + solo + delayed)
    }

    async fn queue_stats(&self, webhooks: &[String]) -> Result<Vec<QueueStats>> {
        // One pipeline per webhook (its keys share a slot), all sent side by side: one round
        // trip on the multiplexed connection however many webhooks there are.
        let asks = webhooks.iter().map(|webhook| {
            let [fresh, solo, delayed] = self.keys.queue_depth_keys(webhook);
            let mut pipe = redis::pipe();
            pipe.cmd("XLEN").arg(&fresh).cmd("XLEN").arg(&solo).cmd("ZCARD").arg(delayed);
            pipe.cmd("XRANGE").arg(&fresh).arg("-").arg("+").arg("COUNT").arg(1);
            pipe.cmd("XRANGE").arg(&solo).arg("-").arg("+").arg("COUNT").arg(1);
            pipe.cmd("XLEN").arg(self.keys.dead(webhook));
            pipe.cmd("HVALS").arg(self.keys.in_flight(webhook));
            let mut conn = self.conn();
            async move {
                type Reply = (u64, u64, u64, StreamRangeReply, StreamRangeReply, u64, Vec<String>);
                let (f, s, d, first_fresh, first_solo, dead, reports): Reply = pipe.query_async(&mut conn).await?;
                let now = now_ms();
                let in_flight = reports
                    .iter()
                    .filter_map(|r| r.split_once(':'))
                    .filter_map(|(n, until)| Some((n.parse::<u64>().ok()?, until.parse::<i64>().ok()?)))
                    .filter(|(_, until)| *until > now)
                    .map(|(n, _)| n)
                    .sum();
                let first =
                    |r: &StreamRangeReply| r.ids.first().and_then(|e| e.id.split('-').next()?.parse::<i64>().ok());
                Ok::<_, redis::RedisError>(QueueStats {
                    depth: f + s + d,
                    oldest_ms: [first(&first_fresh), first(&first_solo)].into_iter().flatten().min(),
                    dead_letters: dead,
                    in_flight,
                })
            }
        });
        futures_util::future::try_join_all(asks).await.map_err(map_err)
    }

    async fn finish_writebacks(&self, webhook: &str, consumer: &str, items: &[WritebackDone]) -> Result<Vec<bool>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = invocation(&self.scripts.finish_writebacks, &self.keys.finish_writebacks_keys(webhook));
        inv.arg(WRITEBACK_GROUP).arg(consumer);
        inv.arg(&id_bounds(items.iter().map(|i| i.entry.as_str())));
        for item in items {
            let (failed, reason) =
                item.failed.as_ref().map(|(job, why)| (job.encode_to_vec(), why.as_str())).unwrap_or_default();
            inv.arg(&item.entry)
                .arg(&item.attempt_id)
                .arg(Attempt::writeback_patch(&item.status, &item.error))
                .arg(failed)
                .arg(reason);
        }
        let done: Vec<i64> = inv.invoke_async(&mut self.conn()).await.map_err(map_err)?;
        Ok(done.into_iter().map(|d| d == 1).collect())
    }

    async fn failed_writebacks(&self, webhook: &str, limit: usize) -> Result<Vec<FailedWriteback>> {
        let key = self.keys.failed_writebacks(webhook);
        let r: StreamRangeReply =
            self.conn().xrange_count(&key, "-", "+", limit.clamp(1, 10_000)).await.map_err(map_err)?;
        let mut out = Vec::new();
        for sid in r.ids {
            let Some(bytes) = sid.get::<Vec<u8>>("w") else { continue };
            out.push(FailedWriteback {
                job: decode(&key, &bytes)?,
                reason: sid.get::<String>("r").unwrap_or_default(),
                id: sid.id,
            });
        }
        Ok(out)
    }

    async fn redrive_writebacks(&self, webhook: &str) -> Result<u64> {
        let mut moved = 0;
        loop {
            let batch = self.failed_writebacks(webhook, 500).await?;
            if batch.is_empty() {
                return Ok(moved);
            }
            let mut inv = invocation(&self.scripts.redrive_writebacks, &self.keys.redrive_writebacks_keys(webhook));
            for f in &batch {
                inv.arg(&f.id).arg(f.job.encode_to_vec());
            }
            let n: u64 = inv.invoke_async(&mut self.conn()).await.map_err(map_err)?;
            moved += n;
        }
    }

    async fn list_attempts(&self, webhook: &str, filter: &AttemptFilter) -> Result<Vec<Attempt>> {
        let key = self.keys.attempts(webhook);
        let limit = filter.limit.clamp(1, 10_000);
        let min = filter.since_ms.map(|s| s.to_string()).unwrap_or_else(|| "-inf".to_string());
        // The cursor's ms inclusive: entries of that ms past the cursor's id are skipped below
        // (a sorted set lists equal scores by member, descending, as the embedded store does).
        let max = filter.before.as_ref().map(|(ms, _)| ms.to_string()).unwrap_or_else(|| "+inf".to_string());
        let mut out = Vec::new();
        let mut offset = 0usize;
        const PAGE: usize = 500;
        // Newest first; pages until `limit` matches or the log (bounded by retention) ends.
        loop {
            let ids: Vec<String> = redis::cmd("ZREVRANGEBYSCORE")
                .arg(self.keys.attempts_by_time(webhook))
                .arg(&max)
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
                let past_cursor = filter
                    .before
                    .as_ref()
                    .is_none_or(|(ms, id)| a.started_at_ms < *ms || (a.started_at_ms == *ms && a.attempt_id < *id));
                if past_cursor && filter.matches(&a) {
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

    async fn report_in_flight(&self, node: &str, counts: &[(String, u64)], ttl: Duration) -> Result<()> {
        let until = now_ms() + ttl.as_millis() as i64;
        // One pipeline per webhook (its slot), side by side.
        let sends = counts.iter().map(|(webhook, n)| {
            let key = self.keys.in_flight(webhook);
            let mut pipe = redis::pipe();
            pipe.cmd("HSET").arg(&key).arg(node).arg(format!("{n}:{until}")).ignore();
            // Each report carries its own expiry (a node that stopped reporting is gone from
            // the sum once its report expires); the hash itself goes an hour after the last.
            pipe.cmd("PEXPIRE").arg(&key).arg(3_600_000).ignore();
            let mut conn = self.conn();
            async move { pipe.query_async::<()>(&mut conn).await }
        });
        futures_util::future::try_join_all(sends).await.map_err(map_err)?;
        Ok(())
    }

    async fn note_changes(&self, notes: &[JourneyNote]) -> Result<()> {
        if notes.is_empty() {
            return Ok(());
        }
        // One step per object: an object's keys share a slot.
        let mut by_object: HashMap<&str, Vec<&JourneyNote>> = HashMap::new();
        for n in notes {
            by_object.entry(n.object.as_str()).or_default().push(n);
        }
        let ttl = JOURNEY_TTL.as_millis() as u64;
        let steps: Vec<_> = by_object
            .into_values()
            .map(|notes| {
                let keys: Vec<String> = notes.iter().map(|n| self.keys.journey(&n.object, &n.record_id)).collect();
                let mut inv = invocation(&self.scripts.note_changes, &keys);
                inv.arg(ttl).arg(JOURNEY_KEPT);
                for n in notes {
                    let mut value = Vec::with_capacity(n.note.len() + 21);
                    let _ = write!(value, "{} ", n.version);
                    value.extend_from_slice(&n.note);
                    inv.arg(value);
                }
                inv
            })
            .collect();
        let sends = steps.iter().map(|inv| {
            let mut conn = self.conn();
            async move { inv.invoke_async::<u64>(&mut conn).await }
        });
        futures_util::future::try_join_all(sends).await.map_err(map_err)?;
        Ok(())
    }

    async fn journey(&self, object: &str, record_id: &str, limit: usize) -> Result<Vec<JourneyNote>> {
        let key = self.keys.journey(object, record_id);
        let stop = limit.clamp(1, JOURNEY_KEPT) as isize - 1;
        let items: Vec<Vec<u8>> = self.conn().lrange(&key, 0, stop).await.map_err(map_err)?;
        Ok(items
            .into_iter()
            .filter_map(|item| {
                let space = item.iter().position(|b| *b == b' ')?;
                let version = std::str::from_utf8(&item[..space]).ok()?.parse().ok()?;
                Some(JourneyNote {
                    object: object.to_string(),
                    record_id: record_id.to_string(),
                    version,
                    note: item[space + 1..].to_vec(),
                })
            })
            .collect())
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

    async fn redrive_some(&self, webhook: &str, ids: &[String]) -> Result<u64> {
        let key = self.keys.dead(webhook);
        // Only stream ids (`<ms>-<seq>`) can name a dead letter; Redis refuses others.
        let is_id = |id: &&String| {
            id.split_once('-').is_some_and(|(ms, seq)| {
                [ms, seq].iter().all(|p| !p.is_empty() && p.len() <= 19 && p.bytes().all(|b| b.is_ascii_digit()))
            })
        };
        let ids: Vec<&String> = ids.iter().filter(is_id).collect();
        let mut moved = 0;
        for chunk in ids.chunks(500) {
            // Read the chosen entries (XRANGE id id each, in one pipeline), then move them.
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.cmd("XRANGE").arg(&key).arg(*id).arg(*id);
            }
            let found: Vec<StreamRangeReply> = pipe.query_async(&mut self.conn()).await.map_err(map_err)?;
            let mut inv = invocation(&self.scripts.redrive, &self.keys.redrive_keys(webhook));
            let mut any = false;
            for sid in found.into_iter().flat_map(|r| r.ids) {
                let Some(bytes) = sid.get::<Vec<u8>>("j") else { continue };
                let job: Job = decode(&key, &bytes)?;
                inv.arg(&sid.id).arg(Job { attempts: 0, ..job }.encode_to_vec());
                any = true;
            }
            if any {
                let n: u64 = inv.invoke_async(&mut self.conn()).await.map_err(map_err)?;
                moved += n;
            }
        }
        Ok(moved)
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
            .arg(ms(ttl))
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
            .arg(ms(ttl))
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
            .arg(ms(ttl))
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
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn read_replies_give_their_entries_in_both_protocols() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let entry = |id: &str, fields: Vec<Value>| Value::Array(vec![bulk(id), Value::Array(fields)]);
        let entries = Value::Array(vec![
            entry("1-0", vec![bulk("job"), bulk("payload-1")]),
            entry("2-0", vec![bulk("redriven"), bulk("1"), bulk("job"), bulk("payload-2")]),
            entry("3-0", vec![bulk("other"), bulk("x")]),
        ]);
        let check = |got: Vec<RawEntry>| {
            let seen: Vec<(&str, &[u8], bool)> =
                got.iter().map(|e| (e.id.as_str(), e.payload.as_slice(), e.redriven)).collect();
            assert_eq!(seen, [("1-0", &b"payload-1"[..], false), ("2-0", b"payload-2", true), ("3-0", b"", false)]);
            assert!(got.iter().all(|e| e.deliveries == 1 && !e.solo));
        };
        check(read_reply_entries(Value::Array(vec![Value::Array(vec![bulk("stream"), entries.clone()])]), "job"));
        check(read_reply_entries(Value::Map(vec![(bulk("stream"), entries)]), "job"));
        assert!(read_reply_entries(Value::Nil, "job").is_empty(), "a block that timed out");
    }

    fn nodes(url: &str) -> Option<Vec<String>> {
        cluster_nodes(url).expect("a valid URL")
    }

    #[tokio::test]
    async fn connection_errors_never_show_a_password() {
        for url in [
            "redis://:hunter2secret@127.0.0.1:1",
            "redis://user:hunter2secret@127.0.0.1:notaport",
            "rediss://:hunter2secret@127.0.0.1:1/0",
            "redis+cluster://u:hunter2secret@127.0.0.1:1",
            "redis://:hunter2secret@127.0.0.1:1,redis://:hunter2secret@127.0.0.1:2",
        ] {
            let Err(e) = RedisStore::connect(url, "t").await else { panic!("{url} connected") };
            assert!(!format!("{e} {e:?}").contains("hunter2secret"), "{url}: {e}");
        }
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
    fn id_bounds_per_stream() {
        let ids = ["5-10", "s:7-1", "5-9", "12-0", "s:3-4", "not-an-id", "s:bad"];
        assert_eq!(id_bounds(ids), ["5-9", "12-0", "3-4", "7-1"].map(String::from));
        assert_eq!(id_bounds(["10-0", "9-99"]), ["9-99", "10-0", "", ""].map(String::from), "numeric, not text order");
        assert_eq!(id_bounds([]), ["", "", "", ""].map(String::from));
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
