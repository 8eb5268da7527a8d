//! The bad-input corpus: every case is refused with its status, error code and the field
//! (or position) at fault; nothing is written, and the node serves on.

use serde_json::{Value, json};

use crate::support::*;
use hookline::demo::survey_object;

/// What a case sends.
enum Body {
    None,
    Json(Value),
    Raw(&'static str),
}

struct Case {
    method: &'static str,
    path: String,
    body: Body,
    status: u16,
    code: &'static str,
    /// The error's `field`, or (prefixed `~`) text its message must hold.
    at: String,
}

fn case(method: &'static str, path: &str, body: Body, status: u16, code: &'static str, at: &str) -> Case {
    Case { method, path: path.to_string(), body, status, code, at: at.to_string() }
}

/// A valid webhook for the survey object, with `change` merged into it (one level deep).
fn hook(tracker: &str, change: Value) -> Value {
    let mut wh = json!({
        "id": "corpus-new", "object": "survey",
        "trigger": {"on_update": true, "fields": ["Status"], "condition": "Status = Completed"},
        "request": {"url": format!("{tracker}/x")},
        "settings": {"retries": 1}
    });
    for (k, v) in change.as_object().unwrap() {
        match (wh.get_mut(k).and_then(Value::as_object_mut), v.as_object()) {
            (Some(base), Some(more)) => base.extend(more.clone()),
            _ => wh[k] = v.clone(),
        }
    }
    wh
}

fn cases(tracker: &str) -> Vec<Case> {
    use Body::*;
    let records = "/v1/objects/survey/records";
    let mut out = Vec::new();
    let mut record = |fields: Value, status: u16, code: &'static str, at: &str| {
        out.push(case("POST", records, Json(json!({"fields": fields})), status, code, at));
    };
    // Records.
    record(json!({"a_surveyid": "X", "k_bp_main_score_scale": "high"}), 422, "invalid", "fields.k_bp_main_score_scale");
    record(json!({"a_surveyid": "X", "nope": 1}), 422, "invalid", "fields.nope");
    record(json!({"status": "Open"}), 422, "invalid", "fields.a_surveyid");
    record(json!({"a_surveyid": "X", "status": 5}), 422, "invalid", "fields.status");
    record(json!({"a_surveyid": "X", "status": true}), 422, "invalid", "fields.status");
    record(json!({"a_surveyid": "X", "status": ["a"]}), 422, "invalid", "fields.status");
    record(
        json!({"a_surveyid": "X", "transactional_satisfaction": "0"}),
        422,
        "invalid",
        "fields.transactional_satisfaction",
    );
    record(json!({"a_surveyid": "X", "ticketSystemSynced": {"n": 1}}), 422, "invalid", "fields.ticketSystemSynced");
    record(json!({"a_surveyid": 7.5, "status": "Open"}), 422, "invalid", "~");
    let mut out = out;
    out.push(case("POST", records, Json(json!({"id": "Y", "fields": {"a_surveyid": "X"}})), 422, "invalid", "id"));
    out.push(case("POST", records, Json(json!({"id": {"a": 1}, "fields": {}})), 422, "invalid", "id"));
    out.push(case("POST", records, Json(json!({"fields": [1, 2]})), 400, "bad_json", "fields"));
    out.push(case("POST", records, Json(json!({"fields": "x"})), 400, "bad_json", "fields"));
    out.push(case("POST", records, Json(json!({"felds": {}})), 400, "bad_json", "~felds"));
    out.push(case("POST", records, Json(json!({})), 400, "bad_json", "~fields"));
    out.push(case("POST", records, Json(json!(5)), 400, "bad_json", "~"));
    out.push(case(
        "POST",
        records,
        Json(json!([{"fields": {"a_surveyid": "X"}}, {"fields": {"a_surveyid": "X2", "status": 1}}])),
        422,
        "invalid",
        "[1].fields.status",
    ));
    out.push(case(
        "POST",
        records,
        Json(json!([{"fields": {"a_surveyid": "X"}}, {"fields": 3}])),
        400,
        "bad_json",
        "[1].fields",
    ));
    out.push(case("POST", records, Raw("{\"fields\": {"), 400, "bad_json", "~column"));
    out.push(case("POST", records, Raw("not json"), 400, "bad_json", "~column"));
    out.push(case("POST", records, Raw(""), 400, "bad_json", "~"));
    out.push(case("POST", records, Raw("{\"fields\": {}} trailing"), 400, "bad_json", "~trailing"));
    out.push(case(
        "PATCH",
        "/v1/objects/survey/records/missing",
        Json(json!({"fields": {"status": "Open"}})),
        404,
        "not_found",
        "~missing",
    ));
    out.push(case(
        "PATCH",
        "/v1/objects/survey/records/X",
        Json(json!({"fields": {"status": 1}})),
        422,
        "invalid",
        "fields.status",
    ));
    out.push(case("PATCH", "/v1/objects/survey/records/X", Json(json!({"status": "x"})), 400, "bad_json", "~status"));
    out.push(case("POST", "/v1/objects/nothing/records", Json(json!({"fields": {}})), 404, "not_found", "~nothing"));
    out.push(case("GET", "/v1/objects/nothing/records/X", None, 404, "not_found", "~"));

