//! The store conformance suite: the behaviour every [`Store`] backend must share, as async
//! checks that panic on a violation. Each check takes the store and a prefix that makes its
//! webhook, object and consumer names unique, so checks may share one store (and run side by
//! side). [`run_all`] runs every check once.
//!
//! Enabled in this crate's tests and, for other crates' tests, with the `conformance` feature.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hookline_model::{DataObject, Fields, StoredWebhook};
use hookline_proto::{Attempt, Change, Job, Outcome, WritebackJob};
use serde_json::json;

use crate::queue::Consumer;
use crate::{
    ATTEMPT_RETENTION, AttemptFilter, ClaimScan, Completion, DefEvent, FollowUp, IndexedRecord, JOURNEY_KEPT,
    JourneyNote, QueueName, QueueStats, Rate, RawEntry, Renew, Store, Take, Taken, WriteResult, WritebackDone, now_ms,
};

const NO_BLOCK: Duration = Duration::ZERO;
/// Long enough that nothing in a check is ever this idle.
const LONG: Duration = Duration::from_secs(600);
/// A permit lease longer than any check.
const LEASE: Duration = Duration::from_secs(60);

/// Runs every check against `store`, under a fresh prefix.
pub async fn run_all(store: Arc<dyn Store>) {
    let p = format!("cf{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let s = store.as_ref();
    records(s, &p).await;
    bulk_records(s, &p).await;
    write_index(s, &p).await;
    change_leases(s, &p).await;
    claim_cursor(s, &p).await;
    definitions(s, &p).await;
    definition_events(s, &p).await;
    job_queue(s, &p).await;
    take_capacity(s, &p).await;
    job_leases(s, &p).await;
    blocking_reads(s, &p).await;
    concurrent_readers(s, &p).await;
    concurrent_writers(s, &p).await;
    delayed_retries(s, &p).await;
    dead_letters(s, &p).await;
    writebacks(s, &p).await;
    attempt_log(s, &p).await;
    permits(s, &p).await;
    permits_outlive_their_lease_while_renewed(s, &p).await;
    values_and_locks(s, &p).await;
    batch_complete(s, &p).await;
    rate_limit(s, &p).await;
    delivery_counts(s, &p).await;
    journeys(s, &p).await;
    queue_stats(s, &p).await;
    consumer_heartbeat(store.clone(), &p).await;
}

// --- helpers ---

/// A job of `webhook` with id `<webhook>-<n>` for record `r<n>`.
pub fn job(webhook: &str, n: &str) -> Job {
    Job {
        job_id: format!("{webhook}-{n}"),
        webhook_id: webhook.to_string(),
        webhook_version: 1,
        object: "survey".into(),
        record_ids: vec![format!("r{n}")],
        record_versions: vec![1],
        entities_json: br#"[{"id":"r"}]"#.to_vec(),
        attempts: 0,
        created_at_ms: now_ms(),
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        hops: 0,
        member_traceparents: Vec::new(),
    }
}

/// An attempt at `job` with the given outcome and start time.
pub fn attempt(job: &Job, outcome: Outcome, started_at_ms: i64) -> Attempt {
    Attempt {
        attempt_id: uuid::Uuid::now_v7().to_string(),
        webhook_id: job.webhook_id.clone(),
        webhook_version: job.webhook_version,
        job_id: job.job_id.clone(),
        record_ids: job.record_ids.clone(),
        number: job.attempts + 1,
        node_id: "conformance".into(),
        started_at_ms,
        duration_ms: 5,
        outcome: outcome as i32,
        ..Default::default()
    }
}

fn object(name: &str, extra_field: Option<&str>) -> DataObject {
    let mut fields = vec![json!({"key": "a_id", "type": "string"}), json!({"key": "status", "type": "string"})];
    if let Some(f) = extra_field {
        fields.push(json!({"key": f, "type": "number"}));
    }
    serde_json::from_value(json!({"name": name, "id_field": "a_id", "fields": fields})).expect("a valid data object")
}

fn webhook(id: &str, version: u64, url: &str) -> StoredWebhook {
    let definition = serde_json::from_value(json!({
        "id": id, "object": "survey", "trigger": {"on_update": true},
        "request": {"url": url},
    }))
    .expect("a valid webhook definition");
    StoredWebhook { definition, version, paused: false }
}

fn fields(status: &str) -> Fields {
    json!({"a_id": "S1", "status": status}).as_object().cloned().unwrap_or_default()
}

fn change(object: &str, id: &str, version: u64, status: &str) -> Change {
    Change {
        object: object.to_string(),
        record_id: id.to_string(),
        version,
        new_json: serde_json::to_vec(&fields(status)).unwrap_or_default(),
        at_ms: now_ms(),
        ..Default::default()
    }
}

pub(crate) fn decode<T: hookline_proto::Message + Default>(e: &RawEntry) -> T {
    T::decode(e.payload.as_slice()).expect("an entry that decodes")
}

fn job_ids(entries: &[RawEntry]) -> Vec<String> {
    entries.iter().map(|e| decode::<Job>(e).job_id).collect()
}

fn ids(entries: &[RawEntry]) -> Vec<String> {
    entries.iter().map(|e| e.id.clone()).collect()
}

/// A take of up to `calls` calls of `batch` jobs each for `consumer`, asking for the permits
/// (the limit is `calls`, so a consumer that holds them takes with `free`).
fn take<'a>(webhook: &'a str, consumer: &'a str, free: &'a [String], want: u32, limit: u32, batch: u32) -> Take<'a> {
    Take {
        webhook,
        consumer,
        lease: LEASE,
        limit,
        free,
        known_free: 0,
        want,
        release: &[],
        batch,
        max_entries: 1000,
        rate: None,
        claim: None,
    }
}

/// Takes up to `n` single-job calls, with permits of a high limit.
async fn take_jobs(store: &dyn Store, webhook: &str, consumer: &str, n: u32) -> Taken {
    store.take(&take(webhook, consumer, &[], n, 1000, 1)).await.expect("take")
}

/// A completion of `entries` (one call) with the given attempt and follow-up.
fn completion(entries: &[RawEntry], attempt: Attempt, follow_up: FollowUp) -> Completion {
    Completion { entries: ids(entries), attempt, follow_up }
}

/// Completes one call of `consumer`, asserting it took effect.
async fn complete_one(store: &dyn Store, webhook: &str, consumer: &str, c: Completion) {
    assert_eq!(store.complete(webhook, consumer, &[c]).await.expect("complete"), [true], "the consumer owns it");
}

/// Completes every entry of `taken` as a success, each its own call.
async fn succeed_all(store: &dyn Store, webhook: &str, consumer: &str, entries: &[RawEntry]) {
    let items: Vec<Completion> = entries
        .iter()
        .map(|e| {
            completion(std::slice::from_ref(e), attempt(&decode(e), Outcome::Success, now_ms()), FollowUp::default())
        })
        .collect();
    let done = store.complete(webhook, consumer, &items).await.expect("complete");
    assert!(done.iter().all(|d| *d), "{done:?}");
}

// --- checks ---

/// Versions 1, 2, 3…; a stale expected version conflicts; each write's change is on the
/// object's change stream, handed out once.
pub async fn records(store: &dyn Store, prefix: &str) {
    let obj = format!("{prefix}-rec");
    let q = QueueName::changes(&obj);
    assert!(store.read(&q, "t1", 10, NO_BLOCK).await.expect("read").is_empty());
    assert!(store.get_record(&obj, "S1").await.expect("get_record").is_none());

    for (expected, status) in [(0, "Open"), (1, "Pending"), (2, "Completed")] {
        let (f, c) = (fields(status), change(&obj, "S1", expected + 1, status));
        let r = store.write_record(&obj, "S1", expected, &f, &c).await.expect("write_record");
        assert_eq!(r, WriteResult::Written { version: expected + 1 });
    }
    let stale = store.write_record(&obj, "S1", 1, &fields("Stale"), &change(&obj, "S1", 2, "Stale")).await;
    assert_eq!(stale.expect("write_record"), WriteResult::Conflict { current: 3 });
    let new_again = store.write_record(&obj, "S1", 0, &fields("New"), &change(&obj, "S1", 1, "New")).await;
    assert_eq!(new_again.expect("write_record"), WriteResult::Conflict { current: 3 });

    let rec = store.get_record(&obj, "S1").await.expect("get_record").expect("the record exists");
    assert_eq!((rec.id.as_str(), rec.version), ("S1", 3));
    assert_eq!(rec.fields, fields("Completed"), "the last accepted write's fields, not the conflicting ones");

    let changes = store.read(&q, "t1", 10, NO_BLOCK).await.expect("read");
    let seen: Vec<(u64, String)> = changes.iter().map(decode::<Change>).map(|c| (c.version, c.record_id)).collect();
    assert_eq!(seen, [(1, "S1".into()), (2, "S1".into()), (3, "S1".into())], "one change per accepted write, in order");
    let first: Fields = serde_json::from_slice(&decode::<Change>(&changes[0]).new_json).expect("change JSON");
    assert_eq!(first, fields("Open"));
    assert!(changes.iter().all(|e| e.deliveries == 1 && !e.solo));
    assert!(changes.windows(2).all(|w| w[0].id != w[1].id), "entry ids are distinct");
    assert!(store.read(&q, "t2", 10, NO_BLOCK).await.expect("read").is_empty(), "handed out once");
    assert_eq!(store.ack(&q, "t2", &ids(&changes)).await.expect("ack"), Vec::<String>::new(), "not t2's to ack");
    assert_eq!(store.ack(&q, "t1", &ids(&changes)).await.expect("ack"), ids(&changes), "t1's");
    let scan = ClaimScan { min_idle: Duration::ZERO, cursor: String::new() };
    assert!(store.claim(&q, "t2", &scan, 10).await.expect("claim").0.is_empty(), "acknowledged entries are gone");
}

/// An entry handed to a consumer is its own while it touches it; one left idle a lease is
/// taken over by another consumer (counting a delivery), after which the first may neither
/// touch nor acknowledge it; a released entry is taken over at once.
pub async fn change_leases(store: &dyn Store, prefix: &str) {
    let obj = format!("{prefix}-chl");
    let q = QueueName::changes(&obj);
    store.write_record(&obj, "S1", 0, &fields("Open"), &change(&obj, "S1", 1, "Open")).await.expect("write_record");
    let read = store.read(&q, "a", 10, NO_BLOCK).await.expect("read");
    assert_eq!(read.len(), 1);
    let idle = Duration::from_millis(150);
    let scan = ClaimScan { min_idle: idle, cursor: String::new() };
    // Touched more often than `idle`, it is never taken.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(store.touch(&q, "a", &ids(&read)).await.expect("touch"), Vec::<String>::new(), "still a's");
        assert!(store.claim(&q, "b", &scan, 10).await.expect("claim").0.is_empty(), "a touched it just now");
    }
    tokio::time::sleep(idle + Duration::from_millis(50)).await;
    let (claimed, _) = store.claim(&q, "b", &scan, 10).await.expect("claim");
    assert_eq!(ids(&claimed), ids(&read), "idle a lease: taken over");
    assert_eq!(claimed[0].deliveries, 2, "a take-over counts a delivery");
    assert_eq!(decode::<Change>(&claimed[0]).version, 1);
    assert_eq!(store.touch(&q, "a", &ids(&read)).await.expect("touch"), ids(&read), "a learns it lost it");
    assert!(store.ack(&q, "a", &ids(&read)).await.expect("ack").is_empty(), "a cannot finish b's entry");
    assert!(store.claim(&q, "c", &scan, 10).await.expect("claim").0.is_empty(), "b has it, freshly");

    // Released: taken over at once, however fresh.
    store.release(&q, "a", &ids(&claimed)).await.expect("release");
    assert!(
        store
            .claim(&q, "c", &ClaimScan { min_idle: LONG, cursor: String::new() }, 10)
            .await
            .expect("claim")
            .0
            .is_empty(),
        "a's release of b's entry changes nothing"
    );
    store.release(&q, "b", &ids(&claimed)).await.expect("release");
    let (again, _) =
        store.claim(&q, "c", &ClaimScan { min_idle: LONG, cursor: String::new() }, 10).await.expect("claim");
    assert_eq!(ids(&again), ids(&read), "a released entry is anyone's at once");
    assert_eq!(store.ack(&q, "c", &ids(&again)).await.expect("ack"), ids(&read));
}

