//! The typed queue handle every consumer reads through — the trigger (change streams), the
//! dispatcher (job streams) and the writeback (write-back streams).
//!
//! A [`Consumer`] is one consumer's view of one queue. What it reads (or adopts from a
//! dispatcher's [`Store::take`]) comes back as a [`Lease`]: decoded entries that are *this
//! consumer's* until it finishes them. While any lease is open, one heartbeat per consumer —
//! not one per lease — touches all of its entries every third of the lease, so however long
//! the work waits (on a rate limit, a token refresh, a slow target) no other node takes the
//! entries over; only a consumer that stops heartbeating (a dead node) loses them, one lease
//! after its last beat. A beat that finds an entry gone to another consumer marks it lost;
//! finishing skips lost entries, and the store refuses to finish what the consumer no longer
//! owns anyway.
//!
//! A dispatcher's heartbeat also renews its concurrency permits: it supplies its own beat
//! ([`Beat`]), which calls [`Store::renew`] with both.

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use hookline_proto::Message;

use crate::{ClaimScan, Entry, QueueName, RawEntry, Result, Store};

/// A heartbeat: given the ids of the entries held, keeps them (and whatever else the
/// consumer holds) alive; returns the ids no longer the consumer's.
pub type Beat = Arc<dyn Fn(Vec<String>) -> BoxFuture<'static, Result<Vec<String>>> + Send + Sync>;

/// The entries a consumer holds, and which of them it lost.
#[derive(Default)]
struct Book {
    /// Entry id → lost (foldhash: the ids are the store's, and every entry is added and
    /// removed once).
    held: Mutex<foldhash::HashMap<String, bool>>,
}