    // Objects.
    let object =
        |v: Value, status: u16, code: &'static str, at: &str| case("POST", "/v1/objects", Json(v), status, code, at);
    out.push(object(json!({"name": "x", "fields": [{"key": "a", "type": "text"}]}), 400, "bad_json", "fields[0].type"));
    out.push(object(json!({"name": "x", "fields": []}), 422, "invalid", "fields"));
    out.push(object(json!({"name": "", "fields": [{"key": "a", "type": "string"}]}), 422, "invalid", "name"));
    out.push(object(json!({"name": "a b", "fields": [{"key": "a", "type": "string"}]}), 422, "invalid", "name"));
    out.push(object(
        json!({"name": "x", "fields": [{"key": "a", "type": "string"}, {"key": "a", "type": "number"}]}),
        422,
        "invalid",
        "fields[1].key",
    ));
    out.push(object(json!({"name": "x", "fields": [{"key": "", "type": "string"}]}), 422, "invalid", "fields[0].key"));
    out.push(object(
        json!({"name": "x", "fields": [{"key": "a", "type": "string"}], "id_field": "b"}),
        422,
        "invalid",
        "id_field",
    ));
    out.push(object(json!({"name": "x", "fields": [{"type": "string"}]}), 400, "bad_json", "~key"));
    out.push(object(json!({"name": "x", "fields": [1, 2]}), 400, "bad_json", "fields[0]"));
    out.push(object(json!({"name": 5, "fields": []}), 400, "bad_json", "name"));
    out.push(object(json!({"fields": [{"key": "a", "type": "string"}]}), 400, "bad_json", "~name"));
    out.push(object(
        json!({"name": "x", "fields": [{"key": "a", "type": "string"}], "extra": 1}),
        400,
        "bad_json",
        "~extra",
    ));
    let mut retyped = survey_object();
    retyped["fields"][1]["type"] = json!("number");
    out.push(case("PUT", "/v1/objects/survey", Json(retyped), 409, "in_use", "fields[1].type"));
    let mut removed = survey_object();
    removed["fields"].as_array_mut().unwrap().remove(3);
    out.push(case("PUT", "/v1/objects/survey", Json(removed), 409, "in_use", "fields"));
    out.push(case("PUT", "/v1/objects/other", Json(survey_object()), 422, "invalid", "name"));

