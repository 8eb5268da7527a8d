//! Hardening, tried from outside: templates under limits, URLs that record values cannot
//! steer, secrets that never show, write-backs that stay in scope and stop looping.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);

fn item_object() -> Value {
    json!({"name": "item", "fields": [
        {"key": "path", "type": "string"}, {"key": "host", "type": "string"},
        {"key": "a", "type": "string"}, {"key": "b", "type": "string"}, {"key": "n", "type": "number"}
    ]})
}

fn webhook(id: &str, url: &str, extra: Value) -> Value {
    let mut wh = json!({
        "id": id, "object": "item",
        "trigger": {"on_create": true, "on_update": true},
        "request": {"url": url},
        "settings": {"retries": 0, "timeout": "5s"}
    });
    for (k, v) in extra.as_object().unwrap() {
        if let (Some(base), Some(more)) = (wh[k].as_object_mut(), v.as_object()) {
            base.extend(more.clone());
        } else {
            wh[k] = v.clone();
        }
    }
    wh
}

async fn put(api: &Api, id: &str, fields: Value) {
    api.ok("POST", "/v1/objects/item/records", Some(json!({"id": id, "fields": fields}))).await;
}

/// Polls `check` every 50 ms until it gives a value; panics after `limit`.
async fn poll<T, F, Fut>(limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "condition not met within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn final_attempt(api: &Api, webhook: &str) -> Value {
    poll(WAIT, || async { api.attempts(webhook, "").await.into_iter().find(|a| a["outcome"] != "retrying") }).await
}

#[actix_rt::test]
async fn a_runaway_template_stops_at_its_limit_while_the_node_serves_on() {
    let ns = namespace();
    let tracker = Tracker::start();
    let node = Node::start(&ns, "all").await;
    let api = Api::new(&node);
    api.ok("POST", "/v1/objects", Some(item_object())).await;
    api.ok("POST", "/v1/objects", Some(json!({"name": "other", "fields": [{"key": "x", "type": "string"}]}))).await;
    // A loop that runs out whatever the record holds is refused at save, naming the limit.
    let loops = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
    let refused = webhook("slow", &format!("{}/slow", tracker.url), json!({"request": {"body_template": loops}}));
    let (status, v) = api.call("POST", "/v1/webhooks", Some(refused)).await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["error"]["field"], "request.body_template");
    assert!(v["error"]["message"].as_str().unwrap().contains("fuel"), "{v}");
    // One whose size comes from the record is stopped when it runs.
    let loops = "{% for i in range(record.n) %}{% for j in range(record.n) %}x{% endfor %}{% endfor %}";
    let mut slow = webhook("slow", &format!("{}/slow", tracker.url), json!({"request": {"body_template": loops}}));
    slow["settings"]["timeout"] = json!("2s");
    api.ok("POST", "/v1/webhooks", Some(slow)).await;
    let mut ordinary = webhook("ordinary", &format!("{}/ordinary", tracker.url), json!({}));
    ordinary["object"] = json!("other");
    api.ok("POST", "/v1/webhooks", Some(ordinary)).await;

    put(&api, "r1", json!({"n": 100000})).await;
    api.ok("POST", "/v1/objects/other/records", Some(json!({"id": "o1", "fields": {"x": "1"}}))).await;

    let attempt = final_attempt(&api, "slow").await;
    assert_eq!(attempt["outcome"], "failed", "{attempt}");
    eprintln!("the runaway template's attempt took {} ms", attempt["duration_ms"]);
    let error = attempt["error"].as_str().unwrap_or_default();
    assert!(error.contains("fuel") || error.contains("limit"), "{error}");
    wait_until(WAIT, || async { tracker.all().iter().any(|s| s.path == "/ordinary") }).await;
    assert!(tracker.all().iter().all(|s| s.path != "/slow"), "the runaway template sent nothing");
    let (status, _) = api.call("GET", "/healthz", None).await;
    assert_eq!(status, 200);
    api.ok("GET", "/v1/webhooks", None).await;
    node.stop().await;
}

