//! The coordinator owns the node's view of the definitions: it loads them at start, follows
//! the store's definition events (written by any node's API), loads again on demand — when a
//! worker meets a change stamped with a newer definitions' version — and publishes each new
//! [`Catalog`] to every worker ([`CatalogView`]) and to the supervisor actors.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::{mpsc, watch};

use crate::catalog::{Catalog, CatalogView};
use crate::messages::{CatalogChanged, Subscribe};
use hookline_secrets::SecretBox;
use hookline_store::Store;

/// Loads every definition again and publishes the result if it is newer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reload;

/// The current catalog.
#[derive(Message)]
#[rtype(result = "Arc<Catalog>")]
pub struct GetCatalog;

pub struct Coordinator {
    store: Arc<dyn Store>,
    secrets: SecretBox,
    published: watch::Sender<Arc<Catalog>>,
    subscribers: Vec<Recipient<CatalogChanged>>,
    shutdown: watch::Receiver<bool>,
    metrics: Arc<hookline_telemetry::Metrics>,
    /// Set while a load runs; a reload asked for meanwhile runs after it.
    loading: bool,
    again: bool,
    refresh: Option<mpsc::UnboundedReceiver<u64>>,
}

impl Coordinator {
    /// Loads the catalog before the actor starts, so no worker ever sees an empty one, and
    /// returns the view every worker reads.
    pub async fn start(
        store: Arc<dyn Store>,
        secrets: SecretBox,
        shutdown: watch::Receiver<bool>,
        metrics: Arc<hookline_telemetry::Metrics>,
    ) -> Result<(Addr<Self>, CatalogView), hookline_store::StoreError> {
        let catalog = Catalog::load(store.as_ref(), &secrets).await?;
        report_broken(&catalog, None, &metrics);
        let (published, rx) = watch::channel(Arc::new(catalog));
        let (refresh_tx, refresh_rx) = mpsc::unbounded_channel();
        let view = CatalogView::new(rx, refresh_tx);
        let actor = Coordinator {
            store,
            secrets,
            published,
            subscribers: Vec::new(),
            shutdown,
            metrics,
            loading: false,
            again: false,
            refresh: Some(refresh_rx),
        };
        Ok((actor.start(), view))
    }
}

/// Logs the webhooks of `catalog` that do not load (once each, when they start or change
/// their reason) and sets the metric naming them.
fn report_broken(catalog: &Catalog, before: Option<&Catalog>, metrics: &hookline_telemetry::Metrics) {
    for (id, broken) in &catalog.broken {
        if before.and_then(|b| b.broken.get(id)) != Some(broken) {
            tracing::error!(webhook_id = %id, object = %broken.object, reason = %broken.reason,
                "webhook does not load on this node: changes of its object wait until it does, and /readyz fails");
        }
    }
    if let Some(before) = before {
        for id in before.broken.keys().filter(|id| !catalog.broken.contains_key(*id)) {
            tracing::info!(webhook_id = %id, "webhook loads again");
        }
    }
    metrics.set_broken(catalog.broken.keys().cloned().collect());
}

/// Follows definition events until shutdown. After an error (say, Redis restarted) it
/// reloads everything, since events may have been missed.
async fn follow_events(store: Arc<dyn Store>, addr: Addr<Coordinator>, mut shutdown: watch::Receiver<bool>) {
    let mut cursor = None;
    while !*shutdown.borrow() {
        let pos = match cursor.take() {
            Some(c) => c,
            // A fresh cursor: whatever changed before it is picked up by one reload.
            None => match store.events_cursor().await {
                Ok(c) => {
                    addr.do_send(Reload);
                    c
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read definition events; retrying");
                    let _ = tokio::time::timeout(Duration::from_secs(1), shutdown.changed()).await;
                    continue;
                }
            },
        };
        let mut pos = pos;
        let next = tokio::select! {
            n = store.next_events(&mut pos, Duration::from_secs(2)) => n,
            _ = shutdown.changed() => return,
        };
        match next {
            Ok(events) => {
                if !events.is_empty() {
                    tracing::debug!(count = events.len(), "definitions changed");
                    addr.do_send(Reload);
                }
                cursor = Some(pos);
            }
            Err(error) => {
                tracing::warn!(%error, "lost the definition event stream; reloading");
                let _ = tokio::time::timeout(Duration::from_secs(1), shutdown.changed()).await;
            }
        }
    }
}

/// Turns workers' requests for a newer catalog into reloads, until shutdown.
async fn follow_requests(
    mut requests: mpsc::UnboundedReceiver<u64>,
    addr: Addr<Coordinator>,
    published: watch::Receiver<Arc<Catalog>>,
    mut shutdown: watch::Receiver<bool>,
) {
    while !*shutdown.borrow() {
        let version = tokio::select! {
            v = requests.recv() => match v { Some(v) => v, None => return },
            _ = shutdown.changed() => return,
        };
        if published.borrow().version < version {
            addr.do_send(Reload);
        }
    }
}

impl Actor for Coordinator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let fut = follow_events(self.store.clone(), ctx.address(), self.shutdown.clone());
        ctx.spawn(fut.into_actor(self));
        if let Some(requests) = self.refresh.take() {
            let fut = follow_requests(requests, ctx.address(), self.published.subscribe(), self.shutdown.clone());
            ctx.spawn(fut.into_actor(self));
        }
    }
}

impl Handler<Subscribe> for Coordinator {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _ctx: &mut Self::Context) {
        msg.recipient.do_send(CatalogChanged { catalog: self.published.borrow().clone() });
        self.subscribers.push(msg.recipient);
    }
}

impl Handler<GetCatalog> for Coordinator {
    type Result = Arc<Catalog>;

    fn handle(&mut self, _msg: GetCatalog, _ctx: &mut Self::Context) -> Self::Result {
        self.published.borrow().clone()
    }
}

impl Handler<Reload> for Coordinator {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _msg: Reload, _ctx: &mut Self::Context) -> Self::Result {
        if self.loading {
            self.again = true;
            return Box::pin(fut::ready(()));
        }
        self.loading = true;
        let (store, secrets) = (self.store.clone(), self.secrets.clone());
        Box::pin(async move { Catalog::load(store.as_ref(), &secrets).await }.into_actor(self).map(
            |loaded, act, ctx| {
                act.loading = false;
                match loaded {
                    // Loads may finish out of order with concurrent writers: never go back.
                    Ok(catalog) if catalog.version >= act.published.borrow().version => {
                        let before = act.published.borrow().clone();
                        report_broken(&catalog, Some(&before), &act.metrics);
                        let catalog = Arc::new(catalog);
                        act.published.send_replace(catalog.clone());
                        for s in &act.subscribers {
                            s.do_send(CatalogChanged { catalog: catalog.clone() });
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "reloading definitions failed; trying again in a second");
                        act.again = false;
                        ctx.notify_later(Reload, Duration::from_secs(1));
                    }
                }
                if std::mem::take(&mut act.again) {
                    ctx.notify(Reload);
                }
            },
        ))
    }
}
