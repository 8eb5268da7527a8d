//! A dispatcher worker's share of its webhook's cluster-wide concurrency limit: the permits
//! it holds in the store, which of them carry a call right now, and until when each counts
//! as held.
//!
//! A permit is held until its lease runs out; the worker's heartbeat renews them all every
//! third of a lease. A permit counts as this worker's only until the moment the store would
//! let it go — the time the last renewal that kept it was *sent*, plus the lease — so a
//! worker that cannot renew (the store is unreachable, the node stalled) stops sending under
//! it before anyone else can be given it: a call still waiting to go is not sent, and one in
//! flight is cut. That is logged and counted (`hookline_permit_losses_total`).
//!
//! The store also answers with this worker's fair share of the limit (the limit split among
//! the nodes that want permits): permits above it are given back as their calls end.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// A lease's deadline is taken as this much earlier than the store's, for clocks that run
/// at slightly different rates.
fn margin(lease: Duration) -> Duration {
    lease / 10
}

/// A permit held here.
#[derive(Debug, Clone, Copy)]
struct Held {
    /// Until when it counts as held here.
    until: Instant,
    /// Whether it carries a call.
    busy: bool,
}

#[derive(Debug, Default)]
struct State {
    /// Held permits (foldhash: the names are the store's, not users').
    held: foldhash::HashMap<String, Held>,
    /// How many held permits carry a call.
    busy: usize,
    /// This worker's fair share of the limit (the limit itself until the store says).
    share: u32,
    /// Permits to give back at the next store call.
    release: Vec<String>,
    /// No held permit runs out before this (a lower bound: renewals only push times later),
    /// so most looks skip the scan of every held permit. `None`: none is held.
    first_expiry: Option<Instant>,
}

/// The permits one dispatcher worker holds.
pub struct PermitPool {
    webhook: String,
    lease: Duration,
    state: Mutex<State>,
    /// A permit came back from a call, or one is to be given back.
    freed: Notify,
    /// Bumped whenever permits are lost, so calls under them can look.
    lost: watch::Sender<u64>,
    metrics: Arc<hookline_telemetry::Metrics>,
}

/// A permit carrying one call; it goes back to the pool when dropped.
pub struct Permit {
    name: String,
    pool: Arc<PermitPool>,
}

impl PermitPool {
    pub fn new(webhook: &str, lease: Duration, limit: u32, metrics: Arc<hookline_telemetry::Metrics>) -> Arc<Self> {
        Arc::new(PermitPool {
            webhook: webhook.to_string(),
            lease,
            state: Mutex::new(State { share: limit, ..Default::default() }),
            freed: Notify::new(),
            lost: watch::channel(0).0,
            metrics,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops permits whose time ran out without a renewal. Call with the lock held.
    fn expire(&self, s: &mut State) {
        let now = Instant::now();
        if s.first_expiry.is_none_or(|first| now < first) {
            return;
        }
        let expired: Vec<String> = s.held.iter().filter(|(_, h)| h.until <= now).map(|(n, _)| n.clone()).collect();
        s.first_expiry = s.held.values().filter(|h| h.until > now).map(|h| h.until).min();
        if !expired.is_empty() {
            self.drop_lost(s, &expired, "its lease ran out without a renewal");
        }
    }

    fn drop_lost(&self, s: &mut State, lost: &[String], why: &str) {
        let mut n = 0;
        for name in lost {
            if let Some(Held { busy, .. }) = s.held.remove(name) {
                n += 1;
                s.busy -= usize::from(busy);
                tracing::warn!(webhook_id = %self.webhook, permit = %name, busy, "lost a concurrency permit ({why}): not sending under it");
            }
        }
        if n > 0 {
            self.metrics.permits_lost(&self.webhook, n);
            self.lost.send_modify(|g| *g += 1);
        }
    }

    /// Permits held and free for a call.
    pub fn free(&self) -> u32 {
        self.free_names().len() as u32
    }

    /// The names of the permits held and free for a call.
    pub fn free_names(&self) -> Vec<String> {
        let mut s = self.lock();
        self.expire(&mut s);
        s.held.iter().filter(|(_, h)| !h.busy).map(|(n, _)| n.clone()).collect()
    }

    /// The free permits, split for a take: those renewed so recently that their lease cannot
    /// have run out in the store before the take arrives (counted there without a look), and
    /// the others, named so the store checks and renews them.
    pub fn free_for_take(&self) -> (u32, Vec<String>) {
        let mut s = self.lock();
        self.expire(&mut s);
        let fresh_until = Instant::now() + self.lease / 2;
        let mut known = 0;
        let mut named = Vec::new();
        for (name, h) in &s.held {
            if h.busy {
                continue;
            }
            if h.until >= fresh_until {
                known += 1;
            } else {
                named.push(name.clone());
            }
        }
        (known, named)
    }

    /// Permits carrying a call now.
    pub fn busy(&self) -> usize {
        self.lock().busy
    }

    /// Waits until no permit carries a call, or `limit` passed; whether none does.
    pub async fn idle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.busy() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return self.busy() == 0;
            }
        }
    }

