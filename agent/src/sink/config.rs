//! `[[webhooks]]` configuration: one table per receiver. Secrets can come from the
//! file itself, from a file (`*_file`) or from an environment variable (`*_env`), so
//! they can stay out of configuration files; they are read once at start and never
//! printed (`Debug` redacts them).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::address::{parse_url, redact_url, reserved_header};

/// One webhook receiver.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Unique name of the webhook (used in the API, the CLI and metrics).
    pub name: String,
    /// Receiver URL (http or https). `user:password@` in it becomes an
    /// `Authorization: Basic` header and is never sent in the URL or logged.
    pub url: String,
    /// Deliver at all; a paused (disabled) webhook keeps queueing (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Event filters: `*`, `<entity>.*`, `<entity>.<event>` (default `["*"]`). The
    /// handshake feed (`peer_metric.handshake`) is chatty and only sent when named.
    #[serde(default = "everything")]
    pub events: Vec<String>,
    /// `single` (one event object per POST: wg-portal, defguard) or `batch` (a JSON
    /// array: Pro Custodibus). Default `single`.
    #[serde(default)]
    pub format: Format,
    /// Sent verbatim as the `Authorization` header (wg-portal, defguard).
    #[serde(default)]
    pub authorization: Option<String>,
    /// File holding the `Authorization` header value.
    #[serde(default)]
    pub authorization_file: Option<PathBuf>,
    /// Environment variable holding the `Authorization` header value.
    #[serde(default)]
    pub authorization_env: Option<String>,
    /// Extra headers (Pro Custodibus style).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Signing secret(s): `whsec_<base64>` (Standard Webhooks) or any other string
    /// (its bytes). Several while a secret is rotated: one signature each.
    #[serde(default)]
    pub signing_secret: Option<Secrets>,
    /// File holding signing secrets, one per line.
    #[serde(default)]
    pub signing_secret_file: Option<PathBuf>,
    /// Environment variable holding signing secrets, space-separated.
    #[serde(default)]
    pub signing_secret_env: Option<String>,
    /// Batching (batch format only).
    #[serde(default)]
    pub batch: BatchConfig,
    /// Request timeout (default 15 s).
    #[serde(default = "fifteen_seconds", with = "humantime_serde")]
    pub timeout: Duration,
    /// Requests in flight at once (default 4). Events of one peer are always
    /// delivered in order, one request at a time.
    #[serde(default = "four")]
    pub concurrency: usize,
    /// Retries.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Extra trust root (PEM) for a private receiver, added to the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The receiver's dialect: body shape, event names, headers and default signature
    /// (default `wgpulse`).
    #[serde(default)]
    pub dialect: super::dialect::Dialect,
    /// Signature schemes (`standard-webhooks`, `sha256-hex`) when a signing secret is
    /// set; default per dialect.
    #[serde(default)]
    pub signature: Option<Vec<super::sign::Scheme>>,
    /// Header of the `sha256-hex` scheme (default `X-Signature-256`; `X-VPN-Signature`
    /// for vpn-enterprise).
    #[serde(default)]
    pub signature_header: Option<String>,
    /// Key derivation: `auto` (`whsec_` decoded) or `raw` (the secret's UTF-8 bytes);
    /// default per dialect.
    #[serde(default)]
    pub signature_key: Option<super::sign::KeyDerivation>,
    /// Constant fields added to every event body (tenant or site tags).
    #[serde(default)]
    pub extra_fields: serde_json::Map<String, serde_json::Value>,
    /// Body template (dialect `template`), rendered per event.
    #[serde(default)]
    pub template: Option<String>,
    /// File holding the body template.
    #[serde(default)]
    pub template_file: Option<PathBuf>,
    /// Content type of a template's body (default `application/json`).
    #[serde(default)]
    pub template_content_type: Option<String>,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("name", &self.name)
            .field("url", &redact_url(&self.url))
            .field("enabled", &self.enabled)
            .field("events", &self.events)
            .field("format", &self.format)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "signing_secret",
                &self.signing_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("dialect", &self.dialect)
            .finish_non_exhaustive()
    }
}

