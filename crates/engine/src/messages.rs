//! Messages shared by several actors.

use std::sync::Arc;

use actix::prelude::*;

use crate::catalog::Catalog;

/// A new snapshot of every definition, pushed by the coordinator to each subscriber.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct CatalogChanged {
    pub catalog: Arc<Catalog>,
}

/// Asks the coordinator to push every future catalog (and the current one) to `recipient`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    pub recipient: Recipient<CatalogChanged>,
}
