//! Bulk calls: `max_batch_size` > 1 gathers jobs into one call; the response script's array
//! output writes back to every record; a failing batch is retried, dead-lettered and
//! redriven whole.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};

use crate::support::{Api, Node, metric, namespace, wait_until};

/// A target that answers calls carrying `records` (the default body) and remembers them.
#[derive(Clone, Default)]
pub(crate) struct BulkTarget {
    pub url: String,
    /// The record ids of every call.
    calls: Arc<Mutex<Vec<Vec<String>>>>,
    /// The `webhook-id` header of every call.
    message_ids: Arc<Mutex<Vec<String>>>,
    /// Every record of every call, in arrival order.
    records: Arc<Mutex<Vec<Value>>>,
    failing: Arc<AtomicBool>,
    /// Calls answered with a failure.
    failed: Arc<AtomicUsize>,
    /// How long each call is held before the answer, ms.
    delay_ms: Arc<AtomicU64>,
    in_flight: Arc<AtomicUsize>,
}

impl BulkTarget {
    pub(crate) fn start() -> BulkTarget {
        let mut t = BulkTarget::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        t.url = format!("http://{}", listener.local_addr().unwrap());
        let state = web::Data::new(t.clone());
        let server = HttpServer::new(move || {
            App::new().app_data(state.clone()).default_service(web::to(
                |req: HttpRequest, body: web::Bytes, t: web::Data<BulkTarget>| async move {
                    let id = req.headers().get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
                    t.message_ids.lock().unwrap().push(id.to_string());
                    t.in_flight.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(t.delay_ms.load(Ordering::SeqCst))).await;
                    t.in_flight.fetch_sub(1, Ordering::SeqCst);
                    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                    t.records.lock().unwrap().extend(v["records"].as_array().cloned().unwrap_or_default());
                    let ids: Vec<String> = v["records"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|r| r["id"].as_str().map(String::from)).collect())
                        .unwrap_or_default();
                    let n = {
                        let mut calls = t.calls.lock().unwrap();
                        calls.push(ids);
                        calls.len()
                    };
                    if t.failing.load(Ordering::SeqCst) {
                        t.failed.fetch_add(1, Ordering::SeqCst);
                        HttpResponse::ServiceUnavailable().finish()
                    } else {
                        HttpResponse::Ok().json(json!({ "batch": n }))
                    }
                },
            ))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        actix_rt::spawn(server);
        t
    }

    pub(crate) fn calls(&self) -> Vec<Vec<String>> {
        self.calls.lock().unwrap().clone()
    }

    pub(crate) fn records(&self) -> Vec<Value> {
        self.records.lock().unwrap().clone()
    }

    pub(crate) fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub(crate) fn message_ids(&self) -> Vec<String> {
        self.message_ids.lock().unwrap().clone()
    }

    pub(crate) fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// How many calls were answered with a failure.
    pub(crate) fn failed_calls(&self) -> usize {
        self.failed.load(Ordering::SeqCst)
    }

    pub(crate) fn records_seen(&self) -> usize {
        self.calls().iter().map(Vec::len).sum()
    }
}

const RESPONSE_SCRIPT: &str = "var status = http.getResponseStatusCode();\n\
var body = status == 200 ? JSON.parse(http.getResponseBodyUtf8()) : {batch: -1};\n\
write(JSON.stringify(data.changedEntities.map(function (r) { return {id: r.id, batch: body.batch}; })));";