/// One secret or several.
#[derive(Clone, Deserialize)]
#[serde(untagged)]
pub enum Secrets {
    /// One secret.
    One(String),
    /// Several (rotation).
    Many(Vec<String>),
}

impl Secrets {
    /// The secrets as a list.
    pub fn list(&self) -> Vec<String> {
        match self {
            Secrets::One(one) => vec![one.clone()],
            Secrets::Many(many) => many.clone(),
        }
    }
}

/// Body format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// One event object per request.
    #[default]
    Single,
    /// A JSON array of events per request.
    Batch,
}

/// `[webhooks.batch]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Most events per request (default 500).
    pub max_events: usize,
    /// Most body bytes per request (default 1 MiB; a single larger event is sent
    /// alone).
    pub max_bytes: usize,
    /// How long a partial batch on an idle lane waits for more events (default 0:
    /// it is sent at once; events that arrive while a request is in flight, or more
    /// than a batch holds, coalesce into the next request anyway). A higher value
    /// trades latency for fewer requests.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_events: 500,
            max_bytes: 1024 * 1024,
            max_wait: Duration::ZERO,
        }
    }
}

/// `[webhooks.retry]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Events not delivered within this age become dead letters (default 72 h).
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// First backoff (default 1 s); doubles per attempt with full jitter.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest backoff (default 10 min).
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(72 * 3600),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(600),
        }
    }
}

impl RetryConfig {
    /// Problems as (key, message) pairs, keys relative to the target (`retry`,
    /// `retry.max_age`); `timeout` is the target's attempt timeout.
    pub fn problems(&self, timeout: Duration) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.initial_backoff.is_zero() || self.max_backoff < self.initial_backoff {
            problems.push((
                "retry".into(),
                "need 0 < initial_backoff <= max_backoff".into(),
            ));
        }
        // A shorter max_age dead-letters events before a receiver that blinked
        // could answer a retry (0s gave up on every event without an attempt).
        let floor = Duration::from_secs(60).max(timeout);
        if self.max_age < floor {
            problems.push((
                "retry.max_age".into(),
                format!(
                    "must be at least {} (1m, and no less than timeout): a shorter one gives events up before a retry",
                    humantime::format_duration(floor)
                ),
            ));
        }
        problems
    }
}

fn yes() -> bool {
    true
}

fn everything() -> Vec<String> {
    vec!["*".into()]
}

fn fifteen_seconds() -> Duration {
    Duration::from_secs(15)
}

fn four() -> usize {
    4
}

impl WebhookConfig {
    /// Why `header` cannot carry the body signature even though it may be sent:
    /// a header the request already has (its content type, the dialect's event
    /// header, one of `[webhooks.headers]`).
    fn signature_header_clash(&self, header: &str) -> Option<String> {
        if header.eq_ignore_ascii_case("content-type") {
            return Some("it carries the body's content type".into());
        }
        if let Some(event) = self.dialect.event_header() {
            if header.eq_ignore_ascii_case(event) {
                return Some(format!(
                    "the {} dialect sends its event name in it",
                    self.dialect.name()
                ));
            }
        }
        self.headers
            .keys()
            .any(|name| name.eq_ignore_ascii_case(header))
            .then(|| "it is also set in [webhooks.headers]".into())
    }

