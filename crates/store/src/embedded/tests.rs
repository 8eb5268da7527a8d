//! Tests of what only the embedded backend has: durability across a reopen, the file lock,
//! the layout upgrade on open, and handling of undecodable data. The shared behaviour is in `crate::conformance`.

use std::time::Duration;

use hookline_proto::{Attempt, Job, Outcome};
use redb::ReadableTable;

use super::EmbeddedStore;
use super::inner::Effects;
use super::tables::{ATTEMPTS, ATTEMPTS_BY_TIME, FORMAT, JOBS, META, RECORD_POSITIONS, RECORDS, WRITTEN};
use crate::conformance::{attempt, job};
use crate::{AttemptFilter, FollowUp, Store, StoreError, WriteResult};

const NO_BLOCK: Duration = Duration::ZERO;

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
        let read = store.read_jobs("wh", "node-a", 10, NO_BLOCK).await.unwrap();
        assert_eq!(read.len(), 1);
        assert!(store.read_jobs("wh", "node-a", 10, NO_BLOCK).await.unwrap().is_empty());
        let due = crate::now_ms() + 3_600_000;
        store.enqueue(&[job("wh", "2")]).await.unwrap();
        let two = store.read_jobs("wh", "node-a", 10, NO_BLOCK).await.unwrap().pop().unwrap();
        let retry = FollowUp { retry: Some((Job { attempts: 1, ..two.value.clone() }, due)), ..Default::default() };
        store
            .complete("wh", &two.id, &attempt(&two.value, Outcome::RetryScheduled, crate::now_ms()), retry)
            .await
            .unwrap();
        (read[0].id.clone(), read[0].value.job_id.clone())
    };

    let store = EmbeddedStore::open(dir.path()).unwrap();
    let rec = store.get_record("survey", "S1").await.unwrap().unwrap();
    assert_eq!((rec.version, rec.fields), (2, fields("Open")));
    let again = store.read_jobs("wh", "node-b", 10, NO_BLOCK).await.unwrap();
    assert_eq!(again.len(), 1, "the unacknowledged job is delivered again");
    assert_eq!((again[0].id.as_str(), again[0].value.job_id.as_str()), (entry_id.as_str(), job_id.as_str()));
    assert_eq!(store.queue_depth("wh").await.unwrap(), 2, "one pending, one delayed");
    assert_eq!(store.list_attempts("wh", &AttemptFilter { limit: 10, ..Default::default() }).await.unwrap().len(), 1);
    // The change stream too: both changes, undelivered again.
    let changes = store.read_changes("survey", "t", 10, NO_BLOCK).await.unwrap();
    assert_eq!(changes.iter().map(|c| c.value.version).collect::<Vec<_>>(), [1, 2]);
    // Ids keep growing across the restart.
    store.enqueue(&[job("wh", "3")]).await.unwrap();
    let three = store.read_jobs("wh", "node-b", 10, NO_BLOCK).await.unwrap().pop().unwrap();
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
fn format_of(store: &EmbeddedStore) -> u64 {
    let mut format = 0;
    raw_write(store, |txn, _| {
        format = txn.open_table(META).unwrap().get("format").unwrap().unwrap().value().0;
        Ok(())
    });
    format
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
        assert_eq!(format_of(&store), FORMAT);
        write(&store, "survey", "S2", 0, "wh").await;
        write(&store, "survey", "S1", 0, "").await;
        write(&store, "survey", "S2", 1, "").await;
        write(&store, "other", "X", 0, "").await;
        // Back to what a version 1 build left behind.
        raw_write(&store, |txn, _| {
            txn.delete_table(RECORD_POSITIONS).unwrap();
            txn.delete_table(WRITTEN).unwrap();
            let mut meta = txn.open_table(META).unwrap();
            meta.retain(|k, _| !k.starts_with("position/")).unwrap();
            meta.insert("format", (1, 0)).unwrap();
            Ok(())
        });
    }
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(format_of(&store), FORMAT, "upgraded");
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
        raw_write(&store, |txn, _| {
            txn.open_table(META).unwrap().insert("format", (FORMAT + 1, 0)).unwrap();
            Ok(())
        });
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
fn raw_write(store: &EmbeddedStore, f: impl FnOnce(&redb::WriteTransaction, &mut Effects) -> crate::Result<()>) {
    store.inner.write_for_test(f).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_values_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    raw_write(&store, |txn, _| {
        txn.open_table(RECORDS).unwrap().insert(("survey", "S1"), (1, "{not json")).unwrap();
        txn.open_table(ATTEMPTS).unwrap().insert(("wh", "a1"), [0xff_u8, 0xff, 0xff].as_slice()).unwrap();
        txn.open_table(ATTEMPTS_BY_TIME).unwrap().insert(("wh", 5, "a1"), ()).unwrap();
        Ok(())
    });
    assert!(matches!(store.get_record("survey", "S1").await, Err(StoreError::Corrupt { .. })));
    assert!(matches!(store.get_attempt("wh", "a1").await, Err(StoreError::Corrupt { .. })));
    let listed = store.list_attempts("wh", &AttemptFilter { limit: 10, ..Default::default() }).await;
    assert!(matches!(listed, Err(StoreError::Corrupt { .. })));
    // A write on top of a corrupt value still works when it does not need to read it.
    let w = store.write_record("survey", "S1", 1, &fields("Open"), &change(2)).await.unwrap();
    assert_eq!(w, WriteResult::Written { version: 2 });
    assert!(matches!(store.finish_writeback("wh", "not-an-id", "a1", None).await, Err(StoreError::Backend(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_queue_entries_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    store.enqueue(&[job("wh", "1")]).await.unwrap();
    raw_write(&store, |txn, fx| {
        let mut t = txn.open_table(JOBS).unwrap();
        let id = fx.next_id_for_test();
        t.insert(id.key("wh"), (0, [0xff_u8, 0xff, 0xff].as_slice())).unwrap();
        Ok(())
    });
    store.enqueue(&[job("wh", "2")]).await.unwrap();
    let read = store.read_jobs("wh", "a", 10, NO_BLOCK).await.unwrap();
    assert_eq!(read.iter().map(|e| e.value.job_id.as_str()).collect::<Vec<_>>(), ["wh-1", "wh-2"]);
    assert_eq!(store.queue_depth("wh").await.unwrap(), 2, "the undecodable entry is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redriven_entries_are_marked() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    store.enqueue(&[job("wh", "1")]).await.unwrap();
    let e = store.read_jobs("wh", "a", 10, NO_BLOCK).await.unwrap().pop().unwrap();
    assert!(!e.redriven);
    let follow = FollowUp { dead_letter: Some((e.value.clone(), "gone".into())), ..Default::default() };
    store.complete("wh", &e.id, &attempt(&e.value, Outcome::Failed, crate::now_ms()), follow).await.unwrap();
    assert_eq!(store.redrive("wh").await.unwrap(), 1);
    let back = store.read_jobs("wh", "a", 10, NO_BLOCK).await.unwrap().pop().unwrap();
    assert!(back.redriven);
    // A requeue keeps the mark.
    store.requeue_jobs("wh", std::slice::from_ref(&back)).await.unwrap();
    let again = store.read_jobs("wh", "a", 10, NO_BLOCK).await.unwrap().pop().unwrap();
    assert!(again.redriven && again.id != back.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_blocked_on_one_queue_ignores_others() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let started = std::time::Instant::now();
    let (got, ()) = tokio::join!(store.read_jobs("a", "n", 10, Duration::from_millis(300)), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        store.enqueue(&[job("b", "1")]).await.unwrap();
    });
    assert!(got.unwrap().is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(store.read_jobs("b", "n", 10, NO_BLOCK).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_stored_twice_is_listed_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let j = job("wh", "1");
    let mut a: Attempt = attempt(&j, Outcome::Success, 1_000 + crate::now_ms());
    store.complete("wh", "", &a, FollowUp::default()).await.unwrap();
    a.started_at_ms += 5;
    store.complete("wh", "", &a, FollowUp::default()).await.unwrap();
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
        let changes = store.read_changes("survey", "t", 1_000_000, NO_BLOCK).await.unwrap();
        let versions: Vec<u64> = changes.iter().map(|c| c.value.version).collect();
        assert_eq!(versions, (1..=rec.version).collect::<Vec<_>>(), "one change per stored version");
        let jobs = store.read_jobs("wh", "n", 1_000_000, NO_BLOCK).await.unwrap();
        let ids: Vec<String> = jobs.iter().map(|e| e.value.job_id.clone()).collect();
        let want: Vec<String> = (1..=acked).map(|i| format!("wh-{i}")).collect();
        assert_eq!(&ids[..acked as usize], want.as_slice(), "every acknowledged job, in order");
    });
}