#[actix_rt::test]
async fn bulk_calls_carry_many_records_and_write_each_back() {
    let ns = namespace();
    let target = BulkTarget::start();
    let node = Node::start(&ns, "all").await;
    let api = Api::new(&node);
    api.ok(
        "POST",
        "/v1/objects",
        Some(json!({"name": "item", "fields": [
        {"key": "n", "type": "number"}, {"key": "batch", "type": "number"}]})),
    )
    .await;
    api.ok(
        "POST",
        "/v1/webhooks",
        Some(json!({
            "id": "bulk", "object": "item",
            "trigger": {"on_create": true},
            "request": {"url": format!("{}/bulk", target.url)},
            "response_script": RESPONSE_SCRIPT,
            "writeback": {"key": {"from": "id", "to": "id"}},
            "settings": {"max_batch_size": 5, "batch_linger_ms": 300, "max_concurrency": 2,
                         "retries": 1, "retry_wait": "200ms", "timeout": "5s"}
        })),
    )
    .await;

    let batch: Vec<Value> = (0..12).map(|i| json!({"id": format!("b{i}"), "fields": {"n": i}})).collect();
    api.ok("POST", "/v1/objects/item/records", Some(json!(batch))).await;
    wait_until(Duration::from_secs(20), || async { target.records_seen() >= 12 }).await;
    let calls = target.calls();
    assert!(calls.iter().all(|c| !c.is_empty() && c.len() <= 5), "{calls:?}");
    assert!(calls.len() < 12 && calls.iter().any(|c| c.len() == 5), "jobs were gathered: {calls:?}");
    // Each record got the number of the call that carried it.
    for (n, call) in calls.iter().enumerate() {
        for id in call {
            let id = id.clone();
            wait_until(Duration::from_secs(10), || {
                let id = id.clone();
                let api = &api;
                async move { api.record("item", &id).await["fields"]["batch"] == json!(n + 1) }
            })
            .await;
        }
    }
    // One attempt per call, listing every record of it.
    let attempts = api.attempts("bulk", "").await;
    assert_eq!(attempts.len(), calls.len());
    assert!(attempts.iter().any(|a| a["record_ids"].as_array().unwrap().len() == 5));

    // A failing batch: retried whole, dead-lettered whole, redriven whole.
    target.failing.store(true, Ordering::SeqCst);
    let before = target.calls().len();
    let batch: Vec<Value> = (0..3).map(|i| json!({"id": format!("f{i}"), "fields": {"n": i}})).collect();
    api.ok("POST", "/v1/objects/item/records", Some(json!(batch))).await;
    wait_until(Duration::from_secs(20), || async {
        api.ok("GET", "/v1/webhooks/bulk/dead-letters", None).await.as_array().is_some_and(|d| !d.is_empty())
    })
    .await;
    let dead = api.ok("GET", "/v1/webhooks/bulk/dead-letters", None).await;
    assert_eq!(dead.as_array().unwrap().len(), 1);
    assert_eq!(dead[0]["record_ids"], json!(["f0", "f1", "f2"]));
    let failed_calls = &target.calls()[before..];
    assert_eq!(failed_calls.len(), 2, "first attempt and one retry: {failed_calls:?}");
    assert!(failed_calls.iter().all(|c| c == &failed_calls[0]), "the retry carries the same batch");
    target.failing.store(false, Ordering::SeqCst);
    api.ok("POST", "/v1/webhooks/bulk/dead-letters/redrive", None).await;
    wait_until(Duration::from_secs(20), || async {
        api.record("item", "f2").await["fields"]["batch"].as_i64() > Some(0)
    })
    .await;
    assert_eq!(target.calls().last().unwrap(), &failed_calls[0]);
    node.stop().await;
}

