//! Test support: a Redis to talk to, Hookline nodes started in-process on port 0 with a
//! random key namespace each, a local ticket tracker, and small HTTP helpers.

#![allow(dead_code)]

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use hookline::{Config, ServeArgs};
use serde_json::{Value, json};

/// The Redis the tests use: `HOOKLINE_TEST_REDIS`, else the local default.
pub fn redis_url() -> String {
    std::env::var("HOOKLINE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The secret key every test node shares (nodes of one namespace must agree on it).
pub const TEST_SECRET_KEY: &str = "aG9va2xpbmUtdGVzdHMtc2VjcmV0LWtleS0zMmJ5dGU=";

/// A key namespace no other test shares; its keys are deleted from Redis when it is
/// dropped (declare it first in a test, so the nodes using it are gone by then).
pub struct Namespace(String);

/// A namespace no other test shares.
pub fn namespace() -> Namespace {
    Namespace(format!("hl-test-{}", uuid::Uuid::new_v4().simple()))
}

impl Namespace {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Namespace {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Best effort, on a plain connection: a test's leftovers must not pile up in a Redis
        // that outlives the run.
        let Ok(client) = redis::Client::open(redis_url()) else { return };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2)) else { return };
        let pattern = format!("{}:*", self.0);
        let mut cursor = 0u64;
        loop {
            let scanned: redis::RedisResult<(u64, Vec<String>)> =
                redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000).query(&mut conn);
            let Ok((next, keys)) = scanned else { return };
            if !keys.is_empty() {
                let _: redis::RedisResult<()> = redis::cmd("UNLINK").arg(&keys).query(&mut conn);
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }
}

/// A running node; dropping the stop sender stops it.
pub struct Node {
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Node {
    pub async fn start(namespace: &str, roles: &str) -> Node {
        Node::start_with(namespace, roles, |_| {}).await
    }

    pub async fn start_with(namespace: &str, roles: &str, tweak: impl FnOnce(&mut ServeArgs)) -> Node {
        let mut args = ServeArgs {
            listen: Some("127.0.0.1:0".into()),
            redis: Some(redis_url()),
            namespace: Some(namespace.into()),
            roles: Some(roles.split(',').map(String::from).collect()),
            node_id: Some(format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])),
            allow_target: Some(vec!["127.0.0.0/8".into()]),
            secret_key: Some(TEST_SECRET_KEY.into()),
            ..Default::default()
        };
        tweak(&mut args);
        let config = Config::from_args(args).expect("valid test config");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        actix_rt::spawn(async move {
            let result = hookline::run(config, listener, async {
                let _ = stopped.await;
            })
            .await;
            if let Err(e) = result {
                eprintln!("node failed: {e:#}");
            }
            let _ = done_tx.send(());
        });
        let node = Node { url, stop: Some(stop), done: Some(done) };
        if roles.contains("api") || roles == "all" {
            wait_until(Duration::from_secs(10), || async {
                reqwest::get(format!("{}/healthz", node.url)).await.is_ok()
            })
            .await;
        }
        node
    }

    /// Stops the node and waits until it has drained.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(d) = self.done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(40), d).await;
        }
    }
}

/// Polls `check` every 50 ms until it holds; panics after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "condition not reached within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct Api {
    pub base: String,
    client: reqwest::Client,
    pub token: Option<String>,
}

impl Api {
    pub fn new(node: &Node) -> Api {
        Api::at(&node.url)
    }

