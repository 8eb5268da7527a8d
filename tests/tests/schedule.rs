//! Scheduled webhooks: ticks select records through the store's write index, one node runs
//! each tick, write-backs do not count as changes, and a tick missed while no node ran runs
//! once when one comes back.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::bulk::BulkTarget;
use crate::support::{Api, Node, namespace, wait_until};

/// The `item` object, with records `r0`… `r{count-1}` whose `n` is their number.
async fn items(api: &Api, count: usize) {
    api.ok(
        "POST",
        "/v1/objects",
        Some(json!({"name": "item", "fields": [{"key": "n", "type": "number"}, {"key": "synced", "type": "number"}]})),
    )
    .await;
    if count > 0 {
        let records: Vec<Value> = (0..count).map(|i| json!({"id": format!("r{i}"), "fields": {"n": i}})).collect();
        api.ok("POST", "/v1/objects/item/records", Some(json!(records))).await;
    }
}

/// How many calls carried each record id.
fn times_seen(target: &BulkTarget) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for id in target.calls().into_iter().flatten() {
        *seen.entry(id).or_default() += 1;
    }
    seen
}

fn metric(text: &str, name: &str, webhook: &str) -> u64 {
    let prefix = format!("{name}{{webhook=\"{webhook}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|n| n.parse().ok()).unwrap_or(0)
}

#[actix_rt::test]
async fn a_schedule_sends_changed_records_once_per_tick_from_one_node() {
    let ns = namespace();
    let target = BulkTarget::start();
    let (a, b) = (Node::start(&ns, "all").await, Node::start(&ns, "all").await);
    let api = Api::new(&a);
    // 30 records, 20 of which match.
    items(&api, 30).await;

    // Bad schedules are refused with the field at fault.
    let webhook = |schedule: &str, tz: &str| {
        json!({
            "id": "nightly", "object": "item",
            "trigger": {"schedule": schedule, "time_zone": tz, "condition": "n >= 10"},
            "request": {"url": format!("{}/sync", target.url)},
            "response_script": "write(JSON.stringify(data.changedEntities.map(function (r) { return {id: r.id, synced: r.n}; })));",
            "writeback": {"key": {"from": "id", "to": "id"}},
            "settings": {"max_batch_size": 50, "batch_linger_ms": 100}
        })
    };
    let (status, body) = api.call("POST", "/v1/webhooks", Some(webhook("*/2 * * * *", "UTC"))).await;
    assert_eq!((status, body["error"]["field"].as_str()), (422, Some("trigger.schedule")), "{body}");
    let (status, body) = api.call("POST", "/v1/webhooks", Some(webhook("*/2 * * * * *", "Moon/Base"))).await;
    assert_eq!((status, body["error"]["field"].as_str()), (422, Some("trigger.time_zone")), "{body}");
    let (status, body) = api.call("POST", "/v1/webhooks", Some(webhook("0 0 0 1 1 * 2001", "UTC"))).await;
    assert_eq!((status, body["error"]["field"].as_str()), (422, Some("trigger.schedule")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("no tick in the future"), "{body}");

    // The schedule, every 2 s, on two nodes.
    api.ok("POST", "/v1/webhooks", Some(webhook("*/2 * * * * *", "Europe/Berlin"))).await;

    // The first tick sends every matching record, in bulk, and they are written back.
    wait_until(Duration::from_secs(20), || async { target.records_seen() >= 20 }).await;
    wait_until(Duration::from_secs(20), || async { api.record("item", "r29").await["fields"]["synced"] == 29 }).await;
    for i in 10..30 {
        assert_eq!(api.record("item", &format!("r{i}")).await["fields"]["synced"], i);
    }
    assert!(target.calls().len() < 20, "records went out in bulk: {:?}", target.calls());
    // The definition shows the schedule's state, in its time zone.
    let status = api.ok("GET", "/v1/webhooks/nightly", None).await["schedule_status"].clone();
    assert_eq!(status["time_zone"], "Europe/Berlin", "{status}");
    let (last, next) = (status["last_tick"].as_str().unwrap(), status["next_tick"].as_str().unwrap());
    assert!(last.ends_with("+01:00") || last.ends_with("+02:00"), "{status}");
    assert!(next > last, "{status}");

    // Two more ticks: the write-backs are this webhook's own, so nothing changed for it.
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let seen = times_seen(&target);
    assert_eq!(seen.len(), 20, "only matching records: {seen:?}");
    assert!(seen.values().all(|n| *n == 1), "each record once, though two nodes run the schedule: {seen:?}");

    // A change to a matching record and to one that still does not match.
    api.ok("PATCH", "/v1/objects/item/records/r15", Some(json!({"fields": {"n": 150}}))).await;
    api.ok("PATCH", "/v1/objects/item/records/r3", Some(json!({"fields": {"n": 4}}))).await;
    wait_until(Duration::from_secs(10), || async { times_seen(&target).get("r15") == Some(&2) }).await;
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let seen = times_seen(&target);
    assert_eq!(seen.values().sum::<usize>(), 21, "only the changed matching record went again: {seen:?}");
    wait_until(Duration::from_secs(10), || async { api.record("item", "r15").await["fields"]["synced"] == 150 }).await;

    // Both nodes count the runs they made; together they made one per tick with work or not.
    let mut runs = 0;
    for node in [&a, &b] {
        let text = reqwest::get(format!("{}/metrics", node.url)).await.unwrap().text().await.unwrap();
        runs += metric(&text, "hookline_schedule_runs_total", "nightly");
    }
    assert!(runs >= 5, "ticks ran: {runs}");
    a.stop().await;
    b.stop().await;
}

#[actix_rt::test]
async fn select_all_sends_every_match_on_every_tick_exactly_once() {
    let ns = namespace();
    let target = BulkTarget::start();
    let nodes = [Node::start(&ns, "all").await, Node::start(&ns, "all").await, Node::start(&ns, "all").await];
    let api = Api::new(&nodes[0]);
    items(&api, 4).await;
    api.ok(
        "POST",
        "/v1/webhooks",
        Some(json!({
            "id": "census", "object": "item",
            "trigger": {"schedule": "* * * * * *", "select": "all", "condition": "n < 3"},
            "request": {"url": format!("{}/all", target.url)}
        })),
    )
    .await;
    wait_until(Duration::from_secs(20), || async { target.records_seen() >= 3 * 4 }).await;
    for node in nodes {
        node.stop().await;
    }
    let seen = times_seen(&target);
    assert!(!seen.contains_key("r3"), "r3 does not match: {seen:?}");
    let ticks = seen["r0"];
    assert!(seen.values().all(|n| n.abs_diff(ticks) <= 1), "each tick sends every match: {seen:?}");
    // Three nodes, one run per tick: no message id was delivered twice.
    let ids = target.message_ids();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "a tick ran on more than one node: {ids:?}");
}

#[actix_rt::test]
async fn a_tick_missed_while_down_runs_once_on_return() {
    let ns = namespace();
    let dir = tempfile::tempdir().unwrap();
    let embedded = |a: &mut hookline::ServeArgs| {
        a.redis = None;
        a.data_dir = Some(dir.path().to_path_buf());
    };
    let target = BulkTarget::start();
    let node = Node::start_with(&ns, "all", embedded).await;
    let api = Api::new(&node);
    items(&api, 3).await;
    api.ok(
        "POST",
        "/v1/webhooks",
        Some(json!({
            "id": "every6", "object": "item",
            "trigger": {"schedule": "*/6 * * * * *", "select": "all"},
            "request": {"url": format!("{}/all", target.url)},
            "settings": {"max_batch_size": 10, "batch_linger_ms": 50}
        })),
    )
    .await;
    wait_until(Duration::from_secs(15), || async { target.records_seen() >= 3 }).await;
    let first_tick = now_s() / 6 * 6;
    node.stop().await;

    // Down across two ticks; back just after the second of them.
    let back_at = first_tick + 12;
    let back_in = (back_at - now_s()).max(0) as u64;
    tokio::time::sleep(Duration::from_millis(back_in * 1000 + 300)).await;
    assert!(target.records_seen() == 3, "nothing ran while the node was down");
    let node = Node::start_with(&ns, "all", embedded).await;
    wait_until(Duration::from_secs(4), || async { target.records_seen() >= 6 }).await;
    // Well before the next tick (back_at + 6): the missed ticks made one run, not two.
    let settle = back_at + 5;
    if now_s() < settle {
        tokio::time::sleep(Duration::from_secs((settle - now_s()) as u64)).await;
    }
    assert_eq!(target.records_seen(), 6, "{:?}", target.calls());
    assert!(times_seen(&target).values().all(|n| *n == 2));
    node.stop().await;
}

fn now_s() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A node died mid-run: its progress says how far the tick got and its lock is still held.
/// Once the lock expires, a live node resumes the run from there — the records before that
/// point are not sent again — and then carries on with the schedule.
#[actix_rt::test]
async fn a_run_left_by_a_dead_node_is_resumed_where_it_stopped() {
    let ns = namespace();
    let target = BulkTarget::start();
    let node = Node::start(&ns, "api").await;
    let api = Api::new(&node);
    items(&api, 10).await;

    // What the dead node left: a tick half done (records at positions 1-6 enqueued), its lock.
    let mut redis =
        redis::Client::open(crate::support::redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let tick = (now_s() - 60) * 1000;
    let progress = json!({"object": "item", "done_tick": tick - 60_000, "sent_to": 0,
                          "running": {"tick": tick, "from": 0, "at": 6, "stop_at": 1000, "records": 6}});
    let started = std::time::Instant::now();
    let _: () = redis::cmd("SET")
        .arg(format!("{ns}:{{wh:resume}}:value:schedule"))
        .arg(progress.to_string())
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{ns}:{{wh:resume}}:lock:schedule"))
        .arg("dead-node:1")
        .arg("PX")
        .arg(2_000)
        .query_async(&mut redis)
        .await
        .unwrap();
    api.ok(
        "POST",
        "/v1/webhooks",
        Some(json!({
            "id": "resume", "object": "item",
            "trigger": {"schedule": "0 0 0 1 1 *"},
            "request": {"url": format!("{}/sync", target.url)},
            "settings": {"max_batch_size": 10, "batch_linger_ms": 50}
        })),
    )
    .await;
    let engine = Node::start(&ns, "coordinator,trigger,dispatcher,writeback").await;
    wait_until(Duration::from_secs(15), || async { target.records_seen() >= 4 }).await;
    assert!(started.elapsed() >= Duration::from_millis(2_000), "the dead node's lock was respected");
    // The missed tick's rest went out, and then the tick due since the one in progress
    // (yearly: none for months) sent nothing else.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut seen: Vec<String> = target.calls().into_iter().flatten().collect();
    seen.sort();
    assert_eq!(seen, ["r6", "r7", "r8", "r9"]);
    let stored: String =
        redis::cmd("GET").arg(format!("{ns}:{{wh:resume}}:value:schedule")).query_async(&mut redis).await.unwrap();
    let stored: Value = serde_json::from_str(&stored).unwrap();
    assert_eq!((stored["done_tick"].as_i64(), stored["sent_to"].as_u64()), (Some(tick), Some(10)), "{stored}");
    assert!(stored.get("running").is_none(), "{stored}");
    engine.stop().await;
    node.stop().await;
}

/// A paused scheduled webhook runs no tick; resumed, it runs the missed ones once and sends
/// what changed meanwhile.
#[actix_rt::test]
async fn a_paused_schedule_runs_no_tick_and_catches_up_once_resumed() {
    let ns = namespace();
    let dir = tempfile::tempdir().unwrap();
    let target = BulkTarget::start();
    let node = Node::start_with(&ns, "all", |a| {
        a.redis = None;
        a.data_dir = Some(dir.path().to_path_buf());
    })
    .await;
    let api = Api::new(&node);
    items(&api, 3).await;
    api.ok(
        "POST",
        "/v1/webhooks",
        Some(json!({
            "id": "pausable", "object": "item", "trigger": {"schedule": "* * * * * *"},
            "request": {"url": format!("{}/sync", target.url)},
            "settings": {"max_batch_size": 10, "batch_linger_ms": 50}
        })),
    )
    .await;
    wait_until(Duration::from_secs(10), || async { target.records_seen() >= 3 }).await;
    let runs = || async {
        let text = reqwest::get(format!("{}/metrics", node.url)).await.unwrap().text().await.unwrap();
        metric(&text, "hookline_schedule_runs_total", "pausable")
    };

    api.ok("POST", "/v1/webhooks/pausable/pause", None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let paused_at = runs().await;
    api.ok("PATCH", "/v1/objects/item/records/r1", Some(json!({"fields": {"n": 10}}))).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(runs().await, paused_at, "no tick ran while paused");

    api.ok("POST", "/v1/webhooks/pausable/resume", None).await;
    wait_until(Duration::from_secs(10), || async { target.records_seen() >= 4 }).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let seen = times_seen(&target);
    assert_eq!((seen.values().sum::<usize>(), seen["r1"]), (4, 2), "r1 once more, nothing else: {seen:?}");
    node.stop().await;
}

/// A user's change made while the tick's call is in flight is not hidden by the write-back
/// that lands after it: the next tick sends the record again, with the change.
#[actix_rt::test]
async fn a_change_made_during_the_call_is_not_hidden_by_the_write_back() {
    let ns = namespace();
    let target = BulkTarget::start();
    target.set_delay(Duration::from_millis(1_500));
    let node = Node::start(&ns, "all").await;
    let api = Api::new(&node);
    items(&api, 0).await;
    api.ok("POST", "/v1/objects/item/records", Some(json!({"id": "r1", "fields": {"n": 1}}))).await;
    api.ok(
        "POST",
        "/v1/webhooks",
        Some(json!({
            "id": "slow", "object": "item", "trigger": {"schedule": "*/2 * * * * *"},
            "request": {"url": format!("{}/sync", target.url)},
            "response_script": "write(JSON.stringify({id: data.changedEntities[0].id, synced: 1}));",
            "writeback": {"key": {"from": "id", "to": "id"}},
            "settings": {"timeout": "10s"}
        })),
    )
    .await;
    // The call is in flight (the target holds it 1.5 s): change the record meanwhile.
    wait_until(Duration::from_secs(10), || async { target.in_flight() > 0 }).await;
    api.ok("PATCH", "/v1/objects/item/records/r1", Some(json!({"fields": {"n": 2}}))).await;
    wait_until(Duration::from_secs(10), || async { api.record("item", "r1").await["fields"]["synced"] == 1 }).await;
    // The record's latest write is the write-back, yet the change under it goes out.
    wait_until(Duration::from_secs(10), || async { target.records_seen() >= 2 }).await;
    let sent = target.records();
    assert_eq!((sent[0]["n"].as_i64(), sent[1]["n"].as_i64()), (Some(1), Some(2)), "{sent:?}");
    // After that, its own write-backs alone send nothing more.
    tokio::time::sleep(Duration::from_millis(6_500)).await;
    assert_eq!(target.records_seen(), 2, "{:?}", target.records());
    node.stop().await;
}
