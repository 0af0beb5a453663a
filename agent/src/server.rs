//! The HTTP listener: /metrics, health and the local API (to be implemented: metrics issue).

use serde::Deserialize;

/// `[metrics]` configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Listen address of /metrics and the API (default `127.0.0.1:9586`); empty disables it.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9586".into(),
        }
    }
}

impl MetricsConfig {
    /// Problems as (key, message) pairs.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if !self.listen.is_empty() && self.listen.parse::<std::net::SocketAddr>().is_err() {
            problems.push((
                "listen".into(),
                format!("{:?} is not an address:port", self.listen),
            ));
        }
        problems
    }
}

/// `[api]` configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// File holding the bearer token the API requires (none: the API is open on its listener).
    pub token_file: Option<std::path::PathBuf>,
}