#[actix_rt::test]
async fn record_values_are_encoded_into_the_url_and_cannot_change_its_host() {
    let ns = namespace();
    let tracker = Tracker::start();
    let node = Node::start(&ns, "all").await;
    let api = Api::new(&node);
    api.ok("POST", "/v1/objects", Some(item_object())).await;

    // A host from a record is refused at save, naming the opt-in.
    let port = tracker.url.rsplit(':').next().unwrap().to_string();
    let templated_host = format!("http://{{{{ record.host }}}}:{port}/h");
    let (status, v) = api.call("POST", "/v1/webhooks", Some(webhook("host", &templated_host, json!({})))).await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["error"]["field"], "request.url");
    assert!(v["error"]["message"].as_str().unwrap().contains("url_host_from_record"), "{v}");

    let url = format!("{}/p/{{{{ record.path }}}}?q={{{{ record.a }}}}", tracker.url);
    api.ok("POST", "/v1/webhooks", Some(webhook("enc", &url, json!({})))).await;
    put(&api, "r1", json!({"path": "x/../y?z#w", "a": "1&admin=true"})).await;
    let attempt = final_attempt(&api, "enc").await;
    assert_eq!(attempt["outcome"], "success", "{attempt}");
    let seen = tracker.all();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/p/x%2F..%2Fy%3Fz%23w");
    assert!(attempt["request"]["url"].as_str().unwrap().ends_with("?q=1%26admin%3Dtrue"), "{attempt}");

    // With the opt-in, a plain host name from the record is used; anything else is refused.
    let opted = webhook("opted", &templated_host, json!({"request": {"url_host_from_record": true}}));
    api.ok("POST", "/v1/webhooks", Some(opted)).await;
    api.ok("DELETE", "/v1/webhooks/enc", None).await;
    put(&api, "good", json!({"host": "127.0.0.1"})).await;
    wait_until(WAIT, || async { tracker.all().iter().any(|s| s.path == "/h") }).await;
    put(&api, "evil", json!({"host": "evil.example#"})).await;
    wait_until(WAIT, || async {
        api.attempts("opted", "").await.iter().any(|a| {
            a["record_ids"] == json!(["evil"])
                && a["outcome"] == "failed"
                && a["error"].as_str().is_some_and(|e| e.contains("host"))
        })
    })
    .await;
    assert_eq!(tracker.all().iter().filter(|s| s.path == "/h").count(), 1);
    node.stop().await;
}

#[actix_rt::test]
async fn secrets_never_show_in_definitions_attempts_or_echoes() {
    let ns = namespace();
    let tracker = Tracker::start();
    let node = Node::start_with(&ns, "all", |a| a.api_token = Some("api-t0ken".into())).await;
    let mut api = Api::new(&node);
    api.token = Some("api-t0ken".into());
    api.ok("POST", "/v1/objects", Some(item_object())).await;

    let header_script = "return {Authorization: 'Basic ' + btoa('batman:' + 'hunter22')};";
    let wh = webhook(
        "echo",
        &format!("{}/echo?api_key=q-s3cret-key&page=1", tracker.url),
        json!({
            "auth": {"type": "script", "script": header_script},
            "secrets": {"BODY_KEY": "b0dy-s3cret"},
            "request": {
                "body_script": "write(JSON.stringify({key: secrets.BODY_KEY, id: data.changedEntities[0].id}));",
                "headers_script": "return {'X-Extra': 'x-' + secrets.BODY_KEY};"
            }
        }),
    );
    api.ok("POST", "/v1/webhooks", Some(wh)).await;

    // The definition as read: script sources and secrets are `***`, and the Debug-free
    // JSON holds none of them; the source is shown to a token holder who asks for it.
    let shown = api.ok("GET", "/v1/webhooks/echo", None).await;
    assert_eq!(shown["auth"]["script"], "***");
    assert_eq!(shown["request"]["headers_script"], "***");
    assert_eq!(shown["secrets"]["BODY_KEY"], "***");
    let listed = api.ok("GET", "/v1/webhooks", None).await.to_string();
    assert!(!listed.contains("hunter22") && !listed.contains("b0dy-s3cret"), "{listed}");
    let revealed = api.ok("GET", "/v1/webhooks/echo?reveal=scripts", None).await;
    assert_eq!(revealed["auth"]["script"], header_script);
    assert_eq!(revealed["secrets"]["BODY_KEY"], "***");

    put(&api, "r1", json!({"a": "1"})).await;
    let attempt = final_attempt(&api, "echo").await;
    assert_eq!(attempt["outcome"], "success", "{attempt}");
    // The target saw the real values …
    let seen = tracker.all();
    assert_eq!(seen[0].header("x-extra"), Some("x-b0dy-s3cret"));
    assert!(seen[0].body.contains("b0dy-s3cret"));
    // … and echoed them back, but the attempt shows none of them.
    let recorded = attempt.to_string();
    let basic = "YmF0bWFuOmh1bnRlcjIy"; // base64("batman:hunter22")
    for secret in ["hunter22", basic, "b0dy-s3cret", "q-s3cret-key"] {
        assert!(!recorded.contains(secret), "{secret} in {recorded}");
    }
    assert!(attempt["request"]["url"].as_str().unwrap().contains("api_key=***&page=1"), "{attempt}");
    assert!(attempt["response"]["body"].as_str().unwrap().contains("***"), "{attempt}");

    // The dry run shows the rendered request, secrets masked.
    let dry = api.ok("POST", "/v1/webhooks/echo/test", Some(json!({"fields": {"a": "1"}}))).await;
    let dry_text = dry.to_string();
    assert!(dry["request"]["url"].as_str().unwrap().contains("/echo?api_key=***"), "{dry}");
    for secret in ["hunter22", basic, "b0dy-s3cret"] {
        assert!(!dry_text.contains(secret), "{secret} in {dry_text}");
    }

    // A PUT of what was read keeps the sealed values.
    let mut back = shown.clone();
    for k in ["version", "paused"] {
        back.as_object_mut().unwrap().remove(k);
    }
    api.ok("PUT", "/v1/webhooks/echo", Some(back)).await;
    let again = api.ok("GET", "/v1/webhooks/echo?reveal=scripts", None).await;
    assert_eq!(again["auth"]["script"], header_script);
    node.stop().await;
}

