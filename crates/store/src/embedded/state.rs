//! In-memory state of the embedded store: consumer groups (what was delivered to whom, and
//! when), the concurrency semaphores, the locks and the rate limiters. None needs to survive
//! the process: after a restart nothing is pending, so every unacknowledged entry is
//! delivered again, and no permit or lock is held.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::tables::{Id, Queue};

/// Locks `m`, ignoring poisoning: every critical section leaves its state consistent.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One delivered, unacknowledged entry.
#[derive(Debug)]
pub(super) struct Pending {
    pub consumer: String,
    pub delivered: Instant,
    /// Times handed out since this process started.
    pub deliveries: u32,
}

/// The consumer group of one queue (one webhook's jobs, one object's changes, …).
#[derive(Debug, Default)]
pub(super) struct GroupState {
    /// Entries up to this id were delivered (Redis: the group's last-delivered-id).
    pub delivered: Id,
    /// Delivered entries not yet acknowledged, in id order.
    pub pending: BTreeMap<Id, Pending>,
}

#[derive(Debug, Default)]
pub(super) struct Group {
    pub state: Mutex<GroupState>,
    /// Woken after a commit appended to the queue; blocked readers wait on it.
    pub notify: Notify,
}

/// Every consumer group, created on first use.
#[derive(Debug, Default)]
pub(super) struct Groups {
    map: Mutex<HashMap<(Queue, String), Arc<Group>>>,
}

impl Groups {
    pub(super) fn get(&self, queue: Queue, owner: &str) -> Arc<Group> {
        let mut map = lock(&self.map);
        if let Some(g) = map.get(&(queue, owner.to_string())) {
            return g.clone();
        }
        let g = Arc::new(Group::default());
        map.insert((queue, owner.to_string()), g.clone());
        g
    }
}

/// Counting semaphores with leases, per webhook: holder → lease expiry (monotonic clock).
#[derive(Debug, Default)]
pub(super) struct Permits {
    map: Mutex<HashMap<String, HashMap<String, Instant>>>,
}

impl Permits {
    pub(super) fn acquire(&self, webhook: &str, holder: &str, limit: u32, lease: Duration) -> bool {
        let now = Instant::now();
        let expiry = now + lease;
        let mut map = lock(&self.map);
        let holders = map.entry(webhook.to_string()).or_default();
        holders.retain(|_, until| *until > now);
        if let Some(until) = holders.get_mut(holder) {
            *until = expiry;
            return true;
        }
        if holders.len() < limit as usize {
            holders.insert(holder.to_string(), expiry);
            return true;
        }
        false
    }

    pub(super) fn release(&self, webhook: &str, holder: &str) {
        let mut map = lock(&self.map);
        if let Some(holders) = map.get_mut(webhook) {
            holders.remove(holder);
            if holders.is_empty() {
                map.remove(webhook);
            }
        }
    }

    pub(super) fn forget(&self, webhook: &str) {
        lock(&self.map).remove(webhook);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_count_renew_and_expire() {
        let p = Permits::default();
        let long = Duration::from_secs(60);
        assert!(p.acquire("w", "a", 2, long));
        assert!(p.acquire("w", "b", 2, long));
        assert!(!p.acquire("w", "c", 2, long));
        assert!(p.acquire("w", "a", 2, long), "a holder renews even when all are taken");
        assert!(p.acquire("other", "c", 2, long), "semaphores are per webhook");
        p.release("w", "a");
        assert!(p.acquire("w", "c", 2, long));
        assert!(p.acquire("x", "a", 1, Duration::ZERO));
        assert!(p.acquire("x", "b", 1, long), "a zero lease has expired");
    }

    #[test]
    fn locks_are_held_until_expiry_and_forgotten_per_webhook() {
        let l = Locks::default();
        let long = Duration::from_secs(60);
        assert!(!l.holds("w", "x", "a"), "not taken");
        assert!(l.try_lock("w", "x", "a", long));
        assert!(l.try_lock("w", "y", "a", long));
        assert!(l.try_lock("v", "x", "a", long));
        assert!(l.holds("w", "x", "a"));
        assert!(!l.holds("w", "x", "b"), "another holder");
        assert!(!l.holds("v", "y", "a"), "another webhook's lock");
        assert!(l.try_lock("w", "z", "a", Duration::ZERO));
        assert!(!l.holds("w", "z", "a"), "expired");
        l.forget("w");
        assert!(!l.holds("w", "x", "a") && !l.holds("w", "y", "a"), "every lock of w");
        assert!(l.try_lock("w", "x", "b", long), "free for anyone");
        assert!(l.holds("v", "x", "a"), "other webhooks' locks stay");
    }
}

/// Named locks with expiry, held by one holder at a time (single process: in memory).
#[derive(Default)]
pub(super) struct Locks {
    map: Mutex<HashMap<(String, String), (String, Instant)>>,
}

impl Locks {
    /// Takes the lock for `holder`, or renews it for `ttl` when `holder` already holds it.
    pub(super) fn try_lock(&self, webhook: &str, name: &str, holder: &str, ttl: Duration) -> bool {
        let now = Instant::now();
        let mut map = lock(&self.map);
        let key = (webhook.to_string(), name.to_string());
        match map.get(&key) {
            Some((other, until)) if *until > now && other != holder => false,
            _ => {
                map.insert(key, (holder.to_string(), now + ttl));
                true
            }
        }
    }

    pub(super) fn unlock(&self, webhook: &str, name: &str, holder: &str) {
        let mut map = lock(&self.map);
        let key = (webhook.to_string(), name.to_string());
        if map.get(&key).is_some_and(|(h, _)| h == holder) {
            map.remove(&key);
        }
    }

    /// Whether `holder` holds the lock `name` of `webhook` now (taken and not expired).
    pub(super) fn holds(&self, webhook: &str, name: &str, holder: &str) -> bool {
        let now = Instant::now();
        let map = lock(&self.map);
        map.get(&(webhook.to_string(), name.to_string())).is_some_and(|(h, until)| h == holder && *until > now)
    }

    /// Drops every lock of `webhook` (it was deleted).
    pub(super) fn forget(&self, webhook: &str) {
        lock(&self.map).retain(|(w, _), _| w != webhook);
    }
}

/// GCRA rate limiters per webhook (single process: in memory, monotonic clock): the
/// theoretical arrival time of the next call.
#[derive(Default)]
pub(super) struct Rates {
    tat: Mutex<HashMap<String, Instant>>,
}

impl Rates {
    pub(super) fn wait(&self, webhook: &str, interval: Duration, burst: u32) -> Duration {
        let now = Instant::now();
        let mut map = lock(&self.tat);
        let tat = map.get(webhook).copied().filter(|t| *t > now).unwrap_or(now);
        let allow_at = tat.checked_sub(interval * burst).unwrap_or(now);
        if now < allow_at {
            return allow_at - now;
        }
        map.insert(webhook.to_string(), tat + interval);
        Duration::ZERO
    }
}
