//! Hookline's benchmark suite (not a test: `scripts/bench.sh` runs it). Every case runs the
//! real `hookline serve` binary against a fast local sink in this process, and the suite
//! prints one table: each case's rate, its ratio to the raw rate a load generator (`wrk`)
//! reaches against the same sink in the same run, latencies where they apply, the node's CPU
//! seconds per 1,000 deliveries, its peak RSS, and Redis memory per queued job.
//!
//! Cases (`--cases a,b,…`, all by default):
//!
//! - `drain`: a paused webhook queues `--jobs` jobs (one record per call, template body),
//!   then is resumed; deliveries/s from the resume to the last request at the sink;
//! - `scripts`: the same with a body script, a response script and a write-back, until every
//!   record is written back;
//! - `batch`: the same in calls of 100 records (records/s);
//! - `embedded`: `drain` on the embedded store;
//! - `ingest`: `POST …/records` of 1,000 records per request, four clients, no webhook;
//! - `api`: one record per API call from 64 clients, a webhook firing on each: records/s
//!   accepted and delivered, record → target latency; then again at half that rate;
//! - `latency`: one record at a time, each after the previous reached the sink;
//! - `million`: 1,000,000 queued jobs of about 1 KB: Redis memory per job, and the node's
//!   RSS while it drains them;
//! - `scale`: 1, 2 and 4 dispatcher nodes, each held to `--quota` of a core by a cgroup
//!   (`cpu.cfs_quota_us`), draining one queue.
//!
//! Options: `--jobs N` (default 20000), `--quota CORES` (0.2), `--redis URL`, `--quick`
//! (smaller sizes, for a smoke run), `--perf FILE` (records the node's stacks while each
//! queue drains, and during the full-speed api run), `--redis-stats` (prints Redis's busiest commands while each queue drains),
//! `--callgrind DIR` (runs the drain, scripts and full-speed api cases' node under valgrind's callgrind, counting its
//! instructions while the queue drains: a figure that, unlike rates and CPU time on a shared
//! machine, repeats from run to run; the rates of those rows are valgrind's, not the node's).

#[path = "../tests/procs.rs"]
mod procs;
#[path = "../tests/support.rs"]
mod support;

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::{App, HttpResponse, HttpServer, web};
use procs::Proc;
use serde_json::{Value, json};
use support::{Api, namespace};

struct Options {
    cases: Vec<String>,
    jobs: usize,
    quota: f64,
    redis: String,
    quick: bool,
    perf: Option<String>,
    /// Print Redis's busiest commands during each drain (`--redis-stats`).
    redis_stats: bool,
    /// Count the drain, scripts and api nodes' instructions with callgrind, its files in this directory.
    callgrind: Option<String>,
}

const ALL: [&str; 9] = ["drain", "scripts", "batch", "embedded", "ingest", "api", "latency", "million", "scale"];

fn options() -> Options {
    let mut o = Options {
        cases: ALL.iter().map(|c| c.to_string()).collect(),
        jobs: 20_000,
        quota: 0.2,
        redis: support::redis_url(),
        quick: false,
        perf: None,
        redis_stats: false,
        callgrind: None,
    };
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--cases" => o.cases = v.split(',').map(String::from).collect(),
            "--jobs" => o.jobs = v.parse().expect("--jobs N"),
            "--quota" => o.quota = v.parse().expect("--quota CORES"),
            "--redis" => o.redis = v,
            "--perf" => o.perf = Some(v),
            "--callgrind" => o.callgrind = Some(v),
            "--quick" => {
                o.quick = true;
                i += 1;
                continue;
            }
            "--redis-stats" => {
                o.redis_stats = true;
                i += 1;
                continue;
            }
            other => panic!("unknown option {other}"),
        }
        i += 2;
    }
    if o.quick {
        o.jobs = o.jobs.min(5_000);
    }
    o
}

/// A sink that answers 200 at once with a small JSON body. It reads every body as JSON,
/// counts requests and the records of bulk calls, and notes when each record's first
/// request arrived (Unix µs).
#[derive(Clone)]
struct FastSink {
    url: String,
    requests: Arc<AtomicUsize>,
    records: Arc<AtomicUsize>,
    arrivals: Arc<Mutex<HashMap<String, u64>>>,
}

fn unix_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

