//! Tests of the pool against the product document's seed scripts and the sandbox limits.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::{PoolConfig, ResponseView, ScriptCall, ScriptError, ScriptKind, ScriptOutput, ScriptPool, check_syntax};

const HEADER_SCRIPT: &str = include_str!("../../../testdata/seed/header_script.js");
const BODY_SCRIPT: &str = include_str!("../../../testdata/seed/body_script.js");
const RESPONSE_SCRIPT: &str = include_str!("../../../testdata/seed/response_script.js");

fn pool_with(threads: usize, f: impl FnOnce(&mut PoolConfig)) -> ScriptPool {
    let mut config = PoolConfig { threads, ..PoolConfig::default() };
    f(&mut config);
    ScriptPool::new(config)
}

fn pool() -> ScriptPool {
    pool_with(1, |_| {})
}

fn written(result: Result<ScriptOutput, ScriptError>) -> String {
    match result {
        Ok(ScriptOutput::Written(text)) => text,
        other => panic!("expected written output, got {other:?}"),
    }
}

fn corrected_body() -> String {
    let fixed = BODY_SCRIPT.replace("getPayload(record[0])", "getPayload(records[0])");
    assert_ne!(fixed, BODY_SCRIPT, "the seed body script changed");
    fixed
}

fn body(source: &str, entities: serde_json::Value) -> ScriptCall {
    ScriptCall::new(ScriptKind::Body, source, entities)
}

fn survey_record() -> serde_json::Value {
    json!([{ "a_surveyid": 12345, "e_email": "jane@example.com", "k_bp_main_score_scale": 9 }])
}

#[tokio::test]
async fn seed_header_script_builds_basic_auth() {
    let out = pool().run(ScriptCall::new(ScriptKind::Header, HEADER_SCRIPT, json!([]))).await;
    assert_eq!(out, Ok(ScriptOutput::Headers(vec![("Authorization".to_owned(), "Basic YmF0bWFuOnJvYmlu".to_owned())])));
}

#[tokio::test]
async fn corrected_seed_body_script_builds_the_ticket() {
    let source = corrected_body();
    let out = written(pool().run(body(&source, survey_record())).await);
    let expected = r#"{"fields":{"project":{"key":"PRJ"},"summary":"[Medallia] Issue from customer feedback","description":"A customer has provided feedback.\n\nLikelihood to recommend: 9\nEmail: jane@example.com\n\nPlease contact this customer within 2 days and log the outcome in this issue.","issuetype":{"name":"Task"}}}"#;
    assert_eq!(out, expected);
}

#[tokio::test]
async fn seed_body_script_as_printed_names_record_and_its_line() {
    let line = BODY_SCRIPT
        .lines()
        .position(|l| l.contains("getPayload(record[0])"))
        .map(|i| i as u32 + 1)
        .expect("seed line present");
    assert_eq!(line, 31);
    let err = pool().run(body(BODY_SCRIPT, survey_record())).await.expect_err("the printed body script has a bug");
    assert_eq!(
        err,
        ScriptError::Runtime { message: "ReferenceError: record is not defined".to_owned(), line: Some(line) }
    );
    let text = err.to_string();
    assert!(text.contains("record") && text.contains(&format!("line {line}")), "{text}");
}

fn response_call(response: Option<ResponseView>) -> ScriptCall {
    let request = corrected_request_body();
    let mut call = ScriptCall::new(ScriptKind::Response, RESPONSE_SCRIPT, survey_record()).with_request_body(request);
    call.response = response;
    call
}

fn corrected_request_body() -> String {
    r#"{"fields":{"project":{"key":"PRJ"}}}"#.to_owned()
}

#[tokio::test]
async fn seed_response_script_success_branch() {
    let response = ResponseView {
        status: 200,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: r#"{"ticketId":"IT-1"}"#.into(),
    };
    let out = written(pool().run(response_call(Some(response))).await);
    assert_eq!(
        out,
        r#"{"medalliaRecordId":12345,"ticketSystemSynced":1,"ticketSystemSyncStatusCode":200,"ticketSystemRecordId":"IT-1"}"#
    );
}

