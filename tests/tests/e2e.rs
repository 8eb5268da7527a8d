//! End-to-end: the seed's example through real HTTP, a real Redis and a local tracker.

mod bulk;
mod cluster;
mod cockpit;
mod corpus;
mod deploy;
mod embedded;
mod hardening;
mod leases;
mod oauth;
mod procs;
mod schedule;
mod support;
mod traces;

use std::time::Duration;

use hookline::demo::survey_object;
use serde_json::{Value, json};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

/// The ticket JSON the seed's body script builds for a record.
fn expected_ticket(email: &str, score: i64) -> Value {
    json!({
        "fields": {
            "project": {"key": "PRJ"},
            "summary": "[Medallia] Issue from customer feedback",
            "description": format!(
                "A customer has provided feedback.\n\nLikelihood to recommend: {score}\nEmail: {email}\n\n\
                 Please contact this customer within 2 days and log the outcome in this issue."
            ),
            "issuetype": {"name": "Task"}
        }
    })
}

async fn setup(api: &Api, tracker: &Tracker, webhook: &str, as_printed: bool) {
    api.ok("POST", "/v1/objects", Some(survey_object())).await;
    api.ok("POST", "/v1/webhooks", Some(seed_webhook(webhook, tracker, as_printed))).await;
}

async fn put_survey(api: &Api, id: &str, fields: Value) {
    let mut f = fields;
    f["a_surveyid"] = json!(id);
    api.ok("POST", "/v1/objects/survey/records", Some(json!({ "fields": f }))).await;
}

async fn patch(api: &Api, id: &str, fields: Value) {
    api.ok("PATCH", &format!("/v1/objects/survey/records/{id}"), Some(json!({ "fields": fields }))).await;
}

