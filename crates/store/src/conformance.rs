//! The store conformance suite: the behaviour every [`Store`] backend must share, as async
//! checks that panic on a violation. Each check takes the store and a prefix that makes its
//! webhook, object and consumer names unique, so checks may share one store (and run side by
//! side). [`run_all`] runs every check once.
//!
//! Enabled in this crate's tests and, for other crates' tests, with the `conformance` feature.
//!
//! The Redis backend creates a consumer group on the first read or claim of a queue and
//! answers that call empty, even if entries were already there. The checks therefore
//! "prime" each queue (one non-blocking read) before appending to it; a backend may as well
//! return the entries at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hookline_model::{DataObject, Fields, StoredWebhook};
use hookline_proto::{Attempt, Change, Job, Outcome, WritebackJob};
use serde_json::json;

use crate::{ATTEMPT_RETENTION, AttemptFilter, DefEvent, FollowUp, IndexedRecord, Store, WriteResult, now_ms};

const NO_BLOCK: Duration = Duration::ZERO;
/// Long enough that nothing in a check is ever this idle.
const LONG: Duration = Duration::from_secs(600);

/// Runs every check against `store`, under a fresh prefix.
pub async fn run_all(store: Arc<dyn Store>) {
    let p = format!("cf{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let s = store.as_ref();
    records(s, &p).await;
    write_index(s, &p).await;
    change_claims(s, &p).await;
    definitions(s, &p).await;
    definition_events(s, &p).await;
    job_queue(s, &p).await;
    requeue(s, &p).await;
    blocking_reads(s, &p).await;
    concurrent_readers(s, &p).await;
    concurrent_writers(s, &p).await;
    delayed_retries(s, &p).await;
    dead_letters(s, &p).await;
    writebacks(s, &p).await;
    attempt_log(s, &p).await;
    permits(s, &p).await;
    values_and_locks(s, &p).await;
    batch_complete(s, &p).await;
    rate_limit(s, &p).await;
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

fn job_ids(entries: &[crate::Entry<Job>]) -> Vec<String> {
    entries.iter().map(|e| e.value.job_id.clone()).collect()
}

/// A non-blocking read that must find nothing; creates the consumer group where needed.
async fn prime_jobs(store: &dyn Store, webhook: &str) {
    let got = store.read_jobs(webhook, "primer", 10, NO_BLOCK).await.expect("read_jobs");
    assert!(got.is_empty(), "queue {webhook} should start empty, got {:?}", job_ids(&got));
}

// --- checks ---

/// Versions 1, 2, 3…; a stale expected version conflicts; each write's change is on the
/// object's change stream, delivered once.
pub async fn records(store: &dyn Store, prefix: &str) {
    let obj = format!("{prefix}-rec");
    assert!(store.read_changes(&obj, "t1", 10, NO_BLOCK).await.expect("read_changes").is_empty());
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

    let changes = store.read_changes(&obj, "t1", 10, NO_BLOCK).await.expect("read_changes");
    let seen: Vec<(u64, &str)> = changes.iter().map(|e| (e.value.version, e.value.record_id.as_str())).collect();
    assert_eq!(seen, [(1, "S1"), (2, "S1"), (3, "S1")], "one change per accepted write, in order");
    let first: Fields = serde_json::from_slice(&changes[0].value.new_json).expect("change JSON");
    assert_eq!(first, fields("Open"));
    assert!(changes.windows(2).all(|w| w[0].id != w[1].id), "entry ids are distinct");
    assert!(store.read_changes(&obj, "t2", 10, NO_BLOCK).await.expect("read_changes").is_empty(), "delivered once");
    let ids: Vec<String> = changes.iter().map(|e| e.id.clone()).collect();
    store.ack_changes(&obj, &ids).await.expect("ack_changes");
    assert!(store.claim_changes(&obj, "t2", Duration::ZERO).await.expect("claim_changes").is_empty());
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

/// A change read but not acknowledged is claimable by another consumer once idle long enough.
pub async fn change_claims(store: &dyn Store, prefix: &str) {
    let obj = format!("{prefix}-chc");
    assert!(store.read_changes(&obj, "a", 10, NO_BLOCK).await.expect("read_changes").is_empty());
    store.write_record(&obj, "S1", 0, &fields("Open"), &change(&obj, "S1", 1, "Open")).await.expect("write_record");
    let read = store.read_changes(&obj, "a", 10, NO_BLOCK).await.expect("read_changes");
    assert_eq!(read.len(), 1);
    assert!(store.claim_changes(&obj, "b", LONG).await.expect("claim_changes").is_empty(), "not idle long enough");
    tokio::time::sleep(Duration::from_millis(60)).await;
    let claimed = store.claim_changes(&obj, "b", Duration::from_millis(50)).await.expect("claim_changes");
    assert_eq!(claimed.len(), 1, "idle change taken over");
    assert_eq!((claimed[0].id.as_str(), claimed[0].value.version), (read[0].id.as_str(), 1));
    store.ack_changes(&obj, &[claimed[0].id.clone()]).await.expect("ack_changes");
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(store.claim_changes(&obj, "c", Duration::from_millis(1)).await.expect("claim_changes").is_empty());
}

/// Objects: put (insert and update), get, list. Webhooks: compare-and-set on the version,
/// delete with the version, which also empties the webhook's queues and drops its values and
/// the locks the engine takes (`oauth-refresh`, `schedule`).
pub async fn definitions(store: &dyn Store, prefix: &str) {
    let (a, b) = (format!("{prefix}-obj-a"), format!("{prefix}-obj-b"));
    assert!(store.get_object(&a).await.expect("get_object").is_none());
    store.put_object(&object(&a, None)).await.expect("put_object");
    store.put_object(&object(&b, None)).await.expect("put_object");
    store.put_object(&object(&a, Some("score"))).await.expect("put_object again");
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
    assert!(!store.put_webhook(&webhook(&id, 2, "https://a.example")).await.expect("put_webhook"), "v2 of nothing");
    assert!(store.put_webhook(&webhook(&id, 1, "https://a.example")).await.expect("put_webhook"), "new at v1");
    assert!(!store.put_webhook(&webhook(&id, 1, "https://b.example")).await.expect("put_webhook"), "v1 exists");
    assert!(!store.put_webhook(&webhook(&id, 3, "https://b.example")).await.expect("put_webhook"), "skips v2");
    assert!(store.put_webhook(&webhook(&id, 2, "https://b.example")).await.expect("put_webhook"), "v1 → v2");
    let got = store.get_webhook(&id).await.expect("get_webhook").expect("stored");
    assert_eq!((got.version, got.definition.request.url.as_str()), (2, "https://b.example"));
    let ids: Vec<String> =
        store.list_webhooks().await.expect("list_webhooks").into_iter().map(|w| w.definition.id).collect();
    assert!(ids.contains(&id), "{id} listed in {ids:?}");

    prime_jobs(store, &id).await;
    store.enqueue(&[job(&id, "1"), job(&id, "2")]).await.expect("enqueue");
    assert_eq!(store.queue_depth(&id).await.expect("queue_depth"), 2);
    let hour = Duration::from_secs(3600);
    store.set_value(&id, "schedule", b"progress", hour).await.expect("set_value");
    for lock in ["oauth-refresh", "schedule"] {
        assert!(store.try_lock(&id, lock, "old-holder", hour).await.expect("try_lock"), "{lock}");
    }
    assert!(!store.delete_webhook(&id, 1).await.expect("delete_webhook"), "stale version");
    assert!(store.get_webhook(&id).await.expect("get_webhook").is_some());
    assert!(store.delete_webhook(&id, 2).await.expect("delete_webhook"));
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

/// A job is delivered to one reader once; an idle one is claimed by another consumer; a
/// completed one is gone; depth counts ready, pending and delayed jobs.
pub async fn job_queue(store: &dyn Store, prefix: &str) {
    let wh = format!("{prefix}-q");
    prime_jobs(store, &wh).await;
    assert_eq!(store.queue_depth(&wh).await.expect("queue_depth"), 0);
    assert_eq!(store.oldest_job_ms(&wh).await.expect("oldest_job_ms"), None);
    let before = now_ms();
    store.enqueue(&[job(&wh, "1"), job(&wh, "2"), job(&wh, "3")]).await.expect("enqueue");
    assert_eq!(store.queue_depth(&wh).await.expect("queue_depth"), 3);
    let oldest = store.oldest_job_ms(&wh).await.expect("oldest_job_ms").expect("a job is waiting");
    assert!(oldest >= before - 1000 && oldest <= now_ms() + 1000, "queued at {oldest}, around {before}");

    let first = store.read_jobs(&wh, "a", 2, NO_BLOCK).await.expect("read_jobs");
    assert_eq!(job_ids(&first), [format!("{wh}-1"), format!("{wh}-2")], "in order, at most `count`");
    assert!(first.iter().all(|e| e.deliveries == 1), "a first read is the first delivery");
    let rest = store.read_jobs(&wh, "b", 10, NO_BLOCK).await.expect("read_jobs");
    assert_eq!(job_ids(&rest), [format!("{wh}-3")]);
    assert!(store.read_jobs(&wh, "c", 10, NO_BLOCK).await.expect("read_jobs").is_empty(), "each delivered once");
    assert_eq!(store.queue_depth(&wh).await.expect("queue_depth"), 3, "pending jobs still count");

    assert!(store.claim_jobs(&wh, "c", LONG, 10).await.expect("claim_jobs").is_empty(), "nothing idle that long");
    tokio::time::sleep(Duration::from_millis(250)).await;
    let a = &first[0];
    let done = attempt(&a.value, Outcome::Success, now_ms());
    store.complete(&wh, &a.id, &done, FollowUp::default()).await.expect("complete");
    assert_eq!(store.get_attempt(&wh, &done.attempt_id).await.expect("get_attempt"), Some(done.clone()));
    assert_eq!(store.queue_depth(&wh).await.expect("queue_depth"), 2);

    let claimed = store.claim_jobs(&wh, "c", Duration::from_millis(200), 10).await.expect("claim_jobs");
    let mut got = job_ids(&claimed);
    got.sort();
    assert_eq!(got, [format!("{wh}-2"), format!("{wh}-3")], "idle jobs taken over, not the completed one");
    let two = claimed.iter().find(|e| e.value.job_id == format!("{wh}-2")).expect("job 2");
    assert_eq!(two.id, first[1].id, "a claim keeps the entry id");
    assert!(claimed.iter().all(|e| e.deliveries == 2), "a claim counts as another delivery");
    assert!(
        store.claim_jobs(&wh, "d", Duration::from_millis(200), 10).await.expect("claim_jobs").is_empty(),
        "just claimed"
    );

    for e in &claimed {
        store
            .complete(&wh, &e.id, &attempt(&e.value, Outcome::Success, now_ms()), FollowUp::default())
            .await
            .expect("complete");
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(store.claim_jobs(&wh, "d", Duration::from_millis(1), 10).await.expect("claim_jobs").is_empty(), "acked");
    assert!(store.read_jobs(&wh, "d", 10, NO_BLOCK).await.expect("read_jobs").is_empty());
    assert_eq!(store.queue_depth(&wh).await.expect("queue_depth"), 0);
}

/// A bulk call completes every job of its batch in one step: all acknowledged, one
/// attempt, the combined job retried whole.
pub async fn batch_complete(store: &dyn Store, prefix: &str) {
    let wh = format!("{prefix}-batch");
    prime_jobs(store, &wh).await;
    store.enqueue(&[job(&wh, "1"), job(&wh, "2"), job(&wh, "3")]).await.expect("enqueue");
    let read = store.read_jobs(&wh, "a", 10, NO_BLOCK).await.expect("read_jobs");
    assert_eq!(read.len(), 3);
    let ids: Vec<String> = read.iter().map(|e| e.id.clone()).collect();
    let mut combined = job(&wh, "batch");
    combined.record_ids = vec!["r1".into(), "r2".into(), "r3".into()];
    combined.attempts = 1;
    let failed = attempt(&combined, Outcome::RetryScheduled, now_ms());
    let follow = FollowUp { retry: Some((combined.clone(), now_ms() - 1)), ..Default::default() };
    store.complete_batch(&wh, &ids, &failed, follow).await.expect("complete_batch");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        store.claim_jobs(&wh, "b", Duration::from_millis(1), 10).await.expect("claim_jobs").is_empty(),
        "every job of the batch acknowledged"
    );
    store.promote_due(&wh, now_ms()).await.expect("promote_due");
    let again = store.read_jobs(&wh, "b", 10, NO_BLOCK).await.expect("read_jobs");
    assert_eq!(again.len(), 1, "the batch comes back as one job");
    assert_eq!(again[0].value.record_ids, combined.record_ids);
    assert_eq!(
        store.list_attempts(&wh, &AttemptFilter { limit: 10, ..Default::default() }).await.expect("list").len(),
        1
    );
}

/// Jobs handed back are delivered again (same job); a job no longer pending is not duplicated.
pub async fn requeue(store: &dyn Store, prefix: &str) {
    let wh = format!("{prefix}-rq");
    prime_jobs(store, &wh).await;
    store.enqueue(&[job(&wh, "1"), job(&wh, "2")]).await.expect("enqueue");
    let read = store.read_jobs(&wh, "a", 10, NO_BLOCK).await.expect("read_jobs");
    assert_eq!(read.len(), 2);
    // Job 1 was completed meanwhile: handing it back must not bring it back.
    store
        .complete(&wh, &read[0].id, &attempt(&read[0].value, Outcome::Success, now_ms()), FollowUp::default())
        .await
        .expect("complete");
    store.requeue_jobs(&wh, &read).await.expect("requeue_jobs");
    assert_eq!(store.queue_depth(&wh).await.expect("queue_depth"), 1);
    let again = store.read_jobs(&wh, "b", 10, NO_BLOCK).await.expect("read_jobs");
    assert_eq!(job_ids(&again), [format!("{wh}-2")], "the requeued job is delivered again");
    assert!(store.read_jobs(&wh, "c", 10, NO_BLOCK).await.expect("read_jobs").is_empty());
    // Requeueing the old entry again (it is no longer pending) changes nothing.
    store.requeue_jobs(&wh, &read[1..]).await.expect("requeue_jobs");
    assert_eq!(store.queue_depth(&wh).await.expect("queue_depth"), 1);
    assert!(store.read_jobs(&wh, "c", 10, NO_BLOCK).await.expect("read_jobs").is_empty());
}

/// A blocked read wakes for an entry appended during the block; `block = 0` never waits.
pub async fn blocking_reads(store: &dyn Store, prefix: &str) {
    let wh = format!("{prefix}-blk");
    prime_jobs(store, &wh).await;
    let started = Instant::now();
    assert!(store.read_jobs(&wh, "a", 1, NO_BLOCK).await.expect("read_jobs").is_empty());
    assert!(started.elapsed() < Duration::from_secs(1), "block = 0 returns at once");
    let started = Instant::now();
    assert!(store.read_jobs(&wh, "a", 1, Duration::from_millis(150)).await.expect("read_jobs").is_empty());
    assert!(started.elapsed() >= Duration::from_millis(100), "an empty blocking read waits for its block");

    let (got, ()) = tokio::join!(store.read_jobs(&wh, "a", 10, Duration::from_secs(2)), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        store.enqueue(&[job(&wh, "late")]).await.expect("enqueue");
    });
    assert_eq!(job_ids(&got.expect("read_jobs")), [format!("{wh}-late")], "the blocked read got the job");

    // The same for a change stream and a record write.
    let obj = format!("{prefix}-blk-obj");
    assert!(store.read_changes(&obj, "t", 10, NO_BLOCK).await.expect("read_changes").is_empty());
    let (got, ()) = tokio::join!(store.read_changes(&obj, "t", 10, Duration::from_secs(2)), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        store.write_record(&obj, "S1", 0, &fields("Open"), &change(&obj, "S1", 1, "Open")).await.expect("write_record");
    });
    let got = got.expect("read_changes");
    assert_eq!(got.iter().map(|e| e.value.record_id.as_str()).collect::<Vec<_>>(), ["S1"]);
}

/// Readers running side by side never receive the same entry.
pub async fn concurrent_readers(store: &dyn Store, prefix: &str) {
    let wh = format!("{prefix}-conc");
    prime_jobs(store, &wh).await;
    let jobs: Vec<Job> = (0..40).map(|n| job(&wh, &n.to_string())).collect();
    store.enqueue(&jobs).await.expect("enqueue");
    let reader = |name: String| {
        let wh = wh.clone();
        async move {
            let mut mine = Vec::new();
            // Bounded, so a backend that redelivers forever fails instead of hanging.
            for _ in 0..100 {
                let got = store.read_jobs(&wh, &name, 3, NO_BLOCK).await.expect("read_jobs");
                if got.is_empty() {
                    break;
                }
                mine.extend(job_ids(&got));
            }
            mine
        }
    };
    let all = futures_util::future::join_all((0..4).map(|i| reader(format!("r{i}")))).await;
    let mut seen: Vec<String> = all.into_iter().flatten().collect();
    assert_eq!(seen.len(), 40, "every job delivered exactly once");
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 40, "no job delivered twice");
}

/// Writers running side by side lose nothing: every job enqueued and every record write
/// accepted is there once.
pub async fn concurrent_writers(store: &dyn Store, prefix: &str) {
    let wh = format!("{prefix}-cw");
    let obj = format!("{prefix}-cw-obj");
    prime_jobs(store, &wh).await;
    assert!(store.read_changes(&obj, "t", 10, NO_BLOCK).await.expect("read_changes").is_empty());
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
        let read = store.read_jobs(&wh, "r", 50, NO_BLOCK).await.expect("read_jobs");
        if read.is_empty() {
            break;
        }
        got.extend(job_ids(&read));
    }
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 80, "every job once");
    let changes = store.read_changes(&obj, "t", 1_000, NO_BLOCK).await.expect("read_changes");
    assert_eq!(changes.len(), 80, "every change once");
}