impl FastSink {
    fn start() -> FastSink {
        let requests: Arc<AtomicUsize> = Arc::default();
        let records: Arc<AtomicUsize> = Arc::default();
        let arrivals: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (rq, rc, ar) = (requests.clone(), records.clone(), arrivals.clone());
        let server = HttpServer::new(move || {
            let (rq, rc, ar) = (rq.clone(), rc.clone(), ar.clone());
            App::new().default_service(web::to(move |req: actix_web::HttpRequest, body: web::Bytes| {
                let (rq, rc, ar) = (rq.clone(), rc.clone(), ar.clone());
                async move {
                    let now = unix_us();
                    rq.fetch_add(1, Ordering::Relaxed);
                    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                    let ids: Vec<String> = match v["records"].as_array() {
                        Some(rs) => rs.iter().filter_map(|r| r["id"].as_str().map(String::from)).collect(),
                        None => v["id"].as_str().map(String::from).into_iter().collect(),
                    };
                    if req.path() != "/raw" {
                        rc.fetch_add(ids.len(), Ordering::Relaxed);
                        let mut map = ar.lock().unwrap();
                        for id in ids {
                            map.entry(id).or_insert(now);
                        }
                    }
                    HttpResponse::Ok().content_type("application/json").body(r#"{"ok":true,"ticketId":"T-1"}"#)
                }
            }))
        })
        .workers(1)
        .disable_signals()
        .backlog(2048)
        .listen(listener)
        .unwrap()
        .run();
        actix_rt::spawn(server);
        FastSink { url, requests, records, arrivals }
    }

    fn reset(&self) {
        self.requests.store(0, Ordering::SeqCst);
        self.records.store(0, Ordering::SeqCst);
        self.arrivals.lock().unwrap().clear();
    }

    fn arrival(&self, id: &str) -> Option<u64> {
        self.arrivals.lock().unwrap().get(id).copied()
    }

    fn records(&self) -> usize {
        self.records.load(Ordering::Relaxed)
    }
}

/// Requests/s `wrk` reaches against the sink: POSTs of a 500-byte JSON body over 64
/// connections (the concurrency Hookline uses), for five seconds. (Off this thread: the
/// sink runs on this process's runtime.)
async fn raw_rate(sink: &FastSink) -> Option<f64> {
    let sink = sink.clone();
    tokio::task::spawn_blocking(move || raw_rate_blocking(&sink)).await.ok().flatten()
}

fn raw_rate_blocking(sink: &FastSink) -> Option<f64> {
    let filler = "x".repeat(440);
    let body = json!({"id": "raw", "note": filler}).to_string();
    let script = std::env::temp_dir().join(format!("hl-wrk-{}.lua", std::process::id()));
    let lua = format!(
        "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = '{}'\n",
        body.replace('\'', "\\'")
    );
    std::fs::write(&script, lua).ok()?;
    let out = std::process::Command::new("wrk")
        .args(["-t2", "-c64", "-d5s", "-s"])
        .arg(&script)
        .arg(format!("{}/raw", sink.url))
        .output()
        .ok()?;
    let _ = std::fs::remove_file(&script);
    // Requests wrk sent just before it stopped may still be in the sink: let them land, so
    // that none is counted as a call of the first case.
    let mut seen = sink.requests.load(Ordering::Relaxed);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = sink.requests.load(Ordering::Relaxed);
        if now == seen {
            break;
        }
        seen = now;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| l.strip_prefix("Requests/sec:")).and_then(|v| v.trim().parse().ok())
}

/// CPU seconds (user + system) a process has used so far.
fn process_cpu(pid: u32) -> f64 {
    let (user, system) = process_cpu_split(pid);
    user + system
}

/// A process's `write`-family system calls (`syscw` of `/proc/PID/io`: `write`, `writev`
/// and the like; the kernel does not count `send`/`recv` on sockets there, nor reads by
/// `recv`) and context switches, all its threads together.
fn process_calls(pid: u32) -> [f64; 2] {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let field = |text: &str, name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(0.0)
    };
    let mut switches = 0.0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            switches += field(&status, "voluntary_ctxt_switches:") + field(&status, "nonvoluntary_ctxt_switches:");
        }
    }
    [field(&io, "syscw:"), switches]
}

/// CPU seconds a process has spent in user space and in the kernel.
fn process_cpu_split(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|t| t.parse::<f64>().ok()).unwrap_or(0.0) / 100.0;
    (ticks(11), ticks(12))
}

/// CPU seconds the whole machine has been busy (every state but idle and iowait), and the
/// number of cores.
fn machine_busy() -> (f64, usize) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cores = stat.lines().filter(|l| l.starts_with("cpu") && !l.starts_with("cpu ")).count().max(1);
    let busy = stat
        .lines()
        .next()
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .enumerate()
                .filter(|(i, _)| *i != 3 && *i != 4)
                .filter_map(|(_, v)| v.parse::<f64>().ok())
                .sum::<f64>()
        })
        .unwrap_or(0.0);
    (busy / 100.0, cores)
}

/// A process's resident memory now and at its peak, MB.
fn rss_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).expect("Redis URL").get_multiplexed_async_connection().await.expect("Redis")
}

/// CPU seconds Redis has used so far.
async fn redis_cpu(url: &str) -> f64 {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(&mut redis_conn(url).await).await.unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| *k == "used_cpu_sys" || *k == "used_cpu_user")
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum()
}

/// Redis's busiest commands since the stats were reset: (command, calls, total µs), most
/// time first (a script's time includes the commands it ran, which are listed too).
async fn redis_command_stats(url: &str) -> Vec<(String, u64, u64)> {
    let info: String =
        redis::cmd("INFO").arg("commandstats").query_async(&mut redis_conn(url).await).await.unwrap_or_default();
    let mut stats: Vec<(String, u64, u64)> = info
        .lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let field = |key: &str| rest.split(',').find_map(|kv| kv.strip_prefix(key)?.parse::<u64>().ok());
            Some((name.to_string(), field("calls=")?, field("usec=")?))
        })
        .collect();
    stats.sort_by_key(|s| std::cmp::Reverse(s.2));
    stats
}

