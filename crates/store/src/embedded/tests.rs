//! Tests of what only the embedded backend has: durability across a reopen, the file lock,
//! the layout upgrade on open, and handling of undecodable data. The shared behaviour is in `crate::conformance`.

use std::time::Duration;

use hookline_proto::{Attempt, Job, Outcome};
use redb::ReadableTable;

use super::EmbeddedStore;
use super::inner::Effects;
use super::tables::{ATTEMPTS, ATTEMPTS_BY_TIME, FORMAT, JOBS, META, RECORD_POSITIONS, RECORDS, WRITTEN};
use crate::conformance::{attempt, decode, job};
use crate::{AttemptFilter, Completion, FollowUp, QueueName, RawEntry, Store, StoreError, Take, WriteResult};

const NO_BLOCK: Duration = Duration::ZERO;

/// Fresh jobs of `webhook` handed to `consumer`, at most `n`.
async fn read_jobs(store: &EmbeddedStore, webhook: &str, consumer: &str, n: usize) -> Vec<RawEntry> {
    store.read(&QueueName::jobs(webhook), consumer, n, NO_BLOCK).await.unwrap()
}

/// Up to `n` jobs, fresh or solo, taken by `consumer` with permits to spare.
async fn take_jobs(store: &EmbeddedStore, webhook: &str, consumer: &str, n: u32) -> Vec<RawEntry> {
    let t = Take {
        webhook,
        consumer,
        lease: Duration::from_secs(60),
        limit: 1000,
        free: &[],
        known_free: 0,
        want: n,
        release: &[],
        batch: 1,
        max_entries: 1000,
        rate: None,
        claim: None,
    };
    store.take(&t).await.unwrap().entries
}

fn job_of(e: &RawEntry) -> Job {
    decode(e)
}

/// Completes one call of `consumer`'s entries.
async fn complete(
    store: &EmbeddedStore,
    webhook: &str,
    consumer: &str,
    entries: &[&RawEntry],
    a: Attempt,
    follow_up: FollowUp,
) {
    let c = Completion { entries: entries.iter().map(|e| e.id.clone()).collect(), attempt: a, follow_up };
    assert_eq!(store.complete(webhook, consumer, &[c]).await.unwrap(), [true]);
}

fn fields(status: &str) -> hookline_model::Fields {
    serde_json::json!({"status": status}).as_object().cloned().unwrap_or_default()
}

fn change(version: u64) -> hookline_proto::Change {
    hookline_proto::Change { object: "survey".into(), record_id: "S1".into(), version, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (entry_id, job_id) = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        for v in 0..2 {
            let w = store.write_record("survey", "S1", v, &fields("Open"), &change(v + 1)).await.unwrap();
            assert_eq!(w, WriteResult::Written { version: v + 1 });
        }
        store.enqueue(&[job("wh", "1")]).await.unwrap();
        // Read (pending) and never acknowledged, as if the process died mid-delivery.
        let read = read_jobs(&store, "wh", "node-a", 10).await;
        assert_eq!(read.len(), 1);
        assert!(read_jobs(&store, "wh", "node-a", 10).await.is_empty());
        let due = crate::now_ms() + 3_600_000;
        store.enqueue(&[job("wh", "2")]).await.unwrap();
        let two = read_jobs(&store, "wh", "node-a", 10).await.pop().unwrap();
        let retry = FollowUp { retry: Some((Job { attempts: 1, ..job_of(&two) }, due)), ..Default::default() };
        complete(
            &store,
            "wh",
            "node-a",
            &[&two],
            attempt(&job_of(&two), Outcome::RetryScheduled, crate::now_ms()),
            retry,
        )
        .await;
        (read[0].id.clone(), job_of(&read[0]).job_id)
    };

    let store = EmbeddedStore::open(dir.path()).unwrap();
    let rec = store.get_record("survey", "S1").await.unwrap().unwrap();
    assert_eq!((rec.version, rec.fields), (2, fields("Open")));
    let again = read_jobs(&store, "wh", "node-b", 10).await;
    assert_eq!(again.len(), 1, "the unacknowledged job is delivered again");
    assert_eq!((again[0].id.clone(), job_of(&again[0]).job_id), (entry_id.clone(), job_id));
    assert_eq!(again[0].deliveries, 2, "handed out before the restart: a second delivery");
    assert_eq!(store.queue_depth("wh").await.unwrap(), 2, "one pending, one delayed");
    assert_eq!(store.list_attempts("wh", &AttemptFilter { limit: 10, ..Default::default() }).await.unwrap().len(), 1);
    // The change stream too: both changes, undelivered again.
    let changes = store.read(&QueueName::changes("survey"), "t", 10, NO_BLOCK).await.unwrap();
    assert_eq!(changes.iter().map(|c| decode::<hookline_proto::Change>(c).version).collect::<Vec<_>>(), [1, 2]);
    // Ids keep growing across the restart.
    store.enqueue(&[job("wh", "3")]).await.unwrap();
    let three = read_jobs(&store, "wh", "node-b", 10).await.pop().unwrap();
    assert_eq!(three.deliveries, 1, "a job never handed out before");
    let parse = |id: &str| super::tables::Id::parse(id).unwrap();
    assert!(parse(&three.id) > parse(&entry_id), "{} after {}", three.id, entry_id);
}