/// Retries wait in the delayed set until due, and are promoted in due order.
pub async fn delayed_retries(store: &dyn Store, prefix: &str) {
    let wh = format!("{prefix}-dly");
    prime_jobs(store, &wh).await;
    assert_eq!(store.promote_due(&wh, now_ms()).await.expect("promote_due"), None, "nothing delayed");
    store.enqueue(&[job(&wh, "a"), job(&wh, "b"), job(&wh, "c")]).await.expect("enqueue");
    let read = store.read_jobs(&wh, "d", 10, NO_BLOCK).await.expect("read_jobs");
    assert_eq!(read.len(), 3);
    let t = now_ms() + 60_000;
    for (entry, due) in read.iter().zip([t + 300, t + 100, t + 200]) {
        let retry = Job { attempts: entry.value.attempts + 1, ..entry.value.clone() };
        let mut a = attempt(&entry.value, Outcome::RetryScheduled, now_ms());
        a.next_attempt_at_ms = due;
        store
            .complete(&wh, &entry.id, &a, FollowUp { retry: Some((retry, due)), ..Default::default() })
            .await
            .expect("complete");
    }
    assert_eq!(store.queue_depth(&wh).await.expect("queue_depth"), 3, "delayed jobs count");
    assert!(store.read_jobs(&wh, "d", 10, NO_BLOCK).await.expect("read_jobs").is_empty(), "not ready yet");

    assert_eq!(store.promote_due(&wh, t + 50).await.expect("promote_due"), Some(t + 100), "none due; next at t+100");
    assert!(store.read_jobs(&wh, "d", 10, NO_BLOCK).await.expect("read_jobs").is_empty(), "nothing moved early");
    assert_eq!(store.promote_due(&wh, t + 150).await.expect("promote_due"), Some(t + 200), "one due");
    let one = store.read_jobs(&wh, "d", 10, NO_BLOCK).await.expect("read_jobs");
    assert_eq!(job_ids(&one), [format!("{wh}-b")]);
    assert_eq!(one[0].value.attempts, 1, "the retry's job, not the original");
    assert_eq!(store.promote_due(&wh, t + 1_000).await.expect("promote_due"), None, "all moved");
    let rest = store.read_jobs(&wh, "d", 10, NO_BLOCK).await.expect("read_jobs");
    assert_eq!(job_ids(&rest), [format!("{wh}-c"), format!("{wh}-a")], "in due order");
    assert_eq!(store.queue_depth(&wh).await.expect("queue_depth"), 3, "ready again, pending");
}

