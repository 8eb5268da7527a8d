//! The delivery core held to its promise from outside: a concurrency limit that holds however
//! long calls take, no live node's work taken over, nothing read that no call carries, no
//! change decided without the webhooks saved before it, connections that cannot hang, and
//! every node observable.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::bulk::BulkTarget;
use crate::procs::{Proc, Sink};
use crate::support::{Api, Node, metric, namespace, redis_url, wait_until};

fn item_object() -> Value {
    json!({"name": "item", "fields": [{"key": "n", "type": "number"}, {"key": "note", "type": "string"}]})
}

async fn create_items(api: &Api, ids: std::ops::Range<usize>) {
    let batch: Vec<_> = ids.map(|i| json!({"id": format!("r{i}"), "fields": {"n": i}})).collect();
    api.ok("POST", "/v1/objects/item/records", Some(json!(batch))).await;
}

/// Two dispatcher processes share a limit of two; every call takes three leases (1 s each,
/// set with `--lease`): the permits stay held, renewed, for as long as their calls run, so
/// the target never sees a third call at once, and no job is sent twice.
#[actix_rt::test]
async fn two_dispatchers_never_exceed_a_limit_held_longer_than_two_leases() {
    let ns = namespace();
    let redis = redis_url();
    let sink = Sink::start(Duration::from_secs(3));
    let common = ["--redis", redis.as_str(), "--namespace", ns.as_str(), "--lease", "1s"];
    let api_node = Proc::start("lim-api", &[&common[..], &["--roles", "api,coordinator,trigger"]].concat());
    let _dispatchers: Vec<Proc> = (1..=2)
        .map(|i| Proc::start(&format!("lim-d{i}"), &[&common[..], &["--roles", "dispatcher"]].concat()))
        .collect();
    let api = Api::at(&api_node.url);
    api.ok("POST", "/v1/objects", Some(item_object())).await;
    api.ok(
        "POST",
        "/v1/webhooks",
        Some(json!({
            "id": "slow", "object": "item", "trigger": {"on_create": true},
            "request": {"url": format!("{}/in", sink.url)},
            "settings": {"max_concurrency": 2, "timeout": "10s", "retries": 0}
        })),
    )
    .await;
    create_items(&api, 0..8).await;
    wait_until(Duration::from_secs(60), || async { sink.distinct_records() == 8 }).await;
    let max = sink.max_in_flight.load(Ordering::SeqCst);
    assert_eq!(max, 2, "the target saw {max} calls at once under a limit of 2");
    assert_eq!(sink.hits().len(), 8, "each job sent once: {:?}", sink.hits());
}

/// A rate limit of 6/m with four permits and a 1 s timeout: jobs wait for their rate tokens
/// without being read early, so none is taken over and sent twice, and none is dead-lettered.
#[actix_rt::test]
async fn a_rate_limit_keeps_jobs_waiting_without_duplicates_or_dead_letters() {
    let ns = namespace();
    let sink = Sink::start(Duration::ZERO);
    let node = Node::start(&ns, "all").await;
    let api = Api::new(&node);
    api.ok("POST", "/v1/objects", Some(item_object())).await;
    api.ok(
        "POST",
        "/v1/webhooks",
        Some(json!({
            "id": "paced", "object": "item", "trigger": {"on_create": true},
            "request": {"url": format!("{}/in", sink.url)},
            "settings": {"max_concurrency": 4, "rate_limit": "6/m", "timeout": "1s", "retries": 3, "retry_wait": "1s"}
        })),
    )
    .await;
    let started = Instant::now();
    create_items(&api, 0..7).await;
    wait_until(Duration::from_secs(90), || async { sink.distinct_records() == 7 }).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(55), "7 calls at 6/m in {took:?}");
    // Watch a while longer: nothing comes again.
    let until = started + Duration::from_secs(70);
    tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
    assert_eq!(sink.hits().len(), 7, "no call twice: {:?}", sink.hits());
    let dead = api.ok("GET", "/v1/webhooks/paced/dead-letters", None).await;
    assert_eq!(dead, json!([]), "no dead letter");
    let attempts = api.attempts("paced", "limit=100").await;
    assert_eq!(attempts.len(), 7);
    assert!(attempts.iter().all(|a| a["outcome"] == "success"), "{attempts:?}");
    assert_eq!(metric(&node.url, "hookline_jobs_taken_over_total{webhook=\"paced\"}").await, None);
    node.stop().await;
}