/// (id, position, origin) of every record of `object` in the write index.
async fn index_of(store: &EmbeddedStore, object: &str) -> Vec<(String, u64, String)> {
    let all = store.records_written(object, 0, 1_000).await.unwrap();
    all.into_iter().map(|r| (r.record.id, r.position, r.origin_webhook)).collect()
}

/// (id, other position) of every record of `object` in the write index.
async fn others_of(store: &EmbeddedStore, object: &str) -> Vec<(String, u64)> {
    let all = store.records_written(object, 0, 1_000).await.unwrap();
    all.into_iter().map(|r| (r.record.id, r.other_position)).collect()
}

fn others(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    list.iter().map(|(id, q)| (id.to_string(), *q)).collect()
}

fn indexed(list: &[(&str, u64, &str)]) -> Vec<(String, u64, String)> {
    list.iter().map(|(id, p, o)| (id.to_string(), *p, o.to_string())).collect()
}

/// Writes `id` of `object` at version `expected + 1`, with `origin` on its change.
async fn write(store: &EmbeddedStore, object: &str, id: &str, expected: u64, origin: &str) {
    let c = hookline_proto::Change {
        object: object.into(),
        record_id: id.into(),
        version: expected + 1,
        origin_webhook: origin.into(),
        ..Default::default()
    };
    let w = store.write_record(object, id, expected, &fields("Open"), &c).await.unwrap();
    assert_eq!(w, WriteResult::Written { version: expected + 1 });
}