/// A final failure dead-letters the job with its reason; a redrive puts it back with a fresh
/// attempt budget.
pub async fn dead_letters(store: &dyn Store, prefix: &str) {
    let wh = format!("{prefix}-dead");
    prime_jobs(store, &wh).await;
    assert!(store.dead_letters(&wh, 10).await.expect("dead_letters").is_empty());
    assert_eq!(store.redrive(&wh).await.expect("redrive"), 0);
    store.enqueue(&[job(&wh, "1"), job(&wh, "2")]).await.expect("enqueue");
    let read = store.read_jobs(&wh, "a", 10, NO_BLOCK).await.expect("read_jobs");
    for (entry, reason) in read.iter().zip(["target answered 500", "target answered 404"]) {
        let dead = Job { attempts: 4, ..entry.value.clone() };
        let follow = FollowUp { dead_letter: Some((dead, reason.to_string())), ..Default::default() };
        store
            .complete(&wh, &entry.id, &attempt(&entry.value, Outcome::Exhausted, now_ms()), follow)
            .await
            .expect("complete");
    }
    assert!(store.read_jobs(&wh, "a", 10, NO_BLOCK).await.expect("read_jobs").is_empty());
    let dead = store.dead_letters(&wh, 10).await.expect("dead_letters");
    let seen: Vec<(String, &str, u32)> =
        dead.iter().map(|d| (d.job.job_id.clone(), d.reason.as_str(), d.job.attempts)).collect();
    assert_eq!(seen, [(format!("{wh}-1"), "target answered 500", 4), (format!("{wh}-2"), "target answered 404", 4)]);
    assert_eq!(store.dead_letters(&wh, 1).await.expect("dead_letters").len(), 1, "limit");

    assert_eq!(store.redrive(&wh).await.expect("redrive"), 2);
    assert!(store.dead_letters(&wh, 10).await.expect("dead_letters").is_empty());
    let back = store.read_jobs(&wh, "a", 10, NO_BLOCK).await.expect("read_jobs");
    assert_eq!(job_ids(&back), [format!("{wh}-1"), format!("{wh}-2")]);
    assert!(back.iter().all(|e| e.value.attempts == 0), "attempts reset by the redrive");
    assert_eq!(store.redrive(&wh).await.expect("redrive"), 0);
}