/// A take-over scan goes on from its cursor: with more idle entries than one claim takes,
/// successive claims meet each once, and the cursor ends empty.
pub async fn claim_cursor(store: &dyn Store, prefix: &str) {
    let obj = format!("{prefix}-cur");
    let q = QueueName::changes(&obj);
    for n in 0..5 {
        let id = format!("S{n}");
        store.write_record(&obj, &id, 0, &fields("Open"), &change(&obj, &id, 1, "Open")).await.expect("write_record");
    }
    let read = store.read(&q, "dead", 10, NO_BLOCK).await.expect("read");
    assert_eq!(read.len(), 5);
    tokio::time::sleep(Duration::from_millis(60)).await;
    let mut scan = ClaimScan { min_idle: Duration::from_millis(50), cursor: String::new() };
    let mut seen = Vec::new();
    for _ in 0..5 {
        let (got, next) = store.claim(&q, "live", &scan, 2).await.expect("claim");
        assert!(got.len() <= 2);
        seen.extend(ids(&got));
        if next.is_empty() {
            break;
        }
        scan.cursor = next;
    }
    assert_eq!(seen, ids(&read), "each idle entry once, in order, over several claims");
}

/// Objects: put (insert and update), get, list. Webhooks: compare-and-set on the version,
/// delete with the version, which also empties the webhook's queues and drops its values and
/// the locks the engine takes (`oauth-refresh`, `schedule`). Every change of a definition
/// bumps the definitions' version, read with the definitions in one step.
pub async fn definitions(store: &dyn Store, prefix: &str) {
    let (a, b) = (format!("{prefix}-obj-a"), format!("{prefix}-obj-b"));
    let v0 = store.definitions_version().await.expect("definitions_version");
    assert!(store.get_object(&a).await.expect("get_object").is_none());
    store.put_object(&object(&a, None)).await.expect("put_object");
    store.put_object(&object(&b, None)).await.expect("put_object");
    store.put_object(&object(&a, Some("score"))).await.expect("put_object again");
    assert!(store.definitions_version().await.expect("definitions_version") >= v0 + 3, "each put bumps it");
    assert_eq!(store.get_object(&a).await.expect("get_object"), Some(object(&a, Some("score"))), "updated in place");
    let mut listed: Vec<String> = store
        .list_objects()
        .await
        .expect("list_objects")
        .into_iter()
        .map(|o| o.name)
        .filter(|n| n.starts_with(prefix))
        .collect();
    listed.sort();
    assert_eq!(listed, [a.clone(), b.clone()]);

    let id = format!("{prefix}-wh");
    assert!(store.get_webhook(&id).await.expect("get_webhook").is_none());
    let before = store.definitions_version().await.expect("definitions_version");
    assert!(!store.put_webhook(&webhook(&id, 2, "https://a.example")).await.expect("put_webhook"), "v2 of nothing");
    assert_eq!(store.definitions_version().await.expect("definitions_version"), before, "a refused put bumps nothing");
    assert!(store.put_webhook(&webhook(&id, 1, "https://a.example")).await.expect("put_webhook"), "new at v1");
    assert!(store.definitions_version().await.expect("definitions_version") > before, "a put bumps the version");
    assert!(!store.put_webhook(&webhook(&id, 1, "https://b.example")).await.expect("put_webhook"), "v1 exists");
    assert!(!store.put_webhook(&webhook(&id, 3, "https://b.example")).await.expect("put_webhook"), "skips v2");
    assert!(store.put_webhook(&webhook(&id, 2, "https://b.example")).await.expect("put_webhook"), "v1 → v2");
    let got = store.get_webhook(&id).await.expect("get_webhook").expect("stored");
    assert_eq!((got.version, got.definition.request.url.as_str()), (2, "https://b.example"));
    let ids: Vec<String> =
        store.list_webhooks().await.expect("list_webhooks").into_iter().map(|w| w.definition.id).collect();
    assert!(ids.contains(&id), "{id} listed in {ids:?}");
    let defs = store.definitions().await.expect("definitions");
    assert_eq!(defs.version, store.definitions_version().await.expect("definitions_version"));
    assert!(defs.objects.iter().any(|o| o.name == a) && defs.webhooks.iter().any(|w| w.definition.id == id));

    store.enqueue(&[job(&id, "1"), job(&id, "2"), Job { attempts: 1, ..job(&id, "3") }]).await.expect("enqueue");
    assert_eq!(store.queue_depth(&id).await.expect("queue_depth"), 3, "fresh and solo jobs count");
    let hour = Duration::from_secs(3600);
    store.set_value(&id, "schedule", b"progress", hour).await.expect("set_value");
    for lock in ["oauth-refresh", "schedule"] {
        assert!(store.try_lock(&id, lock, "old-holder", hour).await.expect("try_lock"), "{lock}");
    }
    assert!(!store.delete_webhook(&id, 1).await.expect("delete_webhook"), "stale version");
    assert!(store.get_webhook(&id).await.expect("get_webhook").is_some());
    let before = store.definitions_version().await.expect("definitions_version");
    assert!(store.delete_webhook(&id, 2).await.expect("delete_webhook"));
    assert!(store.definitions_version().await.expect("definitions_version") > before, "a delete bumps the version");
    assert!(store.get_webhook(&id).await.expect("get_webhook").is_none());
    assert!(!store.delete_webhook(&id, 2).await.expect("delete_webhook"), "already gone");
    assert_eq!(store.queue_depth(&id).await.expect("queue_depth"), 0, "its queue went with it");
    assert_eq!(store.get_value(&id, "schedule").await.expect("get_value"), None, "its values went with it");
    let late = store.set_value_locked(&id, "schedule", b"late", hour, "schedule", "old-holder").await;
    assert!(!late.expect("set_value_locked"), "a holder of a deleted webhook's lock stores nothing");
    assert_eq!(store.get_value(&id, "schedule").await.expect("get_value"), None);
    for lock in ["oauth-refresh", "schedule"] {
        let taken = store.try_lock(&id, lock, "new-holder", hour).await.expect("try_lock");
        assert!(taken, "its lock {lock} went with it: free at once");
        store.unlock(&id, lock, "new-holder").await.expect("unlock");
    }
    assert!(store.put_webhook(&webhook(&id, 1, "https://c.example")).await.expect("put_webhook"), "new again at v1");
}

/// Jobs are taken once, in order, under permits of the webhook's limit; a completed call is
/// gone, its attempt kept; a consumer cannot complete another's; depth counts ready, pending
/// and delayed jobs.
pub async fn job_queue(store: &dyn Store, prefix: &str) {
    let wh = format!("{prefix}-q");
    assert_eq!(store.queue_depth(&wh).await.expect("queue_depth"), 0);
    assert_eq!(store.oldest_job_ms(&wh).await.expect("oldest_job_ms"), None);
    let before = now_ms();
    store.enqueue(&[job(&wh, "1"), job(&wh, "2"), job(&wh, "3")]).await.expect("enqueue");
    assert_eq!(store.queue_depth(&wh).await.expect("queue_depth"), 3);
    let oldest = store.oldest_job_ms(&wh).await.expect("oldest_job_ms").expect("a job is waiting");
    assert!(oldest >= before - 1000 && oldest <= now_ms() + 1000, "queued at {oldest}, around {before}");

    let a = store.take(&take(&wh, "a", &[], 2, 2, 1)).await.expect("take");
    assert_eq!(a.granted.len(), 2, "two permits of the limit of two");
    assert_eq!(job_ids(&a.entries), [format!("{wh}-1"), format!("{wh}-2")], "in order, one job per permit");
    assert!(a.entries.iter().all(|e| e.deliveries == 1 && !e.solo), "a first hand-out, of fresh jobs");
    let b = store.take(&take(&wh, "b", &[], 2, 2, 1)).await.expect("take");
    assert!(b.granted.is_empty() && b.entries.is_empty(), "the limit is held by a: nothing for b");
    assert_eq!(store.queue_depth(&wh).await.expect("queue_depth"), 3, "pending jobs still count");

    let first = &a.entries[0];
    let done = attempt(&decode(first), Outcome::Success, now_ms());
    let not_b = store.complete(&wh, "b", &[completion(&a.entries[..1], done.clone(), FollowUp::default())]).await;
    assert_eq!(not_b.expect("complete"), [false], "b does not own a's job");
    assert!(store.get_attempt(&wh, &done.attempt_id).await.expect("get_attempt").is_none(), "nothing recorded for b");
    complete_one(store, &wh, "a", completion(&a.entries[..1], done.clone(), FollowUp::default())).await;
    assert_eq!(store.get_attempt(&wh, &done.attempt_id).await.expect("get_attempt"), Some(done.clone()));
    assert_eq!(store.queue_depth(&wh).await.expect("queue_depth"), 2);
    let twice = store.complete(&wh, "a", &[completion(&a.entries[..1], done, FollowUp::default())]).await;
    assert_eq!(twice.expect("complete"), [false], "a completed call is gone");

    // a gives one permit back (keeping the other for its pending job): b gets it, and job 3.
    store.release_permits(&wh, "a", &a.granted[..1], false).await.expect("release_permits");
    let b = store.take(&take(&wh, "b", &[], 2, 2, 1)).await.expect("take");
    assert_eq!((b.granted.len(), job_ids(&b.entries)), (1, vec![format!("{wh}-3")]));
    succeed_all(store, &wh, "a", &a.entries[1..]).await;
    succeed_all(store, &wh, "b", &b.entries).await;
    assert_eq!(store.queue_depth(&wh).await.expect("queue_depth"), 0);
    let after = store.take(&take(&wh, "a", &a.granted[1..], 0, 2, 1)).await.expect("take");
    assert!(after.entries.is_empty(), "nothing left");
}

/// A take reads only what its calls can carry: solo jobs (retried, or whole batches) one
/// call each, first; fresh jobs `batch` to a call; never past `max_entries`.
pub async fn take_capacity(store: &dyn Store, prefix: &str) {
    let wh = format!("{prefix}-cap");
    let mut jobs: Vec<Job> = (0..7).map(|n| job(&wh, &n.to_string())).collect();
    let mut batch = job(&wh, "batch");
    batch.record_ids = vec!["x1".into(), "x2".into()];
    jobs.push(Job { attempts: 2, ..job(&wh, "retried") });
    jobs.push(batch);
    store.enqueue(&jobs).await.expect("enqueue");

    let t = store.take(&take(&wh, "a", &[], 3, 3, 2)).await.expect("take");
    assert_eq!(t.granted.len(), 3);
    let solo: Vec<bool> = t.entries.iter().map(|e| e.solo).collect();
    assert_eq!(solo, [true, true, false, false], "two solo calls, then one call of two fresh jobs");
    assert_eq!(
        job_ids(&t.entries),
        [format!("{wh}-retried"), format!("{wh}-batch"), format!("{wh}-0"), format!("{wh}-1")]
    );
    assert!(t.entries[0].id != t.entries[2].id);

    // Three free permits, batches of two: six fresh jobs would fit, five are left.
    let mut rest = take(&wh, "a", &t.granted, 0, 3, 2);
    rest.max_entries = 4;
    let t2 = store.take(&rest).await.expect("take");
    assert_eq!(job_ids(&t2.entries), (2..6).map(|n| format!("{wh}-{n}")).collect::<Vec<_>>(), "capped at max_entries");
    // Permits the consumer knows it holds carry calls without being named: one known free
    // permit, batches of two.
    let mut known = take(&wh, "a", &[], 0, 3, 2);
    known.known_free = 1;
    let t3 = store.take(&known).await.expect("take");
    assert_eq!(job_ids(&t3.entries), [format!("{wh}-6")]);
    // Free permits count only while held: one that is not (never granted, or expired) carries nothing.
    let stale = ["a/no-such-permit".to_string()];
    let t4 = store.take(&take(&wh, "a", &stale, 0, 3, 2)).await.expect("take");
    assert!(t4.entries.is_empty(), "a permit the store does not hold carries no call");
    // A consumer with no free permit and none to get reads nothing.
    store.enqueue(&[job(&wh, "late")]).await.expect("enqueue");
    let none = store.take(&take(&wh, "b", &[], 2, 3, 2)).await.expect("take");
    assert!(none.granted.is_empty() && none.entries.is_empty(), "every permit is a's");
}

