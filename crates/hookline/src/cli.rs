//! The command line for daily work, talking to a node's API: `hookline webhook
//! apply|list|get|pause|resume|delete|test`, `hookline attempts`, `hookline dead-letters`,
//! `hookline record get|journey`.
//!
//! Every command takes `--url` (`HOOKLINE_URL`) and `--token` (`HOOKLINE_TOKEN`). Errors
//! are the API's, with the field at fault, on stderr. Exit codes scripts can use:
//! 0 done; 1 the API refused the request (or some of an `apply`); 2 bad usage; 3 the node
//! could not be reached or failed; 4 no such webhook, record or object.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

/// Exit codes.
pub const REFUSED: i32 = 1;
pub const UNREACHABLE: i32 = 3;
pub const NOT_FOUND: i32 = 4;

/// Which node, and how to prove the right to ask it.
#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// The node's API
    #[arg(long, global = true, env = "HOOKLINE_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Bearer token, when the node runs with --api-token
    #[arg(long, global = true, env = "HOOKLINE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum Output {
    /// Aligned columns for people
    #[default]
    Table,
    /// JSON
    Json,
    /// One JSON document per line
    Ndjson,
}

#[derive(Debug, Args)]
pub struct WebhookArgs {
    #[command(flatten)]
    remote: Remote,
    #[command(subcommand)]
    command: WebhookCommand,
}

#[derive(Debug, Subcommand)]
enum WebhookCommand {
    /// Create or update the webhooks of FILE (YAML or JSON; several per file, as YAML
    /// documents or a list) and say what changed. Running it again changes nothing.
    Apply {
        /// The file, or `-` for stdin
        #[arg(short = 'f', long)]
        file: PathBuf,
    },
    /// Every webhook, with its state and queue
    List {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// One definition as stored (secrets as `***`)
    Get { id: String },
    /// Stop sending (jobs keep queueing)
    Pause { id: String },
    /// Send again
    Resume { id: String },
    /// Delete the webhook with its queue, attempts and dead letters
    Delete { id: String },
    /// Dry run on a stored record or given fields: the condition's value and the request
    /// that would be sent (secrets as `***`). Nothing is sent.
    Test {
        id: String,
        /// A stored record's id
        #[arg(long, conflicts_with = "fields", required_unless_present = "fields")]
        record: Option<String>,
        /// The record's fields as a JSON object
        #[arg(long)]
        fields: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct AttemptsArgs {
    #[command(flatten)]
    remote: Remote,
    /// The webhook
    webhook: String,
    /// Only attempts that carried this record
    #[arg(long)]
    record: Option<String>,
    /// Only attempts started within this long (`1h`, `30m`, `2d`) or since this RFC 3339 time
    #[arg(long)]
    since: Option<String>,
    /// Only attempts with this outcome: success, retry_scheduled, failed, exhausted
    #[arg(long)]
    outcome: Option<String>,
    /// At most this many (the newest)
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Keep printing new attempts as they are made (until interrupted)
    #[arg(long)]
    follow: bool,
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Debug, Args)]
pub struct DeadLettersArgs {
    #[command(flatten)]
    remote: Remote,
    /// The webhook
    webhook: String,
    /// Send every dead letter again, with a fresh attempt budget
    #[arg(long)]
    redrive: bool,
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    #[command(flatten)]
    remote: Remote,
    #[command(subcommand)]
    command: RecordCommand,
}

#[derive(Debug, Subcommand)]
enum RecordCommand {
    /// The record's current version and fields
    Get { object: String, id: String },
    /// Each change of the record, which webhooks it fired and why the others did not, then
    /// each call's attempts and write-backs
    Journey {
        object: String,
        id: String,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
}

/// A failed command: what to print, and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    fn new(code: i32, message: impl Into<String>) -> Self {
        Failure { code, message: message.into() }
    }
}

type Result<T> = std::result::Result<T, Failure>;

struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(remote: &Remote) -> Client {
        // `HOOKLINE_API_TOKEN` (what `serve` and `import` read) is taken too.
        let token = remote.token.clone().or_else(|| std::env::var("HOOKLINE_API_TOKEN").ok()).filter(|t| !t.is_empty());
        Client { http: reqwest::Client::new(), base: remote.url.trim_end_matches('/').to_string(), token }
    }