/// Bulk calls of ten under a limit of one; the first call fails and comes back as a retry
/// beside fresh jobs. Each step reads only what its one call carries, so every record goes
/// out at once, none left waiting for a take-over (which would take a lease, 10 s).
#[actix_rt::test]
async fn a_retried_batch_beside_fresh_jobs_leaves_no_job_behind() {
    let ns = namespace();
    let target = BulkTarget::start();
    target.set_failing(true);
    let node = Node::start(&ns, "all").await;
    let api = Api::new(&node);
    api.ok("POST", "/v1/objects", Some(item_object())).await;
    api.ok(
        "POST",
        "/v1/webhooks",
        Some(json!({
            "id": "bulk", "object": "item", "trigger": {"on_create": true},
            "request": {"url": format!("{}/in", target.url)},
            "settings": {"max_concurrency": 1, "max_batch_size": 10, "batch_linger_ms": 50,
                         "retries": 3, "retry_wait": "100ms"}
        })),
    )
    .await;
    create_items(&api, 0..30).await;
    wait_until(Duration::from_secs(10), || async { !target.calls().is_empty() }).await;
    target.set_failing(false);
    let started = Instant::now();
    let delivered = || {
        let calls = target.calls();
        // Calls after the failing ones: the records that arrived.
        calls.iter().skip(target.failed_calls()).flatten().cloned().collect::<HashSet<String>>()
    };
    wait_until(Duration::from_secs(8), || async { delivered().len() == 30 }).await;
    assert!(started.elapsed() < Duration::from_secs(8), "delivered without waiting for a take-over");
    assert!(target.calls().iter().all(|c| c.len() <= 10), "{:?}", target.calls());
    assert_eq!(metric(&node.url, "hookline_jobs_taken_over_total{webhook=\"bulk\"}").await, None);
    node.stop().await;
}

/// Webhook `w{i}` is created, then record `r{i}` written at once, sixty times in a row,
/// while every earlier webhook fires on every new record too: each record is sent to every
/// webhook saved before it (and so each new webhook gets its record).
async fn webhooks_fire_on_records_written_right_after_them(api: &Api, sink: &Sink) {
    const N: usize = 60;
    api.ok("POST", "/v1/objects", Some(item_object())).await;
    for i in 0..N {
        api.ok(
            "POST",
            "/v1/webhooks",
            Some(json!({
                "id": format!("w{i}"), "object": "item", "trigger": {"on_create": true},
                "request": {"url": format!("{}/w{i}", sink.url)},
                "settings": {"max_concurrency": 8, "timeout": "10s"}
            })),
        )
        .await;
        api.ok("POST", "/v1/objects/item/records", Some(json!({"id": format!("r{i}"), "fields": {"n": i}}))).await;
    }
    let want: HashSet<(String, String)> =
        (0..N).flat_map(|j| (0..=j).map(move |i| (format!("/w{i}"), format!("r{j}")))).collect();
    let seen = || sink.hits().into_iter().map(|h| (h.path, h.record)).collect::<HashSet<_>>();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !want.is_subset(&seen()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = seen();
    let mut missing: Vec<&(String, String)> = want.difference(&seen).collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "{} of {} deliveries never came: {:?}",
        missing.len(),
        want.len(),
        &missing[..missing.len().min(10)]
    );
    for i in 0..N {
        assert!(seen.contains(&(format!("/w{i}"), format!("r{i}"))), "w{i} fired on r{i}");
    }
}

#[actix_rt::test]
async fn every_new_webhook_fires_on_the_record_written_right_after_it_on_one_node() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(Duration::ZERO);
    let node = Node::start_with(&namespace(), "all", |a| {
        a.redis = None;
        a.data_dir = Some(dir.path().to_path_buf());
    })
    .await;
    webhooks_fire_on_records_written_right_after_them(&Api::new(&node), &sink).await;
    node.stop().await;
}

#[actix_rt::test]
async fn every_new_webhook_fires_on_the_record_written_right_after_it_across_nodes() {
    let ns = namespace();
    let sink = Sink::start(Duration::ZERO);
    let api_node = Node::start(&ns, "api").await;
    let engine = Node::start(&ns, "coordinator,trigger,dispatcher,writeback").await;
    webhooks_fire_on_records_written_right_after_them(&Api::new(&api_node), &sink).await;
    engine.stop().await;
    api_node.stop().await;
}

/// A TCP proxy in front of Redis whose existing connections can be frozen: it stops
/// forwarding on them but keeps them open (a half-open peer). New connections go through.
struct FreezingProxy {
    port: u16,
    /// Connections numbered below this are frozen.
    frozen_below: Arc<AtomicU64>,
    opened: Arc<AtomicU64>,
}