/// A final attempt hands a write-back over; finishing it notes the result on the attempt.
pub async fn writebacks(store: &dyn Store, prefix: &str) {
    let wh = format!("{prefix}-wb");
    prime_jobs(store, &wh).await;
    assert!(store.read_writebacks(&wh, "w", 10, NO_BLOCK).await.expect("read_writebacks").is_empty());
    store.enqueue(&[job(&wh, "1"), job(&wh, "2")]).await.expect("enqueue");
    let read = store.read_jobs(&wh, "a", 10, NO_BLOCK).await.expect("read_jobs");
    let mut attempts = Vec::new();
    for entry in &read {
        let mut a = attempt(&entry.value, Outcome::Success, now_ms());
        a.writeback_status = "pending".into();
        let wb = WritebackJob {
            job_id: entry.value.job_id.clone(),
            webhook_id: wh.clone(),
            webhook_version: 1,
            attempt_id: a.attempt_id.clone(),
            record_ids: entry.value.record_ids.clone(),
            status: 201,
            response_body: br#"{"ticketId":"IT-1"}"#.to_vec(),
            ..Default::default()
        };
        store
            .complete(&wh, &entry.id, &a, FollowUp { writeback: Some(wb), ..Default::default() })
            .await
            .expect("complete");
        attempts.push(a);
    }
    let wbs = store.read_writebacks(&wh, "w", 10, NO_BLOCK).await.expect("read_writebacks");
    let got: Vec<(&str, &str, u32)> =
        wbs.iter().map(|e| (e.value.job_id.as_str(), e.value.attempt_id.as_str(), e.value.status)).collect();
    let want: Vec<(&str, &str, u32)> =
        read.iter().zip(&attempts).map(|(e, a)| (e.value.job_id.as_str(), a.attempt_id.as_str(), 201)).collect();
    assert_eq!(got, want);
    assert!(store.read_writebacks(&wh, "x", 10, NO_BLOCK).await.expect("read_writebacks").is_empty(), "delivered once");
    assert!(store.claim_writebacks(&wh, "x", LONG).await.expect("claim_writebacks").is_empty());

    store.finish_writeback(&wh, &wbs[0].id, &attempts[0].attempt_id, None).await.expect("finish_writeback");
    store
        .finish_writeback(&wh, &wbs[1].id, &attempts[1].attempt_id, Some("no record S9"))
        .await
        .expect("finish_writeback");
    let a0 = store.get_attempt(&wh, &attempts[0].attempt_id).await.expect("get_attempt").expect("attempt 0");
    assert_eq!((a0.writeback_status.as_str(), a0.writeback_error.as_str()), ("done", ""));
    let a1 = store.get_attempt(&wh, &attempts[1].attempt_id).await.expect("get_attempt").expect("attempt 1");
    assert_eq!((a1.writeback_status.as_str(), a1.writeback_error.as_str()), ("error", "no record S9"));
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(
        store.claim_writebacks(&wh, "x", Duration::from_millis(1)).await.expect("claim_writebacks").is_empty(),
        "acked"
    );
    assert!(store.read_writebacks(&wh, "x", 10, NO_BLOCK).await.expect("read_writebacks").is_empty());

    // An unfinished write-back is taken over once idle.
    store.enqueue(&[job(&wh, "3")]).await.expect("enqueue");
    let e = store.read_jobs(&wh, "a", 10, NO_BLOCK).await.expect("read_jobs").pop().expect("job 3");
    let a = attempt(&e.value, Outcome::Failed, now_ms());
    let wb = WritebackJob { job_id: e.value.job_id.clone(), attempt_id: a.attempt_id.clone(), ..Default::default() };
    store.complete(&wh, &e.id, &a, FollowUp { writeback: Some(wb), ..Default::default() }).await.expect("complete");
    let taken = store.read_writebacks(&wh, "w", 10, NO_BLOCK).await.expect("read_writebacks");
    assert_eq!(taken.len(), 1);
    tokio::time::sleep(Duration::from_millis(60)).await;
    let claimed = store.claim_writebacks(&wh, "x", Duration::from_millis(50)).await.expect("claim_writebacks");
    assert_eq!(claimed.iter().map(|e| e.value.job_id.as_str()).collect::<Vec<_>>(), [e.value.job_id.as_str()]);
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
    let mut made = Vec::new();
    // Completed out of time order: the log orders by start time, not by arrival.
    for i in [2, 0, 4, 1, 3] {
        let (j, outcome, at) = plan[i];
        let a = attempt(j, outcome, at);
        store.complete(&wh, "", &a, FollowUp::default()).await.expect("complete");
        made.push((i, a));
    }
    made.sort_by_key(|(i, _)| *i);
    let ids = |v: &[hookline_proto::Attempt]| v.iter().map(|a| a.attempt_id.clone()).collect::<Vec<_>>();
    let want = |idx: &[usize]| idx.iter().map(|i| made[*i].1.attempt_id.clone()).collect::<Vec<_>>();
    store
        .complete(&other, "", &attempt(&job(&other, "1"), Outcome::Success, base + 5_000), FollowUp::default())
        .await
        .expect("complete");

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
    })
    .await;
    assert_eq!(ids(&combined), want(&[3]));
    assert!(store.get_attempt(&wh, "no-such-attempt").await.expect("get_attempt").is_none());
    assert!(store.get_attempt(&other, &made[0].1.attempt_id).await.expect("get_attempt").is_none(), "per webhook");

    let old = attempt(&j1, Outcome::Failed, now_ms() - ATTEMPT_RETENTION.as_millis() as i64 - 3_600_000);
    store.complete(&wh, "", &old, FollowUp::default()).await.expect("complete");
    assert!(store.get_attempt(&wh, &old.attempt_id).await.expect("get_attempt").is_none(), "past retention: trimmed");
    assert_eq!(list(AttemptFilter { limit: 100, ..Default::default() }).await.len(), 5, "recent attempts kept");
}