#[actix_rt::test]
async fn url_and_header_scripts_build_the_request() {
    let ns = namespace();
    let tracker = Tracker::start();
    let node = Node::start(&ns, "all").await;
    let api = Api::new(&node);
    api.ok("POST", "/v1/objects", Some(item_object())).await;
    let url_script = format!(
        "return '{}/by-script/' + encodeURIComponent(data.changedEntities[0].id) + '?n=' + data.changedEntities[0].n \
         + '&tenant=' + secrets.TENANT;",
        tracker.url
    );
    let wh = json!({
        "id": "scripted", "object": "item", "trigger": {"on_create": true},
        "request": {"url_script": url_script, "headers_script": "return {'X-Record': data.changedEntities[0].id};"},
        "secrets": {"TENANT": "t3nant-s3cret"},
        "settings": {"retries": 0}
    });
    // A URL script decides the host: only by choice.
    let (status, v) = api.call("POST", "/v1/webhooks", Some(wh.clone())).await;
    assert_eq!((status, v["error"]["field"].clone()), (422, json!("request.url_host_from_record")), "{v}");
    let mut wh = wh;
    wh["request"]["url_host_from_record"] = json!(true);
    api.ok("POST", "/v1/webhooks", Some(wh.clone())).await;
    let dry = api.ok("POST", "/v1/webhooks/scripted/test", Some(json!({"fields": {"n": 7}}))).await;
    assert!(dry["request"]["url"].as_str().unwrap().ends_with("/by-script/test?n=7&tenant=***"), "{dry}");

    put(&api, "a b", json!({"n": 3})).await;
    wait_until(WAIT, || async { tracker.count() == 1 }).await;
    let seen = &tracker.all()[0];
    assert_eq!(seen.path, "/by-script/a%20b");
    assert_eq!(seen.header("x-record"), Some("a b"));
    // The secret the URL carried is masked in the attempt, whatever the parameter's name.
    let attempt = final_attempt(&api, "scripted").await;
    assert!(attempt["request"]["url"].as_str().unwrap().ends_with("?n=3&tenant=***"), "{attempt}");
    assert!(!attempt.to_string().contains("t3nant-s3cret"), "{attempt}");

    // A URL script that returns no http(s) URL fails its attempt, naming why.
    let mut bad = wh;
    bad["id"] = json!("bad-url");
    bad["request"]["url_script"] = json!("return 'file:///etc/passwd';");
    bad["request"].as_object_mut().unwrap().remove("headers_script");
    api.ok("POST", "/v1/webhooks", Some(bad)).await;
    put(&api, "r2", json!({"n": 1})).await;
    let attempt = final_attempt(&api, "bad-url").await;
    assert_eq!(attempt["outcome"], "failed");
    assert!(attempt["error"].as_str().unwrap().contains("http or https"), "{attempt}");
    node.stop().await;
}