impl FreezingProxy {
    fn start(target: &str) -> FreezingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen_below = Arc::new(AtomicU64::new(0));
        let opened = Arc::new(AtomicU64::new(0));
        let (f, o, target) = (frozen_below.clone(), opened.clone(), target.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&target) else { continue };
                let n = o.fetch_add(1, Ordering::SeqCst);
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    let f = f.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            let Ok(read) = from.read(&mut buf) else { return };
                            if read == 0 {
                                return;
                            }
                            while n < f.load(Ordering::SeqCst) {
                                // Frozen: hold the bytes and the socket, answer nothing.
                                std::thread::sleep(Duration::from_millis(50));
                            }
                            if to.write_all(&buf[..read]).is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        FreezingProxy { port, frozen_below, opened }
    }

    /// Freezes every connection open now.
    fn freeze(&self) {
        self.frozen_below.store(self.opened.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

/// Every connection the node has to Redis goes half-open at once: commands time out, the
/// shared connection and the blocking ones are replaced, and records written through the API
/// are delivered again within seconds.
#[actix_rt::test]
async fn a_half_open_redis_connection_heals_within_seconds() {
    let redis = redis_url();
    let target = redis.trim_start_matches("redis://").trim_end_matches('/').to_string();
    let proxy = FreezingProxy::start(&target);
    let ns = namespace();
    let sink = Sink::start(Duration::ZERO);
    let through = format!("redis://127.0.0.1:{}", proxy.port);
    let node = Proc::start("half-open", &["--redis", &through, "--namespace", &ns]);
    let api = Api::at(&node.url);
    api.ok("POST", "/v1/objects", Some(item_object())).await;
    api.ok(
        "POST",
        "/v1/webhooks",
        Some(json!({"id": "ho", "object": "item", "trigger": {"on_create": true},
                    "request": {"url": format!("{}/in", sink.url)}})),
    )
    .await;
    create_items(&api, 0..1).await;
    wait_until(Duration::from_secs(20), || async { sink.distinct_records() == 1 }).await;

    proxy.freeze();
    let frozen = Instant::now();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(8)).build().unwrap();
    let mut written = false;
    while !written && frozen.elapsed() < Duration::from_secs(30) {
        let r = client
            .post(format!("{}/v1/objects/item/records", node.url))
            .json(&json!({"id": "after", "fields": {"n": 1}}))
            .send()
            .await;
        written = r.is_ok_and(|r| r.status().is_success());
    }
    assert!(written, "the API could not write through Redis again within 30 s of the freeze");
    wait_until(Duration::from_secs(30), || async { sink.distinct_records() == 2 }).await;
    let healed = frozen.elapsed();
    eprintln!("half-open Redis: delivered again {healed:?} after every connection froze");
    assert!(healed < Duration::from_secs(40), "{healed:?}");
}

/// A write-back whose store steps fail for a passing reason (every Redis connection goes
/// half-open while its response script runs) is tried again and written once the
/// connections heal: the record gets its value, the attempt says done, nothing is failed.
#[actix_rt::test]
async fn a_write_back_cut_off_from_redis_is_retried_and_written() {
    let redis = redis_url();
    let target = redis.trim_start_matches("redis://").trim_end_matches('/').to_string();
    let proxy = FreezingProxy::start(&target);
    let ns = namespace();
    let sink = Sink::start(Duration::ZERO);
    let through = format!("redis://127.0.0.1:{}", proxy.port);
    let node = Proc::start("wb-cut", &["--redis", &through, "--namespace", &ns]);
    let api = Api::at(&node.url);
    let mut object = item_object();
    object["fields"].as_array_mut().unwrap().push(json!({"key": "synced_at", "type": "string"}));
    api.ok("POST", "/v1/objects", Some(object)).await;
    // The script takes a second: the connections freeze while it runs, so the write-back's
    // own store steps are the ones that fail.
    let script = "var t = Date.now(); while (Date.now() - t < 1000) {}\n\
                  write(JSON.stringify({id: data.changedEntities[0].id, synced_at: 'now'}));";
    api.ok(
        "POST",
        "/v1/webhooks",
        Some(json!({"id": "wbcut", "object": "item", "trigger": {"on_create": true},
                    "request": {"url": format!("{}/in", sink.url)},
                    "response_script": script, "writeback": {"key": {"from": "id", "to": "id"}}})),
    )
    .await;
    create_items(&api, 0..1).await;
    wait_until(Duration::from_secs(20), || async {
        api.attempts("wbcut", "limit=1").await.first().is_some_and(|a| a["writeback"]["status"] == "pending")
    })
    .await;
    proxy.freeze();
    // While the connections heal the API may answer 503: read the record until it has it.
    let written_back = || async {
        let Ok(response) = reqwest::get(format!("{}/v1/objects/item/records/r0", node.url)).await else {
            return false;
        };
        response.json::<Value>().await.is_ok_and(|record| record["fields"]["synced_at"] == "now")
    };
    wait_until(Duration::from_secs(60), written_back).await;
    let attempt = &api.attempts("wbcut", "limit=1").await[0];
    assert_eq!(attempt["writeback"]["status"], "done", "{attempt}");
    assert_eq!(api.ok("GET", "/v1/webhooks/wbcut/writeback-failures", None).await, json!([]));
    let retries = metric(&node.url, "hookline_writeback_retries_total{webhook=\"wbcut\"}").await.unwrap_or(0.0);
    assert!(retries >= 1.0, "the write-back was never retried ({retries})");
    assert_eq!(sink.hits().len(), 1, "one call, written back once");
}

/// A node started with another secret key cannot open a webhook's secrets: it says so in
/// `/readyz` and a metric, and does not decide on that object's changes (they wait, not
/// skipped); a node with the right key delivers them.
#[actix_rt::test]
async fn a_node_without_the_cluster_key_holds_its_changes_and_is_not_ready() {
    const OTHER_KEY: &str = "YW5vdGhlci1jbHVzdGVyLWtleS1vZi0zMi1ieXRlcyE=";
    let ns = namespace();
    let redis = redis_url();
    let sink = Sink::start(Duration::ZERO);
    let common = ["--redis", redis.as_str(), "--namespace", ns.as_str()];
    let api_node = Proc::start("key-api", &[&common[..], &["--roles", "api"]].concat());
    let api = Api::at(&api_node.url);
    api.ok("POST", "/v1/objects", Some(item_object())).await;
    api.ok(
        "POST",
        "/v1/webhooks",
        Some(json!({"id": "sealed", "object": "item", "trigger": {"on_create": true},
                    "request": {"url": format!("{}/in", sink.url)},
                    "auth": {"type": "basic", "username": "u", "password": "p4ss"}})),
    )
    .await;
    let wrong = Proc::start(
        "key-wrong",
        &[&common[..], &["--roles", "trigger,dispatcher", "--secret-key", OTHER_KEY]].concat(),
    );
    let ready = reqwest::get(format!("{}/readyz", wrong.url)).await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["webhooks_not_loaded"][0]["webhook"], "sealed", "{body}");
    assert!(body.to_string().contains("secret-key"), "{body}");
    assert!(!body.to_string().contains("p4ss"));
    assert_eq!(metric(&wrong.url, "hookline_webhook_load_errors{webhook=\"sealed\"}").await, Some(1.0));

    create_items(&api, 0..3).await;
    // The wrong node, the only trigger, leaves the changes alone: none read, none decided on.
    let mut raw = redis::Client::open(redis.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let stream = format!("{ns}:{{obj:item}}:changes");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let length: u64 = redis::cmd("XLEN").arg(&stream).query_async(&mut raw).await.unwrap();
    assert_eq!(length, 3, "the changes wait on their stream");
    let groups: Vec<HashMap<String, redis::Value>> =
        redis::cmd("XINFO").arg("GROUPS").arg(&stream).query_async(&mut raw).await.unwrap_or_default();
    for g in &groups {
        let last: String = redis::from_redis_value(g["last-delivered-id"].clone()).unwrap();
        assert_eq!(last, "0-0", "no change was handed to a trigger: {g:?}");
    }
    assert_eq!(sink.distinct_records(), 0, "a node that cannot load the webhook decided on its changes");
    let right = Proc::start("key-right", &[&common[..], &["--roles", "trigger,dispatcher"]].concat());
    wait_until(Duration::from_secs(30), || async { sink.distinct_records() == 3 }).await;
    let ready = reqwest::get(format!("{}/readyz", right.url)).await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    drop((wrong, right));
}

/// Whatever its roles, a node serves `/healthz`, `/readyz` and `/metrics` on `--listen`;
/// `/v1` needs the api role.
#[actix_rt::test]
async fn every_node_serves_probes_and_metrics() {
    let ns = namespace();
    let node = Node::start(&ns, "dispatcher").await;
    wait_until(Duration::from_secs(10), || async { reqwest::get(format!("{}/healthz", node.url)).await.is_ok() }).await;
    for (path, status) in [("/healthz", 200), ("/readyz", 200), ("/metrics", 200), ("/v1/webhooks", 404)] {
        let r = reqwest::get(format!("{}{path}", node.url)).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
    }
    let metrics = reqwest::get(format!("{}/metrics", node.url)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("hookline_attempts_total"), "{metrics}");
    node.stop().await;
}

/// A data object cannot lose a field a webhook uses: the change is refused, naming the
/// webhook and what it uses, and the object stays as it was; adding fields is fine.
#[actix_rt::test]
async fn removing_a_field_a_webhook_uses_is_refused() {
    let ns = namespace();
    let node = Node::start(&ns, "all").await;
    let api = Api::new(&node);
    let object = |fields: Value| json!({"name": "ticket", "fields": fields});
    let full = json!([{"key": "status", "label": "Status", "type": "string"}, {"key": "score", "type": "number"}]);
    api.ok("POST", "/v1/objects", Some(object(full.clone()))).await;
    api.ok(
        "POST",
        "/v1/webhooks",
        Some(json!({"id": "uses-status", "object": "ticket",
                    "trigger": {"on_update": true, "condition": "Status = Closed"},
                    "request": {"url": "https://tickets.example.com/x"}})),
    )
    .await;
    let without_status = object(json!([{"key": "score", "type": "number"}]));
    for (method, path) in [("POST", "/v1/objects"), ("PUT", "/v1/objects/ticket")] {
        let (status, body) = api.call(method, path, Some(without_status.clone())).await;
        assert_eq!(status, 409, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "in_use");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("uses-status") && message.contains("trigger.condition"), "{message}");
        assert_eq!(body["error"]["field"], "fields");
    }
    assert_eq!(api.ok("GET", "/v1/objects/ticket", None).await["fields"], full, "unchanged");
    let mut more = full.as_array().unwrap().clone();
    more.push(json!({"key": "note", "type": "string"}));
    let (status, _) = api.call("PUT", "/v1/objects/ticket", Some(object(json!(more)))).await;
    assert_eq!(status, 200, "adding a field is fine");
    let (status, body) = api.call("PUT", "/v1/objects/other", Some(object(json!(more)))).await;
    assert_eq!((status, body["error"]["field"].as_str()), (422, Some("name")), "{body}");
    node.stop().await;
}

