//! Finishing calls in bulk: every delivery of a webhook hands its completion (attempt,
//! follow-up, entries to acknowledge) to one task, which sends all that have queued up
//! while its previous store call ran in one [`Store::complete`] — one round trip (one Lua
//! call, or one embedded commit) for many deliveries, with no added wait when the node is
//! quiet. Transient store errors are retried with backoff before giving up.

use std::sync::Arc;
use std::time::Duration;

use hookline_store::{Completion, Store};
use tokio::sync::{mpsc, oneshot};

/// Completions sent in one store call, at most.
const MAX_BATCH: usize = 256;
/// How long a completion is retried while the store is unreachable.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

type Item = (Completion, oneshot::Sender<bool>);

/// The handle deliveries complete their calls through.
#[derive(Clone)]
pub struct Completer {
    tx: mpsc::Sender<Item>,
}

impl Completer {
    /// Starts the completing task of `webhook` for `consumer`; it ends when every handle is
    /// dropped.
    pub fn start(store: Arc<dyn Store>, webhook: &str, consumer: &str) -> Completer {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(run(store, webhook.to_string(), consumer.to_string(), rx));
        Completer { tx }
    }

    /// Records a finished call; true if it took effect (its entries were still this
    /// consumer's), false if they were taken over or the store could not be reached.
    pub async fn complete(&self, c: Completion) -> bool {
        let (reply, answer) = oneshot::channel();
        if self.tx.send((c, reply)).await.is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }
}

async fn run(store: Arc<dyn Store>, webhook: String, consumer: String, mut rx: mpsc::Receiver<Item>) {
    let mut batch: Vec<Item> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let (items, replies): (Vec<Completion>, Vec<oneshot::Sender<bool>>) = batch.drain(..).unzip();
        let done = complete_with_retries(store.as_ref(), &webhook, &consumer, &items).await;
        for (i, reply) in replies.into_iter().enumerate() {
            let _ = reply.send(done.get(i).copied().unwrap_or(false));
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
