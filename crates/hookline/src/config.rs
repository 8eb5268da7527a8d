//! `hookline serve` configuration: every flag is also an environment variable
//! (`HOOKLINE_` + the name in capitals, `-` as `_`) and a key of the `--config` TOML file.
//! Precedence: flag, then environment, then file, then the defaults below. Validated once
//! at start into [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use hookline_engine::Roles;
use serde::Deserialize;

/// Raw settings as given; every field optional so the layers can be merged.
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeArgs {
    /// HTTP API address (port 0: pick one and print it) [default: 127.0.0.1:8080]
    #[arg(long, env = "HOOKLINE_LISTEN")]
    pub listen: Option<String>,
    /// Redis (or Redis Cluster) URL; none: the embedded store in --data-dir
    #[arg(long, env = "HOOKLINE_REDIS")]
    pub redis: Option<String>,
    /// Embedded store location [default: ./hookline-data]
    #[arg(long, env = "HOOKLINE_DATA_DIR")]
    #[serde(alias = "data_dir")]
    pub data_dir: Option<PathBuf>,
    /// Prefix of every Redis key, so several deployments share one Redis [default: hookline]
    #[arg(long, env = "HOOKLINE_NAMESPACE")]
    pub namespace: Option<String>,
    /// Roles of this node: any of api,coordinator,trigger,dispatcher,writeback [default: all]
    #[arg(long, env = "HOOKLINE_ROLES", value_delimiter = ',')]
    pub roles: Option<Vec<String>>,
    /// This node's name in attempts, spans and metrics [default: host-pid]
    #[arg(long, env = "HOOKLINE_NODE_ID")]
    #[serde(alias = "node_id")]
    pub node_id: Option<String>,
    /// CIDR of private targets to allow (repeatable); private, loopback and link-local
    /// targets are refused otherwise
    #[arg(long, env = "HOOKLINE_ALLOW_TARGET", value_delimiter = ',')]
    #[serde(alias = "allow_target")]
    pub allow_target: Option<Vec<String>>,
    /// When set, /v1 requires `Authorization: Bearer TOKEN`
    #[arg(long, env = "HOOKLINE_API_TOKEN", hide_env_values = true)]
    #[serde(alias = "api_token")]
    pub api_token: Option<String>,
    /// Key sealing secrets at rest: base64 of 32 bytes (every node of a cluster needs the
    /// same); none: a key file created in --data-dir
    #[arg(long, env = "HOOKLINE_SECRET_KEY", hide_env_values = true)]
    #[serde(alias = "secret_key")]
    pub secret_key: Option<String>,
    /// OTLP/HTTP endpoint for traces (Jaeger's 4318)
    #[arg(long, env = "HOOKLINE_OTLP_ENDPOINT")]
    #[serde(alias = "otlp_endpoint")]
    pub otlp_endpoint: Option<String>,
    /// Log format: text or json [default: text]
    #[arg(long, env = "HOOKLINE_LOG_FORMAT")]
    #[serde(alias = "log_format")]
    pub log_format: Option<String>,
    /// How long queue entries and concurrency permits a node holds last without renewal
    /// (renewed every third of it); a stopped node's work is taken over this long after its
    /// last renewal [default: 10s]
    #[arg(long, env = "HOOKLINE_LEASE")]
    pub lease: Option<String>,
    /// Jaeger's UI (`http://jaeger:16686`): the dashboard links each attempt's trace there
    #[arg(long, env = "HOOKLINE_JAEGER_URL")]
    #[serde(alias = "jaeger_url")]
    pub jaeger_url: Option<String>,
    /// TOML file with the same keys
    #[arg(long, env = "HOOKLINE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

impl ServeArgs {
    /// Fills what is unset here from `other`.
    fn or(self, other: ServeArgs) -> ServeArgs {
        ServeArgs {
            listen: self.listen.or(other.listen),
            redis: self.redis.or(other.redis),
            data_dir: self.data_dir.or(other.data_dir),
            namespace: self.namespace.or(other.namespace),
            roles: self.roles.or(other.roles),
            node_id: self.node_id.or(other.node_id),
            allow_target: self.allow_target.or(other.allow_target),
            api_token: self.api_token.or(other.api_token),
            secret_key: self.secret_key.or(other.secret_key),
            otlp_endpoint: self.otlp_endpoint.or(other.otlp_endpoint),
            log_format: self.log_format.or(other.log_format),
            lease: self.lease.or(other.lease),
            jaeger_url: self.jaeger_url.or(other.jaeger_url),
            config: self.config,
        }
    }
}

/// Validated settings.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub redis: Option<String>,
    pub data_dir: PathBuf,
    pub namespace: String,
    pub api: bool,
    pub roles: Roles,
    pub node_id: String,
    pub allow_targets: Vec<ipnet::IpNet>,
    pub api_token: Option<String>,
    pub secret_key: Option<String>,
    pub otlp_endpoint: Option<String>,
    pub log_format: hookline_telemetry::LogFormat,
    pub lease: std::time::Duration,
    pub jaeger_url: Option<String>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("redis", &self.redis.as_ref().map(|_| "<set>"))
            .field("namespace", &self.namespace)
            .field("roles", &self.roles)
            .field("api", &self.api)
            .field("node_id", &self.node_id)
            .field("api_token", &self.api_token.as_ref().map(|_| "***"))
            .field("secret_key", &self.secret_key.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Merges the layers and validates them.
    pub fn load(args: ServeArgs) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                toml::from_str::<ServeArgs>(&text).with_context(|| format!("in {}", path.display()))?
            }
            None => ServeArgs::default(),
        };
        Config::from_args(args.or(file))
    }

    pub fn from_args(a: ServeArgs) -> anyhow::Result<Config> {
        let listen_text = a.listen.unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen: SocketAddr =
            listen_text.parse().with_context(|| format!("--listen: `{listen_text}` is not an address"))?;
        let mut roles = Roles::NONE;
        let mut api = false;
        let names = a.roles.unwrap_or_else(|| vec!["all".into()]);
        for name in &names {
            match name.trim() {
                "all" => {
                    roles = Roles::ALL;
                    api = true;
                }
                "api" => api = true,
                "coordinator" => roles.coordinator = true,
                "trigger" => roles.trigger = true,
                "dispatcher" => roles.dispatcher = true,
                "writeback" => roles.writeback = true,
                other => bail!("--roles: unknown role `{other}` (api, coordinator, trigger, dispatcher, writeback)"),
            }
        }
        if !api && roles == Roles::NONE {
            bail!("--roles: name at least one role");
        }
        let mut allow_targets = Vec::new();
        for cidr in a.allow_target.unwrap_or_default() {
            let cidr = cidr.trim();
            let net = cidr
                .parse::<ipnet::IpNet>()
                .or_else(|_| cidr.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .with_context(|| format!("--allow-target: `{cidr}` is not a CIDR"))?;
            allow_targets.push(net);
        }
        let namespace = a.namespace.unwrap_or_else(|| "hookline".into());
        if namespace.is_empty() || namespace.contains(['{', '}', ' ']) {
            bail!("--namespace: must be non-empty, without braces or spaces");
        }
        let node_id = a.node_id.unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
            let host = if host.is_empty() { "node".to_string() } else { host };
            format!("{host}-{}", std::process::id())
        });
        let log_format = a
            .log_format
            .as_deref()
            .unwrap_or("text")
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--log-format: {e}"))?;
        let lease = match a.lease.as_deref() {
            None => hookline_engine::DEFAULT_LEASE,
            Some(text) => humantime::parse_duration(text.trim())
                .with_context(|| format!("--lease: `{text}` is not a duration (e.g. 10s)"))?,
        };
        if lease < std::time::Duration::from_millis(300) || lease > std::time::Duration::from_secs(3600) {
            bail!("--lease: must be between 300ms and 1h");
        }
        Ok(Config {
            listen,
            redis: a.redis.filter(|r| !r.is_empty()),
            data_dir: a.data_dir.unwrap_or_else(|| PathBuf::from("./hookline-data")),
            namespace,
            api,
            roles,
            node_id,
            allow_targets,
            api_token: a.api_token.filter(|t| !t.is_empty()),
            secret_key: a.secret_key.filter(|t| !t.is_empty()),
            otlp_endpoint: a.otlp_endpoint.filter(|t| !t.is_empty()),
            log_format,
            lease,
            jaeger_url: a.jaeger_url.filter(|u| !u.is_empty()).map(|u| u.trim_end_matches('/').to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_layers() {
        let c = Config::from_args(ServeArgs::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert!(c.api && c.roles == Roles::ALL);
        let file: ServeArgs =
            toml::from_str("listen = \"127.0.0.1:0\"\nroles = [\"dispatcher\"]\nallow-target = [\"127.0.0.0/8\"]")
                .unwrap();
        let cli = ServeArgs { listen: Some("127.0.0.1:9".into()), ..Default::default() };
        let c = Config::from_args(cli.or(file)).unwrap();
        assert_eq!(c.listen.port(), 9);
        assert!(!c.api && c.roles.dispatcher && !c.roles.trigger);
        assert_eq!(c.allow_targets.len(), 1);
    }

    #[test]
    fn bad_values_name_the_flag() {
        let bad = |a: ServeArgs| Config::from_args(a).unwrap_err().to_string();
        assert!(bad(ServeArgs { roles: Some(vec!["chef".into()]), ..Default::default() }).contains("--roles"));
        assert!(bad(ServeArgs { listen: Some("nope".into()), ..Default::default() }).contains("--listen"));
        assert!(
            bad(ServeArgs { allow_target: Some(vec!["10.0.0.0/99".into()]), ..Default::default() })
                .contains("--allow-target")
        );
        assert!(toml::from_str::<ServeArgs>("lisen = 1").is_err());
        assert!(bad(ServeArgs { lease: Some("soon".into()), ..Default::default() }).contains("--lease"));
        assert!(bad(ServeArgs { lease: Some("1ms".into()), ..Default::default() }).contains("--lease"));
        let c = Config::from_args(ServeArgs { lease: Some("2s".into()), ..Default::default() }).unwrap();
        assert_eq!(c.lease, std::time::Duration::from_secs(2));
    }
}
