//! In-memory state of the embedded store: consumer groups (what was handed to whom, and
//! when it was last touched), the concurrency permits, the locks and the rate limiters. None
//! needs to survive the process: after a restart nothing is pending, so every unacknowledged
//! entry is handed out again, and no permit or lock is held. (How often a job was handed out
//! does survive, in the `handed` table.)

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::tables::{Id, Queue};

/// Locks `m`, ignoring poisoning: every critical section leaves its state consistent.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One handed-out, unacknowledged entry.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    pub consumer: String,
    /// When it was handed out or last touched by its consumer's heartbeat.
    pub touched: Instant,
    /// Times handed out, across restarts for job queues.
    pub deliveries: u32,
    /// Given back by its consumer: any consumer's next claim takes it, however fresh.
    pub released: bool,
}

/// The consumer group of one queue (one webhook's fresh jobs, one object's changes, …).
#[derive(Debug, Default)]
pub(super) struct GroupState {
    /// Entries up to this id were handed out in this process (Redis: the group's
    /// last-delivered-id).
    pub delivered: Id,
    /// Entries up to this id were handed out by an earlier process (read from disk on first
    /// use): handing one out again counts a delivery more.
    pub earlier: Option<Id>,
    /// Handed-out entries not yet acknowledged, in id order.
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

/// The permits of one webhook.
#[derive(Debug, Default)]
struct WebhookPermits {
    /// Permit name → lease expiry.
    held: HashMap<String, Instant>,
    /// Consumer → expiry of its wish for permits.
    contenders: HashMap<String, Instant>,
    seq: u64,
}

impl WebhookPermits {
    fn expire(&mut self, now: Instant) {
        self.held.retain(|_, until| *until > now);
        self.contenders.retain(|_, until| *until > now);
    }

    fn mine(&self, consumer: &str) -> u32 {
        self.held.keys().filter(|p| holder_of(p) == consumer).count() as u32
    }

    fn share(&self, limit: u32) -> u32 {
        limit.div_ceil(self.contenders.len().max(1) as u32)
    }
}

/// The consumer part of a permit name `<consumer>/<n>`.
fn holder_of(permit: &str) -> &str {
    permit.rsplit_once('/').map_or(permit, |(h, _)| h)
}

/// Counting semaphores with leases and fair shares, per webhook, as `lib.lua` keeps them in
/// Redis (monotonic clock here).
#[derive(Debug, Default)]
pub(super) struct Permits {
    map: Mutex<HashMap<String, WebhookPermits>>,
}

/// What a permit request got.
pub(super) struct Granted {
    pub names: Vec<String>,
    pub share: u32,
    /// How many free permits carry calls: those known held, and those given that are still
    /// held (each renewed).
    pub free: u32,
}

impl Permits {
    /// Releases the take's permits to release, then grants up to its `want` more within the
    /// limit and the consumer's fair share, counting it as a contender when it wants or holds
    /// any.
    pub(super) fn take(&self, t: &crate::Take<'_>) -> Granted {
        let crate::Take { webhook, consumer, release, free, known_free, want, limit, lease, .. } = *t;
        let now = Instant::now();
        let mut map = lock(&self.map);
        let p = map.entry(webhook.to_string()).or_default();
        p.expire(now);
        let mut still = known_free;
        for name in free {
            if let Some(until) = p.held.get_mut(name) {
                *until = now + lease;
                still += 1;
            }
        }
        for name in release {
            p.held.remove(name);
        }
        let mine = p.mine(consumer);
        if want > 0 || still > 0 || mine > 0 {
            p.contenders.insert(consumer.to_string(), now + lease);
        }
        let share = p.share(limit);
        let room = limit.saturating_sub(p.held.len() as u32).min(share.saturating_sub(mine));
        let mut names = Vec::new();
        for _ in 0..want.min(room) {
            p.seq += 1;
            let name = format!("{consumer}/{}", p.seq);
            p.held.insert(name.clone(), now + lease);
            names.push(name);
        }
        Granted { names, share, free: still }
    }

    /// Gives back permits a failed take granted, as if it had not happened.
    pub(super) fn undo(&self, webhook: &str, names: &[String]) {
        let mut map = lock(&self.map);
        if let Some(p) = map.get_mut(webhook) {
            for name in names {
                p.held.remove(name);
            }
        }
    }

