//! Delivery throughput, measured against a local sink (not a test: `scripts/bench.sh`).
//!
//! For each configuration it reports records/s accepted by the API, Hookline deliveries/s,
//! and the same sink's raw requests/s driven directly by this program at the same
//! concurrency, with the ratio of the two measured in the same run — absolute numbers on
//! shared machines drift, ratios much less.
//!
//! Usage: deliveries [--records N] [--nodes 1,2,3] [--concurrency C] [--sink-ms MS]
//!                   [--batch 1,10,100] [--store redis|embedded] [--redis URL]
//!                   [--trigger realtime|schedule] [--ingest]
//!
//! `--trigger schedule` writes the records first, then saves a webhook scheduled every
//! second: its first tick sends them all, and deliveries/s counts from the first call the
//! sink sees to the last record delivered.
//!
//! `--ingest` instead times `hookline import` of an NDJSON file of `--records` lines into a
//! fresh node, with no webhook and then with one firing on every record (to the sink, at
//! `--concurrency`, in calls of the first `--batch`), and reports records/s accepted.

#[path = "../tests/procs.rs"]
mod procs;
#[path = "../tests/support.rs"]
mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use procs::{Proc, Sink};
use serde_json::json;
use support::{Api, namespace, wait_until};

struct Options {
    records: usize,
    nodes: Vec<usize>,
    concurrency: usize,
    sink_ms: u64,
    batches: Vec<usize>,
    store: String,
    redis: String,
    scheduled: bool,
    ingest: bool,
}