    pub fn at(base: &str) -> Api {
        Api { base: base.to_string(), client: reqwest::Client::new(), token: None }
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.client.request(method.parse().unwrap(), format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("API reachable");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn raw(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let resp = self
            .client
            .request(method.parse().unwrap(), format!("{}{}", self.base, path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// A request in NDJSON: `body` (if any) sent as `application/x-ndjson`, the answer asked
    /// for as NDJSON and read back one JSON document per line.
    pub async fn ndjson(&self, method: &str, path: &str, body: Option<String>) -> Vec<Value> {
        let mut req = self
            .client
            .request(method.parse().unwrap(), format!("{}{}", self.base, path))
            .header("accept", "application/x-ndjson");
        if let Some(b) = body {
            req = req.header("content-type", "application/x-ndjson").body(b);
        }
        let text = req.send().await.expect("API reachable").text().await.unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    pub async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, body).await;
        assert!((200..300).contains(&status), "{method} {path} → {status}: {v}");
        v
    }

    pub async fn record(&self, object: &str, id: &str) -> Value {
        self.ok("GET", &format!("/v1/objects/{object}/records/{id}"), None).await
    }

    pub async fn attempts(&self, webhook: &str, query: &str) -> Vec<Value> {
        let v = self.ok("GET", &format!("/v1/webhooks/{webhook}/attempts?{query}"), None).await;
        v.as_array().cloned().unwrap_or_default()
    }
}

/// One request the tracker received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub at: Instant,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// A local ticket tracker: answers `{"ticketId": "IT-<n>"}`, or 500 with an error message
/// when the request body mentions "fail"; under `/echo` it answers with the request's
/// headers, query and body.
#[derive(Clone)]
pub struct Tracker {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Tracker {
    pub fn start() -> Tracker {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let state = seen.clone();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = HttpServer::new(move || {
            let state = state.clone();
            App::new().app_data(web::Data::new(state)).default_service(web::to(
                |req: HttpRequest, body: web::Bytes, seen: web::Data<Arc<Mutex<Vec<Seen>>>>| async move {
                    let body = String::from_utf8_lossy(&body).into_owned();
                    // `/echo…` answers with what it was sent, as a careless target would.
                    let echo = req.path().starts_with("/echo").then(|| {
                        let headers: serde_json::Map<String, Value> = req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
                            .collect();
                        json!({"headers": headers, "query": req.query_string(), "body": body})
                    });
                    let n = {
                        let mut all = seen.lock().unwrap();
                        all.push(Seen {
                            path: req.path().to_string(),
                            headers: req
                                .headers()
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                                .collect(),
                            body: body.clone(),
                            at: Instant::now(),
                        });
                        all.len()
                    };
                    if let Some(echo) = echo {
                        HttpResponse::Ok().json(echo)
                    } else if body.contains("fail") {
                        HttpResponse::InternalServerError().json(json!({"errorMessage": "tracker down"}))
                    } else {
                        HttpResponse::Ok().json(json!({ "ticketId": format!("IT-{n}") }))
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
        Tracker { url, seen }
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn all(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

pub fn seed_script(name: &str) -> String {
    let path = format!("{}/../testdata/seed/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The seed's webhook: header script auth, body script (`record[0]` corrected unless
/// `as_printed`), response script, write-back keyed medalliaRecordId → a_surveyid.
pub fn seed_webhook(id: &str, tracker: &Tracker, as_printed: bool) -> Value {
    let body = seed_script("body_script.js");
    let body = if as_printed { body } else { body.replace("getPayload(record[0])", "getPayload(records[0])") };
    json!({
        "id": id,
        "object": "survey",
        "trigger": {
            "on_create": false,
            "on_update": true,
            "fields": ["Status", "Transactional Satisfaction"],
            "condition": "Status = Completed and Transactional Satisfaction = 0"
        },
        "request": {
            "method": "POST",
            "url": format!("{}/rest/api/2/issue", tracker.url),
            "headers": {"Content-Type": "application/json"},
            "body_script": body
        },
        "auth": {"type": "script", "script": seed_script("header_script.js")},
        "response_script": seed_script("response_script.js"),
        "writeback": {"key": {"from": "medalliaRecordId", "to": "a_surveyid"}},
        "settings": {"retries": 2, "retry_wait": "300ms", "timeout": "5s", "max_concurrency": 4}
    })
}

/// The value of a metric line `name{labels}` in `/metrics`, if present.
pub async fn metric(base: &str, line_start: &str) -> Option<f64> {
    let text = reqwest::get(format!("{base}/metrics")).await.ok()?.text().await.ok()?;
    text.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}
