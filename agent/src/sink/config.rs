//! `[[webhooks]]` configuration.

use serde::Deserialize;

/// One webhook receiver.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Unique name of the webhook.
    pub name: String,
    /// Receiver URL (http or https).
    pub url: String,
}

impl WebhookConfig {
    /// Problems as (key, message) pairs.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            problems.push((
                "url".into(),
                format!("{:?} is not an http or https URL", self.url),
            ));
        }
        problems
    }
}
