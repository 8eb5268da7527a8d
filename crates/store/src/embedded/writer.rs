//! Group commit: every write of the embedded store goes through one writer thread, which runs
//! the writes that queued up while the previous commit was on disk in one durable
//! transaction, and answers each caller only after that commit. A write costs a share of one
//! `fsync` instead of one of its own, and no caller hears back before its write is durable.
//!
//! A write is a closure over the open transaction. If one of a batch fails, the batch is
//! aborted and its writes run again one transaction each, so a failing write fails alone;
//! closures are therefore `FnMut` and must leave nothing behind in memory until committed
//! (what the in-memory state must learn of a commit is collected in [`Effects`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use redb::{Database, WriteTransaction};
use tokio::sync::oneshot;

use super::inner::{Effects, db};
use super::state::lock;
use super::tables::{Id, META};
use crate::{Result, StoreError};

/// Writes committed together, at most.
const MAX_BATCH: usize = 256;

/// One queued write.
trait Op: Send {
    fn apply(&mut self, txn: &WriteTransaction, fx: &mut Effects) -> Result<()>;
    /// Answers the caller: the write's output once committed, or why it was not.
    fn finish(self: Box<Self>, committed: Result<()>);
}

struct Typed<F, T> {
    f: F,
    out: Option<T>,
    reply: Option<oneshot::Sender<Result<T>>>,
}

impl<F, T> Op for Typed<F, T>
where
    F: FnMut(&WriteTransaction, &mut Effects) -> Result<T> + Send,
    T: Send,
{
    fn apply(&mut self, txn: &WriteTransaction, fx: &mut Effects) -> Result<()> {
        self.out = Some((self.f)(txn, fx)?);
        Ok(())
    }

    fn finish(mut self: Box<Self>, committed: Result<()>) {
        let answer = committed.and_then(|()| {
            self.out.take().ok_or_else(|| StoreError::Backend("embedded store write produced nothing".into()))
        });
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(answer);
        }
    }
}

/// What a commit changes in memory, applied by the store once it is durable.
pub(super) type OnCommit = Box<dyn Fn(&Effects) + Send + Sync>;

/// The handle to the writer thread.
pub(super) struct Writer {
    ops: Mutex<Option<mpsc::Sender<Box<dyn Op>>>>,
    /// Transactions committed so far.
    commits: Arc<AtomicU64>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Writer {
    /// Starts the writer thread over `db`. `last` is the newest stream id handed out;
    /// `on_commit` brings the in-memory state up to date after each commit.
    pub(super) fn start(db: std::sync::Arc<Database>, last: Id, on_commit: OnCommit) -> Result<Writer> {
        let (tx, rx) = mpsc::channel::<Box<dyn Op>>();
        let commits = Arc::new(AtomicU64::new(0));
        let counted = commits.clone();
        let thread = std::thread::Builder::new()
            .name("hookline-store-writer".into())
            .spawn(move || run(&db, last, &rx, &on_commit, &counted))
            .map_err(|e| StoreError::Backend(format!("cannot start the embedded store's writer: {e}")))?;
        Ok(Writer { ops: Mutex::new(Some(tx)), commits, thread: Mutex::new(Some(thread)) })
    }

    /// Transactions committed so far.
    pub(super) fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Runs `f` in a durable write transaction (shared with other writes) and returns its
    /// output once committed. An error from `f` aborts its own writes only.
    pub(super) async fn write<T, F>(&self, f: F) -> Result<T>
    where
        F: FnMut(&WriteTransaction, &mut Effects) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let op: Box<dyn Op> = Box::new(Typed { f, out: None, reply: Some(reply) });
        {
            let ops = lock(&self.ops);
            let Some(ops) = ops.as_ref() else {
                return Err(StoreError::Unavailable("the embedded store is closed".into()));
            };
            ops.send(op).map_err(|_| StoreError::Unavailable("the embedded store's writer stopped".into()))?;
        }
        answer.await.map_err(|_| StoreError::Unavailable("the embedded store's writer stopped".into()))?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the channel ends the thread once it has committed what it has; waiting for
        // it closes the file, so the store can be opened again at once.
        lock(&self.ops).take();
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

fn run(db: &Database, mut last: Id, rx: &mpsc::Receiver<Box<dyn Op>>, on_commit: &OnCommit, commits: &AtomicU64) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        match commit(db, last, &mut batch) {
            Ok(fx) => {
                commits.fetch_add(1, Ordering::Relaxed);
                last = fx.last;
                on_commit(&fx);
                for op in batch {
                    op.finish(Ok(()));
                }
            }
            Err(_) if batch.len() > 1 => {
                // One of them failed (or the commit did): each on its own, so only the
                // failing one fails.
                for op in batch {
                    let mut one = vec![op];
                    let result = commit(db, last, &mut one);
                    let op = one.pop().expect("the batch of one is still there");
                    match result {
                        Ok(fx) => {
                            commits.fetch_add(1, Ordering::Relaxed);
                            last = fx.last;
                            on_commit(&fx);
                            op.finish(Ok(()));
                        }
                        Err(e) => op.finish(Err(e)),
                    }
                }
            }
            Err(e) => {
                for op in batch {
                    op.finish(Err(clone_error(&e)));
                }
            }
        }
    }
}

fn clone_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Corrupt { key, reason } => StoreError::Corrupt { key: key.clone(), reason: reason.clone() },
        StoreError::Backend(m) => StoreError::Backend(m.clone()),
    }
}

/// Applies `batch` in one transaction and commits it durably.
fn commit(database: &Database, last: Id, batch: &mut [Box<dyn Op>]) -> Result<Effects> {
    let txn = database.begin_write().map_err(db)?;
    let mut fx = Effects::new(last);
    for op in batch.iter_mut() {
        op.apply(&txn, &mut fx)?;
    }
    if fx.allocated {
        // Write transactions run one at a time, so ids handed out inside them increase in
        // commit order: a reader's snapshot always holds a prefix of every queue.
        txn.open_table(META).map_err(db)?.insert("last_id", (fx.last.ms, fx.last.seq)).map_err(db)?;
    }
    txn.commit().map_err(db)?;
    Ok(fx)
}
