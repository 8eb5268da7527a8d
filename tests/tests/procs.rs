//! Real processes: `hookline serve` nodes started from the built binary, a Redis server of
//! a test's own (for restarts), and a sink that measures concurrency.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

/// The `hookline` binary next to this test binary (target/<profile>/hookline), or
/// `$HOOKLINE_BIN`. scripts/test.sh builds it before the tests.
pub fn hookline_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HOOKLINE_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe.parent().and_then(|deps| deps.parent()).map(|dir| dir.join("hookline")).expect("target dir");
    assert!(bin.exists(), "{} is missing: run `cargo build -p hookline` first (scripts/test.sh does)", bin.display());
    bin
}

/// A `hookline serve` child process; killed when dropped.
pub struct Proc {
    pub child: Child,
    pub url: String,
    pub name: String,
}

impl Proc {
    pub fn start(name: &str, args: &[&str]) -> Proc {
        Proc::start_wrapped(name, args, &[])
    }

    /// Like [`Proc::start`], with stderr (the logs) written to `log` at `level`.
    pub fn start_logging(name: &str, args: &[&str], log: &std::path::Path, level: &str) -> Proc {
        let file = std::fs::File::create(log).expect("log file");
        Proc::spawn(name, args, Stdio::from(file), level, &[])
    }

    /// Like [`Proc::start`], the node run by `wrapper` (a program and its arguments, given
    /// the node's command line after them), e.g. under valgrind.
    pub fn start_wrapped(name: &str, args: &[&str], wrapper: &[String]) -> Proc {
        let level = std::env::var("TEST_NODE_LOG").unwrap_or_else(|_| "warn".into());
        Proc::spawn(name, args, Stdio::inherit(), &level, wrapper)
    }

    fn spawn(name: &str, args: &[&str], stderr: Stdio, level: &str, wrapper: &[String]) -> Proc {
        let has = |flag: &str| args.contains(&flag);
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(hookline_bin());
                c
            }
            None => Command::new(hookline_bin()),
        };
        cmd.arg("serve").args(["--listen", "127.0.0.1:0", "--node-id", name, "--allow-target", "127.0.0.0/8"]);
        if !has("--secret-key") {
            cmd.args(["--secret-key", crate::support::TEST_SECRET_KEY]);
        }
        let mut child = cmd
            .args(args)
            .env("RUST_LOG", level)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start hookline");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let line = lines.next().expect("hookline printed its address").expect("readable stdout");
            if let Some(rest) = line.strip_prefix("hookline listening on ") {
                break rest.split_whitespace().next().unwrap_or_default().to_string();
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Proc { child, url, name: name.to_string() }
    }

    /// SIGKILL: no drain, no goodbye.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        self.child.wait().expect("wait for hookline")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A redis-server of the test's own, with an append-only file so a restart keeps the data.
pub struct OwnRedis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl OwnRedis {
    pub fn start() -> OwnRedis {
        let dir = std::env::temp_dir().join(format!("hl-redis-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = OwnRedis { port: free_port(), dir, child: None };
        r.spawn();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start on {}", self.port);
    }

    /// Stops Redis (SIGTERM: it finishes writing its append-only file) and starts it again
    /// on the same port with the same data, after `down` of downtime.
    pub fn restart(&mut self, down: Duration) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
        std::thread::sleep(down);
        self.spawn();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the sink saw of one request.
#[derive(Debug, Clone)]
pub struct Hit {
    pub webhook_id: String,
    pub record: String,
    /// The request's path.
    pub path: String,
}

/// A target that sleeps `delay` per request and records the most requests it ever had in
/// flight at once.
#[derive(Clone)]
pub struct Sink {
    pub url: String,
    pub hits: Arc<Mutex<Vec<Hit>>>,
    pub in_flight: Arc<AtomicUsize>,
    pub max_in_flight: Arc<AtomicUsize>,
}

struct SinkState {
    hits: Arc<Mutex<Vec<Hit>>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    delay: Duration,
}

impl Sink {
    pub fn start(delay: Duration) -> Sink {
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let in_flight: Arc<AtomicUsize> = Arc::default();
        let max_in_flight: Arc<AtomicUsize> = Arc::default();
        let state = web::Data::new(SinkState {
            hits: hits.clone(),
            in_flight: in_flight.clone(),
            max_in_flight: max_in_flight.clone(),
            delay,
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = HttpServer::new(move || {
            App::new().app_data(state.clone()).default_service(web::to(
                |req: HttpRequest, body: web::Bytes, s: web::Data<SinkState>| async move {
                    let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    s.max_in_flight.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(s.delay).await;
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let webhook_id =
                        req.headers().get("webhook-id").and_then(|h| h.to_str().ok()).unwrap_or("").to_string();
                    // A bulk call carries several records: one hit each.
                    let records = v["records"].as_array().cloned().unwrap_or_default();
                    let mut hits = s.hits.lock().unwrap();
                    for r in records {
                        let record = r["id"].as_str().unwrap_or_default().to_string();
                        hits.push(Hit { webhook_id: webhook_id.clone(), record, path: req.path().to_string() });
                    }
                    drop(hits);
                    s.in_flight.fetch_sub(1, Ordering::SeqCst);
                    HttpResponse::Ok().finish()
                },
            ))
        })
        .workers(4)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        actix_rt::spawn(server);
        Sink { url, hits, in_flight, max_in_flight }
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    pub fn distinct_records(&self) -> usize {
        let hits = self.hits.lock().unwrap();
        hits.iter().map(|h| h.record.as_str()).collect::<std::collections::HashSet<_>>().len()
    }
}
