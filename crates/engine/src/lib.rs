//! Hookline's engine: the actors that carry a record change to a third-party API and its
//! answer back onto the records.
//!
//! - [`coordinator`] loads the definitions, follows every node's changes to them and
//!   publishes one compiled [`catalog::Catalog`] that every worker of the node reads
//!   ([`catalog::CatalogView`]);
//! - [`trigger`] reads change streams and enqueues a job per webhook a change fires;
//! - [`scheduler`] runs scheduled webhooks' ticks, one node per tick;
//! - [`dispatcher`] delivers jobs under each webhook's cluster-wide concurrency and rate
//!   limits, records every attempt and schedules retries, dead letters and write-backs;
//! - [`writeback`] runs response scripts and updates records through [`records`], the same
//!   path the API uses.
//!
//! The trigger, dispatcher, writeback and scheduler actors are supervisors: each keeps one
//! [`workers::WorkerSet`] — a task per object or webhook, restarted if it fails — in step with
//! the catalog. Workers run on the multi-threaded runtime and read every queue through
//! [`hookline_store::queue::Consumer`], whose leases keep a live node's work its own.
//!
//! Pure pieces sit beside them: [`render`] builds requests, [`attempt`] records exchanges,
//! [`trace`] carries W3C trace context. Actors talk through [`messages`] and hold
//! `Recipient`s, not each other.

pub mod attempt;
pub mod catalog;
pub mod coordinator;
pub mod dispatcher;
pub mod drain;
pub mod journey;
pub mod messages;
pub mod oauth;
pub mod records;
pub mod render;
pub mod scheduler;
pub mod trace;
pub mod trigger;
pub mod workers;
pub mod writeback;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use hookline_outbound::Outbound;
use hookline_script::ScriptPool;
use hookline_store::{Store, StoreError};
use tokio::sync::watch;

/// The lease of everything a node holds in the store (queue entries, permits) unless
/// configured otherwise: renewed every third of it; a dead node's work is taken over one
/// lease after its last renewal.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// What every actor and worker of a node shares.
#[derive(Clone)]
pub struct EngineContext {
    pub store: Arc<dyn Store>,
    pub outbound: Outbound,
    pub scripts: ScriptPool,
    /// This node's name in attempts and logs.
    pub node_id: String,
    /// This process's name in consumer groups and permits: the node id and a per-process
    /// suffix, so a restarted node with the same id never passes for its former self.
    pub consumer: String,
    /// How long entries and permits held in the store last without renewal.
    pub lease: Duration,
    /// Turns true once, when the node stops.
    pub shutdown: watch::Receiver<bool>,
    /// Every worker and delivery holds a guard, so shutdown can wait for in-flight work.
    pub drain: Arc<drain::Drain>,
    /// Seals secrets the engine stores (OAuth tokens).
    pub secrets: hookline_secrets::SecretBox,
    /// This node's metrics.
    pub metrics: Arc<hookline_telemetry::Metrics>,
    /// The definitions, as this node knows them now.
    pub catalog: catalog::CatalogView,
}

impl EngineContext {
    /// A consumer name for `node_id` in this process.
    pub fn consumer_name(node_id: &str) -> String {
        format!("{node_id}#{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
    }

    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// Which roles a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub coordinator: bool,
    pub trigger: bool,
    pub dispatcher: bool,
    pub writeback: bool,
}

impl Roles {
    pub const ALL: Roles = Roles { coordinator: true, trigger: true, dispatcher: true, writeback: true };
    pub const NONE: Roles = Roles { coordinator: false, trigger: false, dispatcher: false, writeback: false };
}

impl std::fmt::Display for Roles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = [
            (self.coordinator, "coordinator"),
            (self.trigger, "trigger"),
            (self.dispatcher, "dispatcher"),
            (self.writeback, "writeback"),
        ];
        let on: Vec<&str> = names.iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect();
        write!(f, "{}", if on.is_empty() { "none".to_string() } else { on.join(",") })
    }
}

/// The running actors of one node.
pub struct Engine {
    pub coordinator: Addr<coordinator::Coordinator>,
    pub trigger: Option<Addr<trigger::Trigger>>,
    pub dispatcher: Option<Addr<dispatcher::Dispatcher>>,
    pub writeback: Option<Addr<writeback::Writeback>>,
    pub scheduler: Option<Addr<scheduler::Scheduler>>,
}

/// The parts of an [`EngineContext`] the engine does not make itself.
pub struct EngineParts {
    pub store: Arc<dyn Store>,
    pub outbound: Outbound,
    pub scripts: ScriptPool,
    pub node_id: String,
    pub lease: Duration,
    pub shutdown: watch::Receiver<bool>,
    pub drain: Arc<drain::Drain>,
    pub secrets: hookline_secrets::SecretBox,
    pub metrics: Arc<hookline_telemetry::Metrics>,
}

impl Engine {
    /// Loads the definitions and starts the actors of `roles` in the current actix system.
    /// The coordinator runs on every node (every node keeps the catalog current, for its
    /// workers and its `/readyz`); the `coordinator` role adds the scheduler.
    pub async fn start(parts: EngineParts, roles: Roles) -> Result<(Engine, EngineContext), StoreError> {
        let (coordinator, catalog) = coordinator::Coordinator::start(
            parts.store.clone(),
            parts.secrets.clone(),
            parts.shutdown.clone(),
            parts.metrics.clone(),
        )
        .await?;
        let ctx = EngineContext {
            store: parts.store,
            outbound: parts.outbound,
            scripts: parts.scripts,
            consumer: EngineContext::consumer_name(&parts.node_id),
            node_id: parts.node_id,
            lease: parts.lease,
            shutdown: parts.shutdown,
            drain: parts.drain,
            secrets: parts.secrets,
            metrics: parts.metrics,
            catalog,
        };
        let subscribe =
            |r: Recipient<messages::CatalogChanged>| coordinator.do_send(messages::Subscribe { recipient: r });
        let trigger = roles.trigger.then(|| trigger::Trigger::new(ctx.clone()).start());
        let dispatcher = roles.dispatcher.then(|| dispatcher::Dispatcher::new(ctx.clone()).start());
        let writeback = roles.writeback.then(|| writeback::Writeback::new(ctx.clone()).start());
        let scheduler = roles.coordinator.then(|| scheduler::Scheduler::new(ctx.clone()).start());
        if let Some(a) = &trigger {
            subscribe(a.clone().recipient());
        }
        if let Some(a) = &dispatcher {
            subscribe(a.clone().recipient());
        }
        if let Some(a) = &writeback {
            subscribe(a.clone().recipient());
        }
        if let Some(a) = &scheduler {
            subscribe(a.clone().recipient());
        }
        Ok((Engine { coordinator, trigger, dispatcher, writeback, scheduler }, ctx))
    }
}
