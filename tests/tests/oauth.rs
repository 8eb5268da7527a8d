//! OAuth 2.0 tokens shared by nodes, Standard Webhooks signatures, and secrets that never
//! leak: not in the API, the attempt log, the store, or the logs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine;
use serde_json::{Value, json};

use crate::procs::Proc;
use crate::support::{Api, Node, TEST_SECRET_KEY, namespace, redis_url, wait_until};

const CLIENT_SECRET: &str = "planted-client-secret-7f3a";
const SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A token endpoint and a target that accepts only live tokens it issued.
#[derive(Clone, Default)]
struct OAuthWorld {
    /// token → issued at
    issued: Arc<Mutex<HashMap<String, Instant>>>,
    fetches: Arc<AtomicUsize>,
    lifetime_s: Arc<AtomicU64>,
    /// (record id, token) of every accepted delivery
    accepted: Arc<Mutex<Vec<(String, String)>>>,
    refused: Arc<AtomicUsize>,
    signatures_ok: Arc<AtomicUsize>,
    url: String,
}

impl OAuthWorld {
    fn start(lifetime_s: u64) -> OAuthWorld {
        let mut w = OAuthWorld::default();
        w.lifetime_s.store(lifetime_s, Ordering::SeqCst);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        w.url = format!("http://{}", listener.local_addr().unwrap());
        let state = web::Data::new(w.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .route("/token", web::post().to(token))
                .route("/target", web::post().to(target))
        })
        .workers(2)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        actix_rt::spawn(server);
        w
    }

    /// Every token issued so far stops working.
    fn revoke_all(&self) {
        self.issued.lock().unwrap().clear();
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn accepted(&self) -> Vec<(String, String)> {
        self.accepted.lock().unwrap().clone()
    }

    fn token_of(&self, record: &str) -> Option<String> {
        self.accepted().into_iter().find(|(r, _)| r == record).map(|(_, t)| t)
    }
}

async fn token(req: HttpRequest, body: String, w: web::Data<OAuthWorld>) -> HttpResponse {
    let expected =
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("hookline:{CLIENT_SECRET}")));
    let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    if auth != expected || !body.contains("grant_type=client_credentials") {
        return HttpResponse::Unauthorized().json(json!({"error": "invalid_client"}));
    }
    let n = w.fetches.fetch_add(1, Ordering::SeqCst) + 1;
    let token = format!("tok-{n}");
    w.issued.lock().unwrap().insert(token.clone(), Instant::now());
    HttpResponse::Ok().json(json!({"access_token": token, "token_type": "Bearer",
                                   "expires_in": w.lifetime_s.load(Ordering::SeqCst)}))
}

