//! `[[nats]]` configuration: one table per JetStream target. Secrets (token,
//! password, nkey seed) come inline, from a file (`*_file`) or from an environment
//! variable (`*_env`); `Debug` never shows them.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::subject::SubjectTemplate;
use crate::sink::config::RetryConfig;

/// The subject template when none is set: consumers filter with NATS wildcards
/// (`wgpulse.*.peer_metric.connect`, `wgpulse.gw-1.>`).
pub const DEFAULT_SUBJECT: &str = "wgpulse.{node}.{entity}.{event}";

/// One NATS JetStream target.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Unique name among all targets (webhooks too): the API, the CLI and metrics.
    pub name: String,
    /// Server URLs (`nats://host:4222`, `tls://host:4222`); the client also learns
    /// the rest of a cluster from the first it reaches.
    #[serde(default = "local_server")]
    pub servers: Vec<String>,
    /// Subject template: literal tokens and `{node}`, `{entity}`, `{event}`,
    /// `{identifier}`, `{device}` (each value escaped into one valid token).
    #[serde(default = "default_subject")]
    pub subject: String,
    /// The JetStream stream the events must land in (checked at every publish with
    /// `Nats-Expected-Stream`).
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Create the stream when it does not exist (default false: it must exist).
    #[serde(default)]
    pub create_stream: bool,
    /// Replicas of a stream created by the agent (default 1).
    #[serde(default = "one")]
    pub stream_replicas: usize,
    /// Age limit of a stream created by the agent (default 30 days).
    #[serde(default = "thirty_days", with = "humantime_serde")]
    pub stream_max_age: Duration,
    /// Deliver at all; a disabled target keeps queueing (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Event filters, as a webhook's (default `["*"]`).
    #[serde(default = "everything")]
    pub events: Vec<String>,
    /// Token authentication.
    #[serde(default)]
    pub token: Option<String>,
    /// File holding the token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// User for user + password authentication.
    #[serde(default)]
    pub user: Option<String>,
    /// The password.
    #[serde(default)]
    pub password: Option<String>,
    /// File holding the password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// A `.creds` file (JWT and nkey seed), as `nsc` writes it.
    #[serde(default)]
    pub creds_file: Option<PathBuf>,
    /// File holding an nkey seed (`SU...`).
    #[serde(default)]
    pub nkey_seed_file: Option<PathBuf>,
    /// Environment variable holding an nkey seed.
    #[serde(default)]
    pub nkey_seed_env: Option<String>,
    /// Extra trust root (PEM) for the servers' certificates.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for servers that verify clients.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// Its key (PEM).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// How long a publish waits for its PubAck (and a connection attempt for the
    /// server), default 10 s.
    #[serde(default = "ten_seconds", with = "humantime_serde")]
    pub timeout: Duration,
    /// Publishes awaiting their PubAck at once, over all peers (default 1024). One
    /// peer's events are never two in flight.
    #[serde(default = "in_flight")]
    pub max_in_flight: usize,
    /// Retries (as a webhook's, but the longest back-off is 15 s by default: a bus
    /// that comes back is written to soon).
    #[serde(default = "nats_retry")]
    pub retry: RetryConfig,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("name", &self.name)
            .field("servers", &self.servers)
            .field("subject", &self.subject)
            .field("stream", &self.stream)
            .field("auth", &self.auth_kind())
            .finish_non_exhaustive()
    }
}

/// How a target authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthKind {
    /// No credentials.
    None,
    /// A token.
    Token,
    /// User and password.
    UserPassword,
    /// A `.creds` file.
    Creds,
    /// An nkey seed.
    Nkey,
}

impl NatsConfig {
    /// The configured way of authenticating (the first of several: several are a
    /// config error).
    pub fn auth_kind(&self) -> AuthKind {
        if self.token.is_some() || self.token_file.is_some() || self.token_env.is_some() {
            AuthKind::Token
        } else if self.user.is_some() {
            AuthKind::UserPassword
        } else if self.creds_file.is_some() {
            AuthKind::Creds
        } else if self.nkey_seed_file.is_some() || self.nkey_seed_env.is_some() {
            AuthKind::Nkey
        } else {
            AuthKind::None
        }
    }