    /// How many more permits to ask for, within `limit` and the fair share, and at most as
    /// many again as held (at least 8): a worker's hold grows by doubling, so the first of
    /// several nodes to start does not take the whole limit before the others ask.
    pub fn wanted(&self, limit: u32) -> u32 {
        let s = self.lock();
        let held = s.held.len() as u32;
        s.share.min(limit).saturating_sub(held).min(held.max(8))
    }

    /// Permits held (free or busy), for a renewal.
    pub fn names(&self) -> Vec<String> {
        self.lock().held.keys().cloned().collect()
    }

    /// Takes the permits to give back now: those asked to be given back, and free ones above
    /// `limit` or the fair share.
    pub fn to_release(&self, limit: u32) -> Vec<String> {
        let mut s = self.lock();
        let cap = s.share.min(limit) as usize;
        let mut out = std::mem::take(&mut s.release);
        while s.held.len() > cap {
            let Some(free) = s.held.iter().find(|(_, h)| !h.busy).map(|(n, _)| n.clone()) else { break };
            s.held.remove(&free);
            out.push(free);
        }
        out
    }

    /// Takes every free permit (and those asked to be given back) to give back, when the
    /// worker stops. Permits still carrying a call stay until the call ends: giving them back
    /// earlier would let another node exceed the limit while the call runs.
    pub fn take_free(&self) -> Vec<String> {
        let mut s = self.lock();
        let free: Vec<String> = s.held.iter().filter(|(_, h)| !h.busy).map(|(n, _)| n.clone()).collect();
        for name in &free {
            s.held.remove(name);
        }
        let mut out = std::mem::take(&mut s.release);
        out.extend(free);
        out
    }

    /// Permits the store granted to a call sent at `sent`, with the fair share it reported.
    pub fn granted(&self, names: Vec<String>, share: u32, sent: Instant) {
        let until = sent + self.lease - margin(self.lease);
        let mut s = self.lock();
        s.share = share.max(1);
        if !names.is_empty() {
            s.first_expiry = Some(s.first_expiry.map_or(until, |first| first.min(until)));
        }
        for name in names {
            s.held.entry(name).and_modify(|h| h.until = until).or_insert(Held { until, busy: false });
        }
    }

    /// A renewal sent at `sent` of `renewed` came back: all but `lost` are held a lease more.
    pub fn renewed(&self, renewed: &[String], lost: &[String], share: u32, sent: Instant) {
        let until = sent + self.lease - margin(self.lease);
        let mut s = self.lock();
        s.share = share.max(1);
        self.drop_lost(&mut s, lost, "the store no longer had it");
        for name in renewed {
            if let Some(h) = s.held.get_mut(name) {
                h.until = h.until.max(until);
            }
        }
        let over = s.held.len() > s.share as usize;
        drop(s);
        if over {
            // Give back what is free now; the worker's loop hears of it.
            self.freed.notify_one();
        }
    }

    /// A renewal failed: nothing is extended; permits run out at their own time.
    pub fn renewal_failed(&self) {
        let mut s = self.lock();
        self.expire(&mut s);
    }

    /// A free permit for a call, if any.
    pub fn checkout(self: &Arc<Self>) -> Option<Permit> {
        let mut s = self.lock();
        self.expire(&mut s);
        let (name, held) = s.held.iter_mut().find(|(_, h)| !h.busy)?;
        held.busy = true;
        let name = name.clone();
        s.busy += 1;
        Some(Permit { name, pool: self.clone() })
    }

    /// Resolves when a permit may have come free (a call ended, permits are to be released).
    pub async fn freed(&self) {
        self.freed.notified().await;
    }

    fn give_back(&self, name: &str) {
        let mut guard = self.lock();
        let s = &mut *guard;
        if let Some(h) = s.held.get_mut(name)
            && h.busy
        {
            h.busy = false;
            s.busy -= 1;
            let cap = s.share as usize;
            if s.held.len() > cap {
                s.held.remove(name);
                s.release.push(name.to_string());
            }
        }
        drop(guard);
        self.freed.notify_one();
    }

    /// Whether `name` counts as held here now.
    fn holds(&self, name: &str) -> bool {
        let mut s = self.lock();
        self.expire(&mut s);
        s.held.contains_key(name)
    }