fn options() -> Options {
    let mut o = Options {
        records: 5000,
        nodes: vec![1],
        concurrency: 64,
        sink_ms: 20,
        batches: vec![1],
        store: "redis".into(),
        redis: support::redis_url(),
        scheduled: false,
        ingest: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i + 1 < args.len() {
        let v = args[i + 1].clone();
        match args[i].as_str() {
            "--records" => o.records = v.parse().expect("--records N"),
            "--nodes" => o.nodes = v.split(',').map(|n| n.parse().expect("--nodes 1,2,3")).collect(),
            "--concurrency" => o.concurrency = v.parse().expect("--concurrency C"),
            "--sink-ms" => o.sink_ms = v.parse().expect("--sink-ms MS"),
            "--batch" => o.batches = v.split(',').map(|n| n.parse().expect("--batch 1,10,100")).collect(),
            "--store" => o.store = v,
            "--redis" => o.redis = v,
            "--trigger" => o.scheduled = v == "schedule",
            "--ingest" => {
                o.ingest = true;
                i += 1;
                continue;
            }
            "--bench" => {
                i += 1;
                continue;
            }
            other => panic!("unknown option {other}"),
        }
        i += 2;
    }
    o
}

/// Requests/s the sink answers when driven directly with `concurrency` keep-alive clients.
async fn raw_rate(sink: &Sink, total: usize, concurrency: usize) -> f64 {
    let client = reqwest::Client::new();
    let url = format!("{}/raw", sink.url);
    let body = json!({"records": [{"id": "raw"}]}).to_string();
    let start = Instant::now();
    let per = total / concurrency;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        tasks.push(actix_rt::spawn(async move {
            for _ in 0..per {
                let _ = client.post(&url).header("content-type", "application/json").body(body.clone()).send().await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (per * concurrency) as f64 / start.elapsed().as_secs_f64()
}

async fn run_once(o: &Options, nodes: usize, batch: usize) {
    let sink = Sink::start(Duration::from_millis(o.sink_ms));
    let ns = namespace();
    let dirs: Vec<std::path::PathBuf> =
        (0..nodes).map(|i| std::env::temp_dir().join(format!("hl-bench-{ns}-{i}"))).collect();
    let procs: Vec<Proc> = (0..nodes)
        .map(|i| {
            let name = format!("bench{i}");
            let dir = dirs[i].display().to_string();
            if o.store == "embedded" {
                assert_eq!(nodes, 1, "the embedded store is single-node");
                Proc::start(&name, &["--data-dir", &dir])
            } else {
                Proc::start(&name, &["--redis", &o.redis, "--namespace", &ns])
            }
        })
        .collect();
    let api = Api::at(&procs[0].url);
    api.ok("POST", "/v1/objects", Some(json!({"name": "item", "fields": [{"key": "n", "type": "number"}]}))).await;
    let webhook = |trigger| {
        json!({
            "id": "bench", "object": "item", "trigger": trigger,
            "request": {"url": format!("{}/in", sink.url)},
            "settings": {"max_concurrency": o.concurrency, "timeout": "10s", "retries": 3, "retry_wait": "1s",
                         "max_batch_size": batch, "batch_linger_ms": 50}
        })
    };
    if !o.scheduled {
        api.ok("POST", "/v1/webhooks", Some(webhook(json!({"on_create": true})))).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let mut start = Instant::now();
    for chunk in (0..o.records).collect::<Vec<_>>().chunks(500) {
        let batch: Vec<_> = chunk.iter().map(|i| json!({"id": format!("r{i}"), "fields": {"n": i}})).collect();
        api.ok("POST", "/v1/objects/item/records", Some(json!(batch))).await;
    }
    let accepted = start.elapsed();
    if o.scheduled {
        api.ok("POST", "/v1/webhooks", Some(webhook(json!({"schedule": "* * * * * *", "select": "changed"})))).await;
        // Up to two seconds to the first tick (the schedule begins at the next one).
        wait_until(Duration::from_secs(10), || async { sink.distinct_records() > 0 }).await;
        start = Instant::now();
    }
    wait_until(Duration::from_secs(600), || async { sink.distinct_records() >= o.records }).await;
    let delivered = start.elapsed();
    let max_in_flight = sink.max_in_flight.load(Ordering::SeqCst);
    drop(procs);
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }

    let raw = raw_rate(&sink, o.records.min(20_000), o.concurrency).await;
    let records_s = o.records as f64 / accepted.as_secs_f64();
    let deliveries_s = o.records as f64 / delivered.as_secs_f64();
    println!(
        "store={} trigger={} nodes={} batch={} records={} concurrency={} sink_ms={} | records/s accepted {:.0} | \
         deliveries/s {:.0} | raw sink req/s {:.0} | ratio {:.2} | max in flight {}",
        o.store,
        if o.scheduled { "schedule" } else { "realtime" },
        nodes,
        batch,
        o.records,
        o.concurrency,
        o.sink_ms,
        records_s,
        deliveries_s,
        raw,
        deliveries_s / raw,
        max_in_flight
    );
}

/// Times `hookline import` of `o.records` NDJSON lines into a fresh node; with `webhook`, a
/// webhook fires on every record and the time runs until the sink has them all.
async fn ingest_once(o: &Options, webhook: bool) {
    let sink = Sink::start(Duration::from_millis(o.sink_ms));
    let ns = namespace();
    let dir = std::env::temp_dir().join(format!("hl-bench-{ns}"));
    let node = if o.store == "embedded" {
        Proc::start("ingest", &["--data-dir", &dir.display().to_string()])
    } else {
        Proc::start("ingest", &["--redis", &o.redis, "--namespace", &ns])
    };
    let api = Api::at(&node.url);
    api.ok("POST", "/v1/objects", Some(json!({"name": "item", "fields": [{"key": "n", "type": "number"}]}))).await;
    if webhook {
        api.ok(
            "POST",
            "/v1/webhooks",
            Some(json!({
                "id": "bench", "object": "item", "trigger": {"on_create": true},
                "request": {"url": format!("{}/in", sink.url)},
                "settings": {"max_concurrency": o.concurrency, "max_batch_size": o.batches[0], "batch_linger_ms": 50}
            })),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let file = std::env::temp_dir().join(format!("hl-bench-{ns}.ndjson"));
    let lines: String = (0..o.records).map(|i| format!("{{\"id\":\"r{i}\",\"fields\":{{\"n\":{i}}}}}\n")).collect();
    std::fs::write(&file, lines).expect("write the NDJSON file");

    let start = Instant::now();
    let status = std::process::Command::new(procs::hookline_bin())
        .args(["import", &file.display().to_string(), "--object", "item", "--url", &node.url])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run hookline import");
    assert!(status.success(), "hookline import failed");
    let imported = start.elapsed();
    if webhook {
        wait_until(Duration::from_secs(600), || async { sink.distinct_records() >= o.records }).await;
    }
    let delivered = start.elapsed();
    drop(node);
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "ingest store={} webhook={} records={} | import {:.1} s, {:.0} records/s | all delivered {:.1} s, {:.0} records/s",
        o.store,
        if webhook { format!("on_create,batch={}", o.batches[0]) } else { "none".into() },
        o.records,
        imported.as_secs_f64(),
        o.records as f64 / imported.as_secs_f64(),
        delivered.as_secs_f64(),
        o.records as f64 / delivered.as_secs_f64(),
    );
}

fn main() {
    let o = options();
    actix_rt::System::new().block_on(async {
        if o.ingest {
            ingest_once(&o, false).await;
            ingest_once(&o, true).await;
            return;
        }
        for &n in &o.nodes {
            for &b in &o.batches {
                run_once(&o, n, b).await;
            }
        }
    });
}