    /// One API call; a refusal becomes a [`Failure`] with the API's message and field.
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url).timeout(Duration::from_secs(60));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Failure::new(UNREACHABLE, format!("cannot reach {}: {}", self.base, error_chain(&e))))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        if status < 400 {
            return Ok((status, value));
        }
        let error = &value["error"];
        let mut message = error["message"].as_str().map_or_else(|| value.to_string(), str::to_string);
        if let Some(field) = error["field"].as_str() {
            message = format!("{field}: {message}");
        }
        let code = match status {
            404 => NOT_FOUND,
            401 => {
                return Err(Failure::new(
                    REFUSED,
                    format!("{method} {path}: unauthorized: give the node's token with --token or HOOKLINE_TOKEN"),
                ));
            }
            s if s >= 500 => UNREACHABLE,
            _ => REFUSED,
        };
        Err(Failure::new(code, format!("{method} {path}: {message}")))
    }

    async fn get(&self, path: &str) -> Result<Value> {
        Ok(self.call(reqwest::Method::GET, path, None).await?.1)
    }

    async fn post(&self, path: &str, body: Option<&Value>) -> Result<Value> {
        Ok(self.call(reqwest::Method::POST, path, body).await?.1)
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let _ = write!(out, ": {s}");
        source = s.source();
    }
    out
}

/// A path segment, percent-encoded.
fn seg(s: &str) -> String {
    hookline_model::url::encoded(s)
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

pub async fn webhook(args: WebhookArgs) -> Result<()> {
    let c = Client::new(&args.remote);
    match args.command {
        WebhookCommand::Apply { file } => apply(&c, &file).await,
        WebhookCommand::List { output } => {
            let list = c.get("/v1/webhooks").await?;
            match output {
                Output::Json => println!("{}", pretty(&list)),
                Output::Ndjson => list.as_array().into_iter().flatten().for_each(|w| println!("{w}")),
                Output::Table => {
                    let rows: Vec<Vec<String>> = list
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|w| {
                            vec![
                                text(&w["id"]),
                                text(&w["object"]),
                                if w["paused"] == json!(true) { "paused".into() } else { "active".into() },
                                text(&w["version"]),
                                trigger_summary(w),
                                text(&w["request"]["url"]),
                            ]
                        })
                        .collect();
                    print!("{}", table(&["ID", "OBJECT", "STATE", "VERSION", "TRIGGER", "URL"], &rows));
                }
            }
            Ok(())
        }
        WebhookCommand::Get { id } => {
            println!("{}", pretty(&c.get(&format!("/v1/webhooks/{}", seg(&id))).await?));
            Ok(())
        }
        WebhookCommand::Pause { id } => {
            c.post(&format!("/v1/webhooks/{}/pause", seg(&id)), None).await?;
            println!("webhook {id}: paused");
            Ok(())
        }
        WebhookCommand::Resume { id } => {
            c.post(&format!("/v1/webhooks/{}/resume", seg(&id)), None).await?;
            println!("webhook {id}: active");
            Ok(())
        }
        WebhookCommand::Delete { id } => {
            c.call(reqwest::Method::DELETE, &format!("/v1/webhooks/{}", seg(&id)), None).await?;
            println!("webhook {id}: deleted");
            Ok(())
        }
        WebhookCommand::Test { id, record, fields } => {
            let body = match (record, fields) {
                (Some(r), _) => json!({"record_id": r}),
                (None, Some(f)) => {
                    let fields: Value = serde_json::from_str(&f)
                        .map_err(|e| Failure::new(REFUSED, format!("--fields is not JSON: {e}")))?;
                    json!({"fields": fields})
                }
                (None, None) => return Err(Failure::new(2, "give --record or --fields")),
            };
            println!("{}", pretty(&c.post(&format!("/v1/webhooks/{}/test", seg(&id)), Some(&body)).await?));
            Ok(())
        }
    }
}

fn trigger_summary(w: &Value) -> String {
    let t = &w["trigger"];
    if let Some(s) = t["schedule"].as_str() {
        return format!("schedule {s}");
    }
    let on: Vec<&str> = [("on_create", "create"), ("on_update", "update")]
        .into_iter()
        .filter(|(k, _)| t[*k] == json!(true))
        .map(|(_, name)| name)
        .collect();
    let mut s = on.join("+");
    if let Some(c) = t["condition"].as_str() {
        let _ = write!(s, " if {}", cut(c, 40));
    }
    s
}