#[actix_rt::test]
async fn a_bulk_write_is_queued_a_full_call_to_an_entry() {
    let ns = namespace();
    let target = BulkTarget::start();
    let node = Node::start(&ns, "all").await;
    let api = Api::new(&node);
    api.ok("POST", "/v1/objects", Some(json!({"name": "item", "fields": [{"key": "n", "type": "number"}]}))).await;
    api.ok(
        "POST",
        "/v1/webhooks",
        Some(json!({
            "id": "packed", "object": "item",
            "trigger": {"on_create": true},
            "request": {"url": format!("{}/bulk", target.url)},
            "settings": {"max_batch_size": 10, "batch_linger_ms": 200, "max_concurrency": 2}
        })),
    )
    .await;
    api.ok("POST", "/v1/webhooks/packed/pause", None).await;
    let batch: Vec<Value> = (0..23).map(|i| json!({"id": format!("p{i}"), "fields": {"n": i}})).collect();
    api.ok("POST", "/v1/objects/item/records", Some(json!(batch))).await;
    wait_until(Duration::from_secs(20), || async {
        metric(&api.base, "hookline_records_fired_total{webhook=\"packed\"}").await >= Some(23.0)
    })
    .await;
    // Two full calls of ten, one entry each; the three left over wait alone to be combined.
    assert_eq!(metric(&api.base, "hookline_queue_depth{webhook=\"packed\"}").await, Some(5.0));

    api.ok("POST", "/v1/webhooks/packed/resume", None).await;
    wait_until(Duration::from_secs(20), || async { target.records_seen() >= 23 }).await;
    let mut sizes: Vec<usize> = target.calls().iter().map(Vec::len).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [3, 10, 10], "{:?}", target.calls());
    let mut seen: Vec<String> = target.calls().into_iter().flatten().collect();
    seen.sort();
    let mut want: Vec<String> = (0..23).map(|i| format!("p{i}")).collect();
    want.sort();
    assert_eq!(seen, want, "every record once");
    // The first call carries p0..p9 in order, and the journey of a packed record names the
    // call's job, delivered.
    let first = target.calls().into_iter().find(|c| c.contains(&"p0".to_string())).unwrap();
    assert_eq!(first, (0..10).map(|i| format!("p{i}")).collect::<Vec<_>>());
    wait_until(Duration::from_secs(10), || async {
        let j = api.ok("GET", "/v1/objects/item/records/p4/journey", None).await;
        j["changes"][0]["decisions"][0]["delivery"] == json!("delivered")
    })
    .await;
    let j = api.ok("GET", "/v1/objects/item/records/p4/journey", None).await;
    let decision = &j["changes"][0]["decisions"][0];
    let attempt = &decision["attempts"][0];
    assert_eq!(decision["job_id"], attempt["job_id"], "{decision}");
    let attempts = api.attempts("packed", "").await;
    let carried = attempts.iter().find(|a| a["job_id"] == decision["job_id"]).expect("the pack's attempt");
    assert_eq!(carried["record_ids"].as_array().unwrap().len(), 10);
    node.stop().await;
}

/// One-record POSTs and PATCHes in flight at once are written together (a batch per store
/// step), each answered as if it were alone: its own status and version, a conflict on one
/// record retried, a bad or missing record refused on its own.
#[actix_rt::test]
async fn single_writes_sent_together_are_each_answered_as_if_alone() {
    let ns = namespace();
    let node = Node::start(&ns, "api").await;
    let api = Arc::new(Api::new(&node));
    api.ok("POST", "/v1/objects", Some(json!({"name": "item", "fields": [{"key": "n", "type": "number"}]}))).await;
    let send = |method: &'static str, path: String, body: Value| {
        let api = api.clone();
        actix_rt::spawn(async move { api.call(method, &path, Some(body)).await })
    };
    let created: Vec<_> = (0..30)
        .map(|i| send("POST", "/v1/objects/item/records".into(), json!({"id": format!("c{i}"), "fields": {"n": i}})))
        .collect();
    for (i, task) in created.into_iter().enumerate() {
        let (status, v) = task.await.unwrap();
        assert_eq!(
            (status, v["id"].as_str(), v["version"].as_u64()),
            (201, Some(format!("c{i}").as_str()), Some(1)),
            "{v}"
        );
    }
    // Four updates of each of ten records at once, by POST and PATCH; then a PATCH of a
    // record that does not exist and one with a bad field, in the same flight.
    let mut updates = Vec::new();
    for round in 1..=4 {
        for i in 0..10 {
            let body = json!({"fields": {"n": 100 * round + i}});
            updates.push(match round % 2 {
                0 => send("PATCH", format!("/v1/objects/item/records/c{i}"), body),
                _ => send(
                    "POST",
                    "/v1/objects/item/records".into(),
                    json!({"id": format!("c{i}"), "fields": body["fields"]}),
                ),
            });
        }
    }
    let missing = send("PATCH", "/v1/objects/item/records/nope".into(), json!({"fields": {"n": 1}}));
    let bad = send("PATCH", "/v1/objects/item/records/c0".into(), json!({"fields": {"n": "x"}}));
    let mut versions: Vec<Vec<u64>> = vec![Vec::new(); 10];
    for (k, task) in updates.into_iter().enumerate() {
        let (status, v) = task.await.unwrap();
        assert_eq!(status, 200, "{v}");
        versions[k % 10].push(v["version"].as_u64().unwrap());
    }
    for (i, mut seen) in versions.into_iter().enumerate() {
        seen.sort_unstable();
        assert_eq!(seen, [2, 3, 4, 5], "record c{i}: every write its own version");
        assert_eq!(api.record("item", &format!("c{i}")).await["version"], 5);
    }
    let (status, v) = missing.await.unwrap();
    assert_eq!(status, 404, "{v}");
    let (status, v) = bad.await.unwrap();
    assert_eq!((status, v["error"]["field"].as_str()), (422, Some("fields.n")), "{v}");
    assert_eq!(api.record("item", "c29").await["fields"]["n"], 29);
    node.stop().await;
}

