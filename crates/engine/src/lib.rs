//! Hookline's engine: the actors that carry a record change to a third-party API and its
//! answer back onto the record.
//!
//! - [`coordinator`] owns the definitions and pushes a compiled [`catalog::Catalog`] to
//!   the other actors whenever any node changes one;
//! - [`trigger`] reads change streams and enqueues a job per webhook a change fires;
//! - [`scheduler`] runs scheduled webhooks' ticks, one node per tick;
//! - [`dispatcher`] delivers jobs under each webhook's cluster-wide concurrency limit,
//!   records every attempt and schedules retries, dead letters and write-backs;
//! - [`writeback`] runs response scripts and updates records through [`records`], the same
//!   path the API uses.
//!
//! Pure pieces sit beside them: [`render`] builds requests, [`trace`] carries W3C trace
//! context. Actors talk through [`messages`] and hold `Recipient`s, not each other.

pub mod catalog;
pub mod coordinator;
pub mod dispatcher;
pub mod drain;
pub mod messages;
pub mod oauth;
pub mod records;
pub mod render;
pub mod scheduler;
pub mod trace;
pub mod trigger;
pub mod writeback;

use std::sync::Arc;

use actix::prelude::*;
use hookline_outbound::Outbound;
use hookline_script::ScriptPool;
use hookline_store::{Store, StoreError};
use tokio::sync::watch;

/// What every actor of a node shares.
#[derive(Clone)]
pub struct EngineContext {
    pub store: Arc<dyn Store>,
    pub outbound: Outbound,
    pub scripts: ScriptPool,
    /// This node's name in consumer groups, attempts and logs.
    pub node_id: String,
    /// Turns true once, when the node stops.
    pub shutdown: watch::Receiver<bool>,
    /// Every worker loop holds a guard, so shutdown can wait for in-flight work.
    pub drain: Arc<drain::Drain>,
    /// Seals secrets the engine stores (OAuth tokens).
    pub secrets: hookline_secrets::SecretBox,
    /// This node's metrics.
    pub metrics: Arc<hookline_telemetry::Metrics>,
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

impl Engine {
    /// Starts the actors of `roles` in the current actix system. Every engine role needs
    /// definitions, so a coordinator runs whenever any of them does.
    pub async fn start(ctx: EngineContext, roles: Roles) -> Result<Engine, StoreError> {
        let coordinator =
            coordinator::Coordinator::start(ctx.store.clone(), ctx.secrets.clone(), ctx.shutdown.clone()).await?;
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
        Ok(Engine { coordinator, trigger, dispatcher, writeback, scheduler })
    }
}
