//! One generic set of supervised workers, used by every supervisor actor: a task per key (a
//! data object, a webhook) that the catalog says should run, started when its key appears,
//! told to stop when it goes, and started again — after a pause that grows with repeated
//! failures — if it panics or ends on its own while still wanted.
//!
//! Workers read the current definition from the shared [`crate::catalog::CatalogView`], so
//! a changed definition needs no restart; only keys coming and going move the set.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::EngineContext;

/// What a worker is given: its key, the engine, and its stop switch.
#[derive(Clone)]
pub struct WorkerCtx {
    pub key: String,
    pub engine: EngineContext,
    stop: watch::Receiver<bool>,
}

impl WorkerCtx {
    /// Whether the worker should stop: its key is gone, or the node is stopping.
    pub fn stopping(&self) -> bool {
        *self.stop.borrow() || self.engine.shutting_down()
    }

    /// Resolves once the worker should stop.
    pub async fn stopped(&self) {
        let (mut stop, mut shutdown) = (self.stop.clone(), self.engine.shutdown.clone());
        while !self.stopping() {
            tokio::select! {
                r = stop.changed() => if r.is_err() { return },
                r = shutdown.changed() => if r.is_err() { return },
            }
        }
    }

    /// Waits `d`, or less if the worker is told to stop.
    pub async fn pause(&self, d: Duration) {
        let _ = tokio::time::timeout(d, self.stopped()).await;
    }
}

struct Running {
    stop: watch::Sender<bool>,
}

/// A set of workers of one kind (`name` in logs), keyed by object or webhook.
pub struct WorkerSet {
    name: &'static str,
    running: HashMap<String, Running>,
}

/// Starts a worker for a key.
pub type Start = Arc<dyn Fn(WorkerCtx) -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>;

impl WorkerSet {
    pub fn new(name: &'static str) -> Self {
        WorkerSet { name, running: HashMap::new() }
    }

    /// Makes the running set exactly `wanted`: stops the workers of keys not in it and
    /// starts those missing, each with `start`.
    pub fn sync(&mut self, ctx: &EngineContext, wanted: impl IntoIterator<Item = String>, start: &Start) {
        let wanted: std::collections::HashSet<String> = wanted.into_iter().collect();
        self.running.retain(|key, w| {
            let keep = wanted.contains(key);
            if !keep {
                let _ = w.stop.send(true);
            }
            keep
        });
        for key in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            let (stop, stopped) = watch::channel(false);
            let w = WorkerCtx { key: key.clone(), engine: ctx.clone(), stop: stopped };
            tokio::spawn(supervise(self.name, w, start.clone()));
            self.running.insert(key, Running { stop });
        }
    }

    /// Tells every worker to stop.
    pub fn stop_all(&mut self) {
        for w in self.running.values() {
            let _ = w.stop.send(true);
        }
        self.running.clear();
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.running.keys()
    }
}

/// Runs one worker until it is told to stop, starting it again after a failure.
async fn supervise(name: &'static str, w: WorkerCtx, start: Start) {
    let _running = w.engine.drain.guard();
    let mut backoff = Duration::from_millis(200);
    tracing::debug!(worker = name, key = %w.key, "worker started");
    loop {
        let began = tokio::time::Instant::now();
        let outcome = tokio::spawn(start(w.clone())).await;
        if w.stopping() {
            break;
        }
        if began.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_millis(200);
        }
        match outcome {
            Err(e) if e.is_panic() => {
                tracing::error!(worker = name, key = %w.key, "worker panicked; starting it again in {backoff:?}")
            }
            _ => {
                tracing::warn!(worker = name, key = %w.key, "worker ended while still wanted; starting it again in {backoff:?}")
            }
        }
        w.pause(backoff).await;
        if w.stopping() {
            break;
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
    tracing::debug!(worker = name, key = %w.key, "worker stopped");
}