/// A dispatcher's renewals keep its permits and its jobs; one that stops renewing loses both:
/// its jobs go to the next take-over scan (counting a delivery), its permits expire, and its
/// renewal says so; its late completion is refused.
pub async fn job_leases(store: &dyn Store, prefix: &str) {
    let wh = format!("{prefix}-jl");
    let lease = Duration::from_millis(300);
    store.enqueue(&[job(&wh, "1")]).await.expect("enqueue");
    let mut ask = take(&wh, "a", &[], 1, 1, 1);
    ask.lease = lease;
    let a = store.take(&ask).await.expect("take");
    assert_eq!((a.granted.len(), a.entries.len()), (1, 1));
    let renew = |consumer: &'static str, permits: Vec<String>, entries: Vec<String>| {
        let wh = wh.clone();
        async move {
            let r = Renew {
                webhook: &wh,
                consumer,
                lease,
                limit: 1,
                permits: &permits,
                entries: &entries,
                contending: true,
            };
            store.renew(&r).await.expect("renew")
        }
    };
    let mut scan_b = take(&wh, "b", &[], 1, 1, 1);
    scan_b.lease = lease;
    scan_b.claim = Some(ClaimScan { min_idle: lease, cursor: String::new() });
    for _ in 0..4 {
        tokio::time::sleep(lease / 3).await;
        let r = renew("a", a.granted.clone(), ids(&a.entries)).await;
        assert!(r.lost_permits.is_empty() && r.lost_entries.is_empty(), "a keeps what it renews: {r:?}");
        let b = store.take(&scan_b).await.expect("take");
        assert!(b.granted.is_empty() && b.entries.is_empty(), "b gets neither a permit nor a's job");
    }
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let b = store.take(&scan_b).await.expect("take");
    assert_eq!(b.granted.len(), 1, "a's permit expired");
    assert_eq!(job_ids(&b.entries), [format!("{wh}-1")], "a's job taken over");
    assert_eq!(b.entries[0].deliveries, 2);
    let r = renew("a", a.granted.clone(), ids(&a.entries)).await;
    assert_eq!((r.lost_permits, r.lost_entries), (a.granted.clone(), ids(&a.entries)), "a learns it lost both");
    let late = attempt(&decode(&a.entries[0]), Outcome::Success, now_ms());
    let refused = store.complete(&wh, "a", &[completion(&a.entries, late.clone(), FollowUp::default())]).await;
    assert_eq!(refused.expect("complete"), [false], "a's late completion is not recorded");
    assert!(store.get_attempt(&wh, &late.attempt_id).await.expect("get_attempt").is_none());
    succeed_all(store, &wh, "b", &b.entries).await;
}

/// A blocked read wakes for an entry appended during the block; `block = 0` never waits; a
/// dispatcher's wait ends on a new fresh or solo job, or at its timeout.
pub async fn blocking_reads(store: &dyn Store, prefix: &str) {
    let obj = format!("{prefix}-blk-obj");
    let q = QueueName::changes(&obj);
    let started = Instant::now();
    assert!(store.read(&q, "t", 1, NO_BLOCK).await.expect("read").is_empty());
    assert!(started.elapsed() < Duration::from_secs(1), "block = 0 returns at once");
    let started = Instant::now();
    assert!(store.read(&q, "t", 1, Duration::from_millis(150)).await.expect("read").is_empty());
    assert!(started.elapsed() >= Duration::from_millis(100), "an empty blocking read waits for its block");
    let (got, ()) = tokio::join!(store.read(&q, "t", 10, Duration::from_secs(2)), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        store.write_record(&obj, "S1", 0, &fields("Open"), &change(&obj, "S1", 1, "Open")).await.expect("write_record");
    });
    let got = got.expect("read");
    assert_eq!(got.iter().map(|e| decode::<Change>(e).record_id).collect::<Vec<_>>(), ["S1"]);

    let wh = format!("{prefix}-blk");
    let empty = take_jobs(store, &wh, "a", 1).await;
    assert!(empty.entries.is_empty());
    let started = Instant::now();
    store.wait_for_jobs(&wh, &empty.mark, Duration::from_millis(150)).await.expect("wait_for_jobs");
    assert!(started.elapsed() >= Duration::from_millis(100), "nothing came: it waited its timeout");
    for late in [job(&wh, "late"), Job { attempts: 1, ..job(&wh, "late-retry") }] {
        let mark = take_jobs(store, &wh, "a", 0).await.mark;
        let started = Instant::now();
        let ((), waited) = tokio::join!(
            async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                store.enqueue(std::slice::from_ref(&late)).await.expect("enqueue");
            },
            store.wait_for_jobs(&wh, &mark, Duration::from_secs(5))
        );
        waited.expect("wait_for_jobs");
        assert!(started.elapsed() < Duration::from_secs(4), "woken by {}", late.job_id);
        let got = take_jobs(store, &wh, "a", 1).await;
        assert_eq!(job_ids(&got.entries), std::slice::from_ref(&late.job_id));
        succeed_all(store, &wh, "a", &got.entries).await;
    }
}

/// Takers running side by side never receive the same job.
pub async fn concurrent_readers(store: &dyn Store, prefix: &str) {
    let wh = format!("{prefix}-conc");
    let jobs: Vec<Job> = (0..40).map(|n| job(&wh, &n.to_string())).collect();
    store.enqueue(&jobs).await.expect("enqueue");
    let reader = |name: String| {
        let wh = wh.clone();
        async move {
            let mut mine = Vec::new();
            // Bounded, so a backend that redelivers forever fails instead of hanging.
            for _ in 0..100 {
                let got = store.take(&take(&wh, &name, &[], 3, 1000, 1)).await.expect("take");
                if got.entries.is_empty() {
                    break;
                }
                mine.extend(job_ids(&got.entries));
            }
            mine
        }
    };
    let all = futures_util::future::join_all((0..4).map(|i| reader(format!("r{i}")))).await;
    let mut seen: Vec<String> = all.into_iter().flatten().collect();
    assert_eq!(seen.len(), 40, "every job handed out exactly once");
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 40, "no job handed out twice");
}

/// Writers running side by side lose nothing: every job enqueued and every record write
/// accepted is there once.
pub async fn concurrent_writers(store: &dyn Store, prefix: &str) {
    let wh = format!("{prefix}-cw");
    let obj = format!("{prefix}-cw-obj");
    let writer = |w: usize| {
        let (wh, obj) = (wh.clone(), obj.clone());
        async move {
            for n in 0..10 {
                store.enqueue(&[job(&wh, &format!("{w}.{n}"))]).await.expect("enqueue");
                let id = format!("R{w}.{n}");
                store
                    .write_record(&obj, &id, 0, &fields("Open"), &change(&obj, &id, 1, "Open"))
                    .await
                    .expect("write_record");
            }
        }
    };
    futures_util::future::join_all((0..8).map(writer)).await;
    assert_eq!(store.queue_depth(&wh).await.expect("queue_depth"), 80);
    let mut got = Vec::new();
    for _ in 0..100 {
        let read = store.take(&take(&wh, "r", &[], 50, 1000, 1)).await.expect("take");
        if read.entries.is_empty() {
            break;
        }
        got.extend(job_ids(&read.entries));
    }
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 80, "every job once");
    let changes = store.read(&QueueName::changes(&obj), "t", 1_000, NO_BLOCK).await.expect("read");
    assert_eq!(changes.len(), 80, "every change once");
}

