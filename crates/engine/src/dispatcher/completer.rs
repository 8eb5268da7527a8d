//! Finishing calls in bulk: every delivery of a webhook hands its finished call (attempt,
//! follow-up, the entries to acknowledge) to one task and ends there. The task sends all
//! that have queued up while its previous store call ran in one [`Store::complete`] — one
//! round trip (one Lua call, or one embedded commit) for many deliveries, with no added wait
//! when the node is quiet — and gives back the jobs of a call whose outcome did not take
//! effect. Transient store errors are retried with backoff before giving up.

use std::sync::Arc;
use std::time::Duration;

use hookline_proto::Job;
use hookline_store::queue::{Consumer, Lease};
use hookline_store::{Completion, Store};
use tokio::sync::mpsc;

use crate::drain::DrainGuard;

/// Completions sent in one store call, at most.
const MAX_BATCH: usize = 256;
/// How long a completion is retried while the store is unreachable.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

/// A call that is over: what to record, the entries it carried, and the guard that keeps
/// a draining node waiting until it is recorded (or its jobs given back).
pub struct Finished {
    pub completion: Completion,
    pub lease: Lease<Job>,
    pub running: DrainGuard,
}

/// The handle deliveries finish their calls through.
#[derive(Clone)]
pub struct Completer {
    tx: mpsc::Sender<Finished>,
    consumer: Arc<Consumer<Job>>,
}

impl Completer {
    /// Starts the completing task of `webhook` for `consumer`; it ends when every handle is
    /// dropped.
    pub fn start(store: Arc<dyn Store>, webhook: &str, consumer: Arc<Consumer<Job>>) -> Completer {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(run(store, webhook.to_string(), consumer.clone(), rx));
        Completer { tx, consumer }
    }

    /// Hands a finished call over to be recorded. If the outcome does not take effect (its
    /// entries were taken over, or the store could not be reached) its jobs are given back,
    /// to be delivered again.
    pub async fn finish(&self, finished: Finished) {
        // Handed over at once when there is room (nearly always): a send future holds the
        // finished call twice over and would make every delivery's future kilobytes larger.
        let closed = match self.tx.try_send(finished) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(f)) => match Box::pin(self.tx.send(f)).await {
                Ok(()) => return,
                Err(mpsc::error::SendError(f)) => f,
            },
            Err(mpsc::error::TrySendError::Closed(f)) => f,
        };
        // The task is gone (the node is stopping): the jobs go back unrecorded.
        Box::pin(give_back(&self.consumer, closed.lease)).await;
    }
}

/// Gives a call's jobs back to the queue, to be delivered again.
async fn give_back(consumer: &Consumer<Job>, lease: Lease<Job>) {
    if let Err(error) = consumer.release(lease).await {
        tracing::warn!(%error, "cannot give the call's jobs back; they are taken over after their lease");
    }
}

async fn run(store: Arc<dyn Store>, webhook: String, consumer: Arc<Consumer<Job>>, mut rx: mpsc::Receiver<Finished>) {
    let mut batch: Vec<Finished> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let (items, held): (Vec<Completion>, Vec<(Lease<Job>, DrainGuard)>) =
            batch.drain(..).map(|f| (f.completion, (f.lease, f.running))).unzip();
        let done = complete_with_retries(store.as_ref(), &webhook, consumer.name(), &items).await;
        for (i, (lease, running)) in held.into_iter().enumerate() {
            if done.get(i).copied().unwrap_or(false) {
                drop(lease.into_entries());
                continue;
            }
            tracing::warn!(webhook_id = %webhook, "the call's outcome was not recorded (its jobs were taken over, or the store is unreachable); they will be delivered again");
            let consumer = consumer.clone();
            tokio::spawn(async move {
                give_back(&consumer, lease).await;
                drop(running);
            });
        }
    }
}

async fn complete_with_retries(store: &dyn Store, webhook: &str, consumer: &str, items: &[Completion]) -> Vec<bool> {
    let started = tokio::time::Instant::now();
    let mut wait = Duration::from_millis(50);
    loop {
        match store.complete(webhook, consumer, items).await {
            Ok(done) => return done,
            Err(error) if error.is_transient() && started.elapsed() < GIVE_UP_AFTER => {
                tracing::warn!(webhook_id = webhook, %error, calls = items.len(), "cannot record attempts yet; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(error) => {
                tracing::error!(webhook_id = webhook, %error, calls = items.len(), "attempts not recorded; their jobs stay queued and are delivered again");
                return vec![false; items.len()];
            }
        }
    }
}
