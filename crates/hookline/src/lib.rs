//! The `hookline` process: configuration ([`config`]) and [`run`], which wires the store,
//! the script pool, the outbound client, the engine's actors and the HTTP API for the roles
//! this node plays, and stops them cleanly. `main` is a thin shell around it; tests call
//! [`run`] with their own listener and shutdown signal.

pub mod cli;
pub mod config;
pub mod demo;
pub mod import;

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpServer};
use anyhow::Context;
use hookline_api::ApiState;
use hookline_engine::{Engine, EngineParts, drain::Drain};
use hookline_outbound::{ClientConfig, Outbound, TargetPolicy};
use hookline_script::{PoolConfig, ScriptPool};
use hookline_secrets::SecretBox;
use hookline_store::{EmbeddedStore, RedisStore, Store};
use tokio::sync::watch;

pub use config::{Config, ServeArgs};

/// How long in-flight deliveries get to finish after a stop is asked for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    match &config.redis {
        Some(url) => {
            let store = RedisStore::connect(url, &config.namespace).await.context("connecting to Redis (--redis)")?;
            Ok(Arc::new(store))
        }
        None => {
            // Opening may repair the file after a crash: off the async threads.
            let dir = config.data_dir.clone();
            let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir))
                .await
                .context("opening the embedded store")?
                .with_context(|| format!("opening the embedded store in {}", config.data_dir.display()))?;
            tracing::info!(path = %config.data_dir.display(), "using the embedded store (single node)");
            Ok(Arc::new(store))
        }
    }
}

/// Runs a node until `shutdown` resolves, then drains: the API stops taking requests,
/// workers stop taking jobs and in-flight deliveries finish (a job not finished in time
/// stays pending in the store and is delivered again — nothing accepted is lost).
/// Prints the address it listens on. Must run inside an actix system.
pub async fn run(config: Config, listener: TcpListener, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let store = open_store(&config).await?;
    let secrets = match &config.secret_key {
        Some(key) => SecretBox::from_key_text(key).context("--secret-key")?,
        None => {
            let (secrets, created) =
                SecretBox::load_or_create(&config.data_dir).context("the secret key file in --data-dir")?;
            if config.redis.is_some() {
                tracing::warn!(
                    "no --secret-key: secrets are sealed with the key file in --data-dir; every node sharing this \
                     Redis needs the same key, so pass --secret-key (or HOOKLINE_SECRET_KEY) in a cluster"
                );
            } else if created {
                tracing::info!(dir = %config.data_dir.display(), "created a secret key file");
            }
            secrets
        }
    };
    let scripts = ScriptPool::new(PoolConfig::default());
    let metrics = Arc::new(hookline_telemetry::Metrics::default());
    let outbound = Outbound::new(ClientConfig {
        policy: TargetPolicy { allow: config.allow_targets.clone() },
        ..ClientConfig::default()
    })
    .context("building the HTTP client")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let drain = Arc::new(Drain::default());
    let parts = EngineParts {
        store: store.clone(),
        outbound,
        scripts: scripts.clone(),
        node_id: config.node_id.clone(),
        lease: config.lease,
        shutdown: stop_rx,
        drain: drain.clone(),
        secrets: secrets.clone(),
        metrics: metrics.clone(),
    };
    let roles = config.roles;
    let (engine, ctx) = Engine::start(parts, roles).await.context("starting the engine")?;

    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    // Every node serves its probes and metrics; only the api role serves `/v1`.
    let state = ApiState {
        records: Arc::new(hookline_engine::records::Batcher::start(store.clone())),
        store,
        scripts,
        api_token: config.api_token.as_deref().map(Arc::from),
        secrets,
        metrics,
        catalog: Some(ctx.catalog.clone()),
        queue_stats: Default::default(),
        jaeger_url: config.jaeger_url.clone(),
        dashboard_stats: Default::default(),
        objects: Default::default(),
    };
    let api = config.api;
    let server = HttpServer::new(move || App::new().configure(hookline_api::configure(state.clone(), api)))
        .workers(if api { 2 } else { 1 })
        .disable_signals()
        .shutdown_timeout(10)
        .listen(listener)?
        .run();
    if api {
        println!("hookline listening on http://{addr} (node {}, api and {roles})", config.node_id);
    } else {
        println!(
            "hookline listening on http://{addr} (node {}, {roles}; probes and metrics only, no /v1 API)",
            config.node_id
        );
    }
    tracing::info!(%addr, node_id = %config.node_id, "hookline started");

    let handle = server.handle();
    tokio::select! {
        result = server => result.context("the HTTP server failed")?,
        _ = shutdown => tracing::info!("stopping"),
    }
    handle.stop(true).await;
    let _ = stop_tx.send(true);
    if tokio::time::timeout(DRAIN_TIMEOUT, drain.wait()).await.is_err() {
        tracing::warn!("in-flight work did not finish in time; it will be delivered again");
    }
    drop(engine);
    tracing::info!("hookline stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