    // Webhooks: shape, trigger, request, auth, settings, scripts, templates.
    let wh = |change: Value, status: u16, code: &'static str, at: &str| {
        case("POST", "/v1/webhooks", Json(hook(tracker, change)), status, code, at)
    };
    let t = tracker;
    let bad_defs: Vec<(Value, u16, &str, &str)> = vec![
        (json!({"id": ""}), 422, "invalid", "id"),
        (json!({"id": "a/b"}), 422, "invalid", "id"),
        (json!({"object": "nope"}), 422, "invalid", "object"),
        (json!({"trigger": {"on_update": false}}), 422, "invalid", "trigger"),
        (json!({"trigger": {"fields": [1, 2]}}), 400, "bad_json", "trigger.fields[0]"),
        (json!({"trigger": {"fields": "Status"}}), 400, "bad_json", "trigger.fields"),
        (json!({"trigger": {"fields": ["Stat"]}}), 422, "invalid", "trigger.fields[0]"),
        (json!({"trigger": {"on_update": "yes"}}), 400, "bad_json", "trigger.on_update"),
        (json!({"trigger": {"bogus": 1}}), 400, "bad_json", "~bogus"),
        (json!({"request": {"url": "ftp://example.com/x"}}), 422, "invalid", "request.url"),
        (json!({"request": {"url": "example.com/x"}}), 422, "invalid", "request.url"),
        (json!({"request": {"url": "http://"}}), 422, "invalid", "request.url"),
        (json!({"request": {"url": "file:///etc/passwd"}}), 422, "invalid", "request.url"),
        (json!({"request": {"url": "http://user:pass@127.0.0.1/"}}), 422, "invalid", "request.url"),
        (json!({"request": {"url": "https://{{ record.status }}.example.com/"}}), 422, "invalid", "request.url"),
        (json!({"request": {"url": "{{ record.url }}"}}), 422, "invalid", "request.url"),
        (json!({"request": {"url": "http://127.0.0.1:99999/"}}), 422, "invalid", "request.url"),
        (json!({"request": {"url": ""}}), 422, "invalid", "request.url"),
        (json!({"request": {"url": 5}}), 400, "bad_json", "request.url"),
        (json!({"request": {"url": format!("{t}/{{{{ record.status")}}), 422, "invalid", "request.url"),
        (
            json!({"request": {"url": format!("{t}/x"), "url_script": "return 'x';"}}),
            422,
            "invalid",
            "request.url_script",
        ),
        (json!({"request": {"url": "", "url_script": "return ("}}), 422, "invalid", "request.url_host_from_record"),
        (
            json!({"request": {"url": "", "url_script": "return (", "url_host_from_record": true}}),
            422,
            "invalid",
            "request.url_script",
        ),
        (json!({"secrets": {"K": "***"}}), 422, "invalid", "secrets.K"),
        (json!({"secrets": {"__proto__": "v"}}), 422, "invalid", "secrets.__proto__"),
        (json!({"auth": {"type": "token", "value": "***"}}), 422, "invalid", "auth.value"),
        (json!({"signing": {"secrets": ["***"]}}), 422, "invalid", "signing.secrets[0]"),
        (
            json!({"request": {"url": format!("{t}/x"), "headers_script": "***"}}),
            422,
            "invalid",
            "request.headers_script",
        ),
        (json!({"request": {"url": "http://[::1]junk/"}}), 422, "invalid", "request.url"),
        (json!({"request": {"url": format!("{t}:{{{{ record.port }}}}/")}}), 422, "invalid", "request.url"),
        (
            json!({"response_script": "write('{}')", "writeback": {"object": "other", "key": {"from": "a", "to": "id"}}}),
            422,
            "invalid",
            "writeback.any_record",
        ),
        (json!({"request": {"url": format!("{t}/x"), "method": "BREW"}}), 422, "invalid", "request.method"),
        (
            json!({"request": {"url": format!("{t}/x"), "headers": {"X-A": "a\r\nX-B: b"}}}),
            422,
            "invalid",
            "request.headers.X-A",
        ),
        (
            json!({"request": {"url": format!("{t}/x"), "headers": {"X-A": "a\nb"}}}),
            422,
            "invalid",
            "request.headers.X-A",
        ),
        (
            json!({"request": {"url": format!("{t}/x"), "headers": {"Bad Name": "v"}}}),
            422,
            "invalid",
            "request.headers.Bad Name",
        ),
        (
            json!({"request": {"url": format!("{t}/x"), "headers": {"X-A": "{{ oops"}}}),
            422,
            "invalid",
            "request.headers.X-A",
        ),
        (json!({"request": {"url": format!("{t}/x"), "headers": {"X-A": 5}}}), 400, "bad_json", "request.headers.X-A"),
        (json!({"request": {"url": format!("{t}/x"), "body": "a", "body_template": "b"}}), 422, "invalid", "request"),
        (
            json!({"request": {"url": format!("{t}/x"), "body_template": "{% for %}"}}),
            422,
            "invalid",
            "request.body_template",
        ),
        (
            json!({"request": {"url": format!("{t}/x"), "body_template": "{% if %}x{% endif %}"}}),
            422,
            "invalid",
            "request.body_template",
        ),
        (json!({"request": {"url": format!("{t}/x"), "body_script": "write("}}), 422, "invalid", "request.body_script"),
        (
            json!({"request": {"url": format!("{t}/x"), "body_script": "}) ; (function(){"}}),
            422,
            "invalid",
            "request.body_script",
        ),
        (
            json!({"request": {"url": format!("{t}/x"), "body_script": "x".repeat(300 * 1024)}}),
            422,
            "invalid",
            "request.body_script",
        ),
        (
            json!({"request": {"url": format!("{t}/x"), "headers_script": "return {"}}),
            422,
            "invalid",
            "request.headers_script",
        ),
        (json!({"response_script": "write(1"}), 422, "invalid", "response_script"),
        (
            json!({"request": {"url": format!("{t}/x"), "body_template": "x".repeat(300 * 1024)}}),
            422,
            "invalid",
            "request.body_template",
        ),
        (json!({"request": {"url": format!("{t}/{}", "x".repeat(9000))}}), 422, "invalid", "request.url"),
        (
            json!({"request": {"url": format!("{t}/x"), "headers": {"X-A": "v".repeat(9000)}}}),
            422,
            "invalid",
            "request.headers.X-A",
        ),
        (
            json!({"trigger": {"condition": format!("Status = '{}'", "x".repeat(20_000))}}),
            422,
            "invalid",
            "trigger.condition",
        ),
        (json!({"writeback": {"key": {"from": "a", "to": "a_surveyid"}}}), 422, "invalid", "writeback"),
        (
            json!({"response_script": "write('{}')", "writeback": {"key": {"from": "", "to": "a_surveyid"}}}),
            422,
            "invalid",
            "writeback.key.from",
        ),
        (
            json!({"response_script": "write('{}')", "writeback": {"key": {"from": "a", "to": "status"}}}),
            422,
            "invalid",
            "writeback.key.to",
        ),
        (
            json!({"response_script": "write('{}')", "writeback": {"key": {"from": "a", "to": "a_surveyid"}, "fields": {"x": "nope"}}}),
            422,
            "invalid",
            "writeback.fields.x",
        ),
        (
            json!({"response_script": "write('{}')", "writeback": {"object": "nope", "key": {"from": "a", "to": "id"}}}),
            422,
            "invalid",
            "writeback.object",
        ),
        (json!({"response_script": "write('{}')", "writeback": {"key": {"from": "a"}}}), 400, "bad_json", "~to"),
        // Conditions.
        (json!({"trigger": {"condition": "Sttus = Open"}}), 422, "invalid", "~column 1"),
        (json!({"trigger": {"condition": "Status > 5"}}), 422, "invalid", "~column 10"),
        (json!({"trigger": {"condition": "Status = "}}), 422, "invalid", "~column 9"),
        (json!({"trigger": {"condition": "(Status = Open"}}), 422, "invalid", "~unclosed parenthesis"),
        (json!({"trigger": {"condition": "Status = Open)"}}), 422, "invalid", "~column 14"),
        (json!({"trigger": {"condition": "Transactional Satisfaction = abc"}}), 422, "invalid", "~column 30"),
        (json!({"trigger": {"condition": "Status = 'open"}}), 422, "invalid", "~unclosed string"),
        (json!({"trigger": {"condition": "Status in ()"}}), 422, "invalid", "~column 12"),
        (json!({"trigger": {"condition": "Status contains"}}), 422, "invalid", "trigger.condition"),
        (json!({"trigger": {"condition": "Transactional Satisfaction contains 5"}}), 422, "invalid", "~contains"),
        (json!({"trigger": {"condition": "changed(Foo)"}}), 422, "invalid", "~column 9"),
        (json!({"trigger": {"condition": "old. = 1"}}), 422, "invalid", "~column 6"),
        (json!({"trigger": {"condition": "Status = Open and"}}), 422, "invalid", "~column 18"),
        (json!({"trigger": {"condition": "(".repeat(500)}}), 422, "invalid", "trigger.condition"),
        (json!({"trigger": {"condition": 5}}), 400, "bad_json", "trigger.condition"),
        // Cron schedules.
        (json!({"trigger": {"schedule": "*/15 * * * *"}}), 422, "invalid", "trigger.schedule"),
        (json!({"trigger": {"schedule": "61 * * * * *"}}), 422, "invalid", "trigger.schedule"),
        (json!({"trigger": {"schedule": "not cron"}}), 422, "invalid", "trigger.schedule"),
        (json!({"trigger": {"schedule": "0 0 0 1 1 * 2001"}}), 422, "invalid", "trigger.schedule"),
        (
            json!({"trigger": {"schedule": "0 * * * * *", "time_zone": "Mars/Olympus"}}),
            422,
            "invalid",
            "trigger.time_zone",
        ),
        (json!({"trigger": {"time_zone": "UTC"}}), 422, "invalid", "trigger.time_zone"),
        (json!({"trigger": {"select": "all"}}), 422, "invalid", "trigger.select"),
        (json!({"trigger": {"schedule": "0 * * * * *", "select": "some"}}), 400, "bad_json", "trigger.select"),
        // Auth.
        (json!({"auth": {"type": "magic"}}), 400, "bad_json", "~magic"),
        (json!({"auth": {"type": "basic", "username": "a:b", "password": "p"}}), 422, "invalid", "auth.username"),
        (json!({"auth": {"type": "basic", "username": "a"}}), 400, "bad_json", "~password"),
        (json!({"auth": {"type": "token", "header": "Bad Header", "value": "v"}}), 422, "invalid", "auth.header"),
        (json!({"auth": {"type": "token", "value": ""}}), 422, "invalid", "auth.value"),
        (json!({"auth": {"type": "script", "script": "return {"}}), 422, "invalid", "auth.script"),
        (
            json!({"auth": {"type": "oauth2", "token_url": "ftp://idp/t", "client_id": "c", "client_secret": "s"}}),
            422,
            "invalid",
            "auth.token_url",
        ),
        (
            json!({"auth": {"type": "oauth2", "token_url": "https://u:p@idp/t", "client_id": "c", "client_secret": "s"}}),
            422,
            "invalid",
            "auth.token_url",
        ),
        (
            json!({"auth": {"type": "oauth2", "token_url": "https://idp/{{ x }}", "client_id": "c", "client_secret": "s"}}),
            422,
            "invalid",
            "auth.token_url",
        ),
        (
            json!({"auth": {"type": "oauth2", "token_url": "https://idp/t", "client_id": "", "client_secret": "s"}}),
            422,
            "invalid",
            "auth.client_id",
        ),
        (
            json!({"auth": {"type": "oauth2", "token_url": "https://idp/t", "client_id": "c", "client_secret": ""}}),
            422,
            "invalid",
            "auth.client_secret",
        ),
        (
            json!({"auth": {"type": "oauth2", "token_url": "https://idp/t", "client_id": "c", "client_secret": "s", "credentials_in": "url"}}),
            400,
            "bad_json",
            "~url",
        ),
        (json!({"signing": {"secrets": []}}), 422, "invalid", "signing.secrets"),
        (json!({"signing": {"secrets": ["nope"]}}), 422, "invalid", "signing.secrets[0]"),
        (json!({"secrets": {"1x": "v"}}), 422, "invalid", "secrets.1x"),
        (json!({"secrets": {"K": 5}}), 400, "bad_json", "secrets.K"),
        // Settings.
        (json!({"settings": {"max_concurrency": 0}}), 422, "invalid", "settings.max_concurrency"),
        (json!({"settings": {"max_concurrency": 5000}}), 422, "invalid", "settings.max_concurrency"),
        (json!({"settings": {"max_batch_size": 0}}), 422, "invalid", "settings.max_batch_size"),
        (json!({"settings": {"max_batch_size": 5000}}), 422, "invalid", "settings.max_batch_size"),
        (json!({"settings": {"batch_linger_ms": 100000}}), 422, "invalid", "settings.batch_linger_ms"),
        (json!({"settings": {"rate_limit": "fast"}}), 422, "invalid", "settings.rate_limit"),
        (json!({"settings": {"rate_limit": "0/s"}}), 422, "invalid", "settings.rate_limit"),
        (json!({"settings": {"retries": 1000}}), 422, "invalid", "settings.retries"),
        (json!({"settings": {"retries": -1}}), 400, "bad_json", "settings.retries"),
        (json!({"settings": {"retry_wait": "soon"}}), 400, "bad_json", "settings.retry_wait"),
        (json!({"settings": {"retry_wait": "2d"}}), 422, "invalid", "settings.retry_wait"),
        (json!({"settings": {"timeout": "1ms"}}), 422, "invalid", "settings.timeout"),
        (json!({"settings": {"timeout": "1h"}}), 422, "invalid", "settings.timeout"),
        (json!({"settings": {"backoff": "random"}}), 400, "bad_json", "settings.backoff"),
        (json!({"settings": {"retriez": 1}}), 400, "bad_json", "~retriez"),
        (json!({"settings": {"retry_wait": "20s", "max_retry_wait": "1s"}}), 422, "invalid", "settings.max_retry_wait"),
    ];
    out.extend(bad_defs.into_iter().map(|(change, status, code, at)| wh(change, status, code, at)));
    out.push(case("POST", "/v1/webhooks", Raw("{\"id\": "), 400, "bad_json", "~column"));
    out.push(case("POST", "/v1/webhooks", Json(json!([])), 400, "bad_json", "~"));
    out.push(case(
        "POST",
        "/v1/webhooks",
        Json(hook(tracker, json!({"id": "corpus-existing"}))),
        409,
        "conflict",
        "~exists",
    ));
    out.push(case("PUT", "/v1/webhooks/other-id", Json(hook(tracker, json!({}))), 422, "invalid", "id"));
    out.push(case("GET", "/v1/webhooks/nope", None, 404, "not_found", "~nope"));
    out.push(case("GET", "/v1/webhooks/corpus-existing?reveal=everything", None, 422, "invalid", "reveal"));
    out.push(case("GET", "/v1/webhooks/corpus-existing?reveal=scripts", None, 422, "invalid", "reveal"));
    out.push(case("POST", "/v1/webhooks/corpus-existing/test", Json(json!({})), 422, "invalid", "record_id"));
    out.push(case(
        "POST",
        "/v1/webhooks/corpus-existing/test",
        Json(json!({"record_id": "nope"})),
        404,
        "not_found",
        "~nope",
    ));
    out.push(case("POST", "/v1/webhooks/corpus-existing/test", Json(json!({"fields": 5})), 400, "bad_json", "fields"));
    // Query parameters.
    let attempts = "/v1/webhooks/corpus-existing/attempts";
    out.push(case("GET", &format!("{attempts}?outcome=bogus"), None, 422, "invalid", "outcome"));
    out.push(case("GET", &format!("{attempts}?since=yesterday"), None, 422, "invalid", "since"));
    out.push(case("GET", &format!("{attempts}?limit=0"), None, 422, "invalid", "limit"));
    out.push(case("GET", &format!("{attempts}?limit=abc"), None, 422, "invalid", "query"));
    out.push(case("GET", &format!("{attempts}?limit=99999999"), None, 422, "invalid", "limit"));
    out.push(case("GET", &format!("{attempts}?bogus=1"), None, 422, "invalid", "bogus"));
    out.push(case("GET", "/v1/webhooks/nope/attempts", None, 404, "not_found", "~nope"));
    out.push(case("GET", "/v1/nothing-here", None, 404, "not_found", "~route"));
    out
}