async fn target(req: HttpRequest, body: web::Bytes, w: web::Data<OAuthWorld>) -> HttpResponse {
    let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let token = header("authorization").strip_prefix("Bearer ").unwrap_or("").to_string();
    let live = {
        let issued = w.issued.lock().unwrap();
        let lifetime = Duration::from_secs(w.lifetime_s.load(Ordering::SeqCst));
        issued.get(&token).is_some_and(|at| at.elapsed() < lifetime)
    };
    if !live {
        w.refused.fetch_add(1, Ordering::SeqCst);
        return HttpResponse::Unauthorized().finish();
    }
    let secret = hookline_outbound::SigningSecret::parse(SIGNING_SECRET).unwrap();
    let ts: i64 = header("webhook-timestamp").parse().unwrap_or(0);
    if hookline_outbound::verify(&secret, &header("webhook-id"), ts, &body, &header("webhook-signature")) {
        w.signatures_ok.fetch_add(1, Ordering::SeqCst);
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    let record = v["records"][0]["id"].as_str().unwrap_or_default().to_string();
    w.accepted.lock().unwrap().push((record, token));
    HttpResponse::Ok().json(json!({"ok": true}))
}

fn webhook(world: &OAuthWorld) -> Value {
    json!({
        "id": "oauth", "object": "item",
        "trigger": {"on_create": true},
        "request": {"url": format!("{}/target", world.url)},
        "auth": {"type": "oauth2", "token_url": format!("{}/token", world.url), "client_id": "hookline",
                 "client_secret": CLIENT_SECRET, "scope": "tickets:write"},
        "signing": {"secrets": [SIGNING_SECRET]},
        "settings": {"retries": 2, "retry_wait": "100ms", "timeout": "5s", "max_concurrency": 8}
    })
}

async fn item(api: &Api, id: &str) {
    api.ok("POST", "/v1/objects/item/records", Some(json!({"id": id, "fields": {"n": 1}}))).await;
}

#[actix_rt::test]
async fn tokens_are_fetched_once_reused_refreshed_and_shared() {
    let ns = namespace();
    let world = OAuthWorld::start(2);
    let nodes = [Node::start(&ns, "all").await, Node::start(&ns, "all").await, Node::start(&ns, "all").await];
    let api = Api::new(&nodes[0]);
    api.ok("POST", "/v1/objects", Some(json!({"name": "item", "fields": [{"key": "n", "type": "number"}]}))).await;
    api.ok("POST", "/v1/webhooks", Some(webhook(&world))).await;

    // The first call fetches; the next reuses.
    item(&api, "a").await;
    wait_until(Duration::from_secs(10), || async { world.token_of("a").is_some() }).await;
    item(&api, "b").await;
    wait_until(Duration::from_secs(10), || async { world.token_of("b").is_some() }).await;
    assert_eq!(world.fetches(), 1);
    assert_eq!(world.token_of("b"), world.token_of("a"));

    // Near expiry the token is refreshed before it is used.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    item(&api, "c").await;
    wait_until(Duration::from_secs(10), || async { world.token_of("c").is_some() }).await;
    assert_eq!(world.fetches(), 2);
    assert_eq!(world.token_of("c").as_deref(), Some("tok-2"));

    // The target refuses every token: a 401 refreshes once and the attempt still succeeds.
    world.lifetime_s.store(60, Ordering::SeqCst);
    world.revoke_all();
    item(&api, "d").await;
    wait_until(Duration::from_secs(10), || async { world.token_of("d").is_some() }).await;
    assert_eq!(world.fetches(), 3);
    let attempts = api.attempts("oauth", "record_id=d").await;
    assert_eq!(attempts.len(), 1, "the refresh happens inside one attempt");
    assert_eq!(attempts[0]["outcome"], "success");

    // Three nodes, many deliveries at once, one refused token: exactly one refresh.
    world.revoke_all();
    let batch: Vec<Value> = (0..30).map(|i| json!({"id": format!("m{i}"), "fields": {"n": i}})).collect();
    api.ok("POST", "/v1/objects/item/records", Some(json!(batch))).await;
    wait_until(Duration::from_secs(20), || async { world.accepted().len() >= 34 }).await;
    assert_eq!(world.fetches(), 4, "one refresh shared by every node");
    assert!(world.accepted().iter().skip(4).all(|(_, t)| t == "tok-4"));
    // Every delivery carried a valid Standard Webhooks signature.
    assert_eq!(world.signatures_ok.load(Ordering::SeqCst), world.accepted().len());
    for n in nodes {
        n.stop().await;
    }
}

#[actix_rt::test]
async fn a_failing_token_endpoint_is_a_clear_retried_attempt_error() {
    let ns = namespace();
    let world = OAuthWorld::start(60);
    let node = Node::start(&ns, "all").await;
    let api = Api::new(&node);
    api.ok("POST", "/v1/objects", Some(json!({"name": "item", "fields": [{"key": "n", "type": "number"}]}))).await;
    let mut wh = webhook(&world);
    wh["auth"]["client_secret"] = json!("wrong-secret");
    api.ok("POST", "/v1/webhooks", Some(wh)).await;
    item(&api, "x").await;
    wait_until(Duration::from_secs(10), || async { api.attempts("oauth", "outcome=failed").await.len() == 1 }).await;
    let attempts = api.attempts("oauth", "").await;
    let error = attempts[0]["error"].as_str().unwrap();
    assert!(error.contains("oauth token") && error.contains("401") && error.contains("invalid_client"), "{error}");
    assert!(!error.contains("wrong-secret"));
    node.stop().await;
}

/// Every place a secret could leak, checked for the planted ones.
#[actix_rt::test]
async fn planted_secrets_appear_nowhere() {
    let ns = namespace();
    let world = OAuthWorld::start(60);
    let log = std::env::temp_dir().join(format!("hl-secrets-{ns}.log"));
    let redis = redis_url();
    let mut node = Proc::start_logging(
        "leak",
        &["--redis", &redis, "--namespace", &ns, "--secret-key", TEST_SECRET_KEY, "--log-format", "json"],
        &log,
        "debug",
    );
    let api = Api::at(&node.url);
    api.ok("POST", "/v1/objects", Some(json!({"name": "item", "fields": [{"key": "n", "type": "number"}]}))).await;
    api.ok("POST", "/v1/webhooks", Some(webhook(&world))).await;
    let mut basic = webhook(&world);
    basic["id"] = json!("basic");
    basic["auth"] = json!({"type": "basic", "username": "u", "password": "planted-password-91c2"});
    api.ok("POST", "/v1/webhooks", Some(basic)).await;
    let mut failing = webhook(&world);
    failing["id"] = json!("failing");
    failing["auth"]["client_secret"] = json!("planted-wrong-secret-55e1");
    api.ok("POST", "/v1/webhooks", Some(failing)).await;
    item(&api, "s1").await;
    wait_until(Duration::from_secs(10), || async { world.token_of("s1").is_some() }).await;
    wait_until(Duration::from_secs(10), || async { !api.attempts("failing", "").await.is_empty() }).await;
    wait_until(Duration::from_secs(10), || async { !api.attempts("basic", "").await.is_empty() }).await;
    let token = world.token_of("s1").unwrap();

    let mut seen = String::new();
    for path in [
        "/v1/webhooks",
        "/v1/webhooks/oauth/attempts",
        "/v1/webhooks/basic/attempts",
        "/v1/webhooks/failing/attempts",
        "/v1/webhooks/failing/dead-letters",
    ] {
        seen.push_str(&api.ok("GET", path, None).await.to_string());
    }
    // Everything stored under the namespace, raw.
    let client = redis::Client::open(redis.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{ns}:*")).query_async(&mut conn).await.unwrap();
    assert!(!keys.is_empty());
    for key in keys {
        let dump: Option<Vec<u8>> = redis::cmd("DUMP").arg(&key).query_async(&mut conn).await.unwrap();
        seen.push_str(&String::from_utf8_lossy(&dump.unwrap_or_default()));
    }
    assert!(node.terminate().success());
    let logs = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(logs.contains("attempt"), "the node logged its attempts");
    for secret in [CLIENT_SECRET, "planted-password-91c2", "planted-wrong-secret-55e1", SIGNING_SECRET, &token] {
        assert!(!seen.contains(secret), "`{secret}` leaked into the API or the store");
        assert!(!logs.contains(secret), "`{secret}` leaked into the logs");
    }
    // The Basic header itself (base64 of u:password) is redacted too.
    let basic_header = base64::engine::general_purpose::STANDARD.encode("u:planted-password-91c2");
    assert!(!seen.contains(&basic_header) && !logs.contains(&basic_header));
}