/// Redis's `used_memory`, bytes.
async fn redis_memory(url: &str) -> f64 {
    let info: String =
        redis::cmd("INFO").arg("memory").query_async(&mut redis_conn(url).await).await.unwrap_or_default();
    info.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

/// Bytes the `bench` webhook's job streams take in Redis (`MEMORY USAGE`): the fresh one,
/// and the solo one (where full bulk calls wait).
async fn job_stream_bytes(url: &str, ns: &str) -> f64 {
    let mut conn = redis_conn(url).await;
    let mut total = 0.0;
    for stream in ["jobs", "solo"] {
        let bytes: Option<f64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(format!("{ns}:{{wh:bench}}:{stream}"))
            .arg("SAMPLES")
            .arg(0)
            .query_async(&mut conn)
            .await
            .unwrap_or(None);
        total += bytes.unwrap_or(0.0);
    }
    total
}

/// Removes every key of a namespace.
async fn drop_namespace(url: &str, ns: &str) {
    let mut conn = redis_conn(url).await;
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{ns}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap_or((0, vec![]));
        if !keys.is_empty() {
            let _: () = redis::cmd("UNLINK").arg(&keys).query_async(&mut conn).await.unwrap_or(());
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

/// Polls `check` every 20 ms until it holds or `limit` passed; false on time-out.
async fn until<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

async fn metric(base: &str, line_start: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics")).await.ok().map(|r| r.text());
    let text = match text {
        Some(t) => t.await.unwrap_or_default(),
        None => String::new(),
    };
    text.lines().filter(|l| l.starts_with(line_start)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// One row of the table.
#[derive(Default)]
struct Row {
    case: String,
    rate: f64,
    unit: &'static str,
    raw_ratio: bool,
    latency: Option<[f64; 3]>,
    cpu_per_1000: Option<f64>,
    rss_mb: Option<f64>,
    redis_per_job: Option<f64>,
    note: String,
}

struct Bench {
    o: Options,
    sink: FastSink,
    raw: Option<f64>,
    rows: Vec<Row>,
}

/// What a webhook of a case sends.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Template,
    Scripts,
    Batch(usize),
}

const BODY_SCRIPT: &str = "var r = data.changedEntities[0];\nwrite(JSON.stringify({id: r.id, n: r.n, note: r.note}));";
const RESPONSE_SCRIPT: &str = "var body = JSON.parse(http.getResponseBodyUtf8() || '{}');\n\
write(JSON.stringify({id: data.changedEntities[0].id, ticket: body.ticketId}));";

fn item_object() -> Value {
    json!({"name": "item", "fields": [{"key": "n", "type": "number"}, {"key": "note", "type": "string"},
                                       {"key": "ticket", "type": "string"}]})
}

fn webhook(sink: &FastSink, kind: Kind, concurrency: usize) -> Value {
    let mut wh = json!({
        "id": "bench", "object": "item", "trigger": {"on_create": true},
        "request": {"url": format!("{}/in", sink.url)},
        "settings": {"max_concurrency": concurrency, "timeout": "10s", "retries": 3, "retry_wait": "1s"}
    });
    match kind {
        Kind::Template => {
            wh["request"]["body_template"] = json!("{\"id\": \"{{ record.id }}\", \"n\": {{ record.n }}}");
        }
        Kind::Scripts => {
            wh["request"]["body_script"] = json!(BODY_SCRIPT);
            wh["response_script"] = json!(RESPONSE_SCRIPT);
            wh["writeback"] = json!({"key": {"from": "id", "to": "id"}});
        }
        Kind::Batch(size) => {
            wh["settings"]["max_batch_size"] = json!(size);
            wh["settings"]["batch_linger_ms"] = json!(20);
        }
    }
    wh
}

/// `clients` concurrent clients each POST `per` records one per call to the node at `base`
/// (ids `<prefix><client>-<k>`), every `gap` when given; each record's send time goes in `sent`.
async fn post_one_per_call(
    client: &reqwest::Client,
    base: &str,
    clients: usize,
    per: usize,
    prefix: &'static str,
    gap: Option<Duration>,
    sent: &Arc<Mutex<HashMap<String, u64>>>,
) {
    let url = format!("{base}/v1/objects/item/records");
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (url, sent, client) = (url.clone(), sent.clone(), client.clone());
            // On the runtime's worker threads, not the thread the sink's server is on.
            tokio::spawn(async move {
                let began = Instant::now();
                for k in 0..per {
                    if let Some(gap) = gap {
                        tokio::time::sleep_until((began + gap * k as u32).into()).await;
                    }
                    let id = format!("{prefix}{c}-{k}");
                    let body = json!({"id": id, "fields": {"n": k}});
                    sent.lock().unwrap().insert(id, unix_us());
                    let r = client.post(&url).json(&body).send().await.expect("API reachable");
                    assert!(r.status().is_success(), "{}", r.status());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("a client task");
    }
}

/// Writes `n` records (ids `r<from>`…) in requests of 1,000 from `clients` clients side by
/// side; `note` pads each record.
async fn write_records(api: &Api, from: usize, n: usize, clients: usize, note: &str) {
    let per = n.div_ceil(clients);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (base, note) = (api.base.clone(), note.to_string());
        let start = from + c * per;
        let end = (start + per).min(from + n);
        tasks.push(actix_rt::spawn(async move {
            let api = Api::at(&base);
            let mut i = start;
            while i < end {
                let stop = (i + 1000).min(end);
                let batch: Vec<Value> =
                    (i..stop).map(|k| json!({"id": format!("r{k}"), "fields": {"n": k, "note": note}})).collect();
                api.ok("POST", "/v1/objects/item/records", Some(json!(batch))).await;
                i = stop;
            }
        }));
    }
    for t in tasks {
        t.await.expect("a writer task");
    }
}

/// Records the trigger has queued for the bench webhook (a bulk webhook's queue holds a
/// full call's records in one entry, so the queue's depth counts entries, not records).
async fn records_queued(api: &Api) -> usize {
    metric(&api.base, "hookline_records_fired_total{webhook=\"bench\"}").await as usize
}

fn node(name: &str, o: &Options, ns: &str, dir: Option<&std::path::Path>, extra: &[&str]) -> Proc {
    let mut args: Vec<String> = match dir {
        Some(d) => vec!["--data-dir".into(), d.display().to_string()],
        None => vec!["--redis".into(), o.redis.clone(), "--namespace".into(), ns.into()],
    };
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match (&o.callgrind, name.strip_suffix("-callgrind")) {
        (Some(dir), Some(case)) => {
            std::fs::create_dir_all(dir).expect("the --callgrind directory");
            let wrapper = [
                "valgrind".to_string(),
                "--tool=callgrind".into(),
                "--instr-atstart=no".into(),
                format!("--callgrind-out-file={dir}/{case}.%p"),
            ];
            Proc::start_wrapped(name, &args, &wrapper)
        }
        _ => Proc::start(name, &args),
    }
}

/// Turns callgrind's counting on (`true`) or off and dumps what it counted.
fn callgrind_control(pid: u32, on: bool) {
    let args: &[&str] = if on { &["-i", "on"] } else { &["-d"] };
    let status = std::process::Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .status();
    assert!(status.is_ok_and(|s| s.success()), "callgrind_control {args:?} {pid} failed");
}

/// The instructions in the newest dump of `pid` in `dir` (its `summary:` line).
fn callgrind_instructions(dir: &str, case: &str, pid: u32) -> Option<f64> {
    let prefix = format!("{case}.{pid}");
    let newest = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())?;
    let text = std::fs::read_to_string(newest.path()).ok()?;
    text.lines().find_map(|l| l.strip_prefix("summary:")).and_then(|n| n.trim().parse().ok())
}

fn percentiles(mut v: Vec<f64>) -> [f64; 3] {
    if v.is_empty() {
        return [0.0; 3];
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    [at(0.50), at(0.95), at(0.99)]
}

/// With `--perf`, samples the node's stacks while it drains.
fn profile(path: &Option<String>, pid: u32) -> Option<std::process::Child> {
    let out = path.as_ref()?;
    let child = std::process::Command::new("perf")
        .args(["record", "-F", "1999", "-e", "cpu-clock", "--call-graph", "dwarf,16384", "-o", out, "-p"])
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

/// What one run of [`Bench::api_load`] measured.
struct ApiLoad {
    /// Records/s the API accepted.
    accepted: f64,
    /// Records/s at the sink, from the first request to the last arrival.
    delivered: f64,
    /// Record sent → request at the sink, ms.
    latencies: Vec<f64>,
    /// Node CPU seconds per delivered record.
    cpu_per_record: f64,
    /// The part of that CPU time spent in the kernel (system calls, network stack).
    kernel_share: f64,
    /// Per delivered record: `write`-family system calls, context switches.
    calls: [f64; 2],
    /// Node instructions per delivered record, under `--callgrind`.
    instructions_per_record: Option<f64>,
}

impl Bench {
    /// A queue of `jobs` drained by one node: deliveries (or records) per second.
    async fn drain(&mut self, case: &str, kind: Kind, embedded: bool) {
        let jobs = self.o.jobs;
        self.sink.reset();
        let ns = namespace();
        let dir = tempfile::tempdir().expect("a temp dir");
        let counting = self.o.callgrind.clone().filter(|_| matches!(case, "drain" | "scripts"));
        let name = if counting.is_some() { format!("{case}-callgrind") } else { case.to_string() };
        let proc = node(&name, &self.o, &ns, embedded.then(|| dir.path()), &[]);
        let api = Api::at(&proc.url);
        api.ok("POST", "/v1/objects", Some(item_object())).await;
        api.ok("POST", "/v1/webhooks", Some(webhook(&self.sink, kind, 64))).await;
        api.ok("POST", "/v1/webhooks/bench/pause", None).await;
        let memory_before = if embedded { 0.0 } else { redis_memory(&self.o.redis).await };
        write_records(&api, 0, jobs, 4, "").await;
        let queued = until(Duration::from_secs(600), || async { records_queued(&api).await >= jobs }).await;
        assert!(queued, "{case}: the jobs never all queued");
        let (redis_per_job, redis_total_per_job) = if embedded {
            (None, None)
        } else {
            let total = (redis_memory(&self.o.redis).await - memory_before) / jobs as f64;
            (Some(job_stream_bytes(&self.o.redis, &ns).await / jobs as f64), Some(total))
        };

        let pid = proc.child.id();
        let (cpu0, redis0) = (process_cpu(pid), if embedded { 0.0 } else { redis_cpu(&self.o.redis).await });
        let perf = profile(&self.o.perf, pid);
        if counting.is_some() {
            callgrind_control(pid, true);
        }
        if self.o.redis_stats && !embedded {
            let _: () = redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .query_async(&mut redis_conn(&self.o.redis).await)
                .await
                .unwrap_or(());
        }
        let start = Instant::now();
        api.ok("POST", "/v1/webhooks/bench/resume", None).await;
        let done = until(Duration::from_secs(900), || async { self.sink.records() >= jobs }).await;
        let delivered = start.elapsed().as_secs_f64();
        // With write-backs, the case ends when the last one is written.
        let done = done
            && (kind != Kind::Scripts
                || until(Duration::from_secs(900), || async {
                    metric(&api.base, "hookline_writebacks_total{webhook=\"bench\"}").await as usize >= jobs
                })
                .await);
        let took = start.elapsed().as_secs_f64();
        stop_profile(perf);
        let instructions = counting.and_then(|dir| {
            callgrind_control(pid, false);
            callgrind_instructions(&dir, case, pid)
        });
        assert!(done, "{case}: not drained in time ({} of {jobs} at the sink)", self.sink.records());
        let cpu = process_cpu(pid) - cpu0;
        let redis_cores = if embedded { 0.0 } else { (redis_cpu(&self.o.redis).await - redis0) / took };
        let (_, peak) = rss_mb(pid);
        if self.o.redis_stats && !embedded {
            eprintln!("{case}: Redis commands while draining (calls, µs per delivery):");
            for (name, calls, usec) in redis_command_stats(&self.o.redis).await.into_iter().take(16) {
                eprintln!("  {name:<24} {calls:>8} {:>8.2}", usec as f64 / jobs as f64);
            }
        }
        drop(proc);
        if !embedded {
            drop_namespace(&self.o.redis, &ns).await;
        }
        let calls = self.sink.requests.load(Ordering::Relaxed);
        let unit = if matches!(kind, Kind::Batch(_)) { "records/s" } else { "deliveries/s" };
        self.rows.push(Row {
            case: case.to_string(),
            rate: jobs as f64 / took,
            unit,
            raw_ratio: true,
            cpu_per_1000: Some(cpu * 1000.0 / jobs as f64),
            rss_mb: Some(peak),
            redis_per_job,
            note: format!(
                "{jobs} jobs, {calls} calls{}; node {:.2} cores{}{}",
                if kind == Kind::Scripts {
                    format!(", all at the sink after {delivered:.1} s of {took:.1} s")
                } else {
                    String::new()
                },
                cpu / took,
                match redis_total_per_job {
                    Some(total) =>
                        format!(", Redis {redis_cores:.2} cores, {total:.0} bytes per record and job in all"),
                    None => String::new(),
                },
                match instructions {
                    Some(n) => format!("; under callgrind: {:.0} node instructions per delivery", n / jobs as f64),
                    None => String::new(),
                }
            ),
            ..Default::default()
        });
    }

    /// Bulk ingestion: records/s accepted, 1,000 per request, four clients, no webhook.
    async fn ingest(&mut self) {
        let n = if self.o.quick { 20_000 } else { 100_000 };
        let ns = namespace();
        let proc = node("ingest", &self.o, &ns, None, &[]);
        let api = Api::at(&proc.url);
        api.ok("POST", "/v1/objects", Some(item_object())).await;
        let pid = proc.child.id();
        let (cpu0, redis0) = (process_cpu(pid), redis_cpu(&self.o.redis).await);
        let start = Instant::now();
        write_records(&api, 0, n, 4, "").await;
        let took = start.elapsed().as_secs_f64();
        let cpu = process_cpu(pid) - cpu0;
        let redis_cores = (redis_cpu(&self.o.redis).await - redis0) / took;
        let (_, peak) = rss_mb(pid);
        drop(proc);
        drop_namespace(&self.o.redis, &ns).await;
        self.rows.push(Row {
            case: "ingest".into(),
            rate: n as f64 / took,
            unit: "records/s",
            cpu_per_1000: Some(cpu * 1000.0 / n as f64),
            rss_mb: Some(peak),
            note: format!(
                "{n} records, 1,000 per request, 4 clients, no webhook; node {:.2} cores, Redis {redis_cores:.2} cores",
                cpu / took
            ),
            ..Default::default()
        });
    }

    /// One record per API call from `clients` clients, at most `rate` calls/s in all (None:
    /// as fast as they go). Returns (records/s accepted, delivered/s, latencies in ms, node
    /// CPU s per delivered record).
    ///
    /// With `--callgrind`, the full-speed run's node runs under callgrind and the node's
    /// instructions per delivered record come back as well.
    async fn api_load(&self, n: usize, clients: usize, rate: Option<f64>) -> ApiLoad {
        self.sink.reset();
        let ns = namespace();
        let counting = self.o.callgrind.clone().filter(|_| rate.is_none());
        let proc = node(if counting.is_some() { "api-callgrind" } else { "api" }, &self.o, &ns, None, &[]);
        let api = Api::at(&proc.url);
        api.ok("POST", "/v1/objects", Some(item_object())).await;
        api.ok("POST", "/v1/webhooks", Some(webhook(&self.sink, Kind::Template, 64))).await;
        let client = reqwest::Client::builder().pool_max_idle_per_host(clients).build().expect("an HTTP client");
        // Not measured: a fresh node opens its connections (to Redis, to the sink) and loads
        // its scripts with its first records, which took the first tenth of a run to p99s
        // three times the rest's. The rows are about a node that is running.
        let warm = clients * 10;
        post_one_per_call(&client, &proc.url, clients, 10, "w", None, &Arc::default()).await;
        assert!(until(Duration::from_secs(60), || async { self.sink.records() >= warm }).await, "warm-up");
        self.sink.reset();
        let sent: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let pid = proc.child.id();
        if counting.is_some() {
            callgrind_control(pid, true);
        }
        let perf = if rate.is_none() { profile(&self.o.perf, pid) } else { None };
        let (cpu0, calls0) = (process_cpu_split(pid), process_calls(pid));
        let start = Instant::now();
        let per = n / clients;
        let gap = rate.map(|r| Duration::from_secs_f64(clients as f64 / r));
        post_one_per_call(&client, &proc.url, clients, per, "a", gap, &sent).await;
        let accepted = (per * clients) as f64 / start.elapsed().as_secs_f64();
        let total = per * clients;
        until(Duration::from_secs(300), || async { self.sink.records() >= total }).await;
        let delivered = total as f64 / start.elapsed().as_secs_f64();
        let (user, system) = process_cpu_split(pid);
        let (user, system) = (user - cpu0.0, system - cpu0.1);
        let calls = process_calls(pid);
        let calls = [0, 1].map(|i| (calls[i] - calls0[i]) / total as f64);
        stop_profile(perf);
        let instructions = counting.and_then(|dir| {
            callgrind_control(pid, false);
            callgrind_instructions(&dir, "api", pid)
        });
        drop(proc);
        drop_namespace(&self.o.redis, &ns).await;
        let sent = sent.lock().unwrap();
        let latencies: Vec<f64> = sent
            .iter()
            .filter_map(|(id, at)| self.sink.arrival(id).map(|got| got.saturating_sub(*at) as f64 / 1000.0))
            .collect();
        ApiLoad {
            accepted,
            delivered,
            latencies,
            cpu_per_record: (user + system) / total as f64,
            kernel_share: system / (user + system).max(1e-9),
            calls,
            instructions_per_record: instructions.map(|n| n / total as f64),
        }
    }

    async fn api(&mut self) {
        // Runs of a few seconds each: in runs of 1.4 s, one stall of the shared machine of
        // 0.1 s (seen in some full tables, never in runs of this case alone) set the p99.
        let n = if self.o.quick { 5_000 } else { 50_000 };
        let full = self.api_load(n, 64, None).await;
        self.rows.push(Row {
            case: "api, full speed".into(),
            rate: full.delivered,
            unit: "delivered/s",
            raw_ratio: true,
            latency: Some(percentiles(full.latencies)),
            cpu_per_1000: Some(full.cpu_per_record * 1000.0),
            note: format!(
                "{n} records (after 640 not measured), 64 clients, one per call: {:.0} records/s accepted; node CPU {:.0} % in the kernel; per record {:.1} write/writev calls, {:.1} context switches{}",
                full.accepted,
                full.kernel_share * 100.0,
                full.calls[0],
                full.calls[1],
                match full.instructions_per_record {
                    Some(i) => format!("; under callgrind: {i:.0} node instructions per record"),
                    None => String::new(),
                }
            ),
            ..Default::default()
        });
        let half = full.delivered / 2.0;
        let seconds = if self.o.quick { 1.0 } else { 5.0 };
        let load = self.api_load(((half * seconds) as usize).max(64), 64, Some(half)).await;
        self.rows.push(Row {
            case: "api, half speed".into(),
            rate: load.delivered,
            unit: "delivered/s",
            latency: Some(percentiles(load.latencies)),
            cpu_per_1000: Some(load.cpu_per_record * 1000.0),
            note: format!(
                "clients paced to {half:.0} records/s in all, for {seconds:.0} s; node CPU {:.0} % in the kernel",
                load.kernel_share * 100.0
            ),
            ..Default::default()
        });
    }

    async fn latency(&mut self) {
        self.sink.reset();
        // A thousand, so that p99 is not the third-worst of a few hundred.
        let samples = if self.o.quick { 100 } else { 1_000 };
        let ns = namespace();
        let proc = node("latency", &self.o, &ns, None, &[]);
        let api = Api::at(&proc.url);
        api.ok("POST", "/v1/objects", Some(item_object())).await;
        api.ok("POST", "/v1/webhooks", Some(webhook(&self.sink, Kind::Template, 64))).await;
        let mut took = Vec::with_capacity(samples);
        for i in 0..samples + 20 {
            let id = format!("l{i}");
            let sent = unix_us();
            api.ok("POST", "/v1/objects/item/records", Some(json!({"id": id, "fields": {"n": i}}))).await;
            let mut arrived = None;
            let waited = Instant::now();
            while arrived.is_none() {
                arrived = self.sink.arrival(&id);
                assert!(waited.elapsed() < Duration::from_secs(30), "record {id} never arrived");
                tokio::time::sleep(Duration::from_micros(100)).await;
            }
            if i >= 20 {
                took.push(arrived.unwrap_or(sent).saturating_sub(sent) as f64 / 1000.0);
            }
        }
        drop(proc);
        drop_namespace(&self.o.redis, &ns).await;
        self.rows.push(Row {
            case: "latency, unloaded".into(),
            rate: 0.0,
            unit: "",
            latency: Some(percentiles(took)),
            note: format!("{samples} records one at a time: POST sent → request at the sink"),
            ..Default::default()
        });
    }

    /// A million queued jobs of about 1 KB: Redis memory per job, node RSS while draining.
    async fn million(&mut self) {
        let n = if self.o.quick { 50_000 } else { 1_000_000 };
        self.sink.reset();
        let ns = namespace();
        let proc = node("million", &self.o, &ns, None, &[]);
        let api = Api::at(&proc.url);
        api.ok("POST", "/v1/objects", Some(item_object())).await;
        api.ok("POST", "/v1/webhooks", Some(webhook(&self.sink, Kind::Template, 64))).await;
        api.ok("POST", "/v1/webhooks/bench/pause", None).await;
        let before = redis_memory(&self.o.redis).await;
        // A job carries its record's fields: ~1 KB with the note.
        let note = "x".repeat(950);
        write_records(&api, 0, n, 4, &note).await;
        assert!(until(Duration::from_secs(1800), || async { records_queued(&api).await >= n }).await, "queued");
        let after = redis_memory(&self.o.redis).await;
        let stream_bytes = job_stream_bytes(&self.o.redis, &ns).await;
        let pid = proc.child.id();
        let (rss_queued, _) = rss_mb(pid);
        let cpu0 = process_cpu(pid);
        let start = Instant::now();
        api.ok("POST", "/v1/webhooks/bench/resume", None).await;
        let mut peak_draining: f64 = 0.0;
        while self.sink.records() < n {
            peak_draining = peak_draining.max(rss_mb(pid).0);
            assert!(start.elapsed() < Duration::from_secs(3600), "a million jobs not drained in an hour");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let took = start.elapsed().as_secs_f64();
        let cpu = process_cpu(pid) - cpu0;
        drop(proc);
        drop_namespace(&self.o.redis, &ns).await;
        self.rows.push(Row {
            case: format!("{}k queued, 1 KB each", n / 1000),
            rate: n as f64 / took,
            unit: "deliveries/s",
            raw_ratio: true,
            cpu_per_1000: Some(cpu * 1000.0 / n as f64),
            rss_mb: Some(peak_draining),
            redis_per_job: Some(stream_bytes / n as f64),
            note: format!(
                "Redis: {:.0} bytes per job on the job stream, {:.0} per record and job in all; node RSS {rss_queued:.0} MB queued, at most {peak_draining:.0} MB draining",
                stream_bytes / n as f64,
                (after - before) / n as f64,
            ),
            ..Default::default()
        });
    }

    /// Dispatcher nodes each held to `quota` of a core draining one queue: 1, 2, 4 nodes.
    /// Three rounds of the three sizes, interleaved so drift on the machine hits each size
    /// alike; each row gives the median of its rounds' rates over the same round's one-node
    /// rate.
    async fn scale(&mut self) {
        let jobs_per_node = if self.o.quick { 3_000 } else { 12_000 };
        let rounds = if self.o.quick { 1 } else { 3 };
        let sizes = [1usize, 2, 4];
        let mut runs: Vec<Vec<ScaleRun>> = vec![Vec::new(); sizes.len()];
        for _ in 0..rounds {
            for (i, nodes) in sizes.iter().enumerate() {
                // As many jobs per node as for one: every run lasts about as long, so start
                // and end (nodes joining, the last calls) weigh the same in each rate.
                let run = self.scale_run(*nodes, jobs_per_node * nodes).await;
                runs[i].push(run);
            }
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        for (i, nodes) in sizes.iter().enumerate() {
            // Each round's N nodes against that round's one node: the machine's speed drifts
            // between rounds more than within one.
            let ratio = median((0..rounds).map(|r| runs[i][r].rate / runs[0][r].rate).collect());
            let per_node = ratio / *nodes as f64;
            let rate = median(runs[i].iter().map(|r| r.rate).collect());
            let m = runs[i].iter().find(|r| r.rate == rate).expect("the median is one of the runs");
            let all: Vec<String> = runs[i].iter().map(|r| format!("{:.0}", r.rate)).collect();
            let note = if !m.limited {
                "no cgroup CPU controller writable: nodes not held to a quota".to_string()
            } else {
                // Where the limit is, when the nodes no longer scale.
                let limit = if *nodes == 1 || per_node >= 0.9 {
                    String::new()
                } else if m.redis_cores >= 0.85 {
                    "; below 0.9 × per node: Redis, single-threaded, is saturated".to_string()
                } else if m.machine_cores >= 0.9 * m.cores as f64 {
                    format!("; below 0.9 × per node: the machine's {} cores are saturated", m.cores)
                } else if m.dispatcher_cores < 0.9 * self.o.quota * *nodes as f64 {
                    "; below 0.9 × per node: the dispatchers wait (on Redis or the sink), not on their quota"
                        .to_string()
                } else {
                    String::new()
                };
                format!(
                    "each held to {} core; rounds in order {}/s; median of the rounds' ratios {ratio:.2} × that round's one node ({per_node:.2} × per node); dispatchers {:.2} cores, Redis {:.2}, machine {:.2} of {}{limit}",
                    self.o.quota,
                    all.join(", "),
                    m.dispatcher_cores,
                    m.redis_cores,
                    m.machine_cores,
                    m.cores,
                )
            };
            self.rows.push(Row {
                case: format!("scale-out, {nodes} dispatcher{}", if *nodes > 1 { "s" } else { "" }),
                rate,
                unit: "deliveries/s",
                raw_ratio: true,
                note,
                ..Default::default()
            });
        }
    }

    /// One drain of `jobs` queued jobs by `nodes` dispatcher nodes, each held to the quota.
    async fn scale_run(&self, nodes: usize, jobs: usize) -> ScaleRun {
        self.sink.reset();
        let ns = namespace();
        let api_node = node("scale-api", &self.o, &ns, None, &["--roles", "api,coordinator,trigger"]);
        let api = Api::at(&api_node.url);
        api.ok("POST", "/v1/objects", Some(item_object())).await;
        api.ok("POST", "/v1/webhooks", Some(webhook(&self.sink, Kind::Template, 256))).await;
        api.ok("POST", "/v1/webhooks/bench/pause", None).await;
        write_records(&api, 0, jobs, 4, "").await;
        assert!(until(Duration::from_secs(600), || async { records_queued(&api).await >= jobs }).await);
        let dispatchers: Vec<Proc> =
            (0..nodes).map(|i| node(&format!("scale-d{i}"), &self.o, &ns, None, &["--roles", "dispatcher"])).collect();
        let groups: Vec<Option<Cgroup>> = dispatchers
            .iter()
            .enumerate()
            .map(|(i, d)| Cgroup::hold(&format!("hl-bench-{i}"), d.child.id(), self.o.quota))
            .collect();
        let limited = groups.iter().all(Option::is_some);
        let pids: Vec<u32> = dispatchers.iter().map(|d| d.child.id()).collect();
        let node_cpu = || pids.iter().map(|p| process_cpu(*p)).sum::<f64>();
        let (cpu0, redis0, (machine0, cores)) = (node_cpu(), redis_cpu(&self.o.redis).await, machine_busy());
        let start = Instant::now();
        api.ok("POST", "/v1/webhooks/bench/resume", None).await;
        let done = until(Duration::from_secs(900), || async { self.sink.records() >= jobs }).await;
        let took = start.elapsed().as_secs_f64();
        assert!(done, "scale: {nodes} nodes did not drain");
        let run = ScaleRun {
            rate: jobs as f64 / took,
            dispatcher_cores: (node_cpu() - cpu0) / took,
            redis_cores: (redis_cpu(&self.o.redis).await - redis0) / took,
            machine_cores: (machine_busy().0 - machine0) / took,
            cores,
            limited,
        };
        drop(dispatchers);
        drop(groups);
        drop(api_node);
        drop_namespace(&self.o.redis, &ns).await;
        run
    }

    fn print(&self) {
        println!();
        println!(
            "| case | rate | × raw | p50 / p95 / p99 ms | node CPU s / 1,000 | node peak RSS MB | Redis bytes / job | notes |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for r in &self.rows {
            let rate = if r.unit.is_empty() { "—".to_string() } else { format!("{:.0} {}", r.rate, r.unit) };
            let ratio = match (r.raw_ratio, self.raw) {
                (true, Some(raw)) if raw > 0.0 => format!("{:.3}", r.rate / raw),
                _ => "—".into(),
            };
            let lat = r.latency.map(|[a, b, c]| format!("{a:.2} / {b:.2} / {c:.2}")).unwrap_or_else(|| "—".into());
            let cpu = r.cpu_per_1000.map(|c| format!("{c:.3}")).unwrap_or_else(|| "—".into());
            let rss = r.rss_mb.map(|m| format!("{m:.0}")).unwrap_or_else(|| "—".into());
            let redis = r.redis_per_job.map(|b| format!("{b:.0}")).unwrap_or_else(|| "—".into());
            println!("| {} | {rate} | {ratio} | {lat} | {cpu} | {rss} | {redis} | {} |", r.case, r.note);
        }
        match self.raw {
            Some(raw) => {
                println!("\nraw: wrk -t2 -c64 -d5s, POST of a 500-byte JSON body to the same sink: {raw:.0} requests/s")
            }
            None => println!("\nraw: wrk not found; no ratio"),
        }
    }
}

/// One scale-out drain: its rate and where the cores went.
#[derive(Clone)]
struct ScaleRun {
    rate: f64,
    dispatcher_cores: f64,
    redis_cores: f64,
    machine_cores: f64,
    cores: usize,
    limited: bool,
}

/// A cgroup v1 `cpu` group holding one process to a share of a core; removed when dropped.
struct Cgroup {
    path: std::path::PathBuf,
}

impl Cgroup {
    fn hold(name: &str, pid: u32, cores: f64) -> Option<Cgroup> {
        let path = std::path::Path::new("/sys/fs/cgroup/cpu").join(name);
        std::fs::create_dir_all(&path).ok()?;
        // A short period spreads the quota evenly: with the default 100 ms a node runs 20 ms
        // and then stalls 80 ms, holding its leased jobs and permits while stalled.
        std::fs::write(path.join("cpu.cfs_period_us"), "10000").ok()?;
        std::fs::write(path.join("cpu.cfs_quota_us"), ((cores * 10_000.0) as u64).to_string()).ok()?;
        // Every thread of the process (cgroup.procs moves them all).
        std::fs::write(path.join("cgroup.procs"), pid.to_string()).ok()?;
        Some(Cgroup { path })
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Its processes are gone (killed before); an empty group can be removed.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn main() {
    let o = options();
    // Clients run on a multi-threaded runtime: a load generator on one thread would measure
    // itself.
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a Tokio runtime")
    });
    system.block_on(async {
        let sink = FastSink::start();
        let raw = raw_rate(&sink).await;
        let mut b = Bench { o, sink, raw, rows: Vec::new() };
        let cases = b.o.cases.clone();
        for case in &cases {
            eprintln!("bench: {case}");
            match case.as_str() {
                "drain" => b.drain("drain", Kind::Template, false).await,
                "scripts" => b.drain("scripts", Kind::Scripts, false).await,
                "batch" => b.drain("batch of 100", Kind::Batch(100), false).await,
                "embedded" => b.drain("embedded", Kind::Template, true).await,
                "ingest" => b.ingest().await,
                "api" => b.api().await,
                "latency" => b.latency().await,
                "million" => b.million().await,
                "scale" => b.scale().await,
                other => panic!("unknown case {other} (cases: {})", ALL.join(", ")),
            }
        }
        b.print();
    });
}
