//! `hookline demo`: the seed's example, end to end, on this machine alone. Starts a node,
//! a built-in ticket tracker on 127.0.0.1, defines the survey object and the seed's
//! webhook (its header, body and response scripts), drives a few surveys through it and
//! prints what happened — the calls, the attempts (one of them retried), the records after
//! write-back — then keeps serving so the API can be tried by hand.

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::Config;

const HEADER_SCRIPT: &str = include_str!("../../../testdata/seed/header_script.js");
const BODY_SCRIPT: &str = include_str!("../../../testdata/seed/body_script.js");
const RESPONSE_SCRIPT: &str = include_str!("../../../testdata/seed/response_script.js");

/// What the built-in tracker saw.
#[derive(Default)]
struct TrackerLog {
    calls: Mutex<Vec<String>>,
    tickets: AtomicUsize,
}

/// A ticket tracker that answers `{"ticketId": "IT-<n>"}`; the first call about a survey
/// whose email says "flaky" gets a 503, so the demo shows a retry.
fn start_tracker(log: Arc<TrackerLog>) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    let server = HttpServer::new(move || {
        App::new().app_data(web::Data::new(log.clone())).route(
            "/rest/api/2/issue",
            web::post().to(|body: web::Bytes, log: web::Data<Arc<TrackerLog>>| async move {
                let text = String::from_utf8_lossy(&body).into_owned();
                let flaky = text.contains("flaky");
                let first_flaky = {
                    let mut calls = log.calls.lock().unwrap_or_else(|p| p.into_inner());
                    let seen = calls.iter().any(|c| c.contains("flaky"));
                    calls.push(text);
                    flaky && !seen
                };
                if first_flaky {
                    return HttpResponse::ServiceUnavailable().json(json!({"errorMessage": "tracker busy"}));
                }
                let n = log.tickets.fetch_add(1, Ordering::SeqCst) + 1;
                HttpResponse::Ok().json(json!({ "ticketId": format!("IT-{n}") }))
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    actix_rt::spawn(server);
    Ok(url)
}

struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = req.send().await.with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("{method} {path} answered {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// The seed's survey object, with the fields its response script writes back.
pub fn survey_object() -> Value {
    json!({
        "name": "survey", "id_field": "a_surveyid",
        "fields": [
            {"key": "a_surveyid", "type": "string"},
            {"key": "e_email", "label": "Email", "type": "string"},
            {"key": "k_bp_main_score_scale", "label": "Likelihood to recommend", "type": "number"},
            {"key": "status", "label": "Status", "type": "string"},
            {"key": "transactional_satisfaction", "label": "Transactional Satisfaction", "type": "number"},
            {"key": "ticketSystemSynced", "type": "number"},
            {"key": "ticketSystemSyncStatusCode", "type": "number"},
            {"key": "ticketSystemRecordId", "type": "string"},
            {"key": "ticketSystemSyncError", "type": "string"}
        ]
    })
}

fn seed_webhook(tracker: &str) -> Value {
    json!({
        "id": "it-negative-feedback",
        "object": "survey",
        "trigger": {"on_create": false, "on_update": true, "fields": ["Status", "Transactional Satisfaction"],
                    "condition": "Status = Completed and Transactional Satisfaction = 0"},
        "request": {"method": "POST", "url": format!("{tracker}/rest/api/2/issue"),
                    "headers": {"Content-Type": "application/json"},
                    // The seed prints `record[0]`; its variable is `records`.
                    "body_script": BODY_SCRIPT.replace("getPayload(record[0])", "getPayload(records[0])")},
        "auth": {"type": "script", "script": HEADER_SCRIPT},
        "response_script": RESPONSE_SCRIPT,
        "writeback": {"key": {"from": "medalliaRecordId", "to": "a_surveyid"}},
        "settings": {"retries": 3, "retry_wait": "1s", "timeout": "5s"}
    })
}

/// Runs the demo until `shutdown` resolves.
pub async fn run(mut config: Config, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let log = Arc::new(TrackerLog::default());
    let tracker = start_tracker(log.clone())?;
    // The tracker is on loopback, which outbound calls refuse unless allowed.
    config.allow_targets.push("127.0.0.0/8".parse()?);
    let listener = TcpListener::bind(config.listen).with_context(|| format!("--listen {}", config.listen))?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let node = actix_rt::spawn(crate::run(config, listener, async {
        let _ = stop_rx.await;
    }));
    let api = Client { base: base.clone(), http: reqwest::Client::new() };
    let started = Instant::now();
    while api.call(reqwest::Method::GET, "/healthz", None).await.is_err() {
        if node.is_finished() || started.elapsed() > Duration::from_secs(15) {
            bail!("the node did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    println!("\n== Hookline demo: open an IT ticket for negative survey feedback ==");
    println!("ticket tracker (built in): {tracker}");
    api.call(reqwest::Method::POST, "/v1/objects", Some(survey_object())).await?;
    api.call(reqwest::Method::PUT, "/v1/webhooks/it-negative-feedback", Some(seed_webhook(&tracker))).await?;
    println!(
        "defined: object `survey`, webhook `it-negative-feedback` (Status = Completed and Transactional Satisfaction = 0)"
    );

    let run_id = format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs());
    let surveys = [
        ("ann@example.com", 0, "fires: a ticket, written back"),
        ("bob@example.com", 5, "satisfaction 5: does not fire"),
        ("flaky@example.com", 0, "fires: the tracker answers 503 once, then the retry succeeds"),
    ];
    let mut ids = Vec::new();
    for (i, (email, sat, what)) in surveys.iter().enumerate() {
        let id = format!("S-{run_id}-{}", i + 1);
        let record = json!({"fields": {"a_surveyid": id, "e_email": email, "k_bp_main_score_scale": 2 + i,
                                       "status": "Open", "transactional_satisfaction": sat}});
        api.call(reqwest::Method::POST, "/v1/objects/survey/records", Some(record)).await?;
        api.call(
            reqwest::Method::PATCH,
            &format!("/v1/objects/survey/records/{id}"),
            Some(json!({"fields": {"status": "Completed"}})),
        )
        .await?;
        println!("survey {id}: Open → Completed, satisfaction {sat} ({what})");
        ids.push(id);
    }

    // Wait for both firing surveys to be written back.
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in [&ids[0], &ids[2]] {
        loop {
            let r = api.call(reqwest::Method::GET, &format!("/v1/objects/survey/records/{id}"), None).await?;
            if !r["fields"]["ticketSystemSynced"].is_null() {
                break;
            }
            if Instant::now() > deadline {
                bail!("survey {id} was not written back in time");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    println!("\n-- calls the tracker received --");
    for (i, call) in log.calls.lock().unwrap_or_else(|p| p.into_inner()).iter().enumerate() {
        let summary: Value = serde_json::from_str(call).unwrap_or(Value::Null);
        let description = summary["fields"]["description"].as_str().unwrap_or("").replace('\n', " / ");
        println!("{}. {}", i + 1, description.chars().take(110).collect::<String>());
    }
    println!("\n-- attempts (GET /v1/webhooks/it-negative-feedback/attempts) --");
    let attempts = api.call(reqwest::Method::GET, "/v1/webhooks/it-negative-feedback/attempts?limit=20", None).await?;
    let mut rows: Vec<&Value> = attempts.as_array().map(|a| a.iter().collect()).unwrap_or_default();
    rows.reverse();
    for a in rows {
        println!(
            "{:<16} attempt {}  {:<16} status {:<4} {:>4} ms  write-back {}",
            a["record_ids"][0].as_str().unwrap_or("?"),
            a["attempt"],
            a["outcome"].as_str().unwrap_or("?"),
            a["response"]["status"].as_u64().map(|s| s.to_string()).unwrap_or("-".into()),
            a["duration_ms"],
            a["writeback"]["status"].as_str().unwrap_or("-"),
        );
    }
    println!("\n-- records after write-back --");
    for id in &ids {
        let r = api.call(reqwest::Method::GET, &format!("/v1/objects/survey/records/{id}"), None).await?;
        let f = &r["fields"];
        println!(
            "{id} v{}: status {}, ticketSystemSynced {}, ticketSystemRecordId {}",
            r["version"], f["status"], f["ticketSystemSynced"], f["ticketSystemRecordId"]
        );
    }
    println!("\nHookline keeps serving at {base} — try:");
    println!("  curl -s {base}/v1/webhooks/it-negative-feedback/attempts?record_id={}", ids[2]);
    println!("  curl -s {base}/v1/objects/survey/records/{}", ids[0]);
    println!("  curl -s {base}/v1/objects/survey/records/{}/journey   (why it fired, or did not)", ids[1]);
    println!("  the dashboard: {base}/   and a journey: {base}/ui/records?object=survey&id={}", ids[1]);
    println!("Ctrl-C stops it.");

    shutdown.await;
    let _ = stop_tx.send(());
    node.await.context("the node task failed")??;
    Ok(())
}