    /// Problems as (key, message) pairs.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| problems.push((key.to_owned(), message));
        match parse_url(&self.url) {
            Ok(url) => {
                let has_userinfo = !url.username().is_empty() || url.password().is_some();
                if has_userinfo
                    && (self.authorization.is_some()
                        || self.authorization_file.is_some()
                        || self.authorization_env.is_some())
                {
                    problem(
                        "url",
                        "carries user:password and an authorization key is set too: use one".into(),
                    );
                }
            }
            Err(message) => problem("url", message),
        }
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
        for filter in &self.events {
            if let Err(message) = super::filter::Filter::parse(filter) {
                problem("events", message);
            }
        }
        let authorizations = [
            self.authorization.is_some(),
            self.authorization_file.is_some(),
            self.authorization_env.is_some(),
        ];
        if authorizations.iter().filter(|set| **set).count() > 1 {
            problem(
                "authorization",
                "set only one of authorization, authorization_file, authorization_env".into(),
            );
        }
        let secrets = [
            self.signing_secret.is_some(),
            self.signing_secret_file.is_some(),
            self.signing_secret_env.is_some(),
        ];
        if secrets.iter().filter(|set| **set).count() > 1 {
            problem(
                "signing_secret",
                "set only one of signing_secret, signing_secret_file, signing_secret_env".into(),
            );
        }
        for (name, value) in &self.headers {
            if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                problem(
                    &format!("headers.{name}"),
                    format!("{name:?} is not a valid header name"),
                );
            } else if let Some(why) = reserved_header(name) {
                problem(
                    &format!("headers.{name}"),
                    format!("{name} is not allowed here: {why}"),
                );
            }
            if hyper::header::HeaderValue::from_str(value).is_err() {
                problem(
                    &format!("headers.{name}"),
                    "the value is not a valid header value (control characters such as CR or LF?)"
                        .into(),
                );
            }
        }
        if let Err(message) = self.dialect.shape(self.format) {
            problem("format", message);
        }
        let templated = self.template.is_some() || self.template_file.is_some();
        match (self.dialect, templated) {
            (super::dialect::Dialect::Template, false) => problem(
                "dialect",
                "the template dialect needs template or template_file".into(),
            ),
            (dialect, true) if dialect != super::dialect::Dialect::Template => problem(
                "template",
                format!(
                    "a template is used by dialect = \"template\" only (this webhook's dialect is {})",
                    dialect.name()
                ),
            ),
            _ => {}
        }
        if self.template.is_some() && self.template_file.is_some() {
            problem("template", "set only one of template, template_file".into());
        }
        if let Some(content_type) = &self.template_content_type {
            if hyper::header::HeaderValue::from_str(content_type).is_err() {
                problem(
                    "template_content_type",
                    format!("{content_type:?} is not a valid header value"),
                );
            }
        }
        if self.dialect.needs_signature()
            && self.signing_secret.is_none()
            && self.signing_secret_file.is_none()
            && self.signing_secret_env.is_none()
        {
            problem(
                "signing_secret",
                format!(
                    "the {} dialect's receivers verify a signature: set signing_secret, signing_secret_file or signing_secret_env",
                    self.dialect.name()
                ),
            );
        }
        if let Some(header) = &self.signature_header {
            match hyper::header::HeaderName::from_bytes(header.as_bytes()) {
                Err(_) => problem(
                    "signature_header",
                    format!("{header:?} is not a valid HTTP header name"),
                ),
                Ok(_) => {
                    if let Some(why) = reserved_header(header) {
                        problem(
                            "signature_header",
                            format!("{header} is not allowed here: {why}"),
                        );
                    } else if let Some(why) = self.signature_header_clash(header) {
                        problem(
                            "signature_header",
                            format!("{header} is not allowed here: {why}"),
                        );
                    }
                }
            }
        }
        if self.signature.as_ref().is_some_and(Vec::is_empty) {
            problem(
                "signature",
                "an empty list: leave signature out, or drop the signing secret".into(),
            );
        }
        if self.batch.max_events == 0 {
            problem("batch.max_events", "must be at least 1".into());
        }
        if self.batch.max_bytes < 1024 {
            problem("batch.max_bytes", "must be at least 1024".into());
        }
        if self.timeout.is_zero() {
            problem("timeout", "must be more than 0".into());
        }
        if self.concurrency == 0 || self.concurrency > 256 {
            problem("concurrency", "must be between 1 and 256".into());
        }
        for (key, message) in self.retry.problems(self.timeout) {
            problem(&key, message);
        }
        problems
    }
}