#[actix_rt::test]
async fn seed_scenario_creates_a_ticket_and_writes_it_back() {
    let ns = namespace();
    let tracker = Tracker::start();
    let node = Node::start(&ns, "all").await;
    let api = Api::new(&node);
    setup(&api, &tracker, "it-negative-feedback", false).await;

    // Created Open: on_create is false, and the condition does not hold anyway.
    put_survey(
        &api,
        "S1",
        json!({"e_email": "ann@example.com", "k_bp_main_score_scale": 3, "status": "Open",
                                  "transactional_satisfaction": 0}),
    )
    .await;
    // Updated to Completed with satisfaction 0: exactly one call.
    patch(&api, "S1", json!({"status": "Completed"})).await;
    wait_until(WAIT, || async { tracker.count() >= 1 }).await;
    let call = &tracker.all()[0];
    assert_eq!(call.path, "/rest/api/2/issue");
    assert_eq!(call.json(), expected_ticket("ann@example.com", 3));
    assert_eq!(call.header("authorization"), Some("Basic YmF0bWFuOnJvYmlu"));
    assert!(call.header("webhook-id").is_some_and(|id| !id.is_empty()));
    assert!(call.header("traceparent").is_some());

    // The response script's output lands on the record.
    wait_until(WAIT, || async { api.record("survey", "S1").await["fields"]["ticketSystemSynced"] == json!(1) }).await;
    let record = api.record("survey", "S1").await;
    assert_eq!(record["fields"]["ticketSystemRecordId"], json!("IT-1"));
    assert_eq!(record["fields"]["ticketSystemSyncStatusCode"], json!(200));
    assert_eq!(record["fields"]["status"], json!("Completed"));

    // A non-triggering field, and a Completed survey with satisfaction 5: no call.
    patch(&api, "S1", json!({"e_email": "ann@other.example"})).await;
    put_survey(&api, "S2", json!({"e_email": "bob@example.com", "status": "Open", "transactional_satisfaction": 5}))
        .await;
    patch(&api, "S2", json!({"status": "Completed"})).await;
    // A control change after them fires; once its call arrives the earlier changes were
    // decided (one stream per object, read in order), so the count proves they did not fire.
    put_survey(
        &api,
        "S3",
        json!({"e_email": "cy@example.com", "status": "Open", "transactional_satisfaction": 0,
                                  "k_bp_main_score_scale": 1}),
    )
    .await;
    patch(&api, "S3", json!({"status": "Completed"})).await;
    wait_until(WAIT, || async { tracker.count() >= 2 }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls = tracker.all();
    assert_eq!(calls.len(), 2, "only S1 and S3 fire: {calls:?}");
    assert_eq!(calls[1].json(), expected_ticket("cy@example.com", 1));
    assert_ne!(calls[0].header("webhook-id"), calls[1].header("webhook-id"));

    // Every attempt is listed, with the secret header redacted.
    wait_until(WAIT, || async { api.record("survey", "S3").await["fields"]["ticketSystemRecordId"] == json!("IT-2") })
        .await;
    let attempts = api.attempts("it-negative-feedback", "").await;
    assert_eq!(attempts.len(), 2);
    for a in &attempts {
        assert_eq!(a["outcome"], "success");
        assert_eq!(a["response"]["status"], 200);
        assert_eq!(a["request"]["headers"]["Authorization"], "***", "{a}");
        assert_eq!(a["writeback"]["status"], "done");
        let one = api.ok("GET", &format!("/v1/attempts/{}", a["id"].as_str().unwrap()), None).await;
        assert_eq!(one["id"], a["id"]);
    }
    let s1 = api.attempts("it-negative-feedback", "record_id=S1").await;
    assert_eq!(s1.len(), 1);
    assert_eq!(s1[0]["record_ids"], json!(["S1"]));

    // The node's metrics count them.
    let (status, metrics) = api.call("GET", "/metrics", None).await;
    assert_eq!(status, 200);
    let metrics = metrics.as_str().unwrap().to_string();
    for line in [
        "hookline_attempts_total{webhook=\"it-negative-feedback\",outcome=\"success\"} 2",
        "hookline_attempt_duration_seconds_count{webhook=\"it-negative-feedback\"} 2",
        "hookline_queue_depth{webhook=\"it-negative-feedback\"} 0",
        "hookline_oldest_job_age_seconds{webhook=\"it-negative-feedback\"} 0",
        "hookline_concurrency_limit{webhook=\"it-negative-feedback\"} 4",
    ] {
        assert!(metrics.contains(line), "no `{line}` in\n{metrics}");
    }
    node.stop().await;
}

#[actix_rt::test]
async fn a_failing_tracker_is_retried_then_the_failure_is_written_back() {
    let ns = namespace();
    let tracker = Tracker::start();
    let node = Node::start(&ns, "all").await;
    let api = Api::new(&node);
    setup(&api, &tracker, "it", false).await;

    put_survey(&api, "F1", json!({"e_email": "fail@example.com", "status": "Open", "transactional_satisfaction": 0}))
        .await;
    patch(&api, "F1", json!({"status": "Completed"})).await;

    // retries: 2 → three attempts, then the response script's failure branch.
    wait_until(WAIT, || async { api.record("survey", "F1").await["fields"]["ticketSystemSynced"] == json!(2) }).await;
    let record = api.record("survey", "F1").await;
    assert_eq!(record["fields"]["ticketSystemSyncStatusCode"], json!(500));
    assert_eq!(record["fields"]["ticketSystemSyncError"], json!("tracker down"));
    let calls = tracker.all();
    assert_eq!(calls.len(), 3);
    for pair in calls.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(290), "retry_wait is 300ms, saw {gap:?}");
        assert_eq!(pair[0].header("webhook-id"), pair[1].header("webhook-id"), "same idempotency id");
    }

    let mut attempts = api.attempts("it", "record_id=F1").await;
    attempts.reverse();
    let outcomes: Vec<&str> = attempts.iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["retry_scheduled", "retry_scheduled", "exhausted"]);
    let numbers: Vec<u64> = attempts.iter().map(|a| a["attempt"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [1, 2, 3]);
    assert_eq!(attempts[2]["error"], "target answered 500");
    assert_eq!(api.attempts("it", "outcome=exhausted").await.len(), 1);
    assert_eq!(api.attempts("it", "limit=1").await.len(), 1);

    // Exhausted jobs are dead letters, and can be redriven.
    let dead = api.ok("GET", "/v1/webhooks/it/dead-letters", None).await;
    assert_eq!(dead.as_array().unwrap().len(), 1);
    assert_eq!(dead[0]["record_ids"], json!(["F1"]));
    let redriven = api.ok("POST", "/v1/webhooks/it/dead-letters/redrive", None).await;
    assert_eq!(redriven["redriven"], 1);
    wait_until(WAIT, || async { tracker.count() >= 4 }).await;
    node.stop().await;
}