/// Retries wait in the delayed set until due, then come back, in due order, as solo jobs.
pub async fn delayed_retries(store: &dyn Store, prefix: &str) {
    let wh = format!("{prefix}-dly");
    let none = take_jobs(store, &wh, "d", 1).await;
    assert_eq!(none.next_due_ms, None, "nothing delayed");
    store.enqueue(&[job(&wh, "a"), job(&wh, "b"), job(&wh, "c")]).await.expect("enqueue");
    let read = take_jobs(store, &wh, "d", 3).await;
    assert_eq!(read.entries.len(), 3);
    let t = now_ms();
    let dues = [t + 600, t + 200, t + 400];
    let items: Vec<Completion> = read
        .entries
        .iter()
        .zip(dues)
        .map(|(entry, due)| {
            let j: Job = decode(entry);
            let mut a = attempt(&j, Outcome::RetryScheduled, now_ms());
            a.next_attempt_at_ms = due;
            let retry = Job { attempts: j.attempts + 1, ..j };
            completion(std::slice::from_ref(entry), a, FollowUp { retry: Some((retry, due)), ..Default::default() })
        })
        .collect();
    assert_eq!(store.complete(&wh, "d", &items).await.expect("complete"), [true, true, true]);
    assert_eq!(store.queue_depth(&wh).await.expect("queue_depth"), 3, "delayed jobs count");
    let early = store.take(&take(&wh, "d", &[], 3, 1000, 1)).await.expect("take");
    assert!(early.entries.is_empty(), "not due yet");
    assert_eq!(early.next_due_ms, Some(t + 200), "the next one due");

    let mut order = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while order.len() < 3 && Instant::now() < deadline {
        let got = store.take(&take(&wh, "d", &[], 3, 1000, 1)).await.expect("take");
        for e in &got.entries {
            assert!(e.solo, "a retry is sent alone");
            let j: Job = decode(e);
            assert_eq!(j.attempts, 1, "the retry's job, not the original");
            order.push(j.job_id);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(order, [format!("{wh}-b"), format!("{wh}-c"), format!("{wh}-a")], "in due order");
    assert_eq!(store.queue_depth(&wh).await.expect("queue_depth"), 3, "ready again, pending");
}

/// A final failure dead-letters the job with its reason; a redrive puts it back, marked,
/// with a fresh attempt budget, to be sent alone.
pub async fn dead_letters(store: &dyn Store, prefix: &str) {
    let wh = format!("{prefix}-dead");
    assert!(store.dead_letters(&wh, 10).await.expect("dead_letters").is_empty());
    assert_eq!(store.redrive(&wh).await.expect("redrive"), 0);
    store.enqueue(&[job(&wh, "1"), job(&wh, "2")]).await.expect("enqueue");
    let read = take_jobs(store, &wh, "a", 2).await;
    let items: Vec<Completion> = read
        .entries
        .iter()
        .zip(["target answered 500", "target answered 404"])
        .map(|(entry, reason)| {
            let j: Job = decode(entry);
            let dead = Job { attempts: 4, ..j.clone() };
            let follow = FollowUp { dead_letter: Some((dead, reason.to_string())), ..Default::default() };
            completion(std::slice::from_ref(entry), attempt(&j, Outcome::Exhausted, now_ms()), follow)
        })
        .collect();
    assert_eq!(store.complete(&wh, "a", &items).await.expect("complete"), [true, true]);
    assert!(take_jobs(store, &wh, "a", 2).await.entries.is_empty());
    let dead = store.dead_letters(&wh, 10).await.expect("dead_letters");
    let seen: Vec<(String, &str, u32)> =
        dead.iter().map(|d| (d.job.job_id.clone(), d.reason.as_str(), d.job.attempts)).collect();
    assert_eq!(seen, [(format!("{wh}-1"), "target answered 500", 4), (format!("{wh}-2"), "target answered 404", 4)]);
    assert_eq!(store.dead_letters(&wh, 1).await.expect("dead_letters").len(), 1, "limit");

    // One chosen dead letter first (and again: it is not dead any more), then the rest.
    let chosen = vec![dead[1].id.clone(), dead[1].id.clone(), "0-1".to_string(), "not-an-id".to_string()];
    assert_eq!(store.redrive_some(&wh, &chosen).await.expect("redrive_some"), 1);
    assert_eq!(store.redrive_some(&wh, &chosen).await.expect("redrive_some"), 0);
    let left = store.dead_letters(&wh, 10).await.expect("dead_letters");
    assert_eq!(left.iter().map(|d| d.job.job_id.clone()).collect::<Vec<_>>(), [format!("{wh}-1")]);
    let one = take_jobs(store, &wh, "a", 2).await.entries;
    assert_eq!(job_ids(&one), [format!("{wh}-2")]);
    assert!(one[0].redriven && one[0].solo);
    let done = completion(&one, attempt(&decode(&one[0]), Outcome::Success, now_ms()), FollowUp::default());
    assert_eq!(store.complete(&wh, "a", &[done]).await.expect("complete"), [true]);
    let dead_again = Job { attempts: 4, ..decode::<Job>(&one[0]) };
    // Back in the dead letters so the redrive of all below moves both.
    store.enqueue(std::slice::from_ref(&dead_again)).await.expect("enqueue");
    let read = take_jobs(store, &wh, "a", 2).await;
    let follow = FollowUp { dead_letter: Some((dead_again, "target answered 404".into())), ..Default::default() };
    let item = completion(&read.entries, attempt(&decode(&read.entries[0]), Outcome::Exhausted, now_ms()), follow);
    assert_eq!(store.complete(&wh, "a", &[item]).await.expect("complete"), [true]);

    assert_eq!(store.redrive(&wh).await.expect("redrive"), 2);
    assert!(store.dead_letters(&wh, 10).await.expect("dead_letters").is_empty());
    let back = take_jobs(store, &wh, "a", 2).await.entries;
    assert_eq!(job_ids(&back), [format!("{wh}-1"), format!("{wh}-2")]);
    assert!(back.iter().all(|e| e.redriven && e.solo), "marked redriven, sent alone");
    assert!(back.iter().all(|e| decode::<Job>(e).attempts == 0), "attempts reset by the redrive");
    assert_eq!(store.redrive(&wh).await.expect("redrive"), 0);
}

/// Notes on a record's changes come back newest first, per record, the newest
/// [`JOURNEY_KEPT`] kept.
pub async fn journeys(store: &dyn Store, prefix: &str) {
    let (a, b) = (format!("{prefix}-ja"), format!("{prefix}-jb"));
    let note = |object: &str, id: &str, version: u64| JourneyNote {
        object: object.to_string(),
        record_id: id.to_string(),
        version,
        note: format!("{{\"v\":{version}}}").into_bytes(),
    };
    assert!(store.journey(&a, "r1", 10).await.expect("journey").is_empty());
    store.note_changes(&[note(&a, "r1", 1), note(&a, "r2", 1), note(&b, "r1", 1)]).await.expect("note_changes");
    store.note_changes(&[note(&a, "r1", 2)]).await.expect("note_changes");
    let got = store.journey(&a, "r1", 10).await.expect("journey");
    assert_eq!(got, [note(&a, "r1", 2), note(&a, "r1", 1)]);
    assert_eq!(store.journey(&a, "r1", 1).await.expect("journey"), [note(&a, "r1", 2)], "limit");
    assert_eq!(store.journey(&b, "r1", 10).await.expect("journey"), [note(&b, "r1", 1)], "per object");
    // A long history keeps its newest.
    let many: Vec<JourneyNote> = (3..=(JOURNEY_KEPT as u64 + 10)).map(|v| note(&a, "r2", v)).collect();
    store.note_changes(&many).await.expect("note_changes");
    let kept = store.journey(&a, "r2", 1000).await.expect("journey");
    assert_eq!(kept.len(), JOURNEY_KEPT);
    assert_eq!(kept[0].version, JOURNEY_KEPT as u64 + 10);
    assert_eq!(kept[JOURNEY_KEPT - 1].version, 11);
}

/// Queue depth, oldest job and dead letters of many webhooks in one call.
pub async fn queue_stats(store: &dyn Store, prefix: &str) {
    let (busy, idle) = (format!("{prefix}-qs-busy"), format!("{prefix}-qs-idle"));
    let before = now_ms();
    store.enqueue(&[job(&busy, "1"), job(&busy, "2"), job(&busy, "3")]).await.expect("enqueue");
    let read = take_jobs(store, &busy, "a", 1).await;
    let j: Job = decode(&read.entries[0]);
    let follow = FollowUp { dead_letter: Some((j.clone(), "gave up".into())), ..Default::default() };
    let item = completion(&read.entries, attempt(&j, Outcome::Exhausted, now_ms()), follow);
    assert_eq!(store.complete(&busy, "a", &[item]).await.expect("complete"), [true]);
    let stats = store.queue_stats(&[busy.clone(), idle.clone()]).await.expect("queue_stats");
    assert_eq!(stats.len(), 2);
    assert_eq!((stats[0].depth, stats[0].dead_letters), (2, 1));
    assert!(stats[0].oldest_ms.is_some_and(|ms| ms >= before - 1000 && ms <= now_ms()), "{stats:?}");
    assert_eq!(stats[1], QueueStats::default());
    assert_eq!(stats[0].depth, store.queue_depth(&busy).await.expect("queue_depth"));

    // In flight: the sum of every node's newest report, each counted while it lasts.
    let long = Duration::from_secs(60);
    store.report_in_flight("n1", &[(busy.clone(), 3), (idle.clone(), 1)], long).await.expect("report");
    store.report_in_flight("n2", &[(busy.clone(), 2)], long).await.expect("report");
    store.report_in_flight("n1", &[(busy.clone(), 1)], long).await.expect("report");
    let in_flight = |s: Vec<QueueStats>| s.iter().map(|s| s.in_flight).collect::<Vec<_>>();
    let both = [busy.clone(), idle.clone()];
    assert_eq!(
        in_flight(store.queue_stats(&both).await.expect("queue_stats")),
        [3, 1],
        "n1's newest report replaces its last"
    );
    store.report_in_flight("n2", &[(busy.clone(), 5)], Duration::from_millis(1)).await.expect("report");
    // Time passing is the condition: the 1 ms report is over after this.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        in_flight(store.queue_stats(&both).await.expect("queue_stats")),
        [1, 1],
        "an expired report counts no more"
    );
}

/// A final attempt hands a write-back over; finishing it stores the attempt as given, keeps
/// a failed one for a redrive, and only the consumer holding it may finish it.
pub async fn writebacks(store: &dyn Store, prefix: &str) {
    let wh = format!("{prefix}-wb");
    let q = QueueName::writebacks(&wh);
    assert!(store.read(&q, "w", 10, NO_BLOCK).await.expect("read").is_empty());
    store.enqueue(&[job(&wh, "1"), job(&wh, "2")]).await.expect("enqueue");
    let read = take_jobs(store, &wh, "a", 2).await.entries;
    let mut attempts = Vec::new();
    for entry in &read {
        let j: Job = decode(entry);
        let mut a = attempt(&j, Outcome::Success, now_ms());
        a.writeback_status = "pending".into();
        let wb = WritebackJob {
            job_id: j.job_id.clone(),
            webhook_id: wh.clone(),
            webhook_version: 1,
            attempt_id: a.attempt_id.clone(),
            record_ids: j.record_ids.clone(),
            status: 201,
            response_body: br#"{"ticketId":"IT-1"}"#.to_vec(),
            ..Default::default()
        };
        let follow = FollowUp { writeback: Some(wb), ..Default::default() };
        complete_one(store, &wh, "a", completion(std::slice::from_ref(entry), a.clone(), follow)).await;
        attempts.push(a);
    }
    let wbs = store.read(&q, "w", 10, NO_BLOCK).await.expect("read");
    let got: Vec<(String, String, u32)> =
        wbs.iter().map(decode::<WritebackJob>).map(|w| (w.job_id, w.attempt_id, w.status)).collect();
    let want: Vec<(String, String, u32)> =
        read.iter().zip(&attempts).map(|(e, a)| (decode::<Job>(e).job_id, a.attempt_id.clone(), 201)).collect();
    assert_eq!(got, want);
    assert!(store.read(&q, "x", 10, NO_BLOCK).await.expect("read").is_empty(), "handed out once");

    let done = |i: usize, failed: Option<&str>| WritebackDone {
        entry: wbs[i].id.clone(),
        attempt_id: attempts[i].attempt_id.clone(),
        status: if failed.is_some() { "error" } else { "done" }.into(),
        error: failed.unwrap_or_default().into(),
        failed: failed.map(|why| (decode::<WritebackJob>(&wbs[i]), why.to_string())),
    };
    let refused = store.finish_writebacks(&wh, "x", &[done(0, None)]).await.expect("finish_writebacks");
    assert_eq!(refused, [false], "x does not hold it");
    let finished =
        store.finish_writebacks(&wh, "w", &[done(0, None), done(1, Some("no record S9"))]).await.expect("finish");
    assert_eq!(finished, [true, true]);
    let a0 = store.get_attempt(&wh, &attempts[0].attempt_id).await.expect("get_attempt").expect("attempt 0");
    assert_eq!((a0.writeback_status.as_str(), a0.writeback_error.as_str()), ("done", ""));
    let a1 = store.get_attempt(&wh, &attempts[1].attempt_id).await.expect("get_attempt").expect("attempt 1");
    assert_eq!((a1.writeback_status.as_str(), a1.writeback_error.as_str()), ("error", "no record S9"));
    assert_eq!(
        a1,
        Attempt { writeback_status: "error".into(), writeback_error: "no record S9".into(), ..attempts[1].clone() }
    );
    let scan = ClaimScan { min_idle: Duration::ZERO, cursor: String::new() };
    assert!(store.claim(&q, "x", &scan, 10).await.expect("claim").0.is_empty(), "acknowledged");

    let failed = store.failed_writebacks(&wh, 10).await.expect("failed_writebacks");
    assert_eq!(failed.len(), 1);
    assert_eq!(
        (failed[0].job.attempt_id.as_str(), failed[0].reason.as_str()),
        (attempts[1].attempt_id.as_str(), "no record S9")
    );
    assert_eq!(store.redrive_writebacks(&wh).await.expect("redrive_writebacks"), 1);
    assert!(store.failed_writebacks(&wh, 10).await.expect("failed_writebacks").is_empty());
    let again = store.read(&q, "w", 10, NO_BLOCK).await.expect("read");
    assert_eq!(
        again.iter().map(|e| decode::<WritebackJob>(e).attempt_id).collect::<Vec<_>>(),
        [attempts[1].attempt_id.clone()]
    );
    assert_eq!(store.redrive_writebacks(&wh).await.expect("redrive_writebacks"), 0);
    // Redriven and done at last: the attempt says so, its earlier error gone.
    let redone = WritebackDone {
        entry: again[0].id.clone(),
        attempt_id: attempts[1].attempt_id.clone(),
        status: "done".into(),
        error: String::new(),
        failed: None,
    };
    assert_eq!(store.finish_writebacks(&wh, "w", &[redone]).await.expect("finish"), [true]);
    let a1 = store.get_attempt(&wh, &attempts[1].attempt_id).await.expect("get_attempt").expect("attempt 1");
    assert_eq!((a1.writeback_status.as_str(), a1.writeback_error.as_str()), ("done", ""));
}

/// The attempt log: newest first, filtered by record, outcome and time, limited; attempts
/// past the retention are trimmed.
pub async fn attempt_log(store: &dyn Store, prefix: &str) {
    let wh = format!("{prefix}-att");
    let other = format!("{prefix}-att-other");
    assert!(
        store.list_attempts(&wh, &AttemptFilter { limit: 10, ..Default::default() }).await.expect("list").is_empty()
    );
    let base = now_ms() - 10_000;
    let (j1, j2) = (job(&wh, "1"), job(&wh, "2"));
    let plan = [
        (&j1, Outcome::RetryScheduled, base),
        (&j1, Outcome::Success, base + 1_000),
        (&j2, Outcome::RetryScheduled, base + 2_000),
        (&j2, Outcome::RetryScheduled, base + 3_000),
        (&j2, Outcome::Exhausted, base + 4_000),
    ];
    let record = |webhook: String, a: Attempt| async move {
        // A call of no queued entry (the attempt of a job never on the queue) records all the same.
        let c = Completion { entries: vec![], attempt: a, follow_up: FollowUp::default() };
        assert_eq!(store.complete(&webhook, "c", &[c]).await.expect("complete"), [true]);
    };
    let mut made = Vec::new();
    // Completed out of time order: the log orders by start time, not by arrival.
    for i in [2, 0, 4, 1, 3] {
        let (j, outcome, at) = plan[i];
        let a = attempt(j, outcome, at);
        record(wh.clone(), a.clone()).await;
        made.push((i, a));
    }
    made.sort_by_key(|(i, _)| *i);
    let ids = |v: &[Attempt]| v.iter().map(|a| a.attempt_id.clone()).collect::<Vec<_>>();
    let want = |idx: &[usize]| idx.iter().map(|i| made[*i].1.attempt_id.clone()).collect::<Vec<_>>();
    record(other.clone(), attempt(&job(&other, "1"), Outcome::Success, base + 5_000)).await;

    let whr = wh.as_str();
    let list = |filter: AttemptFilter| async move { store.list_attempts(whr, &filter).await.expect("list_attempts") };
    let all = list(AttemptFilter { limit: 100, ..Default::default() }).await;
    assert_eq!(ids(&all), want(&[4, 3, 2, 1, 0]), "newest first, this webhook's only");
    assert_eq!(all[0], made[4].1, "stored whole");
    let r1 = list(AttemptFilter { record_id: Some("r1".into()), limit: 100, ..Default::default() }).await;
    assert_eq!(ids(&r1), want(&[1, 0]));
    let retries =
        list(AttemptFilter { outcome: Some(Outcome::RetryScheduled), limit: 100, ..Default::default() }).await;
    assert_eq!(ids(&retries), want(&[3, 2, 0]));
    let since = list(AttemptFilter { since_ms: Some(base + 2_000), limit: 100, ..Default::default() }).await;
    assert_eq!(ids(&since), want(&[4, 3, 2]), "since is inclusive");
    let limited = list(AttemptFilter { limit: 2, ..Default::default() }).await;
    assert_eq!(ids(&limited), want(&[4, 3]));
    let combined = list(AttemptFilter {
        record_id: Some("r2".into()),
        outcome: Some(Outcome::RetryScheduled),
        since_ms: Some(base + 2_500),
        limit: 1,
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&combined), want(&[3]));
    // Paged by cursor: each page starts after the last one's final attempt.
    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let page = list(AttemptFilter { limit: 2, before: before.clone(), ..Default::default() }).await;
        let Some(last) = page.last() else { break };
        before = Some((last.started_at_ms, last.attempt_id.clone()));
        pages.push(ids(&page));
    }
    assert_eq!(pages, [want(&[4, 3]), want(&[2, 1]), want(&[0])]);
    // Attempts of one millisecond are paged without loss.
    let same_ms = base + 6_000;
    let mut twins: Vec<Attempt> =
        (0..3).map(|n| attempt(&job(&wh, &format!("t{n}")), Outcome::Success, same_ms)).collect();
    twins[1].response = Some(hookline_proto::HttpResponse { status: 503, ..Default::default() });
    for a in &twins {
        record(wh.clone(), a.clone()).await;
    }
    let by_status = list(AttemptFilter { status: Some(503), limit: 100, ..Default::default() }).await;
    assert_eq!(ids(&by_status), [twins[1].attempt_id.clone()], "by response status");
    let first = list(AttemptFilter { limit: 2, ..Default::default() }).await;
    let last = first.last().unwrap();
    let rest = list(AttemptFilter {
        limit: 2,
        before: Some((last.started_at_ms, last.attempt_id.clone())),
        ..Default::default()
    })
    .await;
    let mut seen: Vec<String> = ids(&first).into_iter().chain(ids(&rest)).collect();
    assert_eq!(seen.len(), 4);
    seen.truncate(3);
    let mut twin_ids: Vec<String> = twins.iter().map(|a| a.attempt_id.clone()).collect();
    twin_ids.sort_unstable();
    twin_ids.reverse();
    assert_eq!(seen, twin_ids, "same-ms attempts by id, descending, none lost or repeated");
    assert_eq!(rest[1].attempt_id, made[4].1.attempt_id);
    assert!(store.get_attempt(&wh, "no-such-attempt").await.expect("get_attempt").is_none());
    assert!(store.get_attempt(&other, &made[0].1.attempt_id).await.expect("get_attempt").is_none(), "per webhook");

    let old = attempt(&j1, Outcome::Failed, now_ms() - ATTEMPT_RETENTION.as_millis() as i64 - 3_600_000);
    record(wh.clone(), old.clone()).await;
    assert!(store.get_attempt(&wh, &old.attempt_id).await.expect("get_attempt").is_none(), "past retention: trimmed");
    assert_eq!(list(AttemptFilter { limit: 100, ..Default::default() }).await.len(), 8, "recent attempts kept");
}