/// The stored layout version.
async fn format_of(store: &EmbeddedStore) -> u64 {
    let format = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = format.clone();
    raw_write(store, move |txn, _| {
        let f = txn.open_table(META).unwrap().get("format").unwrap().unwrap().value().0;
        seen.store(f, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    })
    .await;
    format.load(std::sync::atomic::Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_positions_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        write(&store, "survey", "S1", 0, "").await;
        write(&store, "survey", "S2", 0, "wh").await;
        write(&store, "survey", "S1", 1, "").await;
        write(&store, "other", "S1", 0, "").await;
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.write_position("survey").await.unwrap(), 3);
    assert_eq!(index_of(&store, "survey").await, indexed(&[("S2", 2, "wh"), ("S1", 3, "")]));
    assert_eq!(others_of(&store, "survey").await, others(&[("S2", 0), ("S1", 0)]));
    write(&store, "survey", "S2", 1, "").await;
    assert_eq!(store.write_position("survey").await.unwrap(), 4, "the counter goes on after the reopen");
    assert_eq!(index_of(&store, "survey").await, indexed(&[("S1", 3, ""), ("S2", 4, "")]));
    assert_eq!(others_of(&store, "survey").await, others(&[("S1", 0), ("S2", 2)]), "wh's write before the reopen");
    assert_eq!(index_of(&store, "other").await, indexed(&[("S1", 1, "")]));
}

/// A file of layout version 1 (records, no write index) is indexed when it is opened: each
/// object's records in id order, origin unknown; a newer version than this build's is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_file_is_indexed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(format_of(&store).await, FORMAT);
        write(&store, "survey", "S2", 0, "wh").await;
        write(&store, "survey", "S1", 0, "").await;
        write(&store, "survey", "S2", 1, "").await;
        write(&store, "other", "X", 0, "").await;
        // Back to what a version 1 build left behind.
        raw_write(&store, move |txn, _| {
            txn.delete_table(RECORD_POSITIONS).unwrap();
            txn.delete_table(WRITTEN).unwrap();
            let mut meta = txn.open_table(META).unwrap();
            meta.retain(|k, _| !k.starts_with("position/")).unwrap();
            meta.insert("format", (1, 0)).unwrap();
            Ok(())
        })
        .await;
    }
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(format_of(&store).await, FORMAT, "upgraded");
        assert_eq!(index_of(&store, "survey").await, indexed(&[("S1", 1, ""), ("S2", 2, "")]));
        assert_eq!(store.write_position("survey").await.unwrap(), 2);
        assert_eq!(index_of(&store, "other").await, indexed(&[("X", 1, "")]));
        assert_eq!(others_of(&store, "survey").await, others(&[("S1", 0), ("S2", 0)]), "no earlier writer known");
        let rec = store.records_written("survey", 1, 10).await.unwrap().pop().unwrap().record;
        assert_eq!(rec, store.get_record("survey", "S2").await.unwrap().unwrap(), "indexed with its record");
        write(&store, "survey", "S1", 1, "wh").await;
        assert_eq!(index_of(&store, "survey").await, indexed(&[("S2", 2, ""), ("S1", 3, "wh")]));
        assert_eq!(others_of(&store, "survey").await, others(&[("S2", 0), ("S1", 1)]), "the indexed write at 1");
    }
    {
        // Opening again indexes nothing twice.
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(index_of(&store, "survey").await, indexed(&[("S2", 2, ""), ("S1", 3, "wh")]));
        raw_write(&store, move |txn, _| {
            txn.open_table(META).unwrap().insert("format", (FORMAT + 1, 0)).unwrap();
            Ok(())
        })
        .await;
    }
    let newer = EmbeddedStore::open(dir.path());
    assert!(matches!(newer, Err(StoreError::Backend(ref m)) if m.contains("layout version")), "{newer:?}");
}

#[tokio::test]
async fn a_second_open_of_the_same_dir_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let _first = EmbeddedStore::open(dir.path()).unwrap();
    let second = EmbeddedStore::open(dir.path());
    assert!(matches!(second, Err(StoreError::Backend(_))), "{second:?}");
}

#[test]
fn open_creates_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a").join("b");
    let store = EmbeddedStore::open(&nested).unwrap();
    assert_eq!(store.path(), nested.join("hookline.redb"));
    assert!(store.path().exists());
}