#[actix_rt::test]
async fn the_body_script_as_printed_fails_cleanly_and_nothing_else_is_affected() {
    let ns = namespace();
    let tracker = Tracker::start();
    let node = Node::start(&ns, "all").await;
    let api = Api::new(&node);
    setup(&api, &tracker, "as-printed", true).await;
    api.ok("POST", "/v1/webhooks", Some(seed_webhook("corrected", &tracker, false))).await;

    put_survey(&api, "P1", json!({"e_email": "pat@example.com", "status": "Open", "transactional_satisfaction": 0}))
        .await;
    patch(&api, "P1", json!({"status": "Completed"})).await;

    wait_until(WAIT, || async { !api.attempts("as-printed", "").await.is_empty() }).await;
    let attempt = &api.attempts("as-printed", "").await[0];
    assert_eq!(attempt["outcome"], "failed");
    let error = attempt["error"].as_str().unwrap();
    assert!(error.contains("record") && error.contains("line 31"), "{error}");
    assert!(attempt["request"].is_null() && attempt["response"].is_null());

    // The corrected webhook on the same change delivers and writes back.
    wait_until(WAIT, || async { api.record("survey", "P1").await["fields"]["ticketSystemSynced"] == json!(1) }).await;
    assert_eq!(tracker.count(), 1);
    let (status, _) = api.call("GET", "/healthz", None).await;
    assert_eq!(status, 200);
    node.stop().await;
}

