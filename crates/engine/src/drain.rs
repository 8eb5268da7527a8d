//! Counts running workers so shutdown can wait for in-flight work to finish.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Drain {
    running: AtomicUsize,
    idle: Notify,
}

/// Held by a running worker; dropping it reports the worker finished.
#[derive(Debug)]
pub struct DrainGuard(Arc<Drain>);

impl Drain {
    pub fn guard(self: &Arc<Self>) -> DrainGuard {
        self.running.fetch_add(1, Ordering::SeqCst);
        DrainGuard(self.clone())
    }

    /// Resolves once no worker is running.
    pub async fn wait(&self) {
        loop {
            let notified = self.idle.notified();
            if self.running.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for DrainGuard {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