/// Calls start no faster than the rate limit (GCRA: one per interval, plus the burst), counted
/// when taken: a take without a token reads nothing and says how long to wait.
pub async fn rate_limit(store: &dyn Store, prefix: &str) {
    let wh = format!("{prefix}-rate");
    store.enqueue(&(0..6).map(|n| job(&wh, &n.to_string())).collect::<Vec<_>>()).await.expect("enqueue");
    let interval = Duration::from_millis(300);
    let mut ask = take(&wh, "a", &[], 5, 5, 1);
    ask.rate = Some(Rate { interval, burst: 0 });
    let first = store.take(&ask).await.expect("take");
    assert_eq!(first.entries.len(), 1, "one call now, though five permits were granted");
    assert_eq!(first.granted.len(), 5);
    ask.want = 0;
    ask.free = &first.granted;
    let second = store.take(&ask).await.expect("take");
    assert!(second.entries.is_empty(), "no token left");
    let wait = second.rate_wait.expect("told how long to wait");
    assert!(wait > Duration::ZERO && wait <= interval, "{wait:?}");
    tokio::time::sleep(wait + Duration::from_millis(10)).await;
    assert_eq!(store.take(&ask).await.expect("take").entries.len(), 1, "then one more");

    // With a burst of two, three calls go at once and the fourth waits.
    let burst = format!("{prefix}-burst");
    store.enqueue(&(0..6).map(|n| job(&burst, &n.to_string())).collect::<Vec<_>>()).await.expect("enqueue");
    let mut ask = take(&burst, "a", &[], 5, 5, 1);
    ask.rate = Some(Rate { interval, burst: 2 });
    let burst_take = store.take(&ask).await.expect("take");
    assert_eq!(burst_take.entries.len(), 3);
    ask.want = 0;
    ask.free = &burst_take.granted[3..];
    let after = store.take(&ask).await.expect("take");
    assert!(after.entries.is_empty() && after.rate_wait.is_some());
    // Tokens count calls, not jobs: batches of three in one call.
    let bulk = format!("{prefix}-rate-bulk");
    store.enqueue(&(0..6).map(|n| job(&bulk, &n.to_string())).collect::<Vec<_>>()).await.expect("enqueue");
    let mut ask = take(&bulk, "a", &[], 2, 2, 3);
    ask.rate = Some(Rate { interval, burst: 0 });
    assert_eq!(store.take(&ask).await.expect("take").entries.len(), 3, "one token: one call of three jobs");
}

/// A counting semaphore with leases and fair shares: never more than `limit` permits held; a
/// consumer alone may hold them all, two that want permits share them; released and expired
/// permits are free again.
pub async fn permits(store: &dyn Store, prefix: &str) {
    let wh = format!("{prefix}-perm");
    let a = store.take(&take(&wh, "a", &[], 5, 3, 1)).await.expect("take");
    assert_eq!((a.granted.len(), a.fair_share), (3, 3), "alone, a may hold the whole limit");
    assert!(a.granted.iter().collect::<std::collections::HashSet<_>>().len() == 3, "distinct names");
    let b = store.take(&take(&wh, "b", &[], 2, 3, 1)).await.expect("take");
    assert!(b.granted.is_empty(), "all taken");
    assert_eq!(b.fair_share, 2, "two contenders: a share of two each");
    let renewed = store
        .renew(&Renew {
            webhook: &wh,
            consumer: "a",
            lease: LEASE,
            limit: 3,
            permits: &a.granted,
            entries: &[],
            contending: true,
        })
        .await
        .expect("renew");
    assert!(renewed.lost_permits.is_empty());
    assert_eq!(renewed.fair_share, 2, "a learns it holds more than its share");
    store.release_permits(&wh, "a", &a.granted[..1], false).await.expect("release_permits");
    let b = store.take(&take(&wh, "b", &[], 2, 3, 1)).await.expect("take");
    assert_eq!(b.granted.len(), 1, "the released permit, and no more: the limit");
    let a2 = store.take(&take(&wh, "a", &[], 1, 3, 1)).await.expect("take");
    assert!(a2.granted.is_empty(), "a holds its share");
    store
        .release_permits(&wh, "nobody", &["nobody/1".to_string()], true)
        .await
        .expect("releasing what is not held is fine");

    let short = format!("{prefix}-perm-lease");
    let mut ask = take(&short, "a", &[], 1, 1, 1);
    ask.lease = Duration::from_millis(200);
    let a = store.take(&ask).await.expect("take");
    assert_eq!(a.granted.len(), 1);
    assert!(store.take(&take(&short, "b", &[], 1, 1, 1)).await.expect("take").granted.is_empty(), "held by a");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = store.take(&take(&short, "b", &[], 1, 1, 1)).await.expect("take");
    assert_eq!(b.granted.len(), 1, "a's lease ran out");
    // Leaving: b gives its permit back and stops contending.
    store.release_permits(&short, "b", &b.granted, true).await.expect("release_permits");
    let c = store.take(&take(&short, "c", &[], 1, 1, 1)).await.expect("take");
    assert_eq!((c.granted.len(), c.fair_share), (1, 1), "b left: c alone");
}

/// Permits held longer than any number of leases stay held while renewed: the permit set
/// never expires under a live holder, so no one else gets one past the limit.
pub async fn permits_outlive_their_lease_while_renewed(store: &dyn Store, prefix: &str) {
    let wh = format!("{prefix}-perm-long");
    let lease = Duration::from_millis(200);
    let mut ask = take(&wh, "a", &[], 2, 2, 1);
    ask.lease = lease;
    let a = store.take(&ask).await.expect("take");
    assert_eq!(a.granted.len(), 2);
    let started = Instant::now();
    while started.elapsed() < lease * 6 {
        tokio::time::sleep(lease / 3).await;
        let r = store
            .renew(&Renew {
                webhook: &wh,
                consumer: "a",
                lease,
                limit: 2,
                permits: &a.granted,
                entries: &[],
                contending: true,
            })
            .await
            .expect("renew");
        assert!(r.lost_permits.is_empty(), "renewed permits are kept: {r:?}");
        let mut other = take(&wh, "b", &[], 2, 2, 1);
        other.lease = lease;
        assert!(store.take(&other).await.expect("take").granted.is_empty(), "never more than the limit");
    }
}

