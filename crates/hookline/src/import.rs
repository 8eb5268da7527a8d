//! `hookline import FILE`: sends an NDJSON file of records to a node's API in chunks (the
//! file is never held in memory), shows a progress bar on stderr, and prints a summary:
//! created, updated, unchanged, rejected — with each rejected line and its reason.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// NDJSON file: one `{"id"?, "fields": {…}}` per line
    pub file: PathBuf,
    /// The data object the records belong to
    #[arg(long)]
    pub object: String,
    /// A node's API
    #[arg(long, env = "HOOKLINE_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Bearer token, when the node has --api-token
    #[arg(long, env = "HOOKLINE_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Lines per request
    #[arg(long, default_value_t = 5000)]
    pub chunk: usize,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub lines: u64,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub rejected: u64,
}

fn bar(done: u64, total: u64, lines: u64, started: Instant) -> String {
    let frac = if total == 0 { 1.0 } else { done as f64 / total as f64 };
    let filled = (frac * 30.0).round() as usize;
    let rate = lines as f64 / started.elapsed().as_secs_f64().max(0.001);
    format!(
        "\r[{}{}] {:>3.0}% {lines} lines, {rate:.0} lines/s",
        "#".repeat(filled),
        "-".repeat(30 - filled),
        frac * 100.0
    )
}

/// Sends one chunk; adds its results to `summary` and reports rejected lines.
async fn send(
    client: &reqwest::Client,
    args: &ImportArgs,
    body: String,
    first_line: u64,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let url = format!("{}/v1/objects/{}/records", args.url.trim_end_matches('/'), args.object);
    let mut req = client.post(&url).header("content-type", "application/x-ndjson").body(body);
    if let Some(t) = &args.api_token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("POST {url} answered {status}: {text}");
    }
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).context("the node's answer is not NDJSON")?;
        if v.get("summary").is_some() {
            continue;
        }
        summary.lines += 1;
        match v["status"].as_str() {
            Some("created") => summary.created += 1,
            Some("updated") => summary.updated += 1,
            Some("unchanged") => summary.unchanged += 1,
            _ => {
                summary.rejected += 1;
                let line_no = first_line + v["line"].as_u64().unwrap_or(1) - 1;
                let field = v["error"]["field"].as_str().map(|f| format!("{f}: ")).unwrap_or_default();
                eprintln!("\nline {line_no}: rejected: {field}{}", v["error"]["message"].as_str().unwrap_or("?"));
            }
        }
    }
    Ok(())
}

/// Imports the file; Ok with the summary (rejected lines included in it).
pub async fn run(args: ImportArgs) -> anyhow::Result<Summary> {
    if args.chunk == 0 {
        bail!("--chunk must be at least 1");
    }
    let file = std::fs::File::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut reader = BufReader::new(file);
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut summary = Summary::default();
    let (mut read_bytes, mut line_no, mut chunk_start) = (0u64, 0u64, 1u64);
    let mut chunk = String::new();
    let mut lines_in_chunk = 0;
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).with_context(|| format!("reading {}", args.file.display()))?;
        if n > 0 {
            read_bytes += n as u64;
            line_no += 1;
            chunk.push_str(&line);
            if !line.ends_with('\n') {
                chunk.push('\n');
            }
            lines_in_chunk += 1;
        }
        if (n == 0 && lines_in_chunk > 0) || lines_in_chunk == args.chunk {
            send(&client, &args, std::mem::take(&mut chunk), chunk_start, &mut summary).await?;
            chunk_start = line_no + 1;
            lines_in_chunk = 0;
            eprint!("{}", bar(read_bytes, total, line_no, started));
            let _ = std::io::stderr().flush();
        }
        if n == 0 {
            break;
        }
    }
    eprintln!();
    println!(
        "imported {} records into `{}` in {:.1} s: {} created, {} updated, {} unchanged, {} rejected",
        summary.lines,
        args.object,
        started.elapsed().as_secs_f64(),
        summary.created,
        summary.updated,
        summary.unchanged,
        summary.rejected
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bar_fills_with_progress() {
        let started = std::time::Instant::now();
        assert!(super::bar(0, 100, 0, started).contains("[------------------------------]   0%"));
        assert!(super::bar(50, 100, 5, started).contains("[###############---------------]  50%"));
        assert!(super::bar(100, 100, 9, started).contains("100% 9 lines"));
    }
}