#[actix_rt::test]
async fn bad_input_is_refused_with_the_field_and_nothing_is_half_applied() {
    let ns = namespace();
    let tracker = Tracker::start();
    let node = Node::start(&ns, "all").await;
    let api = Api::new(&node);
    setup(&api, &tracker, "wh", false).await;

    let cases: Vec<(&str, &str, Value, u16, &str)> = vec![
        (
            "POST",
            "/v1/objects/survey/records",
            json!({"fields": {"a_surveyid": "X", "k_bp_main_score_scale": "high"}}),
            422,
            "fields.k_bp_main_score_scale",
        ),
        ("POST", "/v1/objects/survey/records", json!({"fields": {"a_surveyid": "X", "nope": 1}}), 422, "fields.nope"),
        ("POST", "/v1/objects/survey/records", json!({"fields": {"status": "Open"}}), 422, "fields.a_surveyid"),
        ("PATCH", "/v1/objects/survey/records/missing", json!({"fields": {"status": "Open"}}), 404, ""),
        ("POST", "/v1/objects/nothing/records", json!({"fields": {}}), 404, ""),
        ("POST", "/v1/objects", json!({"name": "x", "fields": [{"key": "a", "type": "text"}]}), 400, ""),
    ];
    for (method, path, body, status, field) in cases {
        let (got, v) = api.call(method, path, Some(body.clone())).await;
        assert_eq!(got, status, "{method} {path} {body}: {v}");
        if !field.is_empty() {
            assert_eq!(v["error"]["field"], field, "{v}");
        }
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }

    // Malformed JSON names the position.
    let (status, v) = api.raw("POST", "/v1/objects/survey/records", "{\"fields\": {").await;
    assert_eq!(status, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("column"), "{v}");

    // A bulk request with one bad record applies none.
    let bulk = json!([
        {"fields": {"a_surveyid": "B1", "status": "Open"}},
        {"fields": {"a_surveyid": "B2", "transactional_satisfaction": "zero"}}
    ]);
    let (status, v) = api.call("POST", "/v1/objects/survey/records", Some(bulk)).await;
    assert_eq!(status, 422);
    assert_eq!(v["error"]["field"], "[1].fields.transactional_satisfaction");
    let (status, _) = api.call("GET", "/v1/objects/survey/records/B1", None).await;
    assert_eq!(status, 404);
    let ok = api
        .ok(
            "POST",
            "/v1/objects/survey/records",
            Some(json!([
                {"fields": {"a_surveyid": "B1", "status": "Open"}}, {"fields": {"a_surveyid": "B2"}}
            ])),
        )
        .await;
    assert_eq!(ok["results"][0]["status"], "created");
    assert_eq!(api.record("survey", "B1").await["version"], 1);

    // A bad condition is refused with its column; an unknown trigger field by name.
    let mut wh = seed_webhook("bad", &tracker, false);
    wh["trigger"]["condition"] = json!("Status = Completed and Sttus = 0");
    let (status, v) = api.call("POST", "/v1/webhooks", Some(wh.clone())).await;
    assert_eq!(status, 422);
    assert_eq!(v["error"]["field"], "trigger.condition");
    assert!(v["error"]["message"].as_str().unwrap().contains("column 24"), "{v}");
    wh["trigger"]["condition"] = json!("Status = Completed");
    wh["trigger"]["fields"] = json!(["Stat"]);
    let (status, v) = api.call("POST", "/v1/webhooks", Some(wh.clone())).await;
    assert_eq!(status, 422);
    assert_eq!(v["error"]["field"], "trigger.fields[0]");
    wh["trigger"]["fields"] = json!(["Status"]);
    wh["request"]["body_script"] = json!("write(");
    let (status, v) = api.call("POST", "/v1/webhooks", Some(wh.clone())).await;
    assert_eq!(status, 422);
    assert_eq!(v["error"]["field"], "request.body_script");
    wh["settings"] = json!({"retriez": 1});
    let (status, v) = api.call("POST", "/v1/webhooks", Some(wh)).await;
    assert_eq!(status, 400);
    assert!(v["error"]["message"].as_str().unwrap().contains("retriez"), "{v}");

    // The node still serves.
    let (status, _) = api.call("GET", "/readyz", None).await;
    assert_eq!(status, 200);
    node.stop().await;
}

#[actix_rt::test]
async fn definitions_saved_on_one_node_reach_the_others() {
    let ns = namespace();
    let tracker = Tracker::start();
    // The API node runs no engine role; the worker node has no API.
    let api_node = Node::start(&ns, "api").await;
    let worker = Node::start(&ns, "coordinator,trigger,dispatcher,writeback").await;
    let api = Api::new(&api_node);
    api.ok("POST", "/v1/objects", Some(survey_object())).await;
    let mut wh = seed_webhook("basic", &tracker, false);
    wh["auth"] = json!({"type": "basic", "username": "batman", "password": "robin"});
    api.ok("POST", "/v1/webhooks", Some(wh)).await;

    // Secrets are write-only.
    let shown = api.ok("GET", "/v1/webhooks/basic", None).await;
    assert_eq!(shown["auth"]["password"], "***");
    assert!(!shown.to_string().contains("robin"));

    put_survey(&api, "N1", json!({"e_email": "n@example.com", "status": "Open", "transactional_satisfaction": 0}))
        .await;
    patch(&api, "N1", json!({"status": "Completed"})).await;
    wait_until(WAIT, || async { tracker.count() == 1 }).await;
    assert_eq!(tracker.all()[0].header("authorization"), Some("Basic YmF0bWFuOnJvYmlu"));

    // Paused: changes queue up, nothing is sent; resumed: the backlog goes out.
    api.ok("POST", "/v1/webhooks/basic/pause", None).await;
    put_survey(&api, "N2", json!({"e_email": "m@example.com", "status": "Open", "transactional_satisfaction": 0}))
        .await;
    patch(&api, "N2", json!({"status": "Completed"})).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(tracker.count(), 1, "a paused webhook sends nothing");
    let resumed = api.ok("POST", "/v1/webhooks/basic/resume", None).await;
    assert_eq!(resumed["paused"], false);
    wait_until(WAIT, || async { tracker.count() == 2 }).await;

    // A PUT that echoes the redacted secret keeps the real one.
    let mut back = api.ok("GET", "/v1/webhooks/basic", None).await;
    for k in ["version", "paused"] {
        back.as_object_mut().unwrap().remove(k);
    }
    back["settings"]["retries"] = json!(1);
    let saved = api.ok("PUT", "/v1/webhooks/basic", Some(back)).await;
    assert_eq!(saved["version"], 4);
    put_survey(&api, "N3", json!({"e_email": "o@example.com", "status": "Open", "transactional_satisfaction": 0}))
        .await;
    patch(&api, "N3", json!({"status": "Completed"})).await;
    wait_until(WAIT, || async { tracker.count() == 3 }).await;
    assert_eq!(tracker.all()[2].header("authorization"), Some("Basic YmF0bWFuOnJvYmlu"));

    worker.stop().await;
    api_node.stop().await;
}

