//! The agent's configuration: one TOML file, every key documented in the README with
//! its default, unknown keys rejected by name. Sections owned by other modules
//! (`[outbox]`, `[[webhooks]]`, `[[nats]]`, `[metrics]`, `[api]`) are defined beside the code that
//! uses them and embedded here. [`report`] checks a file the way `check-config` and
//! `run` do: every problem at once, each with its key and line.

pub mod collect;
pub mod locate;
pub mod report;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Errors reading or checking a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML did not parse or did not match the schema (unknown key, wrong type).
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file (or `<embedded>`).
        path: PathBuf,
        /// 1-based line of the offending key or value.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A value parsed but is not allowed, or what it names (a file, a variable, a
    /// secret) cannot be used.
    #[error("{path}:{}key `{key}`: {message}", line.map(|l| format!("{l}: ")).unwrap_or_else(|| " ".into()))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the key (or of its table, for a key left at its default).
        line: Option<usize>,
        /// The dotted key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The whole configuration. Every field has a default; an empty file is valid.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Node id put in every event (`node`); default: the host name.
    pub node: Option<String>,
    /// Directory for the persisted peer state and the outbox (default `/var/lib/wgpulse`).
    pub state_dir: PathBuf,
    /// Interfaces to attach the classifiers to; empty: every UP, non-loopback,
    /// non-WireGuard interface.
    pub interfaces: Vec<String>,
    /// WireGuard devices to watch; empty: every device found.
    pub devices: Vec<String>,
    /// Directory of userspace WireGuard UAPI sockets (default `/var/run/wireguard`).
    pub wireguard_socket_dir: PathBuf,
    /// Bound of the per-endpoint map (default 65536).
    pub max_peers: u32,
    /// How often the maps are drained (default 1 s).
    #[serde(with = "humantime_serde")]
    pub drain_interval: Duration,
    /// How often devices and peers are re-read (default 10 s).
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// A peer whose last completed handshake is older than this is disconnected
    /// (default 180 s, WireGuard's REJECT_AFTER_TIME).
    #[serde(with = "humantime_serde")]
    pub disconnect_after: Duration,
    /// Log filter in `tracing` env-filter syntax (default `info`).
    pub log_level: String,
    /// Kernel-mode attribution: `auto` (kprobes on kernel WireGuard where the module,
    /// its BTF and kprobes exist; TC-only elsewhere) or `off`.
    pub kernel_attribution: crate::datapath::kprobes::KernelAttribution,
    /// Peer names (TOML or JSON: public key -> name, user, email, tags), re-read
    /// when it changes; none by default.
    pub peers_file: Option<PathBuf>,
    /// Alert thresholds.
    pub alerts: crate::alerts::AlertsConfig,
    /// Durable event queue.
    pub outbox: crate::outbox::OutboxConfig,
    /// Webhook receivers.
    pub webhooks: Vec<crate::sink::config::WebhookConfig>,
    /// NATS JetStream targets.
    pub nats: Vec<crate::sink::nats::config::NatsConfig>,
    /// Prometheus and API listener.
    pub metrics: crate::server::MetricsConfig,
    /// Local HTTP API.
    pub api: crate::server::ApiConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node: None,
            state_dir: PathBuf::from("/var/lib/wgpulse"),
            interfaces: Vec::new(),
            devices: Vec::new(),
            wireguard_socket_dir: PathBuf::from("/var/run/wireguard"),
            max_peers: agent_common::DEFAULT_MAX_PEERS,
            drain_interval: Duration::from_secs(1),
            refresh_interval: Duration::from_secs(10),
            disconnect_after: Duration::from_secs(180),
            log_level: "info".into(),
            kernel_attribution: Default::default(),
            peers_file: None,
            alerts: Default::default(),
            outbox: Default::default(),
            webhooks: Vec::new(),
            nats: Vec::new(),
            metrics: Default::default(),
            api: Default::default(),
        }
    }
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks configuration text; `path` only names it in errors. The
    /// first problem is the error ([`report::check`] gives all of them).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        report::check(text, path, |_| {}, |_| Vec::new())
            .map_err(|problems| problems.into_iter().next().expect("at least one"))
    }

    /// Every semantic problem, one error each (the first is returned by [`Config::parse`]).
    pub fn problems(&self, path: &Path) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        let mut invalid = |key: &str, message: String| {
            problems.push(ConfigError::Invalid {
                path: path.to_owned(),
                line: None,
                key: key.to_owned(),
                message,
            })
        };
        if self.max_peers == 0 {
            invalid("max_peers", "must be at least 1".into());
        }
        if self.drain_interval < Duration::from_millis(10) {
            invalid("drain_interval", "must be at least 10ms".into());
        }
        if self.refresh_interval < Duration::from_millis(100) {
            invalid("refresh_interval", "must be at least 100ms".into());
        }
        if self.disconnect_after.is_zero() {
            invalid("disconnect_after", "must be more than 0".into());
        }
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            invalid("log_level", err.to_string());
        }
        for (key, message) in self.alerts.problems() {
            invalid(&format!("alerts.{key}"), message);
        }
        for (key, message) in self.outbox.problems() {
            invalid(&format!("outbox.{key}"), message);
        }
        let mut names = std::collections::HashSet::new();
        for (i, webhook) in self.webhooks.iter().enumerate() {
            if !names.insert(webhook.name.clone()) {
                invalid(
                    &format!("webhooks[{i}].name"),
                    format!("duplicate webhook name {:?}", webhook.name),
                );
            }
            for (key, message) in webhook.problems() {
                invalid(&format!("webhooks[{i}].{key}"), message);
            }
        }
        for (i, nats) in self.nats.iter().enumerate() {
            if !names.insert(nats.name.clone()) {
                invalid(
                    &format!("nats[{i}].name"),
                    format!(
                        "duplicate target name {:?} (names are unique over webhooks and NATS targets)",
                        nats.name
                    ),
                );
            }
            for (key, message) in nats.problems() {
                invalid(&format!("nats[{i}].{key}"), message);
            }
        }
        for (key, message) in self.metrics.problems() {
            invalid(&format!("metrics.{key}"), message);
        }
        problems
    }

    /// The node id events carry: configured, or the host name.
    pub fn node_id(&self) -> String {
        self.node.clone().unwrap_or_else(|| {
            hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "unknown".into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.max_peers, 65_536);
        assert_eq!(config.drain_interval, Duration::from_secs(1));
        assert_eq!(config.refresh_interval, Duration::from_secs(10));
        assert_eq!(config.disconnect_after, Duration::from_secs(180));
        assert_eq!(config.wireguard_socket_dir, Path::new("/var/run/wireguard"));
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = parse("max_peers = 10\ndrain_intervall = \"2s\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("drain_intervall"), "{text}");
        assert!(text.starts_with("test.toml:2:"), "{text}");
    }

    #[test]
    fn durations_parse_and_bad_values_are_named() {
        let config = parse("drain_interval = \"250ms\"\ndisconnect_after = \"3m\"").unwrap();
        assert_eq!(config.drain_interval, Duration::from_millis(250));
        assert_eq!(config.disconnect_after, Duration::from_secs(180));
        let err = parse("max_peers = 0").unwrap_err().to_string();
        assert!(err.contains("max_peers"), "{err}");
        let err = parse("drain_interval = \"soon\"").unwrap_err().to_string();
        assert!(err.contains("1:18"), "{err}");
        assert!(err.contains("`drain_interval`"), "{err}");
        let err = parse("[alerts]\nwindow = 3\n").unwrap_err().to_string();
        assert!(err.contains("`alerts.window`"), "{err}");
    }
}