#[actix_rt::test]
async fn a_response_script_writes_only_its_own_records_and_loops_stop_at_the_hop_limit() {
    let ns = namespace();
    let tracker = Tracker::start();
    let node = Node::start(&ns, "all").await;
    let api = Api::new(&node);
    api.ok("POST", "/v1/objects", Some(item_object())).await;
    put(&api, "victim", json!({"a": "untouched"})).await;

    // Scope: a script naming another record is refused, unless the definition opts in.
    let reach = webhook(
        "reach",
        &format!("{}/reach", tracker.url),
        json!({"trigger": {"on_create": true, "on_update": false, "condition": "path = reach"},
               "response_script": "write(JSON.stringify({id: 'victim', a: 'overwritten'}));",
               "writeback": {"key": {"from": "id", "to": "id"}}}),
    );
    api.ok("POST", "/v1/webhooks", Some(reach.clone())).await;
    put(&api, "c1", json!({"path": "reach"})).await;
    let attempt = final_attempt(&api, "reach").await;
    wait_until(WAIT, || async {
        let a = api.attempts("reach", "").await;
        a.first().is_some_and(|a| a["writeback"]["status"] == "error")
    })
    .await;
    let a = &api.attempts("reach", "").await[0];
    assert!(a["writeback"]["error"].as_str().unwrap().contains("not a record of this job"), "{a} {attempt}");
    assert_eq!(api.record("item", "victim").await["fields"]["a"], "untouched");
    api.ok("DELETE", "/v1/webhooks/reach", None).await;

    // Loops: `ping` writes `b` when `a` changes, `pong` writes `a` when `b` changes.
    let bounce = |id: &str, watch: &str, write: &str| {
        webhook(
            id,
            &format!("{}/{id}", tracker.url),
            json!({"trigger": {"on_create": false, "on_update": true, "fields": [watch]},
                   "response_script": format!(
                       "var r = JSON.parse(http.getResponseBodyUtf8()); \
                        write(JSON.stringify({{id: data.changedEntities[0].id, {write}: r.ticketId}}));"),
                   "writeback": {"key": {"from": "id", "to": "id"}}}),
        )
    };
    api.ok("POST", "/v1/webhooks", Some(bounce("ping", "a", "b"))).await;
    api.ok("POST", "/v1/webhooks", Some(bounce("pong", "b", "a"))).await;
    put(&api, "loop", json!({"n": 1})).await;
    api.ok("PATCH", "/v1/objects/item/records/loop", Some(json!({"fields": {"a": "start"}}))).await;
    let noted = poll(WAIT, || async {
        for id in ["ping", "pong"] {
            let found = api
                .attempts(id, "")
                .await
                .into_iter()
                .find(|a| a["writeback"]["error"].as_str().is_some_and(|e| e.starts_with("hop limit")));
            if found.is_some() {
                return found;
            }
        }
        None
    })
    .await;
    assert_eq!(noted["writeback"]["status"], "done", "{noted}");
    // Eight calls (hops 0 to 7), then the chain stops: the limit is per originating change.
    let calls = || tracker.all().iter().filter(|s| s.path == "/ping" || s.path == "/pong").count();
    assert_eq!(calls(), 8);
    wait_until(WAIT, || async {
        let metrics = reqwest::get(format!("{}/metrics", node.url)).await.unwrap().text().await.unwrap();
        metrics.lines().any(|l| l.starts_with("hookline_writeback_hop_limit_total") && !l.ends_with(" 0"))
    })
    .await;
    assert_eq!(calls(), 8);
    node.stop().await;
}

#[actix_rt::test]
async fn a_schema_change_that_stored_records_do_not_fit_is_refused() {
    let ns = namespace();
    let node = Node::start(&ns, "api").await;
    let api = Api::new(&node);
    api.ok("POST", "/v1/objects", Some(item_object())).await;
    put(&api, "r1", json!({"a": "text", "n": 2})).await;

    let mut retyped = item_object();
    retyped["fields"][2]["type"] = json!("number");
    let (status, v) = api.call("PUT", "/v1/objects/item", Some(retyped)).await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["error"]["field"], "fields[2].type");
    assert!(v["error"]["message"].as_str().unwrap().contains("record `r1`"), "{v}");

    let mut removed = item_object();
    removed["fields"].as_array_mut().unwrap().remove(4);
    let (status, v) = api.call("PUT", "/v1/objects/item", Some(removed)).await;
    assert_eq!(status, 409, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("`n` cannot be removed"), "{v}");

    // Nothing changed; adding a field, or a field no record uses, is fine.
    assert_eq!(api.ok("GET", "/v1/objects/item", None).await["fields"][2]["type"], "string");
    let with_extra = || Some(json!({"id": "r2", "fields": {"extra": 7}}));
    let (status, v) = api.call("POST", "/v1/objects/item/records", with_extra()).await;
    assert_eq!((status, v["error"]["field"].as_str()), (422, Some("fields.extra")), "{v}");
    let mut added = item_object();
    added["fields"].as_array_mut().unwrap().push(json!({"key": "extra", "type": "number"}));
    added["fields"][1]["type"] = json!("number"); // `host`: no record holds one
    api.ok("PUT", "/v1/objects/item", Some(added)).await;
    // Writes check against the new definition at once.
    api.ok("POST", "/v1/objects/item/records", with_extra()).await;
    let (status, v) =
        api.call("POST", "/v1/objects/item/records", Some(json!({"id": "r3", "fields": {"host": "text"}}))).await;
    assert_eq!((status, v["error"]["field"].as_str()), (422, Some("fields.host")), "{v}");
    node.stop().await;
}