/// The webhooks a file defines: YAML documents or JSON, each one definition or a list.
fn definitions(path: &Path) -> Result<Vec<Value>> {
    let name = path.display().to_string();
    let text = if name == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| Failure::new(REFUSED, format!("stdin: {e}")))?
    } else {
        std::fs::read_to_string(path).map_err(|e| Failure::new(REFUSED, format!("{name}: {e}")))?
    };
    let trimmed = text.trim_start();
    let docs: Vec<Value> = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        vec![serde_json::from_str(&text).map_err(|e| Failure::new(REFUSED, format!("{name}: {e}")))?]
    } else {
        let mut docs = Vec::new();
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let value = serde::Deserialize::deserialize(doc)
                .map_err(|e| Failure::new(REFUSED, format!("{name}: document {}: {e}", i + 1)))?;
            docs.push(value);
        }
        docs
    };
    let mut out = Vec::new();
    for doc in docs {
        match doc {
            Value::Array(items) => out.extend(items),
            Value::Null => {}
            other => out.push(other),
        }
    }
    if out.is_empty() {
        return Err(Failure::new(REFUSED, format!("{name}: no webhook definitions")));
    }
    Ok(out)
}

async fn apply(c: &Client, file: &Path) -> Result<()> {
    let defs = definitions(file)?;
    let mut seen = HashSet::new();
    let mut failed = 0;
    for (i, def) in defs.iter().enumerate() {
        let Some(id) = def["id"].as_str().filter(|id| !id.is_empty()) else {
            eprintln!("definition {}: no `id`", i + 1);
            failed += 1;
            continue;
        };
        if !seen.insert(id.to_string()) {
            eprintln!("webhook {id}: defined twice in the file; the first is applied");
            failed += 1;
            continue;
        }
        let path = format!("/v1/webhooks/{}", seg(id));
        let before = match c.get(&path).await {
            Ok(v) => Some(v),
            Err(f) if f.code == NOT_FOUND => None,
            Err(f) => return Err(f),
        };
        match c.call(reqwest::Method::PUT, &path, Some(def)).await {
            Ok((_, after)) => match &before {
                None => println!("webhook {id}: created (version {})", text(&after["version"])),
                Some(b) if b["version"] == after["version"] => println!("webhook {id}: unchanged"),
                Some(b) => {
                    println!("webhook {id}: updated (version {} → {})", text(&b["version"]), text(&after["version"]));
                    for line in diff(b, &after) {
                        println!("  {line}");
                    }
                }
            },
            Err(f) if f.code == UNREACHABLE => return Err(f),
            Err(f) => {
                eprintln!("webhook {id}: refused: {}", f.message);
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(Failure::new(REFUSED, format!("{failed} of {} definitions not applied", defs.len())));
    }
    Ok(())
}

/// What differs between two views of a definition, one line per changed leaf.
fn diff(before: &Value, after: &Value) -> Vec<String> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    leaves("", before, &mut a);
    leaves("", after, &mut b);
    let mut out = Vec::new();
    for key in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
        if key == "version" || key.starts_with("schedule_status") {
            continue;
        }
        match (a.get(key), b.get(key)) {
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) => out.push(format!("{key}: {} → {}", shown(x), shown(y))),
            (None, Some(y)) => out.push(format!("{key}: added {}", shown(y))),
            (Some(x), None) => out.push(format!("{key}: removed (was {})", shown(x))),
            (None, None) => {}
        }
    }
    out
}

