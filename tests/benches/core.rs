//! The delivery core, measured (not a test: `scripts/bench.sh`).
//!
//! - `--case drain`: a paused webhook queues `--jobs` jobs (one record each, template body),
//!   then is resumed; the time from the resume to the last request at the sink gives
//!   deliveries/s. The node's CPU seconds over the drain (from `/proc`) say how many cores it
//!   kept busy, and Redis's (from `INFO cpu`) what the store cost.
//! - `--case latency`: one record at a time, each written only after the previous one reached
//!   the sink; the time from sending the record's POST to its request arriving at the sink,
//!   p50/p95/p99 over `--samples` records.
//!
//! Usage: core [--case drain|latency] [--jobs N] [--samples N] [--concurrency C]
//!             [--store redis|embedded] [--redis URL]

#[path = "../tests/procs.rs"]
mod procs;
#[path = "../tests/support.rs"]
mod support;

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use procs::Proc;
use serde_json::json;
use support::{Api, namespace, wait_until};

struct Options {
    case: String,
    jobs: usize,
    samples: usize,
    concurrency: usize,
    store: String,
    redis: String,
}

fn options() -> Options {
    let mut o = Options {
        case: "drain".into(),
        jobs: 20_000,
        samples: 300,
        concurrency: 64,
        store: "redis".into(),
        redis: support::redis_url(),
    };
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    for pair in args.chunks(2) {
        let v = pair.get(1).cloned().unwrap_or_default();
        match pair[0].as_str() {
            "--case" => o.case = v,
            "--jobs" => o.jobs = v.parse().expect("--jobs N"),
            "--samples" => o.samples = v.parse().expect("--samples N"),
            "--concurrency" => o.concurrency = v.parse().expect("--concurrency C"),
            "--store" => o.store = v,
            "--redis" => o.redis = v,
            other => panic!("unknown option {other}"),
        }
    }
    o
}

/// A sink that answers 200 at once with a small JSON body, counts requests and the records
/// of bulk calls, and notes when each record's first request arrived.
#[derive(Clone)]
struct FastSink {
    url: String,
    requests: Arc<AtomicUsize>,
    records: Arc<AtomicUsize>,
    arrivals: Arc<Mutex<HashMap<String, Instant>>>,
}

impl FastSink {
    fn start(workers: usize) -> FastSink {
        let requests: Arc<AtomicUsize> = Arc::default();
        let records: Arc<AtomicUsize> = Arc::default();
        let arrivals: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (rq, rc, ar) = (requests.clone(), records.clone(), arrivals.clone());
        let server = HttpServer::new(move || {
            let (rq, rc, ar) = (rq.clone(), rc.clone(), ar.clone());
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let (rq, rc, ar) = (rq.clone(), rc.clone(), ar.clone());
                async move {
                    let now = Instant::now();
                    rq.fetch_add(1, Ordering::Relaxed);
                    if req.path() != "/raw" {
                        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                        let ids: Vec<String> = match v["records"].as_array() {
                            Some(rs) => rs.iter().filter_map(|r| r["id"].as_str().map(String::from)).collect(),
                            None => v["id"].as_str().map(String::from).into_iter().collect(),
                        };
                        rc.fetch_add(ids.len(), Ordering::Relaxed);
                        let mut map = ar.lock().unwrap();
                        for id in ids {
                            map.entry(id).or_insert(now);
                        }
                    }
                    HttpResponse::Ok().content_type("application/json").body(r#"{"ok":true}"#)
                }
            }))
        })
        .workers(workers)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        actix_rt::spawn(server);
        FastSink { url, requests, records, arrivals }
    }

    fn arrival(&self, id: &str) -> Option<Instant> {
        self.arrivals.lock().unwrap().get(id).copied()
    }
}

/// CPU seconds (user + system) a process has used so far.
fn process_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// CPU seconds Redis has used so far (`INFO cpu`, user + system of the server).
async fn redis_cpu(url: &str) -> f64 {
    let client = redis::Client::open(url).expect("Redis URL");
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else { return 0.0 };
    let info: String = redis::cmd("INFO").arg("cpu").query_async(&mut conn).await.unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| *k == "used_cpu_sys" || *k == "used_cpu_user")
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum()
}

/// With `BENCH_PERF=<file>`, samples the node's stacks (`perf record`) while it drains.
fn profile(pid: u32) -> Option<std::process::Child> {
    let out = std::env::var("BENCH_PERF").ok()?;
    let child = std::process::Command::new("perf")
        .args(["record", "-F", "1999", "-e", "cpu-clock", "--call-graph", "dwarf,16384", "-o", &out, "-p"])
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(300));
    Some(child)
}

fn stop_profile(perf: Option<std::process::Child>) {
    if let Some(mut p) = perf {
        let _ = std::process::Command::new("kill").args(["-INT", &p.id().to_string()]).status();
        let _ = p.wait();
    }
}

