//! The coordinator owns the definitions: it loads them at start, follows the store's
//! definition events (written by any node's API) and pushes a fresh [`Catalog`] to the
//! other actors whenever something changed.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::watch;

use crate::catalog::Catalog;
use crate::messages::{CatalogChanged, Subscribe};
use hookline_secrets::SecretBox;
use hookline_store::Store;

/// Reloads every definition from the store and pushes the result to the subscribers.
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
    catalog: Arc<Catalog>,
    subscribers: Vec<Recipient<CatalogChanged>>,
    shutdown: watch::Receiver<bool>,
}

impl Coordinator {
    /// Loads the catalog before the actor starts, so subscribers never see an empty one.
    pub async fn start(
        store: Arc<dyn Store>,
        secrets: SecretBox,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Addr<Self>, hookline_store::StoreError> {
        let catalog = Arc::new(Catalog::load(store.as_ref(), &secrets).await?);
        Ok(Coordinator { store, secrets, catalog, subscribers: Vec::new(), shutdown }.start())
    }
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
        match store.next_events(&mut pos, Duration::from_secs(2)).await {
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

impl Actor for Coordinator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let fut = follow_events(self.store.clone(), ctx.address(), self.shutdown.clone());
        ctx.spawn(fut.into_actor(self));
    }
}

impl Handler<Subscribe> for Coordinator {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _ctx: &mut Self::Context) {
        msg.recipient.do_send(CatalogChanged { catalog: self.catalog.clone() });
        self.subscribers.push(msg.recipient);
    }
}

impl Handler<GetCatalog> for Coordinator {
    type Result = Arc<Catalog>;

    fn handle(&mut self, _msg: GetCatalog, _ctx: &mut Self::Context) -> Self::Result {
        self.catalog.clone()
    }
}

impl Handler<Reload> for Coordinator {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _msg: Reload, _ctx: &mut Self::Context) -> Self::Result {
        let (store, secrets) = (self.store.clone(), self.secrets.clone());
        Box::pin(async move { Catalog::load(store.as_ref(), &secrets).await }.into_actor(self).map(
            |loaded, act, _ctx| match loaded {
                Ok(catalog) => {
                    act.catalog = Arc::new(catalog);
                    for s in &act.subscribers {
                        s.do_send(CatalogChanged { catalog: act.catalog.clone() });
                    }
                }
                Err(error) => tracing::warn!(%error, "reloading definitions failed"),
            },
        ))
    }
}