#[tokio::test]
async fn seed_response_script_without_response_takes_the_failure_branch() {
    let out = written(pool().run(response_call(None)).await);
    assert_eq!(out, r#"{"medalliaRecordId":12345,"ticketSystemSynced":2,"ticketSystemSyncStatusCode":0}"#);
}

#[tokio::test]
async fn seed_response_script_error_branch_reports_the_message() {
    let response = ResponseView { status: 500, headers: vec![], body: r#"{"errorMessage":"boom"}"#.into() };
    let out = written(pool().run(response_call(Some(response))).await);
    assert_eq!(
        out,
        r#"{"medalliaRecordId":12345,"ticketSystemSynced":2,"ticketSystemSyncStatusCode":500,"ticketSystemSyncError":"boom"}"#
    );
}

#[tokio::test]
async fn http_accessors() {
    let source = r#"
        write(JSON.stringify([
            http.getResponseHeader("content-type"),
            http.getResponseHeader("X-MISSING"),
            http.getResponseHeader("set-cookie"),
            http.getResponseHeaders(),
            http.getResponseStatusCode(),
            typeof http.getResponseStatusCode(),
            http.getRequestBodyUtf8(),
            http.getResponseBodyUtf8()
        ]));"#;
    let call =
        ScriptCall::new(ScriptKind::Response, source, json!([])).with_request_body("req").with_response(ResponseView {
            status: 201,
            headers: vec![
                ("Content-Type".into(), "text/plain".into()),
                ("Set-Cookie".into(), "a=1".into()),
                ("set-cookie".into(), "b=2".into()),
            ],
            body: "resp".into(),
        });
    let out = written(pool().run(call).await);
    assert_eq!(
        out,
        r#"["text/plain",null,"a=1, b=2",{"Content-Type":"text/plain","Set-Cookie":"a=1, b=2"},201,"number","req","resp"]"#
    );
}

#[tokio::test]
async fn infinite_loop_times_out_and_the_thread_keeps_serving() {
    let limit = Duration::from_millis(300);
    let pool = pool_with(1, |c| c.time_limit = limit);
    for source in [
        "while (true) {}",
        "try { while (true) {} } catch (e) {} finally { while (true) {} }",
        "function f() { Promise.resolve().then(f); } f();",
        "var re = /(a+)+$/; re.test('a'.repeat(40) + 'b');",
    ] {
        let started = Instant::now();
        let result = pool.run(body(source, json!([]))).await;
        assert_eq!(result, Err(ScriptError::Timeout(limit)), "{source}");
        assert!(started.elapsed() < limit * 5, "{source}: {:?}", started.elapsed());
        assert_eq!(written(pool.run(body("write('alive')", json!([]))).await), "alive");
    }
}

#[tokio::test]
async fn memory_bomb_is_out_of_memory_and_the_pool_survives() {
    let pool = pool_with(1, |c| c.memory_limit_bytes = 16 * 1024 * 1024);
    for source in [
        "var a = []; while (true) a.push('x'.repeat(1024) + a.length);",
        "var o = {}; for (var i = 0; ; i++) o['k' + i] = [i, i, i];",
    ] {
        let result = pool.run(body(source, json!([]))).await;
        assert_eq!(result, Err(ScriptError::OutOfMemory), "{source}");
        assert_eq!(written(pool.run(body("write('alive')", json!([]))).await), "alive");
    }
}

#[test]
fn check_syntax_reports_the_line() {
    assert_eq!(
        check_syntax("var a = 1;\nvar b = ;\nwrite(a);"),
        Err(ScriptError::Syntax { message: "unexpected token in expression: ';'".to_owned(), line: Some(2) })
    );
    let err = check_syntax("// one\n// two\nif (x {\n}").expect_err("bad");
    assert!(matches!(err, ScriptError::Syntax { line: Some(3), .. }), "{err:?}");
    assert!(err.to_string().starts_with("syntax error (line 3): "), "{err}");
}

#[test]
fn check_syntax_accepts_the_seed_scripts_without_running_them() {
    for source in [HEADER_SCRIPT, BODY_SCRIPT, RESPONSE_SCRIPT] {
        assert_eq!(check_syntax(source), Ok(()));
    }
    // Would never end if it ran.
    assert_eq!(check_syntax("while (true) {}"), Ok(()));
    assert_eq!(check_syntax("return 1 // trailing comment"), Ok(()));
}

#[test]
fn check_syntax_rejects_sources_that_escape_the_wrapper() {
    for source in ["}), (function(){", "}); globalThis.x = 1; (function(){", "})\n(function(){"] {
        let result = check_syntax(source);
        assert!(matches!(result, Err(ScriptError::Syntax { .. })), "{source}: {result:?}");
    }
    assert!(matches!(check_syntax("write('a\0b')"), Err(ScriptError::Syntax { line: Some(1), .. })));
}

#[tokio::test]
async fn syntax_error_at_run_time_is_a_syntax_error_with_its_line() {
    let result = pool().run(body("write(1);\n\nwrite(;", json!([]))).await;
    assert!(matches!(result, Err(ScriptError::Syntax { line: Some(3), .. })), "{result:?}");
}

#[tokio::test]
async fn json_parse_failure_is_a_runtime_error() {
    let call = ScriptCall::new(ScriptKind::Response, RESPONSE_SCRIPT, survey_record()).with_request_body("not json");
    match pool().run(call).await {
        Err(ScriptError::Runtime { message, line }) => {
            assert!(message.starts_with("SyntaxError: "), "{message}");
            assert_eq!(line, Some(1));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_script_is_compiled_once_per_thread() {
    let pool = pool();
    let source = corrected_body();
    for _ in 0..10 {
        written(pool.run(body(&source, survey_record())).await);
    }
    assert_eq!(pool.stats().compiles, 1);
    assert_eq!(pool.stats().runs, 10);
    written(pool.run(body("write('other')", json!([]))).await);
    written(pool.run(body(&source, survey_record())).await);
    assert_eq!(pool.stats().compiles, 2);
    assert_eq!(pool.stats().runs, 12);
}

#[tokio::test]
async fn the_cache_is_bounded() {
    let pool = pool_with(1, |c| c.cache_per_thread = 2);
    for source in ["write(1)", "write(2)", "write(3)", "write(1)"] {
        written(pool.run(body(source, json!([]))).await);
    }
    // write(1) was evicted by write(3) and compiled again.
    assert_eq!(pool.stats().compiles, 4);
    written(pool.run(body("write(3)", json!([]))).await);
    assert_eq!(pool.stats().compiles, 4);
}

#[tokio::test]
async fn a_call_cannot_see_the_previous_calls_data() {
    let pool = pool();
    let spy = r#"
        write(typeof leaked + " " + typeof previous + " " + typeof stash + " ");
        write(data.changedEntities[0].secret);
        leaked = data.changedEntities[0].secret;
        globalThis.previous = data;
        this.stash = write;
    "#;
    let first = written(pool.run(body(spy, json!([{ "secret": "one" }]))).await);
    assert_eq!(first, "undefined undefined undefined one");
    let second = written(pool.run(body(spy, json!([{ "secret": "two" }]))).await);
    assert_eq!(second, "undefined undefined undefined two");
    // Nor can another script.
    let other = "write(typeof leaked + typeof data.changedEntities[0])";
    assert_eq!(written(pool.run(body(other, json!([]))).await), "undefinedundefined");
    // Replaced or deleted built-in globals come back for the next call.
    let clobber = "write(typeof JSON + typeof Math); JSON = null; delete globalThis.Math;";
    assert_eq!(written(pool.run(body(clobber, json!([]))).await), "objectobject");
    assert_eq!(written(pool.run(body(clobber, json!([]))).await), "objectobject");
}

#[tokio::test]
async fn scripts_cannot_tamper_with_each_others_builtins() {
    let pool = pool();
    let evil = r#"
        var seen = typeof JSON.seen;
        JSON.seen = [];
        JSON.stringify = function (v) { return "hooked"; };
        write(seen + " " + JSON.stringify(1));
    "#;
    assert_eq!(written(pool.run(body(evil, json!([]))).await), "undefined 1");
    let victim = "write(JSON.stringify(data.changedEntities))";
    assert_eq!(written(pool.run(body(victim, json!([{ "pii": 1 }]))).await), r#"[{"pii":1}]"#);
    assert_eq!(written(pool.run(body(evil, json!([]))).await), "undefined 1");
}

/// Places a call could hang state on: how to read one, and how to write it. A script reads
/// them all, then writes them all; its later runs must find them all empty.
const STASHES: &[(&str, &str)] = &[
    ("({}).x", "Object.prototype.x = data"),
    ("[].x", "Array.prototype.x = data"),
    ("(function () {}).x", "Function.prototype.x = data"),
    ("Object.x", "Object.x = data"),
    ("Math.x", "Math.x = data"),
    ("JSON.x", "Object.defineProperty(JSON, 'x', { value: data })"),
    ("Object.getPrototypeOf([][Symbol.iterator]()).x", "Object.getPrototypeOf([][Symbol.iterator]()).x = data"),
    ("Object.getPrototypeOf(function* () {}).x", "Object.getPrototypeOf(function* () {}).x = data"),
    ("Object.getPrototypeOf(Uint8Array).x", "Object.getPrototypeOf(Uint8Array).x = data"),
    (
        "Object.getOwnPropertyDescriptor(Function.prototype, 'caller').get.x",
        "Object.getOwnPropertyDescriptor(Function.prototype, 'caller').get.x = data",
    ),
    ("Promise.prototype.then.x", "Promise.prototype.then.x = data"),
    ("http.x", "http.x = data"),
    ("http.getResponseBodyUtf8.x", "http.getResponseBodyUtf8.x = data"),
    ("write.x", "write.x = data"),
    ("arguments.callee.x", "arguments.callee.x = data"),
    ("arguments.callee.prototype.x", "arguments.callee.prototype.x = data"),
    ("globalThis.x", "x = data"),
    ("Object.getPrototypeOf(globalThis).y", "Object.setPrototypeOf(globalThis, { y: data })"),
];

#[tokio::test]
async fn nothing_a_call_hangs_on_built_ins_reaches_the_next_call() {
    let pool = pool_with(1, |_| {});
    let mut script = String::from("var found = [];\n");
    for (read, _) in STASHES {
        script.push_str(&format!(
            "try {{ if ({read} !== undefined) found.push({read:?}); }} catch (e) {{ found.push(String(e)); }}\n"
        ));
    }
    for (_, stash) in STASHES {
        script.push_str(&format!("try {{ {stash}; }} catch (e) {{}}\n"));
    }
    script.push_str("write(found.join('; '));");
    for run in 0..3 {
        let output = written(pool.run(body(&script, json!([{ "secret": run }]))).await);
        assert_eq!(output, "", "run {run} found what an earlier call left");
    }
    // A strict script is told it cannot write to a built-in.
    let strict = body("'use strict'; Object.prototype.x = 1;", json!([]));
    let error = pool.run(strict).await.unwrap_err().to_string();
    assert!(error.contains("TypeError"), "{error}");
    assert_eq!(pool.stats().compiles, 2);
}

#[tokio::test]
async fn inherited_names_can_still_be_assigned_on_instances() {
    let pool = pool();
    let script = r#"
        var o = {}; o.toString = function () { return "custom"; };
        o.constructor = "mine"; o.hasOwnProperty = 1;
        class Failure extends Error { constructor(m) { super(m); this.name = "Failure"; } }
        function Legacy(m) { this.name = "Legacy"; this.message = m; }
        Legacy.prototype = Object.create(Error.prototype);
        Legacy.prototype.constructor = Legacy;
        var f = function () {}; f.toString = function () { return "fn"; };
        var a = [1]; a.toString = function () { return "arr"; };
        write([String(o), o.constructor, o.hasOwnProperty, String(new Failure("x")),
               String(new Legacy("y")), String(f), String(a), ({}).toString()].join("|"));
    "#;
    let expected = "custom|mine|1|Failure: x|Legacy: y|fn|arr|[object Object]";
    assert_eq!(written(pool.run(body(script, json!([]))).await), expected);
    let strict = format!("'use strict';\n{script}");
    assert_eq!(written(pool.run(body(&strict, json!([]))).await), expected);
    // The built-in itself stays as it was.
    let direct = body("Object.prototype.toString = null;", json!([]));
    let error = pool.run(direct).await.unwrap_err().to_string();
    assert!(error.contains("read-only"), "{error}");
}

#[tokio::test]
async fn a_non_configurable_global_discards_the_realm() {
    let pool = pool();
    let sticky = r#"
        write(typeof sticky);
        Object.defineProperty(globalThis, "sticky", { value: 1, configurable: false });
    "#;
    assert_eq!(written(pool.run(body(sticky, json!([]))).await), "undefined");
    assert_eq!(written(pool.run(body(sticky, json!([]))).await), "undefined");
    assert_eq!(pool.stats().compiles, 2);
}

#[tokio::test]
async fn write_output_is_limited() {
    let pool = pool_with(1, |c| c.max_output_bytes = 10);
    assert_eq!(written(pool.run(body("write('12345'); write('67890')", json!([]))).await), "1234567890");
    for source in [
        "write('12345678901')",
        "write('123456'); write('123456')",
        "try { write('x'.repeat(100)) } catch (e) {} write('ok')",
    ] {
        assert_eq!(pool.run(body(source, json!([]))).await, Err(ScriptError::OutputTooLarge(10)), "{source}");
    }
}

#[tokio::test]
async fn write_coerces_its_argument() {
    let out =
        pool().run(body("write(1); write(true); write(null); write({}); write(); write(undefined)", json!([]))).await;
    // No argument writes nothing; an explicit `undefined` follows `String()`.
    assert_eq!(written(out), "1truenull[object Object]undefined");
}

#[tokio::test]
async fn header_values_become_strings_and_bad_returns_are_rejected() {
    let pool = pool();
    let header = |source: &str| ScriptCall::new(ScriptKind::Header, source, json!([]));
    assert_eq!(
        pool.run(header("return { 'X-Num': 5, 'X-Bool': true, 'X-Str': 'a b' }")).await,
        Ok(ScriptOutput::Headers(vec![
            ("X-Num".into(), "5".into()),
            ("X-Bool".into(), "true".into()),
            ("X-Str".into(), "a b".into()),
        ]))
    );
    for source in [
        "var x = 1;",
        "return 'Authorization: x'",
        "return ['a']",
        "return null",
        "return function () {}",
        "return { 'Bad Name': 'x' }",
        "return { 'X-Split': 'a\\r\\nInjected: 1' }",
    ] {
        let result = pool.run(header(source)).await;
        assert!(matches!(result, Err(ScriptError::BadReturn(_))), "{source}: {result:?}");
    }
    assert_eq!(pool.run(header("return {}")).await, Ok(ScriptOutput::Headers(vec![])));
}

#[tokio::test]
async fn runtime_errors_name_the_innermost_script_line() {
    let pool = pool();
    let source = "function inner(r) {\n  return r.missing.field;\n}\n\ninner({});";
    assert_eq!(
        pool.run(body(source, json!([]))).await,
        Err(ScriptError::Runtime {
            message: "TypeError: cannot read property 'field' of undefined".to_owned(),
            line: Some(2)
        })
    );
    assert_eq!(
        pool.run(body("\n\nthrow new Error('custom')", json!([]))).await,
        Err(ScriptError::Runtime { message: "Error: custom".to_owned(), line: Some(3) })
    );
    assert_eq!(
        pool.run(body("throw 'plain'", json!([]))).await,
        Err(ScriptError::Runtime { message: "uncaught exception: plain".to_owned(), line: None })
    );
    let deep = pool.run(body("function f(n) { return f(n + 1) + 1; }\nf(0);", json!([]))).await;
    assert!(matches!(deep, Err(ScriptError::Runtime { .. })), "{deep:?}");
    assert_eq!(written(pool.run(body("write('alive')", json!([]))).await), "alive");
}

#[tokio::test]
async fn promise_jobs_run_before_the_call_ends() {
    let out =
        pool().run(body("Promise.resolve('later').then(function (v) { write(v); }); write('now ');", json!([]))).await;
    assert_eq!(written(out), "now later");
}

#[tokio::test]
async fn no_host_access_is_exposed() {
    let source = r#"write([typeof require, typeof process, typeof std, typeof os,
        typeof fetch, typeof setTimeout, typeof FinalizationRegistry, typeof import_].join(","))"#;
    let out = written(pool().run(body(source, json!([]))).await);
    assert_eq!(out, ["undefined"; 8].join(","));
    let result = pool().run(body("import('x')", json!([]))).await;
    assert!(result.is_ok() || matches!(result, Err(ScriptError::Runtime { .. })));
}

#[tokio::test]
async fn concurrent_calls_on_several_threads() {
    let pool = pool_with(2, |_| {});
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let pool = pool.clone();
        tasks.spawn(async move {
            let out = pool.run(body("write(data.changedEntities[0].n * 2)", json!([{ "n": i }]))).await;
            (i, out)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (i, out) = joined.expect("task");
        assert_eq!(written(out), (i * 2).to_string());
    }
    assert_eq!(pool.stats().runs, 20);
    assert!(pool.stats().compiles <= 2);
}

#[tokio::test]
async fn dropping_the_last_pool_ends_its_threads() {
    let pool = pool_with(2, |_| {});
    written(pool.run(body("write(1)", json!([]))).await);
    let counters = pool.counters();
    assert_eq!(counters.live_threads.load(Ordering::SeqCst), 2);
    let clone = pool.clone();
    drop(pool);
    written(clone.run(body("write(2)", json!([]))).await);
    drop(clone);
    let started = Instant::now();
    while counters.live_threads.load(Ordering::SeqCst) != 0 {
        assert!(started.elapsed() < Duration::from_secs(5), "threads still alive");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn url_scripts_return_a_string_and_see_secrets() {
    let pool = pool();
    let secrets = crate::ScriptSecrets(std::sync::Arc::new([("KEY".to_string(), "s3cr3t".to_string())].into()));
    let call = ScriptCall::new(
        ScriptKind::Url,
        "return 'https://h/' + data.changedEntities[0].id + '?k=' + secrets.KEY;",
        json!([{"id": "r1"}]),
    )
    .with_secrets(secrets.clone());
    assert_eq!(pool.run(call.clone()).await, Ok(ScriptOutput::Url("https://h/r1?k=s3cr3t".into())));
    assert!(!format!("{call:?}").contains("s3cr3t"), "Debug shows secret names only");

    let bad = pool.run(ScriptCall::new(ScriptKind::Url, "return 42;", json!([]))).await;
    assert!(matches!(&bad, Err(ScriptError::BadReturn(m)) if m.contains("as a string")), "{bad:?}");

    // The map is frozen, and absent secrets are just undefined.
    let frozen = "secrets.KEY = 'x'; secrets.NEW = 1; write(String(secrets.KEY) + ',' + secrets.NEW);";
    let out = written(pool.run(body(frozen, json!([])).with_secrets(secrets)).await);
    assert_eq!(out, "s3cr3t,undefined");
    let none = written(pool.run(body("write(String(secrets.KEY));", json!([]))).await);
    assert_eq!(none, "undefined");
}

#[tokio::test]
async fn a_script_declaring_its_own_secrets_still_runs() {
    let pool = pool();
    let out = written(pool.run(body("let secrets = 'mine'; write(secrets);", json!([]))).await);
    assert_eq!(out, "mine");
    let call = ScriptCall::new(ScriptKind::Header, "const secrets = {a: 1}; return {X: String(secrets.a)};", json!([]));
    assert_eq!(pool.run(call).await, Ok(ScriptOutput::Headers(vec![("X".into(), "1".into())])));
}