#[actix_rt::test]
async fn the_api_token_guards_v1() {
    let ns = namespace();
    let node = Node::start_with(&ns, "api", |a| a.api_token = Some("s3cret-token".into())).await;
    let mut api = Api::new(&node);
    let (status, v) = api.call("GET", "/v1/webhooks", None).await;
    assert_eq!(status, 401, "{v}");
    let (status, _) = api.call("GET", "/healthz", None).await;
    assert_eq!(status, 200);
    api.token = Some("s3cret-token".into());
    let (status, _) = api.call("GET", "/v1/webhooks", None).await;
    assert_eq!(status, 200);
    node.stop().await;
}

#[actix_rt::test]
async fn write_back_errors_are_recorded_on_the_attempt() {
    let ns = namespace();
    let tracker = Tracker::start();
    let node = Node::start(&ns, "all").await;
    let api = Api::new(&node);
    api.ok("POST", "/v1/objects", Some(survey_object())).await;
    let mut wh = seed_webhook("wb", &tracker, false);
    // Writes to a record that does not exist, and to a field the object lacks.
    wh["response_script"] = json!(
        "write(JSON.stringify([{medalliaRecordId: 'ghost', ticketSystemSynced: 1}, \
         {medalliaRecordId: data.changedEntities[0].a_surveyid, noSuchField: 1}]));"
    );
    // Another record than the job's own: allowed by choice.
    wh["writeback"]["any_record"] = json!(true);
    api.ok("POST", "/v1/webhooks", Some(wh)).await;
    put_survey(&api, "W1", json!({"e_email": "w@example.com", "status": "Open", "transactional_satisfaction": 0}))
        .await;
    patch(&api, "W1", json!({"status": "Completed"})).await;

    wait_until(WAIT, || async {
        api.attempts("wb", "").await.first().is_some_and(|a| a["writeback"]["status"] == "error")
    })
    .await;
    let attempt = &api.attempts("wb", "").await[0];
    assert_eq!(attempt["outcome"], "success");
    let error = attempt["writeback"]["error"].as_str().unwrap();
    assert!(error.contains("`ghost`") && error.contains("does not exist"), "{error}");
    assert!(error.contains("fields.noSuchField"), "{error}");
    // Nothing was half-written to W1.
    assert!(api.record("survey", "W1").await["fields"].get("ticketSystemSynced").is_none());

    // The attempt log as NDJSON: one JSON document per line.
    let lines = api.ndjson("GET", "/v1/webhooks/wb/attempts", None).await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["id"], attempt["id"]);
    node.stop().await;
}