impl Book {
    fn lock(&self) -> std::sync::MutexGuard<'_, foldhash::HashMap<String, bool>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, ids: impl IntoIterator<Item = String>) {
        let mut held = self.lock();
        for id in ids {
            held.insert(id, false);
        }
    }

    fn remove<'a>(&self, ids: impl IntoIterator<Item = &'a String>) {
        let mut held = self.lock();
        for id in ids {
            held.remove(id);
        }
    }

    fn ids(&self) -> Vec<String> {
        self.lock().iter().filter(|(_, lost)| !**lost).map(|(id, _)| id.clone()).collect()
    }

    fn mark_lost(&self, ids: &[String]) {
        let mut held = self.lock();
        for id in ids {
            if let Some(lost) = held.get_mut(id) {
                *lost = true;
            }
        }
    }

    fn any_lost<'a>(&self, ids: impl IntoIterator<Item = &'a String>) -> bool {
        let held = self.lock();
        ids.into_iter().any(|id| held.get(id).is_none_or(|lost| *lost))
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One consumer's handle on one queue of `T` entries (a protobuf message).
pub struct Consumer<T> {
    store: Arc<dyn Store>,
    queue: QueueName,
    name: String,
    book: Arc<Book>,
    _heartbeat: AbortOnDrop,
    _t: PhantomData<fn() -> T>,
}

impl<T: Message + Default> Consumer<T> {
    /// A consumer named `name` of `queue`, whose heartbeat touches its entries every third of
    /// `lease` (with `beat`, or [`Store::touch`] by default). Must be called inside a Tokio
    /// runtime; the heartbeat stops when the consumer is dropped.
    pub fn new(store: Arc<dyn Store>, queue: QueueName, name: &str, lease: Duration, beat: Option<Beat>) -> Self {
        let book = Arc::new(Book::default());
        let beat = beat.unwrap_or_else(|| {
            let (store, queue, name) = (store.clone(), queue.clone(), name.to_string());
            Arc::new(move |ids: Vec<String>| {
                let (store, queue, name) = (store.clone(), queue.clone(), name.clone());
                Box::pin(async move { store.touch(&queue, &name, &ids).await }) as BoxFuture<'static, _>
            })
        });
        let heartbeat = tokio::spawn(heartbeat(Arc::downgrade(&book), beat, lease / 3, queue.clone()));
        Consumer { store, queue, name: name.to_string(), book, _heartbeat: AbortOnDrop(heartbeat), _t: PhantomData }
    }

    pub fn queue(&self) -> &QueueName {
        &self.queue
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// New entries, at most `count`, waiting up to `block` for one.
    pub async fn read(&self, count: usize, block: Duration) -> Result<Lease<T>> {
        let raw = self.store.read(&self.queue, &self.name, count, block).await?;
        self.adopt(raw).await
    }

    /// Takes over entries of consumers that stopped heartbeating (see [`Store::claim`]).
    pub async fn claim(&self, scan: &ClaimScan, count: usize) -> Result<(Lease<T>, String)> {
        let (raw, cursor) = self.store.claim(&self.queue, &self.name, scan, count).await?;
        Ok((self.adopt(raw).await?, cursor))
    }

    /// Books entries the store handed to this consumer (a read, a claim, a dispatcher's
    /// take) and decodes them. An entry that does not decode is logged and acknowledged, so
    /// it cannot wedge the queue.
    pub async fn adopt(&self, raw: Vec<RawEntry>) -> Result<Lease<T>> {
        let mut entries = Vec::with_capacity(raw.len());
        let mut bad = Vec::new();
        for r in raw {
            match T::decode(r.payload.as_slice()) {
                Ok(value) => entries.push(Entry {
                    id: r.id,
                    value,
                    redriven: r.redriven,
                    deliveries: r.deliveries,
                    solo: r.solo,
                }),
                Err(error) => {
                    tracing::error!(queue = %self.queue, entry = %r.id, %error, "dropping an undecodable queue entry");
                    bad.push(r.id);
                }
            }
        }
        if !bad.is_empty() {
            self.store.ack(&self.queue, &self.name, &bad).await?;
        }
        self.book.add(entries.iter().map(|e| e.id.clone()));
        Ok(Lease { entries, book: self.book.clone() })
    }

    /// Acknowledges the lease's entries this consumer still owns; returns how many.
    pub async fn ack(&self, lease: Lease<T>) -> Result<usize> {
        let ids = lease.ids();
        let done = self.store.ack(&self.queue, &self.name, &ids).await?;
        Ok(done.len())
    }

    /// Gives the lease's entries back undone: any consumer's next claim takes them.
    pub async fn release(&self, lease: Lease<T>) -> Result<()> {
        let ids = lease.ids();
        self.store.release(&self.queue, &self.name, &ids).await
    }

    /// How many entries this consumer holds now.
    pub fn held(&self) -> usize {
        self.book.lock().len()
    }
}

async fn heartbeat(book: std::sync::Weak<Book>, beat: Beat, every: Duration, queue: QueueName) {
    let every = every.max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(book) = book.upgrade() else { return };
        let ids = book.ids();
        match beat(ids).await {
            Ok(lost) if !lost.is_empty() => {
                tracing::warn!(%queue, count = lost.len(), "entries of this consumer were taken over by another; they will not be finished here");
                book.mark_lost(&lost);
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%queue, %error, "heartbeat failed; trying again"),
        }
    }
}

/// Entries handed to one consumer, its own until finished. Dropping a lease unfinished stops
/// its heartbeat: another consumer takes the entries over one lease later.
pub struct Lease<T> {
    entries: Vec<Entry<T>>,
    book: Arc<Book>,
}

impl<T> Lease<T> {
    pub fn entries(&self) -> &[Entry<T>] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn ids(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.id.clone()).collect()
    }

    /// Whether another consumer took any of the entries over.
    pub fn lost(&self) -> bool {
        self.book.any_lost(self.entries.iter().map(|e| &e.id))
    }

    /// Splits the lease into leases of the given groups of its entries, in order: `sizes`
    /// must add up to its length.
    pub fn split(mut self, sizes: &[usize]) -> Vec<Lease<T>> {
        // Moved out once, front to back (splitting the front off again and again moved the
        // rest each time: quadratic in the lease's length).
        let mut entries = std::mem::take(&mut self.entries).into_iter();
        let out = sizes
            .iter()
            .map(|&n| Lease { entries: entries.by_ref().take(n).collect(), book: self.book.clone() })
            .collect();
        // What no size covered stays here, and is let go with this lease as before.
        self.entries = entries.collect();
        out
    }

    /// Splits the lease in two: the entries for which `pred` holds, then the others, each in
    /// their order.
    pub fn partition(mut self, pred: impl Fn(&Entry<T>) -> bool) -> (Lease<T>, Lease<T>) {
        let (yes, no): (Vec<_>, Vec<_>) = std::mem::take(&mut self.entries).into_iter().partition(|e| pred(e));
        (Lease { entries: yes, book: self.book.clone() }, Lease { entries: no, book: self.book.clone() })
    }

    /// Joins another lease of the same consumer onto this one.
    pub fn join(&mut self, mut other: Lease<T>) {
        self.entries.append(&mut other.entries);
    }

    /// Takes the entries out, ending the lease's heartbeat: for a caller that finished them
    /// through the store itself (a completion, a write-back's end).
    pub fn into_entries(mut self) -> Vec<Entry<T>> {
        self.book.remove(self.entries.iter().map(|e| &e.id));
        std::mem::take(&mut self.entries)
    }
}

impl<T> Drop for Lease<T> {
    fn drop(&mut self) {
        self.book.remove(self.entries.iter().map(|e| &e.id));
    }
}