/// Runs one raw write transaction against the store's file.
async fn raw_write(
    store: &EmbeddedStore,
    f: impl FnMut(&redb::WriteTransaction, &mut Effects) -> crate::Result<()> + Send + 'static,
) {
    store.write_for_test(f).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_values_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    raw_write(&store, move |txn, _| {
        txn.open_table(RECORDS).unwrap().insert(("survey", "S1"), (1, "{not json")).unwrap();
        txn.open_table(ATTEMPTS).unwrap().insert(("wh", "a1"), [0xff_u8, 0xff, 0xff].as_slice()).unwrap();
        txn.open_table(ATTEMPTS_BY_TIME).unwrap().insert(("wh", 5, "a1"), ()).unwrap();
        Ok(())
    })
    .await;
    assert!(matches!(store.get_record("survey", "S1").await, Err(StoreError::Corrupt { .. })));
    assert!(matches!(store.get_attempt("wh", "a1").await, Err(StoreError::Corrupt { .. })));
    let listed = store.list_attempts("wh", &AttemptFilter { limit: 10, ..Default::default() }).await;
    assert!(matches!(listed, Err(StoreError::Corrupt { .. })));
    // A write on top of a corrupt value still works when it does not need to read it.
    let w = store.write_record("survey", "S1", 1, &fields("Open"), &change(2)).await.unwrap();
    assert_eq!(w, WriteResult::Written { version: 2 });
    let bad = crate::WritebackDone {
        entry: "not-an-id".into(),
        attempt_id: String::new(),
        status: "done".into(),
        error: String::new(),
        failed: None,
    };
    assert!(matches!(store.finish_writebacks("wh", "w", &[bad]).await, Err(StoreError::Backend(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_queue_entries_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    store.enqueue(&[job("wh", "1")]).await.unwrap();
    raw_write(&store, move |txn, fx| {
        let mut t = txn.open_table(JOBS).unwrap();
        let id = fx.next_id_for_test();
        t.insert(id.key("wh"), (0, [0xff_u8, 0xff, 0xff].as_slice())).unwrap();
        Ok(())
    })
    .await;
    store.enqueue(&[job("wh", "2")]).await.unwrap();
    let q = QueueName::jobs("wh");
    let consumer: crate::queue::Consumer<Job> =
        crate::queue::Consumer::new(std::sync::Arc::new(store.clone()), q, "a", Duration::from_secs(60), None);
    let read = consumer.read(10, NO_BLOCK).await.unwrap();
    assert_eq!(read.entries().iter().map(|e| e.value.job_id.as_str()).collect::<Vec<_>>(), ["wh-1", "wh-2"]);
    assert_eq!(store.queue_depth("wh").await.unwrap(), 2, "the undecodable entry is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redriven_entries_are_marked() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    store.enqueue(&[job("wh", "1")]).await.unwrap();
    let e = read_jobs(&store, "wh", "a", 10).await.pop().unwrap();
    assert!(!e.redriven);
    let follow = FollowUp { dead_letter: Some((job_of(&e), "gone".into())), ..Default::default() };
    complete(&store, "wh", "a", &[&e], attempt(&job_of(&e), Outcome::Failed, crate::now_ms()), follow).await;
    assert_eq!(store.redrive("wh").await.unwrap(), 1);
    let back = take_jobs(&store, "wh", "a", 10).await.pop().unwrap();
    assert!(back.redriven && back.solo);
    // A take-over keeps the mark.
    store.release(&QueueName::jobs("wh"), "a", std::slice::from_ref(&back.id)).await.unwrap();
    let scan = crate::ClaimScan { min_idle: Duration::from_secs(60), cursor: String::new() };
    let (again, _) = store.claim(&QueueName::jobs("wh"), "b", &scan, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert!(again[0].redriven && again[0].id == back.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_blocked_on_one_queue_ignores_others() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let started = std::time::Instant::now();
    let queue = QueueName::jobs("a");
    let (got, ()) = tokio::join!(store.read(&queue, "n", 10, Duration::from_millis(300)), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        store.enqueue(&[job("b", "1")]).await.unwrap();
    });
    assert!(got.unwrap().is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(read_jobs(&store, "b", "n", 10).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_stored_twice_is_listed_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let j = job("wh", "1");
    let mut a: Attempt = attempt(&j, Outcome::Success, 1_000 + crate::now_ms());
    complete(&store, "wh", "c", &[], a.clone(), FollowUp::default()).await;
    a.started_at_ms += 5;
    complete(&store, "wh", "c", &[], a.clone(), FollowUp::default()).await;
    let all = store.list_attempts("wh", &AttemptFilter { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(all, [a]);
}

/// Set in the child process of [`kill_9_loses_nothing_acknowledged`]: the store directory.
const KILL_DIR_ENV: &str = "HOOKLINE_STORE_KILL9_DIR";

/// The child half of [`kill_9_loses_nothing_acknowledged`]: writes records and jobs as fast
/// as it can, printing each one whose call returned `Ok`, until it is killed. Does nothing
/// in a normal test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_child() {
    use std::io::Write;
    let Ok(dir) = std::env::var(KILL_DIR_ENV) else { return };
    let store = EmbeddedStore::open(std::path::Path::new(&dir)).unwrap();
    let mut out = std::io::stdout().lock();
    for i in 1..=100_000u64 {
        let w = store.write_record("survey", "S1", i - 1, &fields(&i.to_string()), &change(i)).await.unwrap();
        assert_eq!(w, WriteResult::Written { version: i });
        store.enqueue(&[job("wh", &i.to_string())]).await.unwrap();
        writeln!(out, "ACK {i}").unwrap();
        out.flush().unwrap();
    }
}

/// A `kill -9` in the middle of writing loses nothing a call had returned `Ok` for.
#[test]
fn kill_9_loses_nothing_acknowledged() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "embedded::tests::kill_9_child", "--nocapture", "--test-threads", "1"])
        .env(KILL_DIR_ENV, dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = 0u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    while acked < 40 && std::time::Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(n) = line.strip_prefix("ACK ") {
            acked = n.trim().parse().unwrap();
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(acked >= 10, "the child wrote only {acked} before the deadline");

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let rec = store.get_record("survey", "S1").await.unwrap().unwrap();
        assert!(rec.version >= acked, "record at v{} after v{acked} was acknowledged", rec.version);
        assert_eq!(rec.fields, fields(&rec.version.to_string()), "the stored fields belong to the stored version");
        let changes = store.read(&QueueName::changes("survey"), "t", 1_000_000, NO_BLOCK).await.unwrap();
        let versions: Vec<u64> = changes.iter().map(|c| decode::<hookline_proto::Change>(c).version).collect();
        assert_eq!(versions, (1..=rec.version).collect::<Vec<_>>(), "one change per stored version");
        let jobs = read_jobs(&store, "wh", "n", 1_000_000).await;
        let ids: Vec<String> = jobs.iter().map(|e| job_of(e).job_id).collect();
        let want: Vec<String> = (1..=acked).map(|i| format!("wh-{i}")).collect();
        assert_eq!(&ids[..acked as usize], want.as_slice(), "every acknowledged job, in order");
    });
}

/// A job handed out and never finished counts a delivery more each time the store is opened
/// again and hands it out (a job that kills its node every time is dead-lettered at last);
/// one never handed out does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_counts_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.enqueue(&[job("wh", "poison"), Job { attempts: 1, ..job("wh", "retry") }]).await.unwrap();
        let got = take_jobs(&store, "wh", "n", 10).await;
        assert_eq!(got.iter().map(|e| e.deliveries).collect::<Vec<_>>(), [1, 1]);
        store.enqueue(&[job("wh", "untouched")]).await.unwrap();
    }
    for round in 2..=4u32 {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let got = take_jobs(&store, "wh", "n", 1).await;
        let mut seen: Vec<(String, u32)> = got.iter().map(|e| (job_of(e).job_id, e.deliveries)).collect();
        let more = take_jobs(&store, "wh", "n", 10).await;
        seen.extend(more.iter().map(|e| (job_of(e).job_id, e.deliveries)));
        seen.sort();
        let untouched = round - 1;
        assert_eq!(
            seen,
            [
                ("wh-poison".to_string(), round),
                ("wh-retry".to_string(), round),
                ("wh-untouched".to_string(), untouched)
            ],
            "after restart {}",
            round - 1
        );
    }
}

/// Writes that arrive together are committed together: many concurrent writes take fewer
/// commits than writes, and every one of them is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let before = store.commits();
    let writes = (0..200).map(|n| {
        let store = store.clone();
        tokio::spawn(async move {
            let id = format!("S{n}");
            store.write_record("survey", &id, 0, &fields("Open"), &change(1)).await.unwrap()
        })
    });
    for w in futures_util::future::join_all(writes).await {
        assert_eq!(w.unwrap(), WriteResult::Written { version: 1 });
    }
    let commits = store.commits() - before;
    assert!(commits < 200, "200 writes in {commits} commits");
    assert_eq!(store.records_written("survey", 0, 1_000).await.unwrap().len(), 200);
    // A failing write fails alone: the others of its batch are kept.
    let (stale, pending, eight, two) = (fields("Stale"), fields("Pending"), change(8), change(2));
    let bad = store.write_record("survey", "S1", 7, &stale, &eight);
    let good = store.write_record("survey", "S1", 1, &pending, &two);
    let (bad, good) = tokio::join!(bad, good);
    assert_eq!(bad.unwrap(), WriteResult::Conflict { current: 1 });
    assert_eq!(good.unwrap(), WriteResult::Written { version: 2 });
}