/// A write-back naming a field the object lacks fails for good: it is noted on the attempt
/// and listed among the failed write-backs. Once the object has the field, a redrive writes
/// it — the write-back worker sees the object's new field without a restart.
#[actix_rt::test]
async fn failed_write_backs_are_listed_and_redriven_once_fixed() {
    let ns = namespace();
    let sink = Sink::start(Duration::ZERO);
    let node = Node::start(&ns, "all").await;
    let api = Api::new(&node);
    api.ok("POST", "/v1/objects", Some(item_object())).await;
    api.ok(
        "POST",
        "/v1/webhooks",
        Some(json!({
            "id": "wb", "object": "item", "trigger": {"on_create": true},
            "request": {"url": format!("{}/in", sink.url)},
            "response_script": "write(JSON.stringify({id: data.changedEntities[0].id, synced_at: 'now'}));",
            "writeback": {"key": {"from": "id", "to": "id"}}
        })),
    )
    .await;
    create_items(&api, 0..1).await;
    let failures = || async { api.ok("GET", "/v1/webhooks/wb/writeback-failures", None).await };
    wait_until(Duration::from_secs(20), || async { failures().await.as_array().is_some_and(|a| a.len() == 1) }).await;
    let listed = failures().await;
    assert!(listed[0]["reason"].as_str().unwrap_or_default().contains("synced_at"), "{listed}");
    assert_eq!(listed[0]["record_ids"], json!(["r0"]));
    let attempt = &api.attempts("wb", "limit=1").await[0];
    assert_eq!(attempt["writeback"]["status"], "error", "{attempt}");

    let mut object = item_object();
    object["fields"].as_array_mut().unwrap().push(json!({"key": "synced_at", "type": "string"}));
    api.ok("PUT", "/v1/objects/item", Some(object)).await;
    let redriven = api.ok("POST", "/v1/webhooks/wb/writeback-failures/redrive", None).await;
    assert_eq!(redriven["redriven"], 1);
    wait_until(Duration::from_secs(20), || async { api.record("item", "r0").await["fields"]["synced_at"] == "now" })
        .await;
    assert_eq!(failures().await, json!([]));
    let attempt = &api.attempts("wb", "limit=1").await[0];
    assert_eq!(attempt["writeback"]["status"], "done", "{attempt}");
    node.stop().await;
}