/// What the node holds that a refused request must not change.
async fn snapshot(api: &Api) -> Value {
    let (_, x) = api.call("GET", "/v1/objects/survey/records/X", None).await;
    json!({
        "objects": api.ok("GET", "/v1/objects", None).await,
        "webhooks": api.ok("GET", "/v1/webhooks", None).await,
        "X": x,
        "X2": api.call("GET", "/v1/objects/survey/records/X2", None).await.1,
        "R": api.record("survey", "R").await,
    })
}

#[actix_rt::test]
async fn every_bad_input_is_refused_with_its_field_and_changes_nothing() {
    let ns = namespace();
    let tracker = Tracker::start();
    let node = Node::start(&ns, "api").await;
    let api = Api::new(&node);
    api.ok("POST", "/v1/objects", Some(survey_object())).await;
    api.ok("POST", "/v1/objects", Some(json!({"name": "other", "fields": [{"key": "a", "type": "string"}]}))).await;
    api.ok(
        "POST",
        "/v1/objects/survey/records",
        Some(json!({"fields": {"a_surveyid": "R", "status": "Open", "e_email": "r@example.com"}})),
    )
    .await;
    api.ok("POST", "/v1/webhooks", Some(hook(&tracker.url, json!({"id": "corpus-existing"})))).await;

    let all = cases(&tracker.url);
    assert!(all.len() >= 100, "the corpus has {} cases", all.len());
    eprintln!("the bad-input corpus has {} cases (and 6 NDJSON lines)", all.len());
    let before = snapshot(&api).await;
    let client = reqwest::Client::new();
    let mut failures = Vec::new();
    for c in &all {
        let url = format!("{}{}", node.url, c.path);
        let req = client.request(c.method.parse().unwrap(), &url);
        let req = match &c.body {
            Body::None => req,
            Body::Json(v) => req.json(v),
            Body::Raw(text) => req.header("content-type", "application/json").body(*text),
        };
        let what = format!(
            "{} {} {}",
            c.method,
            c.path,
            match &c.body {
                Body::Json(v) => v.to_string().chars().take(200).collect::<String>(),
                Body::Raw(t) => t.to_string(),
                Body::None => String::new(),
            }
        );
        let resp = req.send().await.expect("the node answers");
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        let message = v["error"]["message"].as_str().unwrap_or_default();
        let at_fault = match c.at.strip_prefix('~') {
            Some(text) => message.contains(text),
            None => v["error"]["field"] == c.at.as_str(),
        };
        if status != c.status || v["error"]["code"] != c.code || message.is_empty() || !at_fault {
            failures.push(format!("{what}\n  wanted {} {} {:?}, got {status} {v}", c.status, c.code, c.at));
        }
        assert_eq!(snapshot(&api).await, before, "{what} changed what the node holds");
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), all.len(), failures.join("\n"));
    // NDJSON: each bad line is rejected with its line and field; the good ones are written.
    let lines = [
        r#"{"fields": {"a_surveyid": "N1", "status": "Open"}}"#,
        r#"{"fields": {"a_surveyid": "N2", "status": 5}}"#,
        r#"{"fields": [1]}"#,
        r#"not json"#,
        r#"{"fields": {"status": "x"}}"#,
        r#"{"fields": {"a_surveyid": "N3", "nope": 1}}"#,
    ];
    let out = api.ndjson("POST", "/v1/objects/survey/records", Some(lines.join("\n"))).await;
    let field = |i: usize| out[i]["error"]["field"].clone();
    assert_eq!(out[0]["status"], "created");
    assert_eq!((out[1]["status"].clone(), field(1)), (json!("rejected"), json!("fields.status")));
    assert_eq!((out[2]["status"].clone(), field(2)), (json!("rejected"), json!("fields")));
    assert_eq!((out[3]["status"].clone(), out[3]["line"].clone()), (json!("rejected"), json!(4)));
    assert_eq!(field(4), json!("fields.a_surveyid"));
    assert_eq!(field(5), json!("fields.nope"));
    for id in ["N2", "N3"] {
        let (status, _) = api.call("GET", &format!("/v1/objects/survey/records/{id}"), None).await;
        assert_eq!(status, 404, "{id} was not written");
    }
    let (status, _) = api.call("GET", "/healthz", None).await;
    assert_eq!(status, 200);
    let (status, _) = api.call("GET", "/readyz", None).await;
    assert_eq!(status, 200);
    node.stop().await;
}