/// A [`Consumer`]'s one heartbeat keeps every entry it holds its own for as long as a lease
/// is open, many leases long; a dropped lease stops being renewed and is taken over.
pub async fn consumer_heartbeat(store: Arc<dyn Store>, prefix: &str) {
    let obj = format!("{prefix}-hb");
    let q = QueueName::changes(&obj);
    let lease = Duration::from_millis(300);
    for n in 0..3 {
        let id = format!("S{n}");
        store.write_record(&obj, &id, 0, &fields("Open"), &change(&obj, &id, 1, "Open")).await.expect("write_record");
    }
    let a: Consumer<Change> = Consumer::new(store.clone(), q.clone(), "a", lease, None);
    let first = a.read(2, NO_BLOCK).await.expect("read");
    let second = a.read(2, NO_BLOCK).await.expect("read");
    assert_eq!((first.len(), second.len(), a.held()), (2, 1, 3));
    let scan = ClaimScan { min_idle: lease, cursor: String::new() };
    tokio::time::sleep(lease * 3).await;
    assert!(store.claim(&q, "b", &scan, 10).await.expect("claim").0.is_empty(), "three leases on: still a's");
    assert!(!first.lost() && !second.lost());
    let second_ids = second.ids();
    drop(second);
    tokio::time::sleep(lease + lease / 2).await;
    let (taken, _) = store.claim(&q, "b", &scan, 10).await.expect("claim");
    assert_eq!(ids(&taken), second_ids, "the dropped lease's entry went idle and was taken over");
    assert_eq!(a.ack(first).await.expect("ack"), 2);
    assert_eq!(store.ack(&q, "b", &ids(&taken)).await.expect("ack").len(), 1);
}

/// A job entry taken over from a consumer that stopped counts each hand-out; one given back
/// (released) and taken again does not count the give-back.
pub async fn delivery_counts(store: &dyn Store, prefix: &str) {
    let wh = format!("{prefix}-cnt");
    store.enqueue(&[job(&wh, "1")]).await.expect("enqueue");
    let first = take_jobs(store, &wh, "n0", 1).await;
    assert_eq!(first.entries[0].deliveries, 1);
    let q = QueueName::jobs(&wh);
    store.release(&q, "n0", &ids(&first.entries)).await.expect("release");
    let released = ClaimScan { min_idle: LONG, cursor: String::new() };
    let (got, _) = store.claim(&q, "n1", &released, 10).await.expect("claim");
    assert_eq!(got.iter().map(|e| e.deliveries).collect::<Vec<_>>(), [1], "a give-back is not a delivery");
    let idle = ClaimScan { min_idle: Duration::from_millis(50), cursor: String::new() };
    for n in 2..4u32 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let (got, _) = store.claim(&q, &format!("n{n}"), &idle, 10).await.expect("claim");
        assert_eq!(got.iter().map(|e| e.deliveries).collect::<Vec<_>>(), [n], "taken over from a silent consumer");
    }
}

/// A bulk call completes every job of its batch in one step: all acknowledged, one attempt,
/// the combined job retried whole, sent alone.
pub async fn batch_complete(store: &dyn Store, prefix: &str) {
    let wh = format!("{prefix}-batch");
    store.enqueue(&[job(&wh, "1"), job(&wh, "2"), job(&wh, "3")]).await.expect("enqueue");
    let t = store.take(&take(&wh, "a", &[], 1, 1, 3)).await.expect("take");
    assert_eq!(t.entries.len(), 3, "one call of three");
    let mut combined = job(&wh, "batch");
    combined.record_ids = vec!["r1".into(), "r2".into(), "r3".into()];
    combined.attempts = 1;
    let failed = attempt(&combined, Outcome::RetryScheduled, now_ms());
    let follow = FollowUp { retry: Some((combined.clone(), now_ms() - 1)), ..Default::default() };
    complete_one(store, &wh, "a", completion(&t.entries, failed, follow)).await;
    let scan = ClaimScan { min_idle: Duration::ZERO, cursor: String::new() };
    let (left, _) = store.claim(&QueueName::jobs(&wh), "b", &scan, 10).await.expect("claim");
    assert!(left.is_empty(), "every job of the batch acknowledged");
    let again = store.take(&take(&wh, "a", &t.granted, 0, 1, 3)).await.expect("take");
    assert_eq!(again.entries.len(), 1, "the batch comes back as one job");
    assert!(again.entries[0].solo);
    assert_eq!(decode::<Job>(&again.entries[0]).record_ids, combined.record_ids);
    assert_eq!(
        store.list_attempts(&wh, &AttemptFilter { limit: 10, ..Default::default() }).await.expect("list").len(),
        1
    );
}

/// Many writes of one object in one step: each checked on its own (a conflict refuses only
/// its own), in order (a second write of one record sees the first), each with its change
/// and write position, as single writes are; reads of many records at once.
pub async fn bulk_records(store: &dyn Store, prefix: &str) {
    let obj = format!("{prefix}-bulk");
    let q = QueueName::changes(&obj);
    let w = |id: &str, expected: u64, status: &str| crate::RecordWrite {
        id: id.to_string(),
        expected,
        change: change(&obj, id, expected + 1, status),
    };
    store.write_record(&obj, "B", 0, &fields("Open"), &change(&obj, "B", 1, "Open")).await.expect("write_record");
    let results = store
        .write_records(
            &obj,
            &[w("A", 0, "Open"), w("B", 0, "Stale"), w("A", 1, "Pending"), w("C", 0, "Open"), w("A", 1, "Late")],
        )
        .await
        .expect("write_records");
    assert_eq!(
        results,
        [
            WriteResult::Written { version: 1 },
            WriteResult::Conflict { current: 1 },
            WriteResult::Written { version: 2 },
            WriteResult::Written { version: 1 },
            WriteResult::Conflict { current: 2 },
        ]
    );
    let ids: Vec<String> = ["A", "B", "C", "D"].iter().map(|s| s.to_string()).collect();
    let read = store.get_records(&obj, &ids).await.expect("get_records");
    let seen: Vec<Option<(u64, Fields)>> = read.into_iter().map(|r| r.map(|r| (r.version, r.fields))).collect();
    assert_eq!(seen, [Some((2, fields("Pending"))), Some((1, fields("Open"))), Some((1, fields("Open"))), None]);
    let changes = store.read(&q, "t", 10, NO_BLOCK).await.expect("read");
    let order: Vec<(String, u64)> = changes.iter().map(decode::<Change>).map(|c| (c.record_id, c.version)).collect();
    assert_eq!(
        order,
        [("B".into(), 1), ("A".into(), 1), ("A".into(), 2), ("C".into(), 1)],
        "one change per accepted write"
    );
    let index = store.records_written(&obj, 0, 10).await.expect("records_written");
    let at: Vec<(String, u64)> = index.into_iter().map(|r| (r.record.id, r.position)).collect();
    assert_eq!(at, [("B".into(), 1), ("A".into(), 3), ("C".into(), 4)], "positions as single writes take them");
    assert!(store.write_records(&obj, &[]).await.expect("write_records").is_empty());
}

/// The write index: every record write takes its object's next position (1, 2, …); a record
/// written again moves to its new position; paging with `after` = the last position returned
/// sees every record once per write it has not been seen at, in write order; the origin
/// webhook of each record's latest write is kept, and the position of its latest write by
/// any other writer (the API, `""`, counting as one); objects are independent.
pub async fn write_index(store: &dyn Store, prefix: &str) {
    let (obj, other, seq) = (format!("{prefix}-idx"), format!("{prefix}-idx-other"), format!("{prefix}-idx-seq"));
    let position = |o: &str| {
        let o = o.to_string();
        async move { store.write_position(&o).await.expect("write_position") }
    };
    let listed = |o: &str, after: u64, limit: usize| {
        let o = o.to_string();
        async move { store.records_written(&o, after, limit).await.expect("records_written") }
    };
    let seen = |v: &[IndexedRecord]| v.iter().map(|r| (r.record.id.clone(), r.position)).collect::<Vec<_>>();
    let at = |pairs: &[(&str, u64)]| pairs.iter().map(|(id, p)| (id.to_string(), *p)).collect::<Vec<_>>();
    // Writes `id` at `expected + 1`, with `origin` on its change.
    let write = |o: &str, id: &str, expected: u64, status: &str, origin: &str| {
        let mut c = change(o, id, expected + 1, status);
        c.origin_webhook = origin.to_string();
        let (o, id, f) = (o.to_string(), id.to_string(), fields(status));
        async move {
            let w = store.write_record(&o, &id, expected, &f, &c).await.expect("write_record");
            assert_eq!(w, WriteResult::Written { version: expected + 1 }, "{o}/{id}");
        }
    };

    assert_eq!(position(&obj).await, 0, "nothing written yet");
    assert!(listed(&obj, 0, 10).await.is_empty());
    let plan = [("A", 0, "Open", ""), ("B", 0, "Open", ""), ("C", 0, "Open", ""), ("A", 1, "Done", "wh-x")];
    for (n, (id, expected, status, origin)) in plan.into_iter().enumerate() {
        write(&obj, id, expected, status, origin).await;
        assert_eq!(position(&obj).await, n as u64 + 1, "one position per write, across the object's records");
    }
    let conflict = store.write_record(&obj, "B", 0, &fields("Stale"), &change(&obj, "B", 1, "Stale")).await;
    assert_eq!(conflict.expect("write_record"), WriteResult::Conflict { current: 1 });
    assert_eq!(position(&obj).await, 4, "a refused write takes no position");

    let all = listed(&obj, 0, 100).await;
    assert_eq!(seen(&all), at(&[("B", 2), ("C", 3), ("A", 4)]), "A moved from 1 to its latest write");
    for r in &all {
        let stored = store.get_record(&obj, &r.record.id).await.expect("get_record").expect("the record exists");
        assert_eq!(r.record, stored, "the record as stored");
    }
    let origins: Vec<&str> = all.iter().map(|r| r.origin_webhook.as_str()).collect();
    assert_eq!(origins, ["", "", "wh-x"], "the latest write's origin webhook; empty without one");
    let others: Vec<u64> = all.iter().map(|r| r.other_position).collect();
    assert_eq!(others, [0, 0, 1], "A's write-back came after the API's write at 1; B and C had one writer");
    assert_eq!((all[2].record.version, &all[2].record.fields), (2, &fields("Done")));
    assert!(listed(&obj, 4, 100).await.is_empty(), "nothing after the write position");
    assert_eq!(seen(&listed(&obj, 3, 100).await), at(&[("A", 4)]), "`after` is exclusive");
    assert!(listed(&obj, 0, 0).await.is_empty(), "at most `limit`");

    // Paging with `after` = the last position returned, while records are written again.
    let page = listed(&obj, 0, 2).await;
    assert_eq!(seen(&page), at(&[("B", 2), ("C", 3)]));
    write(&obj, "B", 1, "Pending", "wh-y").await; // 5
    write(&obj, "D", 0, "Open", "").await; // 6
    let page = listed(&obj, 3, 2).await;
    assert_eq!(seen(&page), at(&[("A", 4), ("B", 5)]), "B written again: seen again at its new position");
    assert_eq!(page[1].origin_webhook, "wh-y");
    assert_eq!(page[1].other_position, 2, "B's write-back came after the API's write at 2");
    write(&obj, "A", 2, "Reopened", "").await; // 7: A leaves 4
    let page = listed(&obj, 5, 2).await;
    assert_eq!(seen(&page), at(&[("D", 6), ("A", 7)]));
    assert_eq!(page[1].origin_webhook, "", "a write without an origin clears the earlier one");
    assert_eq!(page[1].other_position, 4, "the API's write came after wh-x's at 4");
    assert!(listed(&obj, 7, 2).await.is_empty(), "the end");
    let mut from = 0;
    let mut each = Vec::new();
    loop {
        let page = listed(&obj, from, 1).await;
        let Some(last) = page.last() else { break };
        from = last.position;
        each.extend(seen(&page));
    }
    assert_eq!(each, at(&[("C", 3), ("B", 5), ("D", 6), ("A", 7)]), "each record once, by latest write");
    assert_eq!(position(&obj).await, 7);

    // Another object has positions of its own.
    assert_eq!(position(&other).await, 0);
    write(&other, "A", 0, "Open", "wh-z").await;
    assert_eq!(position(&other).await, 1);
    assert_eq!(position(&obj).await, 7, "unmoved by the other object's write");
    let theirs = listed(&other, 0, 100).await;
    assert_eq!(seen(&theirs), at(&[("A", 1)]));
    assert_eq!((theirs[0].origin_webhook.as_str(), theirs[0].record.fields.clone()), ("wh-z", fields("Open")));
    assert_eq!(theirs[0].other_position, 0, "a new record has no earlier writer");
    assert_eq!(listed(&obj, 0, 100).await.len(), 4);

    // The other position along one record's writes, with another record's writes between.
    // Each step: the writer, then R's other position after its write.
    let latest = |id: &str| {
        let id = id.to_string();
        let seq = seq.clone();
        async move {
            let all = store.records_written(&seq, 0, 100).await.expect("records_written");
            let r = all.into_iter().find(|r| r.record.id == id).expect("the record is listed");
            (r.position, r.origin_webhook, r.other_position)
        }
    };
    let steps = [
        // (record, origin, its position, its other position, why)
        ("R", "", 1, 0, "a new record"),
        ("Z", "W", 2, 0, "a new record, first written by a webhook"),
        ("R", "W", 3, 1, "W after the API: the API's write"),
        ("R", "W", 4, 1, "W again: unchanged"),
        ("Z", "", 5, 2, "Z: the API after W"),
        ("R", "", 6, 4, "the API after W: W's last write"),
        ("R", "W", 7, 6, "W after the API: that write of the API"),
        ("R", "V", 8, 7, "another webhook after W: W's write"),
    ];
    let mut versions = std::collections::HashMap::new();
    for (id, origin, at, other_at, why) in steps {
        let version: &mut u64 = versions.entry(id).or_default();
        write(&seq, id, *version, "Open", origin).await;
        *version += 1;
        assert_eq!(latest(id).await, (at, origin.to_string(), other_at), "{id} by {origin:?}: {why}");
    }
    let final_order: Vec<(String, u64)> = seen(&listed(&seq, 0, 100).await);
    assert_eq!(final_order, at(&[("Z", 5), ("R", 8)]));
}

