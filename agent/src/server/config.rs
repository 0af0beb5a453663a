//! `[metrics]` and `[api]`: the listener's address, TLS, tokens and the limits that
//! keep it serving under attack (connections, header and idle timeouts).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// `[metrics]` configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Listen address of /metrics, health and the API (default `127.0.0.1:9586`, the
    /// port the WireGuard exporters use); empty disables the listener.
    pub listen: String,
    /// File holding a bearer token /metrics requires (none: open, as an exporter's is).
    pub token_file: Option<PathBuf>,
    /// PEM certificate chain: serve HTTPS (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Most connections open at once (default 64). At the limit a new connection
    /// closes the longest-idle one (no request in flight), or is refused when every
    /// connection is busy.
    pub max_connections: usize,
    /// A request's head must be complete this long after its first byte (default
    /// 10 s; also bounds the TLS handshake): a slow sender is cut off.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and none arriving is closed after this
    /// (default 60 s).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9586".into(),
            token_file: None,
            tls_cert: None,
            tls_key: None,
            max_connections: 64,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl MetricsConfig {
    /// Problems as (key, message) pairs.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if !self.listen.is_empty() && self.listen.parse::<SocketAddr>().is_err() {
            problems.push((
                "listen".into(),
                format!("{:?} is not an address:port", self.listen),
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            problems.push(("tls_cert".into(), "tls_cert and tls_key go together".into()));
        }
        if self.max_connections == 0 || self.max_connections > 65_536 {
            problems.push((
                "max_connections".into(),
                "must be between 1 and 65536".into(),
            ));
        }
        if self.header_read_timeout < Duration::from_millis(100) {
            problems.push((
                "header_read_timeout".into(),
                "must be at least 100ms".into(),
            ));
        }
        if self.idle_timeout < Duration::from_millis(100) {
            problems.push(("idle_timeout".into(), "must be at least 100ms".into()));
        }
        problems
    }

    /// The listen address, if the listener is enabled and the address is valid.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }

    /// Whether the listener can be reached from beyond this host's loopback.
    pub fn beyond_loopback(&self) -> bool {
        self.listen_addr()
            .is_some_and(|addr| !addr.ip().to_canonical().is_loopback())
    }
}

/// `[api]` configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// File holding the bearer token `/api/v1` requires. Without it the API answers
    /// clients on loopback only (403 to anyone else).
    pub token_file: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_listeners_are_told_apart() {
        let mut config = MetricsConfig::default();
        assert!(!config.beyond_loopback());
        for listen in ["0.0.0.0:9586", "[::]:9586", "10.0.0.1:9586"] {
            config.listen = listen.into();
            assert!(config.beyond_loopback(), "{listen}");
        }
        for listen in ["[::1]:9586", "127.0.0.2:1", "[::ffff:127.0.0.1]:9586"] {
            config.listen = listen.into();
            assert!(!config.beyond_loopback(), "{listen}");
        }
    }
}