    /// The key an authentication failure points at (`token_file`, `password_env`,
    /// `creds_file`, ...).
    pub fn auth_key(&self) -> &'static str {
        match self.auth_kind() {
            AuthKind::Token if self.token_file.is_some() => "token_file",
            AuthKind::Token if self.token_env.is_some() => "token_env",
            AuthKind::Token => "token",
            AuthKind::UserPassword if self.password_file.is_some() => "password_file",
            AuthKind::UserPassword if self.password_env.is_some() => "password_env",
            AuthKind::UserPassword => "password",
            AuthKind::Creds => "creds_file",
            AuthKind::Nkey if self.nkey_seed_file.is_some() => "nkey_seed_file",
            AuthKind::Nkey => "nkey_seed_env",
            AuthKind::None => "servers",
        }
    }

    /// Problems as (key, message) pairs.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| problems.push((key.to_owned(), message));
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            problem(
                "name",
                format!("{:?}: use letters, digits, '-', '_' and '.'", self.name),
            );
        }
        if self.servers.is_empty() {
            problem("servers", "name at least one server".into());
        }
        for server in &self.servers {
            if let Err(message) = check_server(server) {
                problem("servers", message);
            }
        }
        match SubjectTemplate::parse(&self.subject) {
            Ok(template) => {
                if self.create_stream && template.literal_prefix().is_empty() {
                    problem(
                        "subject",
                        "with create_stream, the subject must start with a literal token (the stream's subjects are <prefix>.>)".into(),
                    );
                }
            }
            Err(message) => problem("subject", message),
        }
        if self.stream.is_empty()
            || self
                .stream
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
        {
            problem(
                "stream",
                format!(
                    "{:?} is not a valid stream name (no spaces, '.', '*', '>', '/' or '\\\\')",
                    self.stream
                ),
            );
        }
        if !(1..=5).contains(&self.stream_replicas) {
            problem("stream_replicas", "must be 1 to 5".into());
        }
        for filter in &self.events {
            if let Err(message) = crate::sink::filter::Filter::parse(filter) {
                problem("events", message);
            }
        }
        let count = |set: &[bool]| set.iter().filter(|s| **s).count();
        if count(&[
            self.token.is_some(),
            self.token_file.is_some(),
            self.token_env.is_some(),
        ]) > 1
        {
            problem(
                "token",
                "set only one of token, token_file, token_env".into(),
            );
        }
        let passwords = count(&[
            self.password.is_some(),
            self.password_file.is_some(),
            self.password_env.is_some(),
        ]);
        if passwords > 1 {
            problem(
                "password",
                "set only one of password, password_file, password_env".into(),
            );
        }
        if self.user.is_some() != (passwords > 0) {
            problem(
                "user",
                "user and one of password, password_file, password_env go together".into(),
            );
        }
        if self.nkey_seed_file.is_some() && self.nkey_seed_env.is_some() {
            problem(
                "nkey_seed_file",
                "set only one of nkey_seed_file, nkey_seed_env".into(),
            );
        }
        let methods = count(&[
            self.token.is_some() || self.token_file.is_some() || self.token_env.is_some(),
            self.user.is_some(),
            self.creds_file.is_some(),
            self.nkey_seed_file.is_some() || self.nkey_seed_env.is_some(),
        ]);
        if methods > 1 {
            problem(
                "token",
                "use one way of authenticating: token, user + password, creds_file or an nkey seed"
                    .into(),
            );
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            problem("tls_cert", "tls_cert and tls_key go together".into());
        }
        if self.timeout.is_zero() {
            problem("timeout", "must be more than 0".into());
        }
        if self.max_in_flight == 0 {
            problem("max_in_flight", "must be at least 1".into());
        }
        for (key, message) in self.retry.problems(self.timeout) {
            problem(&key, message);
        }
        problems
    }
}