    fn deadline(&self, name: &str) -> Option<Instant> {
        self.lock().held.get(name).map(|h| h.until)
    }
}

impl Permit {
    /// Whether this permit still counts as held.
    pub fn valid(&self) -> bool {
        self.pool.holds(&self.name)
    }

    /// Resolves once this permit no longer counts as held (lost or run out): a call under it
    /// must stop.
    pub async fn lost(&self) {
        let mut changes = self.pool.lost.subscribe();
        loop {
            let Some(until) = self.pool.deadline(&self.name).filter(|_| self.pool.holds(&self.name)) else {
                return;
            };
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                r = changes.changed() => if r.is_err() { return },
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.pool.give_back(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(lease_ms: u64) -> Arc<PermitPool> {
        PermitPool::new("wh", Duration::from_millis(lease_ms), 4, Arc::default())
    }

    #[tokio::test(start_paused = true)]
    async fn permits_are_lent_to_calls_and_come_back() {
        let p = pool(10_000);
        assert_eq!((p.free(), p.wanted(4)), (0, 4));
        assert_eq!(PermitPool::new("w", Duration::from_secs(10), 100, Arc::default()).wanted(100), 8, "8 at first");
        p.granted(vec!["a/1".into(), "a/2".into()], 4, Instant::now());
        assert_eq!((p.free(), p.wanted(4), p.wanted(1)), (2, 2, 0));
        let one = p.checkout().expect("a permit");
        let two = p.checkout().expect("another");
        assert!(p.checkout().is_none(), "both busy");
        assert!(one.valid() && two.valid());
        drop(one);
        assert_eq!(p.free(), 1);
        assert_eq!(p.to_release(4), Vec::<String>::new(), "within the share");
        assert_eq!(p.to_release(1).len(), 1, "a lower limit gives the free one back");
        drop(two);
        assert_eq!(p.names().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn unrenewed_permits_run_out_and_cut_their_calls() {
        let p = pool(3_000);
        let sent = Instant::now();
        p.granted(vec!["a/1".into()], 4, sent);
        let call = p.checkout().expect("a permit");
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        p.renewed(&["a/1".to_string()], &[], 4, Instant::now());
        tokio::time::sleep(Duration::from_millis(2_000)).await;
        assert!(call.valid(), "renewed a second in: held until 1 s + 3 s - margin");
        let started = Instant::now();
        call.lost().await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(600) && waited <= Duration::from_millis(800), "{waited:?}");
        assert!(!call.valid());
        assert_eq!(p.free(), 0, "gone from the pool");
    }

    /// Looks skip the scan until the first permit can run out: one granted later but on an
    /// older call's time still runs out first, and only it goes.
    #[tokio::test(start_paused = true)]
    async fn each_permit_runs_out_at_its_own_time() {
        let p = pool(3_000);
        let start = Instant::now();
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        p.granted(vec!["a/1".into()], 4, Instant::now());
        p.granted(vec!["a/2".into()], 4, start);
        let first = p.checkout().expect("a permit");
        let second = p.checkout().expect("another");
        let (early, late) = if first.name == "a/2" { (first, second) } else { (second, first) };
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert!(!early.valid(), "granted on a call sent a second before the other: run out");
        assert!(late.valid(), "held a second longer");
        assert_eq!(p.names(), ["a/1".to_string()]);
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert!(!late.valid());
        assert!(p.names().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_permit_the_store_lost_ends_its_call_at_once() {
        let p = pool(10_000);
        p.granted(vec!["a/1".into(), "a/2".into()], 4, Instant::now());
        let call = p.checkout().expect("a permit");
        let name = call.name.clone();
        let waiting = tokio::spawn(async move { call.lost().await });
        tokio::task::yield_now().await;
        p.renewed(&p.names(), &[name], 4, Instant::now());
        tokio::time::timeout(Duration::from_millis(10), waiting).await.expect("the call hears of it").expect("task");
        assert_eq!(p.names().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn above_the_fair_share_permits_go_back_as_calls_end() {
        let p = pool(10_000);
        p.granted((1..=4).map(|n| format!("a/{n}")).collect(), 4, Instant::now());
        let calls: Vec<Permit> = (0..4).map(|_| p.checkout().expect("a permit")).collect();
        p.renewed(&p.names(), &[], 2, Instant::now());
        assert_eq!(p.wanted(4), 0);
        drop(calls);
        let back = p.to_release(4);
        assert_eq!(back.len(), 2, "two over the share of two: {back:?}");
        assert_eq!(p.names().len(), 2);
    }
}