/// Every definition change is an event after the cursor taken before it.
pub async fn definition_events(store: &dyn Store, prefix: &str) {
    let (obj, wh) = (format!("{prefix}-ev-obj"), format!("{prefix}-ev-wh"));
    let mine = |e: &DefEvent| match e {
        DefEvent::Object(n) | DefEvent::Webhook(n) => n.starts_with(prefix),
    };
    let mut cursor = store.events_cursor().await.expect("events_cursor");
    let start = cursor.clone();
    store.put_object(&object(&obj, None)).await.expect("put_object");
    store.put_webhook(&webhook(&wh, 1, "https://a.example")).await.expect("put_webhook");
    store.delete_webhook(&wh, 1).await.expect("delete_webhook");

    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.len() < 3 && Instant::now() < deadline {
        let events = store.next_events(&mut cursor, Duration::from_millis(500)).await.expect("next_events");
        seen.extend(events.into_iter().filter(|e| mine(e)));
    }
    assert_eq!(seen, [DefEvent::Object(obj.clone()), DefEvent::Webhook(wh.clone()), DefEvent::Webhook(wh.clone())]);
    assert_ne!(cursor, start, "the cursor advanced");
    let later = store.next_events(&mut cursor, Duration::from_millis(100)).await.expect("next_events");
    assert!(!later.iter().any(mine), "nothing new after the cursor: {later:?}");
    let newest = store.events_cursor().await.expect("events_cursor");
    let mut from_newest = newest.clone();
    let after = store.next_events(&mut from_newest, Duration::from_millis(100)).await.expect("next_events");
    assert!(!after.iter().any(mine), "events_cursor is past every event so far: {after:?}");
}