    /// Renews the permits still held; returns the lost ones and the consumer's fair share.
    pub(super) fn renew(
        &self,
        webhook: &str,
        consumer: &str,
        permits: &[String],
        contending: bool,
        limit: u32,
        lease: Duration,
    ) -> (Vec<String>, u32) {
        let now = Instant::now();
        let mut map = lock(&self.map);
        let p = map.entry(webhook.to_string()).or_default();
        p.expire(now);
        let mut lost = Vec::new();
        for name in permits {
            match p.held.get_mut(name) {
                Some(until) => *until = now + lease,
                None => lost.push(name.clone()),
            }
        }
        if contending {
            p.contenders.insert(consumer.to_string(), now + lease);
        } else {
            p.contenders.remove(consumer);
        }
        (lost, p.share(limit))
    }

    pub(super) fn release(&self, webhook: &str, consumer: &str, permits: &[String], leave: bool) {
        let mut map = lock(&self.map);
        if let Some(p) = map.get_mut(webhook) {
            for name in permits {
                p.held.remove(name);
            }
            if leave {
                p.contenders.remove(consumer);
            }
            if p.held.is_empty() && p.contenders.is_empty() {
                map.remove(webhook);
            }
        }
    }

    pub(super) fn forget(&self, webhook: &str) {
        lock(&self.map).remove(webhook);
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

/// GCRA rate limiters per webhook (single process: in memory, monotonic clock, nanosecond
/// precision): the theoretical arrival time of the next call.
#[derive(Default)]
pub(super) struct Rates {
    tat: Mutex<HashMap<String, Instant>>,
}

impl Rates {
    /// Takes up to `want` calls that may start now, counting them; none (and how long to
    /// wait) when even one must wait.
    pub(super) fn reserve(&self, webhook: &str, interval: Duration, burst: u32, want: u32) -> Result<u32, Duration> {
        let now = Instant::now();
        let mut map = lock(&self.tat);
        let tat = map.get(webhook).copied().filter(|t| *t > now).unwrap_or(now);
        let allow_at = tat.checked_sub(interval * burst).unwrap_or(now);
        if now < allow_at {
            return Err(allow_at - now);
        }
        let since = now.saturating_duration_since(allow_at).as_nanos();
        let tokens = ((since / interval.as_nanos().max(1)) as u32).saturating_add(1).min(want);
        map.insert(webhook.to_string(), tat + interval * tokens);
        Ok(tokens)
    }

    /// Gives back `calls` reserved calls that were not made.
    pub(super) fn refund(&self, webhook: &str, interval: Duration, calls: u32) {
        if calls == 0 {
            return;
        }
        let mut map = lock(&self.tat);
        if let Some(tat) = map.get_mut(webhook) {
            *tat = tat.checked_sub(interval * calls).unwrap_or(*tat);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take<'a>(
        webhook: &'a str,
        consumer: &'a str,
        release: &'a [String],
        want: u32,
        limit: u32,
        lease: Duration,
    ) -> crate::Take<'a> {
        crate::Take {
            webhook,
            consumer,
            lease,
            limit,
            free: &[],
            known_free: 0,
            want,
            release,
            batch: 1,
            max_entries: 1,
            rate: None,
            claim: None,
        }
    }

    #[test]
    fn permits_count_share_renew_and_expire() {
        let p = Permits::default();
        let long = Duration::from_secs(60);
        let a = p.take(&take("w", "a", &[], 5, 3, long));
        assert_eq!((a.names.len(), a.share), (3, 3), "alone, a may hold the whole limit");
        let b = p.take(&take("w", "b", &[], 2, 3, long));
        assert_eq!((b.names.len(), b.share), (0, 2), "full; b's wish halves the share");
        let (lost, share) = p.renew("w", "a", &a.names, true, 3, long);
        assert!(lost.is_empty());
        assert_eq!(share, 2, "a learns it holds more than its share");
        p.release("w", "a", &a.names[..1], false);
        let b = p.take(&take("w", "b", &[], 2, 3, long));
        assert_eq!(b.names.len(), 1, "one permit free");
        assert!(p.take(&take("other", "c", &[], 1, 1, long)).names.len() == 1, "permits are per webhook");
        let short = p.take(&take("x", "a", &[], 1, 1, Duration::ZERO));
        assert_eq!(short.names.len(), 1);
        let (lost, _) = p.renew("x", "a", &short.names, true, 1, long);
        assert_eq!(lost, short.names, "a zero lease has expired");
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

    #[test]
    fn rates_give_tokens_up_to_the_burst_and_then_a_wait() {
        let r = Rates::default();
        let interval = Duration::from_millis(100);
        assert_eq!(r.reserve("w", interval, 2, 10), Ok(3), "now plus a burst of two");
        assert!(r.reserve("w", interval, 2, 10).is_err(), "spent");
        r.refund("w", interval, 1);
        assert_eq!(r.reserve("w", interval, 2, 10), Ok(1), "a refunded call is free again");
        assert_eq!(r.reserve("v", interval, 0, 10), Ok(1), "per webhook; no burst: one");
    }
}