/// A server URL: `nats://`, `tls://` (or a bare `host:port`), a host, a valid port.
fn check_server(server: &str) -> Result<(), String> {
    let with_scheme = if server.contains("://") {
        server.to_owned()
    } else {
        format!("nats://{server}")
    };
    let url = url::Url::parse(&with_scheme)
        .map_err(|e| format!("{:?} is not a valid server URL: {e}", redact(server)))?;
    if !matches!(url.scheme(), "nats" | "tls") {
        return Err(format!(
            "{:?}: use nats:// or tls:// (websocket servers are not supported)",
            redact(server)
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{:?} has no host", redact(server)));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{:?} carries credentials: use user and password_file (or token_file)",
            redact(server)
        ));
    }
    Ok(())
}

/// A server URL without user info, for messages.
pub fn redact(server: &str) -> String {
    match server.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://{host}"),
            None => server.to_owned(),
        },
        None => match server.rsplit_once('@') {
            Some((_, host)) => host.to_owned(),
            None => server.to_owned(),
        },
    }
}

fn local_server() -> Vec<String> {
    vec!["nats://127.0.0.1:4222".into()]
}

fn default_subject() -> String {
    DEFAULT_SUBJECT.into()
}

fn default_stream() -> String {
    "WGPULSE".into()
}

fn one() -> usize {
    1
}

fn yes() -> bool {
    true
}

fn everything() -> Vec<String> {
    vec!["*".into()]
}

fn thirty_days() -> Duration {
    Duration::from_secs(30 * 86400)
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

fn in_flight() -> usize {
    1024
}

fn nats_retry() -> RetryConfig {
    RetryConfig {
        max_backoff: Duration::from_secs(15),
        ..RetryConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nats(text: &str) -> NatsConfig {
        toml::from_str(&format!("name = \"bus\"\n{text}")).unwrap()
    }

    fn keys(config: &NatsConfig) -> Vec<String> {
        config.problems().into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let config = nats("");
        assert!(config.problems().is_empty(), "{:?}", config.problems());
        assert_eq!(config.servers, ["nats://127.0.0.1:4222"]);
        assert_eq!(config.subject, DEFAULT_SUBJECT);
        assert_eq!(config.stream, "WGPULSE");
        assert_eq!(config.retry.max_backoff, Duration::from_secs(15));
        assert_eq!(config.auth_kind(), AuthKind::None);
    }

    #[test]
    fn mistakes_name_their_key() {
        assert_eq!(keys(&nats("servers = [\"http://x:4222\"]")), ["servers"]);
        assert_eq!(
            keys(&nats("servers = [\"nats://u:p@x:4222\"]")),
            ["servers"]
        );
        assert_eq!(keys(&nats("subject = \"wg.{nodes}\"")), ["subject"]);
        assert_eq!(keys(&nats("stream = \"a.b\"")), ["stream"]);
        assert_eq!(keys(&nats("user = \"u\"")), ["user"]);
        assert_eq!(
            keys(&nats(
                "token = \"t0123456789abcdef\"\nuser = \"u\"\npassword = \"p\""
            )),
            ["token"]
        );
        assert_eq!(keys(&nats("tls_cert = \"/c.pem\"")), ["tls_cert"]);
        assert_eq!(
            keys(&nats("create_stream = true\nsubject = \"{node}.x\"")),
            ["subject"]
        );
        let message = nats("servers = [\"nats://u:secret@x:4222\"]").problems()[0]
            .1
            .clone();
        assert!(!message.contains("secret"), "{message}");
    }

    #[test]
    fn the_auth_key_is_the_one_configured() {
        assert_eq!(nats("token_file = \"/t\"").auth_key(), "token_file");
        assert_eq!(
            nats("user = \"u\"\npassword_env = \"P\"").auth_key(),
            "password_env"
        );
        assert_eq!(nats("creds_file = \"/c\"").auth_key(), "creds_file");
        assert_eq!(nats("nkey_seed_env = \"S\"").auth_key(), "nkey_seed_env");
    }
}
