//! The operator's views: a record's journey (why each webhook fired or did not, then its
//! calls), and the metrics.

use std::time::Duration;

use hookline::demo::survey_object;
use serde_json::{Value, json};

use crate::support::*;
use crate::{WAIT, patch, put_survey};

/// The decision of `webhook` on change number `n` (oldest first) of the journey.
fn decision<'a>(journey: &'a Value, n: usize, webhook: &str) -> &'a Value {
    let decisions = journey["changes"][n]["decisions"].as_array().expect("decisions");
    decisions.iter().find(|d| d["webhook"] == webhook).unwrap_or_else(|| panic!("no decision of {webhook}: {journey}"))
}

#[actix_rt::test]
async fn a_records_journey_says_why_each_webhook_fired_or_not_and_what_its_calls_did() {
    let ns = namespace();
    let tracker = Tracker::start();
    let node = Node::start(&ns, "all").await;
    let api = Api::new(&node);
    api.ok("POST", "/v1/objects", Some(survey_object())).await;
    api.ok("POST", "/v1/webhooks", Some(seed_webhook("it", &tracker, false))).await;
    let on_create = json!({
        "id": "welcome", "object": "survey",
        "trigger": {"on_create": true},
        "request": {"method": "POST", "url": format!("{}/welcome", tracker.url), "body_template": "{}"}
    });
    api.ok("POST", "/v1/webhooks", Some(on_create)).await;

    // 1: created (welcome fires, it does not fire on create); 2: a field it does not watch;
    // 3: Completed but satisfaction 5 (its condition is false); 4: satisfaction 0 (fires),
    // 5: its own write-back.
    put_survey(&api, "S1", json!({"e_email": "ann@example.com", "status": "Open", "transactional_satisfaction": 5}))
        .await;
    patch(&api, "S1", json!({"e_email": "ann@other.example"})).await;
    patch(&api, "S1", json!({"status": "Completed"})).await;
    patch(&api, "S1", json!({"transactional_satisfaction": 0})).await;
    let path = "/v1/objects/survey/records/S1/journey";
    wait_until(WAIT, || async {
        let j = api.ok("GET", path, None).await;
        j["changes"].as_array().is_some_and(|c| c.len() == 5)
            && j["changes"][3]["decisions"].as_array().into_iter().flatten().any(|d| d["delivery"] == "delivered")
    })
    .await;
    let j = api.ok("GET", path, None).await;
    let versions: Vec<u64> = j["changes"].as_array().unwrap().iter().map(|c| c["version"].as_u64().unwrap()).collect();
    assert_eq!(versions, [1, 2, 3, 4, 5], "{j}");
    assert_eq!(j["record"]["version"], 5);

    // Created: welcome fired and delivered; it does not fire on create.
    assert_eq!(j["changes"][0]["created"], true);
    assert_eq!(j["changes"][0]["changed"]["status"]["new"], "Open");
    let welcome = decision(&j, 0, "welcome");
    assert_eq!((welcome["fired"].clone(), welcome["decision"].clone()), (json!(true), json!("fire")));
    wait_until(WAIT, || async { decision(&api.ok("GET", path, None).await, 0, "welcome")["delivery"] == "delivered" })
        .await;
    assert_eq!(decision(&j, 0, "it")["decision"], "not_on_create");
    assert_eq!(decision(&j, 0, "it")["reason"], "it does not fire when a record is created");

    // Not a triggering field; welcome does not fire on update.
    assert_eq!(j["changes"][1]["changed"], json!({"e_email": {"old": "ann@example.com", "new": "ann@other.example"}}));
    let it = decision(&j, 1, "it");
    assert_eq!(it["decision"], "no_triggering_field_changed");
    assert_eq!(it["triggering_fields"], json!(["status", "transactional_satisfaction"]));
    assert_eq!(decision(&j, 1, "welcome")["decision"], "not_on_update");

    // The condition was false, and each part says why.
    let it = decision(&j, 2, "it");
    assert_eq!(it["decision"], "condition_false");
    assert_eq!(it["condition"], "Status = Completed and Transactional Satisfaction = 0");
    assert_eq!(
        it["parts"],
        json!([
            {"part": "status = \"Completed\"", "value": true, "fields": {"status": "Completed"}},
            {"part": "transactional_satisfaction = 0", "value": false, "fields": {"transactional_satisfaction": 5}}
        ])
    );
    assert!(it.get("attempts").is_none());

    // Fired: one call, delivered, its write-back done; then its own write-back fires nothing.
    let it = decision(&j, 3, "it");
    assert_eq!(it["fired"], true);
    let attempts = it["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{it}");
    assert_eq!(attempts[0]["outcome"], "success");
    assert_eq!(attempts[0]["status"], 200);
    assert_eq!(attempts[0]["job_id"], it["job_id"]);
    assert!(attempts[0]["trace_id"].as_str().is_some_and(|t| t.len() == 32));
    wait_until(WAIT, || async {
        decision(&api.ok("GET", path, None).await, 3, "it")["attempts"][0]["writeback"]["status"] == "done"
    })
    .await;
    assert_eq!(j["changes"][4]["origin_webhook"], "it");
    assert!(j["changes"][4]["changed"]["ticketSystemRecordId"]["new"].as_str().is_some_and(|t| t.starts_with("IT-")));
    assert_eq!(decision(&j, 4, "it")["decision"], "own_writeback");
    assert_eq!(tracker.count(), 2, "welcome once, it once");

    // Asking well, and badly.
    let newest = api.ok("GET", &format!("{path}?limit=1"), None).await;
    assert_eq!(newest["changes"].as_array().unwrap().len(), 1);
    assert_eq!(newest["changes"][0]["version"], 5);
    let (status, body) = api.call("GET", &format!("{path}?limit=0"), None).await;
    assert_eq!((status, body["error"]["field"].clone()), (422, json!("limit")), "{body}");
    let (status, _) = api.call("GET", "/v1/objects/nope/records/S1/journey", None).await;
    assert_eq!(status, 404);
    let unknown = api.ok("GET", "/v1/objects/survey/records/never/journey", None).await;
    assert_eq!((unknown["record"].clone(), unknown["changes"].clone()), (Value::Null, json!([])));
    node.stop().await;
}