fn start_node(o: &Options, ns: &str, dir: &std::path::Path) -> Proc {
    if o.store == "embedded" {
        Proc::start("core", &["--data-dir", &dir.display().to_string()])
    } else {
        Proc::start("core", &["--redis", &o.redis, "--namespace", ns])
    }
}

async fn define(api: &Api, sink: &FastSink, concurrency: usize) {
    api.ok("POST", "/v1/objects", Some(json!({"name": "item", "fields": [{"key": "n", "type": "number"}]}))).await;
    api.ok(
        "POST",
        "/v1/webhooks",
        Some(json!({
            "id": "bench", "object": "item", "trigger": {"on_create": true},
            "request": {"url": format!("{}/in", sink.url),
                        "body_template": "{\"id\": \"{{ record.id }}\", \"n\": {{ record.n }}}"},
            "settings": {"max_concurrency": concurrency, "timeout": "10s", "retries": 3, "retry_wait": "1s"}
        })),
    )
    .await;
}

async fn queue_depth(api: &Api) -> usize {
    let text = reqwest::get(format!("{}/metrics", api.base)).await.unwrap().text().await.unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("hookline_queue_depth{webhook=\"bench\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

async fn drain(o: &Options) {
    let sink = FastSink::start(1);
    let ns = namespace();
    let dir = std::env::temp_dir().join(format!("hl-core-{ns}"));
    let node = start_node(o, &ns, &dir);
    let api = Api::at(&node.url);
    define(&api, &sink, o.concurrency).await;
    api.ok("POST", "/v1/webhooks/bench/pause", None).await;
    for chunk in (0..o.jobs).collect::<Vec<_>>().chunks(1000) {
        let batch: Vec<_> = chunk.iter().map(|i| json!({"id": format!("r{i}"), "fields": {"n": i}})).collect();
        api.ok("POST", "/v1/objects/item/records", Some(json!(batch))).await;
    }
    wait_until(Duration::from_secs(600), || async { queue_depth(&api).await >= o.jobs }).await;

    let (cpu0, redis0) = (process_cpu(node.child.id()), redis_cpu(&o.redis).await);
    let perf = profile(node.child.id());
    let start = Instant::now();
    api.ok("POST", "/v1/webhooks/bench/resume", None).await;
    wait_until(Duration::from_secs(600), || async { sink.records.load(Ordering::Relaxed) >= o.jobs }).await;
    let took = start.elapsed().as_secs_f64();
    stop_profile(perf);
    let (cpu, redis) = (process_cpu(node.child.id()) - cpu0, redis_cpu(&o.redis).await - redis0);
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
    let calls = sink.requests.load(Ordering::Relaxed);
    println!(
        "drain store={} jobs={} calls={} concurrency={} | {:.0} deliveries/s | node {:.2} cores, {:.3} ms CPU/delivery | \
         redis {:.2} cores",
        o.store,
        o.jobs,
        calls,
        o.concurrency,
        o.jobs as f64 / took,
        cpu / took,
        cpu * 1000.0 / o.jobs as f64,
        if o.store == "redis" { redis / took } else { 0.0 },
    );
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn latency(o: &Options) {
    let sink = FastSink::start(1);
    let ns = namespace();
    let dir = std::env::temp_dir().join(format!("hl-core-{ns}"));
    let node = start_node(o, &ns, &dir);
    let api = Api::at(&node.url);
    define(&api, &sink, o.concurrency).await;
    let mut took = Vec::with_capacity(o.samples);
    // A few warm-up records first: connections, caches, consumer groups.
    for i in 0..o.samples + 20 {
        let id = format!("l{i}");
        let sent = Instant::now();
        api.ok("POST", "/v1/objects/item/records", Some(json!({"id": id, "fields": {"n": i}}))).await;
        let mut arrived = None;
        let waited = Instant::now();
        while arrived.is_none() {
            arrived = sink.arrival(&id);
            assert!(waited.elapsed() < Duration::from_secs(30), "record {id} never arrived");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        if i >= 20 {
            took.push(arrived.unwrap().duration_since(sent).as_secs_f64() * 1000.0);
        }
    }
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
    took.sort_by(|a, b| a.total_cmp(b));
    println!(
        "latency store={} samples={} | record sent → request at the target: p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms",
        o.store,
        o.samples,
        percentile(&took, 0.50),
        percentile(&took, 0.95),
        percentile(&took, 0.99)
    );
}

fn main() {
    let o = options();
    actix_rt::System::new().block_on(async {
        match o.case.as_str() {
            "drain" => drain(&o).await,
            "latency" => latency(&o).await,
            other => panic!("unknown case {other}"),
        }
    });
}