#[actix_rt::test]
async fn ndjson_ingestion_answers_per_record() {
    let ns = namespace();
    let node = Node::start(&ns, "all").await;
    let api = Api::new(&node);
    api.ok("POST", "/v1/objects", Some(json!({"name": "item", "fields": [{"key": "n", "type": "number"}]}))).await;
    let mut body = String::new();
    for i in 0..2000 {
        body.push_str(&json!({"id": format!("i{i}"), "fields": {"n": i}}).to_string());
        body.push('\n');
    }
    body.push_str("{\"id\": \"bad\", \"fields\": {\"n\": \"x\"}}\n\nnot json\n");
    body.push_str(&json!({"id": "i0", "fields": {"n": 0}}).to_string()); // unchanged, no trailing newline
    let lines = api.ndjson("POST", "/v1/objects/item/records", Some(body)).await;
    assert_eq!(lines.len(), 2000 + 3 + 1, "one result per non-empty line, then the summary");
    assert_eq!(lines[0]["status"], "created");
    assert_eq!(lines[2000]["status"], "rejected");
    assert_eq!(lines[2000]["error"]["field"], "fields.n");
    assert_eq!(lines[2001]["line"], 2003, "line numbers count the blank line");
    assert_eq!(lines[2001]["status"], "rejected");
    assert_eq!(lines[2002]["status"], "unchanged");
    assert_eq!(
        lines[2003]["summary"],
        json!({"lines": 2004, "created": 2000, "updated": 0, "unchanged": 1, "rejected": 2})
    );
    assert_eq!(api.record("item", "i1999").await["fields"]["n"], 1999);
    node.stop().await;
}

#[actix_rt::test]
async fn hookline_import_sends_a_file_in_chunks_and_sums_up() {
    let ns = namespace();
    let node = Node::start(&ns, "all").await;
    let api = Api::new(&node);
    api.ok("POST", "/v1/objects", Some(json!({"name": "item", "fields": [{"key": "n", "type": "number"}]}))).await;
    let file = std::env::temp_dir().join(format!("hl-import-{ns}.ndjson"));
    let mut body = String::new();
    for i in 0..12_000 {
        body.push_str(&json!({"id": format!("x{i}"), "fields": {"n": i}}).to_string());
        body.push('\n');
        if i == 7_000 {
            body.push_str("{\"id\": \"oops\", \"fields\": {\"n\": \"seven\"}}\n");
        }
    }
    std::fs::write(&file, body).unwrap();
    let bin = crate::procs::hookline_bin();
    let (file_arg, url) = (file.clone(), node.url.clone());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin)
            .args(["import", "--object", "item", "--chunk", "2500", "--url", &url])
            .arg(&file_arg)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let _ = std::fs::remove_file(&file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "a rejected line makes the exit status 1\n{stdout}\n{stderr}");
    assert!(stdout.contains("imported 12001 records into `item`"), "{stdout}");
    assert!(stdout.contains("12000 created, 0 updated, 0 unchanged, 1 rejected"), "{stdout}");
    assert!(stderr.contains("line 7002: rejected: fields.n: expected a number"), "{stderr}");
    assert!(stderr.contains("100%"), "a progress bar: {stderr}");
    assert_eq!(api.record("item", "x11999").await["fields"]["n"], 11999);
    node.stop().await;
}
