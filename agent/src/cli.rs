//! The command line: `wgpulse run`, `check-config`, `peers`, `target` (alias
//! `webhook`), `example`,
//! `version`.
//! Help text comes from these doc comments.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// eBPF-backed WireGuard telemetry: per-peer wire counters, connect/disconnect
/// events delivered to webhooks, and Prometheus metrics.
#[derive(Debug, Parser)]
#[command(name = "wgpulse", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: load the datapath, watch WireGuard devices, emit events.
    Run(RunArgs),
    /// Check a configuration file: exit 0, or 1 naming every problem by key and line.
    CheckConfig {
        /// The TOML file to check.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show the running agent's peers (asks its local API).
    Peers {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// How to reach the agent.
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Inspect and operate the running agent's delivery targets (webhooks and NATS
    /// targets); `webhook` is the same command under its old name.
    #[command(alias = "webhook")]
    Target {
        /// What to do.
        #[command(subcommand)]
        action: WebhookAction,
        /// How to reach the agent.
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print the request a webhook of a dialect receives for sample events (built,
    /// encoded and signed by the delivery code; signed with the Standard Webhooks
    /// specification's example secret `whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw`).
    Example {
        /// The dialect: wgpulse, wg-portal, wg-portal-v1, defguard, procustodibus,
        /// vpn-enterprise, standard-webhooks, slack, discord, template.
        dialect: String,
        /// Events to show (`entity.event`, `entity.*`, `*`; repeatable); default
        /// `peer_metric.connect`.
        #[arg(long = "event", value_name = "FILTER")]
        events: Vec<String>,
        /// Several events per request (`format = "batch"`).
        #[arg(long)]
        batch: bool,
        /// The body template, for dialect `template`.
        #[arg(long)]
        template: Option<String>,
    },
    /// Print the version and exit.
    Version,
}

/// `wgpulse target ...` (alias `wgpulse webhook ...`).
#[derive(Debug, Subcommand)]
pub enum WebhookAction {
    /// List the targets with their delivery statistics.
    List,
    /// Send a test event to one target (signed, in a webhook's dialect; published
    /// to a NATS target's stream); print status, latency and the answer.
    Test {
        /// The target's name.
        name: String,
    },
    /// Queue a target's dead letters again (and unpause it).
    Replay {
        /// The target's name.
        name: String,
    },
    /// Show a target's recent deliveries.
    Deliveries {
        /// The target's name.
        name: String,
    },
}

/// Where the running agent's API is.
#[derive(Debug, Args, Default, Clone)]
pub struct ApiArgs {
    /// The agent's configuration: its `metrics.listen` and `api.token_file` are used.
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    /// Base URL of the agent's API (default: from --config, else http://127.0.0.1:9586).
    #[arg(long, global = true)]
    pub api: Option<String>,
    /// File with the API's bearer token (default: from --config).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
}

/// `wgpulse run`: flags override the configuration file's keys.
#[derive(Debug, Args, Default)]
pub struct RunArgs {
    /// Configuration file (TOML); without it every key has its default.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Attach to this interface (repeatable); overrides `interfaces`.
    #[arg(long = "interface", value_name = "NAME")]
    pub interfaces: Vec<String>,
    /// Watch this WireGuard device only (repeatable); overrides `devices`.
    #[arg(long = "device", value_name = "NAME")]
    pub devices: Vec<String>,
    /// Overrides `state_dir`.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Overrides `max_peers`.
    #[arg(long)]
    pub max_peers: Option<u32>,
    /// Overrides `drain_interval` (e.g. `500ms`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub drain_interval: Option<Duration>,
    /// Overrides `refresh_interval` (e.g. `5s`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub refresh_interval: Option<Duration>,
    /// Overrides `disconnect_after` (e.g. `3m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub disconnect_after: Option<Duration>,
    /// Overrides `wireguard_socket_dir`.
    #[arg(long)]
    pub wireguard_socket_dir: Option<PathBuf>,
    /// Overrides `metrics.listen` (empty disables the listener).
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Overrides `log_level` (tracing env-filter syntax).
    #[arg(long)]
    pub log_level: Option<String>,
}

impl RunArgs {
    /// Applies the flags that were given on top of `config`.
    pub fn apply(&self, config: &mut crate::config::Config) {
        if !self.interfaces.is_empty() {
            config.interfaces = self.interfaces.clone();
        }
        if !self.devices.is_empty() {
            config.devices = self.devices.clone();
        }
        if let Some(v) = &self.state_dir {
            config.state_dir = v.clone();
        }
        if let Some(v) = self.max_peers {
            config.max_peers = v;
        }
        if let Some(v) = self.drain_interval {
            config.drain_interval = v;
        }
        if let Some(v) = self.refresh_interval {
            config.refresh_interval = v;
        }
        if let Some(v) = self.disconnect_after {
            config.disconnect_after = v;
        }
        if let Some(v) = &self.wireguard_socket_dir {
            config.wireguard_socket_dir = v.clone();
        }
        if let Some(v) = &self.metrics_listen {
            config.metrics.listen = v.clone();
        }
        if let Some(v) = &self.log_level {
            config.log_level = v.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_config_keys() {
        let cli = Cli::try_parse_from([
            "wgpulse",
            "run",
            "--interface",
            "eth0",
            "--interface",
            "eth1",
            "--drain-interval",
            "250ms",
            "--max-peers",
            "10",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("expected run");
        };
        let mut config = crate::config::Config::default();
        args.apply(&mut config);
        assert_eq!(config.interfaces, ["eth0", "eth1"]);
        assert_eq!(config.drain_interval, Duration::from_millis(250));
        assert_eq!(config.max_peers, 10);
        assert_eq!(config.refresh_interval, Duration::from_secs(10));
    }

    #[test]
    fn bad_durations_are_refused() {
        assert!(Cli::try_parse_from(["wgpulse", "run", "--drain-interval", "soon"]).is_err());
    }
}