/// Shared values expire after their TTL; a lock has one holder at a time, only the holder
/// releases it, the holder taking it again renews it, and an abandoned lock frees itself
/// after its TTL. A value stored under a lock is stored only while the lock is its caller's.
pub async fn values_and_locks(store: &dyn Store, prefix: &str) {
    let wh = format!("{prefix}-kv");
    assert_eq!(store.get_value(&wh, "token").await.expect("get_value"), None);
    store.set_value(&wh, "token", b"abc", Duration::from_millis(300)).await.expect("set_value");
    assert_eq!(store.get_value(&wh, "token").await.expect("get_value").as_deref(), Some(&b"abc"[..]));
    store.set_value(&wh, "token", b"def", Duration::from_millis(300)).await.expect("set_value");
    assert_eq!(store.get_value(&wh, "token").await.expect("get_value").as_deref(), Some(&b"def"[..]));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.get_value(&wh, "token").await.expect("get_value"), None, "the value outlived its TTL");

    let ttl = Duration::from_millis(300);
    assert!(store.try_lock(&wh, "refresh", "a", ttl).await.expect("try_lock"));
    assert!(!store.try_lock(&wh, "refresh", "b", ttl).await.expect("try_lock"), "two holders");
    store.unlock(&wh, "refresh", "b").await.expect("unlock");
    assert!(!store.try_lock(&wh, "refresh", "b", ttl).await.expect("try_lock"), "a non-holder released the lock");
    store.unlock(&wh, "refresh", "a").await.expect("unlock");
    assert!(store.try_lock(&wh, "refresh", "b", ttl).await.expect("try_lock"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(store.try_lock(&wh, "refresh", "c", ttl).await.expect("try_lock"), "an abandoned lock never expired");

    // Re-entrant: the holder takes its lock again, which renews it for the new TTL.
    let short = Duration::from_millis(200);
    assert!(store.try_lock(&wh, "renew", "a", short).await.expect("try_lock"));
    assert!(store.try_lock(&wh, "renew", "a", Duration::from_secs(30)).await.expect("try_lock"), "the holder again");
    assert!(!store.try_lock(&wh, "renew", "b", ttl).await.expect("try_lock"), "another holder is still refused");
    tokio::time::sleep(short + Duration::from_millis(150)).await;
    assert!(!store.try_lock(&wh, "renew", "b", ttl).await.expect("try_lock"), "renewed past the first TTL");
    assert!(store.try_lock(&wh, "renew", "a", short).await.expect("try_lock"), "still a's");
    store.unlock(&wh, "renew", "a").await.expect("unlock");
    assert!(store.try_lock(&wh, "renew", "b", ttl).await.expect("try_lock"), "released by its holder");

    // Values stored under a lock.
    let long = Duration::from_secs(30);
    let value = |name: &'static str| {
        let wh = wh.clone();
        async move { store.get_value(&wh, name).await.expect("get_value") }
    };
    let locked = |name: &'static str, v: &'static [u8], ttl: Duration, lock: &'static str, holder: &'static str| {
        let wh = wh.clone();
        async move { store.set_value_locked(&wh, name, v, ttl, lock, holder).await.expect("set_value_locked") }
    };
    assert!(!locked("state", b"0", long, "guard", "a").await, "a lock nobody took");
    assert_eq!(value("state").await, None, "nothing stored");
    assert!(store.try_lock(&wh, "guard", "a", long).await.expect("try_lock"));
    assert!(locked("state", b"1", long, "guard", "a").await, "the holder stores");
    assert_eq!(value("state").await.as_deref(), Some(&b"1"[..]));
    assert!(locked("state", b"2", long, "guard", "a").await, "and stores again");
    assert_eq!(value("state").await.as_deref(), Some(&b"2"[..]));
    assert!(!locked("state", b"3", long, "guard", "b").await, "not the holder");
    assert!(!locked("state", b"3", long, "renew", "a").await, "a lock of the same webhook held by another");
    let other_wh = format!("{prefix}-kv-other");
    assert!(store.try_lock(&other_wh, "guard", "c", long).await.expect("try_lock"));
    assert!(!locked("state", b"3", long, "guard", "c").await, "the lock of another webhook");
    assert_eq!(value("state").await.as_deref(), Some(&b"2"[..]), "unchanged by refused calls");
    store.unlock(&wh, "guard", "a").await.expect("unlock");
    assert!(!locked("state", b"4", long, "guard", "a").await, "released");
    assert_eq!(value("state").await.as_deref(), Some(&b"2"[..]));
    // An expired lock: the value was stored with its own TTL meanwhile.
    let brief = Duration::from_millis(200);
    assert!(store.try_lock(&wh, "guard", "a", brief).await.expect("try_lock"));
    assert!(locked("short", b"s", brief, "guard", "a").await);
    assert_eq!(value("short").await.as_deref(), Some(&b"s"[..]));
    tokio::time::sleep(brief + Duration::from_millis(150)).await;
    assert_eq!(value("short").await, None, "stored with its TTL");
    assert!(!locked("state", b"5", long, "guard", "a").await, "the holder's lock expired");
    assert_eq!(value("state").await.as_deref(), Some(&b"2"[..]), "unchanged");
    assert!(store.try_lock(&wh, "guard", "b", long).await.expect("try_lock"), "taken by a successor");
    assert!(locked("state", b"6", long, "guard", "b").await);
    assert!(!locked("state", b"7", long, "guard", "a").await, "the old holder cannot overwrite the successor's");
    assert_eq!(value("state").await.as_deref(), Some(&b"6"[..]));
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::{EmbeddedStore, RedisStore, Store};

    /// A check that takes longer has hung (they take well under a second each).
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

    /// A store for one test, and what to clean up after it.
    struct Harness {
        store: Arc<dyn Store>,
        _dir: Option<tempfile::TempDir>,
        redis_ns: Option<String>,
    }

    fn redis_url() -> String {
        std::env::var("HOOKLINE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
    }

    async fn embedded() -> Harness {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = EmbeddedStore::open(dir.path()).expect("open the embedded store");
        Harness { store: Arc::new(store), _dir: Some(dir), redis_ns: None }
    }

    async fn redis() -> Harness {
        let ns = format!("hl-test-{}", uuid::Uuid::new_v4().simple());
        let store = RedisStore::connect(&redis_url(), &ns).await.expect("a Redis at HOOKLINE_TEST_REDIS");
        Harness { store: Arc::new(store), _dir: None, redis_ns: Some(ns) }
    }

    /// A store on the test run's Redis Cluster ([`local_cluster::shared`]), under a fresh
    /// namespace, connected through the `redis+cluster://` URL form. Its keys stay: the
    /// cluster goes away with the test process.
    async fn cluster() -> Harness {
        let nodes = tokio::task::block_in_place(local_cluster::shared);
        let ns = format!("hl-test-{}", uuid::Uuid::new_v4().simple());
        let url = format!("redis+cluster://127.0.0.1:{},127.0.0.1:{}", nodes.ports[0], nodes.ports[1]);
        let store = RedisStore::connect(&url, &ns).await.expect("connect to the test Redis Cluster");
        assert!(store.is_cluster());
        Harness { store: Arc::new(store), _dir: None, redis_ns: None }
    }

    impl Harness {
        /// Removes the test's Redis keys (the temp dir goes when dropped).
        async fn cleanup(self) {
            let Some(ns) = self.redis_ns else { return };
            let client = ::redis::Client::open(redis_url()).expect("Redis URL");
            let mut conn = client.get_multiplexed_async_connection().await.expect("Redis connection");
            let keys: Vec<String> =
                ::redis::cmd("KEYS").arg(format!("{ns}:*")).query_async(&mut conn).await.expect("KEYS");
            if !keys.is_empty() {
                ::redis::cmd("DEL").arg(&keys).query_async::<()>(&mut conn).await.expect("DEL");
            }
        }
    }

    macro_rules! backend {
        ($backend:ident: $($check:ident),* $(,)?) => {
            mod $backend {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $check() {
                        let h = super::$backend().await;
                        let check = crate::conformance::$check(h.store.as_ref(), "t");
                        tokio::time::timeout(super::TIMEOUT, check).await.expect("the check hung");
                        h.cleanup().await;
                    }
                )*

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn run_all() {
                    let h = super::$backend().await;
                    let all = crate::conformance::run_all(h.store.clone());
                    tokio::time::timeout(2 * super::TIMEOUT, all).await.expect("the suite hung");
                    h.cleanup().await;
                }
            }
        };
    }

    backend!(embedded: records, bulk_records, write_index, change_leases, claim_cursor, definitions, definition_events, job_queue, take_capacity,
        job_leases, blocking_reads, concurrent_readers, concurrent_writers, delayed_retries, dead_letters, writebacks,
        attempt_log, permits, permits_outlive_their_lease_while_renewed, values_and_locks, batch_complete, rate_limit,
        delivery_counts, journeys, queue_stats);
    backend!(cluster: records, bulk_records, write_index, change_leases, claim_cursor, definitions, definition_events, job_queue, take_capacity,
        job_leases, blocking_reads, concurrent_readers, concurrent_writers, delayed_retries, dead_letters, writebacks,
        attempt_log, permits, permits_outlive_their_lease_while_renewed, values_and_locks, batch_complete, rate_limit,
        delivery_counts, journeys, queue_stats);
    backend!(redis: records, bulk_records, write_index, change_leases, claim_cursor, definitions, definition_events, job_queue, take_capacity,
        job_leases, blocking_reads, concurrent_readers, concurrent_writers, delayed_retries, dead_letters, writebacks,
        attempt_log, permits, permits_outlive_their_lease_while_renewed, values_and_locks, batch_complete, rate_limit,
        delivery_counts, journeys, queue_stats);

    /// A throwaway Redis Cluster for the `cluster` tests.
    mod local_cluster {
        use std::net::TcpListener;
        use std::path::{Path, PathBuf};
        use std::process::{Child, Command, Stdio};
        use std::sync::{Mutex, OnceLock};
        use std::time::{Duration, Instant};

        /// Three masters on 127.0.0.1, all slots assigned, no replicas.
        pub struct Cluster {
            pub ports: [u16; 3],
            /// The watchdog shell holding the servers. Its stdin is a pipe only this process
            /// writes to: when the process ends, however it ends (statics are never dropped),
            /// the watchdog reads EOF, kills the servers and removes their directory.
            _watchdog: Mutex<Child>,
        }

        /// Starts the servers in the background, waits for EOF on stdin, then cleans up.
        /// `$1` the directory, then the ports.
        const WATCHDOG: &str = r#"
dir=$1; shift
trap '' INT HUP
pids=""
for port in "$@"; do
  redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
    --cluster-config-file "$dir/nodes-$port.conf" --save "" --appendonly no --dir "$dir" \
    --logfile "$dir/redis-$port.log" --daemonize no </dev/null &
  pids="$pids $!"
done
read -r _ || true
kill $pids 2>/dev/null
wait
rm -rf "$dir"
"#;

        /// The test binary's one cluster, started by the first test that asks.
        pub fn shared() -> &'static Cluster {
            static CLUSTER: OnceLock<Cluster> = OnceLock::new();
            CLUSTER.get_or_init(start)
        }

        fn on_path(program: &str) -> bool {
            std::env::var_os("PATH")
                .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
                .unwrap_or(false)
        }

        /// Free ports `p` whose cluster bus port `p + 10000` is free too.
        fn free_ports() -> [u16; 3] {
            let mut held = Vec::new();
            let mut ports = Vec::new();
            for _ in 0..1_000 {
                let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
                let p = l.local_addr().expect("local address").port();
                if let Some(bus) = p.checked_add(10_000)
                    && let Ok(b) = TcpListener::bind(("127.0.0.1", bus))
                {
                    ports.push(p);
                    held.push(b);
                }
                held.push(l);
                if ports.len() == 3 {
                    return [ports[0], ports[1], ports[2]];
                }
            }
            panic!("no three free port pairs (p, p + 10000) on 127.0.0.1");
        }

        fn redis_cli(args: &[&str]) -> std::process::Output {
            Command::new("redis-cli").args(args).output().expect("run redis-cli")
        }

        fn logs(dir: &Path, ports: &[u16]) -> String {
            ports
                .iter()
                .map(|p| {
                    let log = std::fs::read_to_string(dir.join(format!("redis-{p}.log"))).unwrap_or_default();
                    format!("--- redis-server {p} ---\n{log}")
                })
                .collect()
        }

        /// Polls `ok` every 50 ms until it holds or `limit` passes.
        fn wait_for(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
            let deadline = Instant::now() + limit;
            loop {
                if ok() {
                    return true;
                }
                if Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }

        fn start() -> Cluster {
            let missing: Vec<&str> = ["redis-server", "redis-cli"].into_iter().filter(|p| !on_path(p)).collect();
            assert!(
                missing.is_empty(),
                "the Redis Cluster tests need `redis-server` and `redis-cli` on PATH; missing: {} \
                 (Debian/Ubuntu: apt-get install redis-server)",
                missing.join(", ")
            );
            let started = Instant::now();
            let ports = free_ports();
            let dir: PathBuf = tempfile::Builder::new()
                .prefix("hookline-cluster-")
                .tempdir()
                .expect("a temp dir for the cluster")
                .keep();
            let watchdog = Command::new("sh")
                .arg("-c")
                .arg(WATCHDOG)
                .arg("hookline-cluster")
                .arg(&dir)
                .args(ports.iter().map(|p| p.to_string()))
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn sh for the Redis Cluster");
            // From here on a panic drops the watchdog's stdin, which stops the servers.
            let cluster = Cluster { ports, _watchdog: Mutex::new(watchdog) };

            for p in ports {
                let up = wait_for(Duration::from_secs(10), || {
                    redis_cli(&["-p", &p.to_string(), "ping"]).stdout.starts_with(b"PONG")
                });
                assert!(up, "redis-server on port {p} did not answer\n{}", logs(&dir, &ports));
            }
            let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
            let mut create = vec!["--cluster", "create"];
            create.extend(nodes.iter().map(String::as_str));
            create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
            let out = redis_cli(&create);
            assert!(
                out.status.success(),
                "redis-cli --cluster create failed: {}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                logs(&dir, &ports)
            );
            for p in ports {
                let ok = wait_for(Duration::from_secs(10), || {
                    let info = redis_cli(&["-p", &p.to_string(), "cluster", "info"]);
                    String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok")
                });
                assert!(ok, "the cluster did not reach cluster_state:ok on port {p}\n{}", logs(&dir, &ports));
            }
            eprintln!("Redis Cluster on ports {ports:?} ({}) ready in {:?}", dir.display(), started.elapsed());
            cluster
        }

        /// A plain connection to one node (no cluster routing), for inspection.
        pub async fn node(port: u16) -> ::redis::aio::MultiplexedConnection {
            let client = ::redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("node URL");
            client.get_multiplexed_async_connection().await.expect("connect to a cluster node")
        }
    }

    /// The cluster really shards the store: one run's keys land on several nodes, and the
    /// store's slot function agrees with the cluster's (`CLUSTER KEYSLOT`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cluster_spreads_keys_over_nodes() {
        let ports = tokio::task::block_in_place(local_cluster::shared).ports;
        let ns = format!("hl-test-{}", uuid::Uuid::new_v4().simple());
        let nodes: Vec<String> = ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect();
        let store = RedisStore::connect_cluster(&nodes, &ns).await.expect("connect");
        let all = crate::conformance::run_all(Arc::new(store));
        tokio::time::timeout(2 * TIMEOUT, all).await.expect("the suite hung");
        let mut per_node = Vec::new();
        for port in ports {
            let mut conn = local_cluster::node(port).await;
            let keys: Vec<String> =
                ::redis::cmd("KEYS").arg(format!("{ns}:*")).query_async(&mut conn).await.expect("KEYS");
            for key in &keys {
                let slot: u16 =
                    ::redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query_async(&mut conn).await.expect("KEYSLOT");
                assert_eq!(crate::keys::slot(key.as_bytes()), slot, "slot of {key}");
            }
            per_node.push(keys.len());
        }
        assert!(per_node.iter().sum::<usize>() > 0, "no keys found");
        assert!(
            per_node.iter().filter(|n| **n > 0).count() >= 2,
            "every key on one node ({per_node:?}): the run proved nothing about slots"
        );
    }

    /// One `enqueue` of jobs of several webhooks, interleaved, whose queues are on different
    /// cluster nodes (`--cluster create` splits the slots in three ranges): every queue gets
    /// its jobs, in order. No conformance check enqueues several webhooks at once.
    async fn enqueue_across_webhooks(store: &dyn Store) {
        let prefix = format!("x{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let keys = crate::keys::Keys::new("hl-test");
        let mut webhooks: Vec<String> = Vec::new();
        for range in [0..5461u16, 5461..10923, 10923..16384] {
            let wh = (0..)
                .map(|n| format!("{prefix}-{n}"))
                .find(|wh| range.contains(&crate::keys::slot(keys.jobs(wh).as_bytes())))
                .expect("a webhook id in every slot range");
            webhooks.push(wh);
        }
        let jobs: Vec<_> =
            (0..4).flat_map(|n| webhooks.iter().map(move |wh| crate::conformance::job(wh, &n.to_string()))).collect();
        store.enqueue(&jobs).await.expect("enqueue across webhooks");
        for wh in &webhooks {
            let got = store.read(&crate::QueueName::jobs(wh), "r", 10, Duration::ZERO).await.expect("read");
            let ids: Vec<String> =
                got.iter().map(|e| crate::conformance::decode::<hookline_proto::Job>(e).job_id).collect();
            let want: Vec<String> = (0..4).map(|n| format!("{wh}-{n}")).collect();
            assert_eq!(ids, want, "queue of {wh}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cluster_enqueue_across_webhooks() {
        let h = cluster().await;
        enqueue_across_webhooks(h.store.as_ref()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_enqueue_across_webhooks() {
        let h = redis().await;
        enqueue_across_webhooks(h.store.as_ref()).await;
        h.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded_enqueue_across_webhooks() {
        let h = embedded().await;
        enqueue_across_webhooks(h.store.as_ref()).await;
    }

    /// `EVALSHA` answered `NOSCRIPT` (a flushed script cache: a restart, a failover) falls
    /// back to loading the script, on the node of the script's keys.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cluster_reloads_flushed_scripts() {
        let h = cluster().await;
        let store = h.store.as_ref();
        let flush = || async {
            for port in local_cluster::shared().ports {
                ::redis::cmd("SCRIPT")
                    .arg("FLUSH")
                    .query_async::<()>(&mut local_cluster::node(port).await)
                    .await
                    .expect("SCRIPT FLUSH");
            }
        };
        // Loaded once, then flushed everywhere before each check.
        crate::conformance::permits(store, "warm").await;
        flush().await;
        crate::conformance::permits(store, "p").await;
        flush().await;
        crate::conformance::delayed_retries(store, "d").await;
        flush().await;
        crate::conformance::definitions(store, "w").await;
    }

    /// One seed node is enough: the others are found from it; `host:port` seeds are accepted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cluster_connects_through_one_seed() {
        let ports = tokio::task::block_in_place(local_cluster::shared).ports;
        let ns = format!("hl-test-{}", uuid::Uuid::new_v4().simple());
        let store = RedisStore::connect_cluster(&[format!("127.0.0.1:{}", ports[2])], &ns).await.expect("connect");
        store.ping().await.expect("ping every master");
        crate::conformance::job_queue(&store, "seed").await;
        let bad = RedisStore::connect_cluster(&["127.0.0.1:1".to_string()], &ns).await;
        assert!(bad.is_err(), "no reachable seed is an error");
    }

    /// Records written before the write index are indexed on connect on a cluster too:
    /// the three objects' keys are on the three masters, the store is reached through one
    /// seed, so each object's `SCAN` must be routed to the master of its slot. The keys stay
    /// (the cluster goes away with the test process).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cluster_indexes_legacy_records() {
        let ports = tokio::task::block_in_place(local_cluster::shared).ports;
        let ns = format!("hl-test-{}-[x]*?\\", uuid::Uuid::new_v4().simple());
        let url = format!("redis+cluster://127.0.0.1:{}", ports[0]);
        let client = ::redis::cluster::ClusterClient::new(vec![format!("redis://127.0.0.1:{}", ports[0])])
            .expect("a cluster client");
        let mut raw = client.get_async_connection().await.expect("connect to the test Redis Cluster");
        crate::redis_store::tests::legacy_records_are_indexed(&url, &ns, &mut raw).await;
    }
}