/// Runs the `hookline` binary with `args` against `url`; (exit code, stdout, stderr).
async fn cli(url: &str, args: &[&str]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(crate::procs::hookline_bin());
    cmd.args(args).env("HOOKLINE_URL", url).env_remove("HOOKLINE_TOKEN").env_remove("HOOKLINE_API_TOKEN");
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run hookline")).await.unwrap();
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

#[actix_rt::test]
async fn the_command_line_applies_definitions_idempotently_and_shows_attempts_and_journeys() {
    let ns = namespace();
    let tracker = Tracker::start();
    let node = Node::start(&ns, "all").await;
    let api = Api::new(&node);
    api.ok("POST", "/v1/objects", Some(survey_object())).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("webhooks.yaml");
    let yaml = |concurrency: u32| {
        format!(
            "id: tickets\nobject: survey\ntrigger:\n  on_create: true\n  condition: Status = Completed\n\
             request:\n  method: POST\n  url: {url}/tickets\n  body_template: '{{\"id\": \"{{{{ record.id }}}}\"}}'\n\
             settings:\n  max_concurrency: {concurrency}\n  retries: 0\n---\n\
             id: failing\nobject: survey\ntrigger:\n  on_create: true\n\
             request:\n  method: POST\n  url: {url}/fail\n  body_template: fail\nsettings:\n  retries: 0\n",
            url = tracker.url
        )
    };
    std::fs::write(&file, yaml(2)).unwrap();
    let f = file.to_str().unwrap();

    let (code, out, err) = cli(&node.url, &["webhook", "apply", "-f", f]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("webhook tickets: created (version 1)") && out.contains("webhook failing: created"), "{out}");
    let (code, out, _) = cli(&node.url, &["webhook", "apply", "-f", f]).await;
    assert_eq!((code, out.matches("unchanged").count()), (0, 2), "applying again changes nothing: {out}");
    assert_eq!(api.ok("GET", "/v1/webhooks/tickets", None).await["version"], 1);
    std::fs::write(&file, yaml(5)).unwrap();
    let (code, out, _) = cli(&node.url, &["webhook", "apply", "-f", f]).await;
    assert_eq!(code, 0);
    assert!(out.contains("webhook tickets: updated (version 1 → 2)"), "{out}");
    assert!(out.contains("settings.max_concurrency: 2 → 5"), "{out}");
    assert!(out.contains("webhook failing: unchanged"), "{out}");

    // A bad definition: refused with its field, exit code 1, the good ones still applied.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"[{"id": "bad", "object": "survey", "trigger": {"on_create": true, "condition": "Sttus = x"}, "request": {"method": "POST", "url": "http://127.0.0.1:9/x"}}]"#).unwrap();
    let (code, _, err) = cli(&node.url, &["webhook", "apply", "-f", bad.to_str().unwrap()]).await;
    assert_eq!(code, 1);
    assert!(err.contains("trigger.condition") && err.contains("Sttus"), "{err}");

    let (code, out, _) = cli(&node.url, &["webhook", "list"]).await;
    assert_eq!(code, 0);
    let row = out.lines().find(|l| l.starts_with("tickets")).unwrap_or_else(|| panic!("{out}"));
    assert!(row.contains("active") && row.contains("create if Status = Completed"), "{row}");
    let (code, _, _) = cli(&node.url, &["webhook", "pause", "tickets"]).await;
    assert_eq!(code, 0);
    assert_eq!(api.ok("GET", "/v1/webhooks/tickets", None).await["paused"], true);
    let (code, _, _) = cli(&node.url, &["webhook", "resume", "tickets"]).await;
    assert_eq!(code, 0);
    assert_eq!(api.ok("GET", "/v1/webhooks/tickets", None).await["paused"], false);
    let (code, _, err) = cli(&node.url, &["webhook", "get", "nope"]).await;
    assert_eq!(code, 4, "not found: {err}");

    // A dry run says whether the condition holds and what would be sent.
    let (code, out, _) = cli(&node.url, &["webhook", "test", "tickets", "--fields", r#"{"status": "Open"}"#]).await;
    assert_eq!(code, 0);
    let dry: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(dry["condition"], false);
    assert_eq!(dry["request"]["body"], r#"{"id": "test"}"#);

    put_survey(&api, "S1", json!({"status": "Completed"})).await;
    wait_until(WAIT, || async { tracker.count() >= 2 }).await;
    wait_until(WAIT, || async { api.attempts("failing", "").await.len() == 1 }).await;
    wait_until(WAIT, || async { api.attempts("tickets", "").await.len() == 1 }).await;
    let (code, out, _) = cli(&node.url, &["attempts", "tickets", "--record", "S1", "--since", "1h"]).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("STARTED") && out.lines().nth(1).is_some_and(|l| l.contains("success")), "{out}");
    let (code, out, _) = cli(&node.url, &["attempts", "failing", "--outcome", "exhausted", "-o", "ndjson"]).await;
    assert_eq!(code, 0);
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert_eq!(lines[0]["response"]["status"], 500);
    let (code, _, err) = cli(&node.url, &["attempts", "failing", "--outcome", "nope"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("outcome"), "{err}");

    wait_until(WAIT, || async { api.ok("GET", "/v1/webhooks/failing/dead-letters", None).await[0]["id"].is_string() })
        .await;
    let (code, out, _) = cli(&node.url, &["dead-letters", "failing"]).await;
    assert_eq!(code, 0);
    assert!(out.lines().nth(1).is_some_and(|l| l.contains("S1")), "{out}");
    // Counted first, chosen by record, reason or id; nothing sent by a dry run or a miss.
    let redrive = "/v1/webhooks/failing/dead-letters/redrive";
    let counted = api.ok("POST", redrive, Some(json!({"dry_run": true}))).await;
    assert_eq!(counted, json!({"matching": 1, "redriven": 0}));
    let counted = api.ok("POST", redrive, Some(json!({"record_id": "S1", "reason": "500", "dry_run": true}))).await;
    assert_eq!(counted, json!({"matching": 1, "redriven": 0}));
    let missed = api.ok("POST", redrive, Some(json!({"record_id": "nope"}))).await;
    assert_eq!(missed, json!({"matching": 0, "redriven": 0}));
    let missed = api.ok("POST", redrive, Some(json!({"ids": ["0-1"]}))).await;
    assert_eq!(missed, json!({"matching": 0, "redriven": 0}));
    let (status, body) = api.call("POST", redrive, Some(json!({"idz": []}))).await;
    assert_eq!(status, 400, "{body}");
    let (code, out, _) = cli(&node.url, &["dead-letters", "failing", "--redrive"]).await;
    assert_eq!((code, out.trim()), (0, "webhook failing: 1 dead letters sent again"));
    wait_until(WAIT, || async { api.attempts("failing", "").await.len() == 2 }).await;

    let (code, out, _) = cli(&node.url, &["record", "journey", "survey", "S1"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("version 1") && out.contains("created"), "{out}");
    assert!(out.contains("tickets: fired, delivered"), "{out}");
    let (code, out, _) = cli(&node.url, &["record", "get", "survey", "S1"]).await;
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["fields"]["status"], "Completed");

    // The node gone: exit code 3, saying where it looked.
    let (code, _, err) = cli("http://127.0.0.1:9", &["webhook", "list"]).await;
    assert_eq!(code, 3);
    assert!(err.contains("cannot reach http://127.0.0.1:9"), "{err}");
    let (code, _, err) = cli(&node.url, &["webhook"]).await;
    assert_eq!(code, 2, "usage: {err}");
    node.stop().await;
}

#[actix_rt::test]
async fn the_dashboard_needs_a_session_and_escapes_what_records_hold() {
    let ns = namespace();
    let node = Node::start_with(&ns, "all", |a| a.api_token = Some("dash-token".into())).await;
    let mut api = Api::new(&node);
    api.token = Some("dash-token".into());
    api.ok("POST", "/v1/objects", Some(survey_object())).await;
    let evil = "<img src=x onerror=alert(1)>";
    put_survey(&api, evil, json!({"status": "Open"})).await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let get = |path: &str, cookie: Option<&str>| {
        let mut req = client.get(format!("{}{path}", node.url));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        req.send()
    };
    for path in ["/", "/ui/webhooks/x", "/ui/records?object=survey&id=S1"] {
        let r = get(path, None).await.unwrap();
        assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (303, "/login"), "{path}");
        let r = get(path, Some("hookline_session=wrong")).await.unwrap();
        assert_eq!(r.status().as_u16(), 303, "{path} with a wrong session");
    }
    // Signing in sets the cookie: HttpOnly, SameSite=Strict.
    let r = client.post(format!("{}/login", node.url)).form(&[("token", "dash-token")]).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(!cookie.contains("Secure"), "over plain HTTP a Secure cookie would be dropped: {cookie}");
    // Behind a proxy that ends TLS, the cookie is only ever sent back over HTTPS.
    let proxied = client
        .post(format!("{}/login", node.url))
        .header("x-forwarded-proto", "https")
        .form(&[("token", "dash-token")])
        .send()
        .await
        .unwrap();
    let secure = proxied.headers()["set-cookie"].to_str().unwrap();
    assert!(secure.contains("; Secure") && secure.contains("HttpOnly"), "{secure}");
    let session = cookie.split(';').next().unwrap().to_string();
    let r = get("/", Some(&session)).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let path = format!("/ui/records?object=survey&id={}", hookline_model::url::encoded(evil));
    let page = get(&path, Some(&session)).await.unwrap().text().await.unwrap();
    assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"), "{page}");
    assert!(!page.contains(evil), "the record id is escaped");
    node.stop().await;
}

#[actix_rt::test]
async fn attempts_follow_prints_new_attempts_as_they_are_made() {
    use std::io::{BufRead, BufReader};
    let ns = namespace();
    let tracker = Tracker::start();
    let node = Node::start(&ns, "all").await;
    let api = Api::new(&node);
    api.ok("POST", "/v1/objects", Some(survey_object())).await;
    let hook = json!({"id": "follow", "object": "survey", "trigger": {"on_create": true},
        "request": {"method": "POST", "url": format!("{}/f", tracker.url), "body_template": "{}"}});
    api.ok("POST", "/v1/webhooks", Some(hook)).await;
    put_survey(&api, "F1", json!({"status": "Open"})).await;
    wait_until(WAIT, || async { api.attempts("follow", "").await.len() == 1 }).await;

    let mut child = std::process::Command::new(crate::procs::hookline_bin())
        .args(["attempts", "follow", "--follow", "-o", "ndjson", "--url", &node.url])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run hookline attempts --follow");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The next line the command printed (polled: the node serves from this very thread).
    let next = async |what: &str| {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            match rx.try_recv() {
                Ok(line) => return serde_json::from_str::<Value>(&line).unwrap(),
                Err(_) if std::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(_) => panic!("no line for {what}"),
            }
        }
    };
    // The attempts so far, then each new one once, as it is made.
    assert_eq!(next("the first attempt").await["record_ids"], json!(["F1"]));
    put_survey(&api, "F2", json!({"status": "Open"})).await;
    assert_eq!(next("F2's attempt").await["record_ids"], json!(["F2"]));
    put_survey(&api, "F3", json!({"status": "Open"})).await;
    assert_eq!(next("F3's attempt").await["record_ids"], json!(["F3"]));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(rx.try_iter().all(|l| !l.contains("\"F1\"")), "nothing printed twice");
    node.stop().await;
}

#[actix_rt::test]
async fn metrics_show_the_calls_in_flight_across_the_cluster() {
    let ns = namespace();
    // Slow enough that the calls are still out when the nodes report them.
    let sink = crate::procs::Sink::start(Duration::from_secs(8));
    let api_node = Node::start(&ns, "api,trigger").await;
    let (a, b) = (Node::start(&ns, "dispatcher").await, Node::start(&ns, "dispatcher").await);
    let api = Api::new(&api_node);
    api.ok("POST", "/v1/objects", Some(survey_object())).await;
    let hook = json!({"id": "slow", "object": "survey", "trigger": {"on_create": true},
        "request": {"method": "POST", "url": format!("{}/slow", sink.url), "body_template": "{}"},
        "settings": {"max_concurrency": 4, "timeout": "30s"}});
    api.ok("POST", "/v1/webhooks", Some(hook)).await;
    for n in 0..6 {
        put_survey(&api, &format!("L{n}"), json!({"status": "Open"})).await;
    }
    wait_until(WAIT, || async { sink.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 4 }).await;
    // Asked of the api node, which sends nothing itself: the dispatchers' reports, summed.
    let line = "hookline_cluster_in_flight{webhook=\"slow\"} 4";
    wait_until(WAIT, || async { api.call("GET", "/metrics", None).await.1.as_str().is_some_and(|m| m.contains(line)) })
        .await;
    for node in [a, b, api_node] {
        node.stop().await;
    }
}