fn leaves(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    let join = |k: &str| if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
    match v {
        Value::Object(map) if !map.is_empty() => map.iter().for_each(|(k, v)| leaves(&join(k), v, out)),
        Value::Null => {}
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

fn shown(v: &Value) -> String {
    let s = match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    cut(&s, 60)
}

fn cut(s: &str, n: usize) -> String {
    let s = s.replace('\n', "⏎");
    if s.chars().count() > n { format!("{}…", s.chars().take(n).collect::<String>()) } else { s }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Columns padded to their widest cell.
fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut head.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// `--since`: a duration back from now (`1h`), or a time (RFC 3339), as Unix ms.
fn since_ms(since: &str) -> Result<i64> {
    let now = hookline_store::now_ms();
    if let Ok(d) = humantime::parse_duration(since) {
        return Ok(now - d.as_millis() as i64);
    }
    humantime::parse_rfc3339_weak(since)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .ok_or_else(|| Failure::new(2, format!("--since `{since}`: give a duration (1h, 30m) or an RFC 3339 time")))
}

fn attempt_row(a: &Value) -> Vec<String> {
    let records =
        a["record_ids"].as_array().map(|r| r.iter().map(text).collect::<Vec<_>>().join(",")).unwrap_or_default();
    vec![
        text(&a["started_at"]),
        text(&a["outcome"]),
        text(&a["response"]["status"]),
        text(&a["attempt"]),
        format!("{}ms", text(&a["duration_ms"])),
        cut(&records, 30),
        cut(&a["error"].as_str().map(str::to_string).unwrap_or_default(), 60),
        text(&a["id"]),
    ]
}

const ATTEMPT_HEAD: [&str; 8] = ["STARTED", "OUTCOME", "STATUS", "TRY", "TOOK", "RECORDS", "ERROR", "ID"];

pub async fn attempts(args: AttemptsArgs) -> Result<()> {
    let c = Client::new(&args.remote);
    if !(1..=10_000).contains(&args.limit) {
        return Err(Failure::new(2, "--limit: 1 to 10000"));
    }
    let mut since = args.since.as_deref().map(since_ms).transpose()?;
    let mut seen = HashSet::new();
    let mut first = true;
    loop {
        let mut query = vec![format!("limit={}", args.limit)];
        if let Some(r) = &args.record {
            query.push(format!("record_id={}", seg(r)));
        }
        if let Some(o) = &args.outcome {
            query.push(format!("outcome={}", seg(o)));
        }
        if let Some(s) = since {
            query.push(format!("since={s}"));
        }
        let path = format!("/v1/webhooks/{}/attempts?{}", seg(&args.webhook), query.join("&"));
        let list = c.get(&path).await?;
        // The API lists newest first; a log reads oldest first.
        let mut fresh: Vec<&Value> =
            list.as_array().into_iter().flatten().filter(|a| seen.insert(text(&a["id"]))).collect();
        fresh.reverse();
        match args.output {
            Output::Json if !args.follow => println!("{}", pretty(&Value::Array(fresh.into_iter().cloned().collect()))),
            Output::Json | Output::Ndjson => fresh.iter().for_each(|a| println!("{a}")),
            Output::Table => {
                let rows: Vec<Vec<String>> = fresh.iter().map(|a| attempt_row(a)).collect();
                let out = table(&ATTEMPT_HEAD, &rows);
                // The header once, then rows as they come.
                let skip = if first { 0 } else { 1 };
                out.lines().skip(skip).for_each(|l| println!("{l}"));
            }
        }
        first = false;
        if !args.follow {
            return Ok(());
        }
        // From a little before the newest seen (attempts of one moment may land late); the
        // ids already shown are skipped.
        let newest = list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["started_at"].as_str())
            .filter_map(|t| humantime::parse_rfc3339_weak(t).ok())
            .filter_map(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64)
            .max();
        if let Some(n) = newest {
            since = Some(since.map_or(n, |s| s.max(n)) - 5_000);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub async fn dead_letters(args: DeadLettersArgs) -> Result<()> {
    let c = Client::new(&args.remote);
    let base = format!("/v1/webhooks/{}/dead-letters", seg(&args.webhook));
    if args.redrive {
        let r = c.post(&format!("{base}/redrive"), None).await?;
        println!("webhook {}: {} dead letters sent again", args.webhook, text(&r["redriven"]));
        return Ok(());
    }
    let list = c.get(&base).await?;
    match args.output {
        Output::Json => println!("{}", pretty(&list)),
        Output::Ndjson => list.as_array().into_iter().flatten().for_each(|d| println!("{d}")),
        Output::Table => {
            let rows: Vec<Vec<String>> = list
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| {
                    let records = d["record_ids"].as_array().map(|r| r.iter().map(text).collect::<Vec<_>>().join(","));
                    vec![
                        text(&d["id"]),
                        text(&d["job_id"]),
                        cut(&records.unwrap_or_default(), 30),
                        text(&d["attempts"]),
                        text(&d["reason"]),
                    ]
                })
                .collect();
            print!("{}", table(&["ID", "JOB", "RECORDS", "ATTEMPTS", "REASON"], &rows));
        }
    }
    Ok(())
}

pub async fn record(args: RecordArgs) -> Result<()> {
    let c = Client::new(&args.remote);
    match args.command {
        RecordCommand::Get { object, id } => {
            println!("{}", pretty(&c.get(&format!("/v1/objects/{}/records/{}", seg(&object), seg(&id))).await?));
        }
        RecordCommand::Journey { object, id, output } => {
            let j = c.get(&format!("/v1/objects/{}/records/{}/journey", seg(&object), seg(&id))).await?;
            match output {
                Output::Json => println!("{}", pretty(&j)),
                Output::Ndjson => j["changes"].as_array().into_iter().flatten().for_each(|c| println!("{c}")),
                Output::Table => print!("{}", journey_text(&j)),
            }
        }
    }
    Ok(())
}

/// A journey for people: each change, then each webhook's verdict, then its attempts.
pub fn journey_text(j: &Value) -> String {
    let mut out = String::new();
    let changes = j["changes"].as_array().map(Vec::as_slice).unwrap_or_default();
    if changes.is_empty() {
        let _ = writeln!(out, "no changes of {} {} are on record", text(&j["object"]), text(&j["record_id"]));
        return out;
    }
    for c in changes {
        let at = c["at_ms"].as_i64().map(|ms| {
            humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
                .to_string()
        });
        let how = if c["created"] == json!(true) { "created".to_string() } else { "updated".to_string() };
        let by = c["origin_webhook"].as_str().map(|w| format!(" by the write-back of {w}")).unwrap_or_default();
        let _ = writeln!(out, "version {}  {}  {how}{by}", text(&c["version"]), at.unwrap_or_default());
        let changed: Vec<String> = c["changed"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| match v.get("old") {
                Some(old) => format!("{k}: {} → {}", shown(old), shown(&v["new"])),
                None => format!("{k}: {}", shown(&v["new"])),
            })
            .collect();
        for line in changed {
            let _ = writeln!(out, "    {line}");
        }
        if let Some(why) = c["stopped"].as_str() {
            let _ = writeln!(out, "  fired nothing: {why}");
        }
        for d in c["decisions"].as_array().into_iter().flatten() {
            let webhook = text(&d["webhook"]);
            if d["fired"] == json!(true) {
                let _ = writeln!(out, "  {webhook}: fired, {}", text(&d["delivery"]));
                for a in d["attempts"].as_array().into_iter().flatten() {
                    let status = a["status"].as_u64().map(|s| format!(" {s}")).unwrap_or_default();
                    let error = a["error"].as_str().map(|e| format!(": {}", cut(e, 80))).unwrap_or_default();
                    let wb = a["writeback"]["status"].as_str().map(|s| format!(", write-back {s}")).unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "      attempt {} {} {}{status}{error}{wb}",
                        text(&a["attempt"]),
                        text(&a["started_at"]),
                        text(&a["outcome"])
                    );
                }
            } else {
                let _ = writeln!(out, "  {webhook}: not fired: {}", text(&d["reason"]));
                for p in d["parts"].as_array().into_iter().flatten() {
                    let values: Vec<String> = p["fields"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| format!("{k} is {}", shown(v)))
                        .collect();
                    let _ = writeln!(out, "      {}: {} ({})", text(&p["part"]), text(&p["value"]), values.join(", "));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_name_each_changed_leaf() {
        let a = json!({"id": "w", "version": 1, "settings": {"retries": 3, "timeout": "5s"}, "request": {"url": "http://a"}});
        let b = json!({"id": "w", "version": 2, "settings": {"retries": 5, "timeout": "5s"}, "request": {"url": "http://a", "method": "PUT"}});
        assert_eq!(diff(&a, &b), ["settings.retries: 3 → 5", "request.method: added \"PUT\""]);
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "BB"], &[vec!["long".into(), "x".into()], vec!["s".into(), "yy".into()]]);
        assert_eq!(t, "A     BB\nlong  x\ns     yy\n");
    }

    #[test]
    fn yaml_files_hold_several_definitions() {
        let dir = std::env::temp_dir().join(format!("hookline-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("w.yaml");
        std::fs::write(&file, "id: a\nobject: o\n---\n- id: b\n- id: c\n").unwrap();
        let ids: Vec<String> = definitions(&file).unwrap().iter().map(|d| text(&d["id"])).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        std::fs::write(&file, "id: [unclosed\n").unwrap();
        let e = definitions(&file).unwrap_err();
        assert!(e.message.contains("document 1") && e.message.contains("line"), "{}", e.message);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