/// GCRA: at most one call per interval (plus the burst); a refused call is told how long
/// to wait and is not counted.
pub async fn rate_limit(store: &dyn Store, prefix: &str) {
    let wh = format!("{prefix}-rate");
    let interval = Duration::from_millis(200);
    assert_eq!(store.rate_wait(&wh, interval, 0).await.expect("rate_wait"), Duration::ZERO, "the first call goes");
    let wait = store.rate_wait(&wh, interval, 0).await.expect("rate_wait");
    assert!(wait > Duration::ZERO && wait <= interval, "the second waits for the interval: {wait:?}");
    tokio::time::sleep(wait + Duration::from_millis(5)).await;
    assert_eq!(store.rate_wait(&wh, interval, 0).await.expect("rate_wait"), Duration::ZERO, "then it goes");
    // With a burst of 2, three calls go at once and the fourth waits.
    let burst = format!("{prefix}-burst");
    for i in 0..3 {
        assert_eq!(store.rate_wait(&burst, interval, 2).await.expect("rate_wait"), Duration::ZERO, "call {i}");
    }
    assert!(store.rate_wait(&burst, interval, 2).await.expect("rate_wait") > Duration::ZERO);
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

/// A counting semaphore: never more than `limit` holders; renewals by a holder; releases
/// and expired leases free a permit.
pub async fn permits(store: &dyn Store, prefix: &str) {
    let wh = format!("{prefix}-perm");
    let lease = Duration::from_secs(30);
    let mut granted = Vec::new();
    for h in 0..5 {
        granted.push(store.acquire_permit(&wh, &format!("h{h}"), 3, lease).await.expect("acquire_permit"));
    }
    assert_eq!(granted, [true, true, true, false, false], "exactly the limit");
    assert!(store.acquire_permit(&wh, "h0", 3, lease).await.expect("acquire_permit"), "a holder renews");
    assert!(!store.acquire_permit(&wh, "h3", 3, lease).await.expect("acquire_permit"), "still full");
    store.release_permit(&wh, "h1").await.expect("release_permit");
    assert!(store.acquire_permit(&wh, "h3", 3, lease).await.expect("acquire_permit"), "a released permit is free");
    assert!(!store.acquire_permit(&wh, "h4", 3, lease).await.expect("acquire_permit"), "full again");
    store.release_permit(&wh, "nobody").await.expect("releasing what is not held is fine");

    let short = format!("{prefix}-perm-lease");
    assert!(store.acquire_permit(&short, "a", 1, Duration::from_millis(200)).await.expect("acquire_permit"));
    assert!(!store.acquire_permit(&short, "b", 1, lease).await.expect("acquire_permit"), "held by a");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(store.acquire_permit(&short, "b", 1, lease).await.expect("acquire_permit"), "a's lease ran out");
    assert!(!store.acquire_permit(&short, "a", 1, lease).await.expect("acquire_permit"), "a lost it to b");
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

    backend!(embedded: records, write_index, change_claims, definitions, definition_events, job_queue, requeue, blocking_reads,
        concurrent_readers, concurrent_writers, delayed_retries, dead_letters, writebacks, attempt_log, permits, values_and_locks, batch_complete, rate_limit);
    backend!(cluster: records, write_index, change_claims, definitions, definition_events, job_queue, requeue, blocking_reads,
        concurrent_readers, concurrent_writers, delayed_retries, dead_letters, writebacks, attempt_log, permits, values_and_locks, batch_complete, rate_limit);
    backend!(redis: records, write_index, change_claims, definitions, definition_events, job_queue, requeue, blocking_reads,
        concurrent_readers, concurrent_writers, delayed_retries, dead_letters, writebacks, attempt_log, permits, values_and_locks, batch_complete, rate_limit);

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
        for wh in &webhooks {
            let got = store.read_jobs(wh, "primer", 10, Duration::ZERO).await.expect("read_jobs");
            assert!(got.is_empty());
        }
        let jobs: Vec<_> =
            (0..4).flat_map(|n| webhooks.iter().map(move |wh| crate::conformance::job(wh, &n.to_string()))).collect();
        store.enqueue(&jobs).await.expect("enqueue across webhooks");
        for wh in &webhooks {
            let got = store.read_jobs(wh, "r", 10, Duration::ZERO).await.expect("read_jobs");
            let ids: Vec<String> = got.iter().map(|e| e.value.job_id.clone()).collect();
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
