//! One webhook's request template: URL, headers, secrets and signing, and the
//! request for one delivery (a single event or a batch).

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request, Uri};
use zeroize::Zeroizing;

use super::address::redact_url;
use super::config::{Format, WebhookConfig};
use super::dialect::Encoded;
use super::filter::Filter;
use super::sign::{Scheme, Signer};

/// Errors preparing a webhook.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// A secret could not be read.
    #[error("webhook {webhook}: reading {what}: {message}")]
    Secret {
        /// The webhook.
        webhook: String,
        /// Which setting.
        what: &'static str,
        /// Why (never the secret).
        message: String,
    },
    /// A value is not valid in an HTTP request.
    #[error("webhook {webhook}: {message}")]
    Invalid {
        /// The webhook.
        webhook: String,
        /// What.
        message: String,
    },
}

/// Everything needed to build a webhook's requests.
pub struct Target {
    /// Webhook name.
    pub name: String,
    /// Receiver, without the user info (which became the `Authorization` header).
    pub url: Uri,
    /// Body format.
    pub format: Format,
    /// Event filters.
    pub filters: Vec<Filter>,
    /// Request timeout.
    pub timeout: Duration,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Swapped as a whole when SIGHUP re-reads the secrets.
    credentials: std::sync::RwLock<Credentials>,
    /// The signature schemes used when there is a signing secret.
    schemes: Vec<Scheme>,
    /// The header of the `sha256-hex` scheme.
    signature_header: HeaderName,
    /// Whether `headers` sets `Content-Type` (then the dialect's is not sent).
    custom_content_type: bool,
}

/// The secrets of a webhook's requests.
#[derive(Clone, PartialEq, Eq)]
struct Credentials {
    authorization: Option<HeaderValue>,
    signer: Option<Signer>,
}

/// Which of a webhook's secrets a reload changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// The `Authorization` value changed.
    pub authorization: bool,
    /// The signing secrets changed.
    pub signing_secrets: bool,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("url", &redact_url(&self.url.to_string()))
            .field("format", &self.format)
            .field("headers", &self.headers.len())
            .field(
                "authorization",
                &self
                    .credentials
                    .read()
                    .expect("not poisoned")
                    .authorization
                    .is_some(),
            )
            .finish_non_exhaustive()
    }
}

/// `Authorization: Basic` from a URL's `user:password@` (percent-decoded, as RFC
/// 3986 encodes them), and the URL without them; `None` when it has none.
fn userinfo_authorization(url: &mut url::Url) -> Option<Zeroizing<String>> {
    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let credentials = Zeroizing::new(format!(
        "{}:{}",
        decode(url.username()),
        decode(url.password().unwrap_or(""))
    ));
    let _ = url.set_username("");
    let _ = url.set_password(None);
    Some(Zeroizing::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials.as_bytes())
    )))
}

fn secret(
    webhook: &str,
    what: &'static str,
    inline: Option<String>,
    file: Option<&std::path::Path>,
    env: Option<&str>,
) -> Result<Option<Zeroizing<String>>, TargetError> {
    crate::secrets::read_source(inline.as_deref(), file, env).map_err(|message| {
        TargetError::Secret {
            webhook: webhook.to_owned(),
            what,
            message,
        }
    })
}

/// Every problem with what a webhook reads at start (its secrets from files and
/// environment variables, their strength, its CA file), as (key, message): what
/// `check-config` reports and `run` would fail on.
pub fn resource_problems(config: &WebhookConfig) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    match secret(
        &config.name,
        "authorization",
        config.authorization.clone(),
        config.authorization_file.as_deref(),
        config.authorization_env.as_deref(),
    ) {
        Ok(Some(value)) => {
            let key = if config.authorization_file.is_some() {
                "authorization_file"
            } else if config.authorization_env.is_some() {
                "authorization_env"
            } else {
                "authorization"
            };
            if value.trim().is_empty() {
                problems.push((key.to_owned(), "the authorization value is empty".into()));
            } else if let Err(weak) = crate::secrets::check_value(value.as_bytes()) {
                problems.push((key.to_owned(), format!("the authorization value {weak}")));
            } else if HeaderValue::from_str(&value).is_err() {
                problems.push((
                    key.to_owned(),
                    "the authorization value is not a valid header value (control characters?)"
                        .into(),
                ));
            }
        }
        Ok(None) => {}
        Err(err) => problems.push((authorization_key(config), err.to_string())),
    }
    let signing_key = if config.signing_secret_file.is_some() {
        "signing_secret_file"
    } else if config.signing_secret_env.is_some() {
        "signing_secret_env"
    } else {
        "signing_secret"
    };
    let secrets = match (
        &config.signing_secret,
        &config.signing_secret_file,
        &config.signing_secret_env,
    ) {
        (Some(inline), _, _) => Ok(inline.list()),
        (None, file, env) => secret(
            &config.name,
            "signing_secret",
            None,
            file.as_deref(),
            env.as_deref(),
        )
        .map(|text| {
            text.map(|t| t.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default()
        }),
    };
    match secrets {
        Ok(secrets) => {
            let configured = config.signing_secret.is_some()
                || config.signing_secret_file.is_some()
                || config.signing_secret_env.is_some();
            if configured && secrets.is_empty() {
                problems.push((signing_key.to_owned(), "no signing secret in it".into()));
            }
            if !secrets.is_empty() {
                let derivation = config
                    .signature_key
                    .unwrap_or_else(|| config.dialect.default_key_derivation());
                if let Err(err) = Signer::with_derivation(&secrets, derivation) {
                    problems.push((signing_key.to_owned(), err.to_string()));
                }
            }
        }
        Err(err) => problems.push((signing_key.to_owned(), err.to_string())),
    }
    if let Some(ca) = &config.ca_file {
        if let Err(err) = super::client::read_ca_file(ca) {
            problems.push(("ca_file".into(), err.to_string()));
        }
    }
    if let Some(problem) = template_problem(config) {
        problems.push(problem);
    }
    problems
}

/// A template that does not compile, or cannot render one of the events its webhook
/// receives (checked against a real example of each, [`crate::events::samples`]).
fn template_problem(config: &WebhookConfig) -> Option<(String, String)> {
    let key = if config.template_file.is_some() {
        "template_file"
    } else {
        "template"
    };
    let template = match super::dialect::template::load(config) {
        Ok(Some(template)) => template,
        Ok(None) => return None,
        Err(message) => return Some((key.into(), format!("webhook {:?}: {message}", config.name))),
    };
    let filters: Vec<Filter> = config
        .events
        .iter()
        .filter_map(|f| Filter::parse(f).ok())
        .collect();
    let samples: Vec<serde_json::Value> = crate::events::samples::samples("node")
        .into_iter()
        .filter(|event| super::filter::any_matches(&filters, event))
        .map(|event| serde_json::to_value(event).expect("events serialize"))
        .collect();
    template
        .check(&samples, &config.extra_fields)
        .err()
        .map(|(kind, err)| {
            (
                key.into(),
                format!("webhook {:?}: {err} (rendering the sample {kind} event; names that may be missing need a default, e.g. {{{{ x | default(\"\") }}}})", config.name),
            )
        })
}

fn authorization_key(config: &WebhookConfig) -> String {
    if config.authorization_file.is_some() {
        "authorization_file".into()
    } else if config.authorization_env.is_some() {
        "authorization_env".into()
    } else {
        "authorization".into()
    }
}

impl Target {
    /// Reads the webhook's secrets and checks its headers.
    pub fn new(config: &WebhookConfig) -> Result<Self, TargetError> {
        let invalid = |message: String| TargetError::Invalid {
            webhook: config.name.clone(),
            message,
        };
        let mut url =
            super::address::parse_url(&config.url).map_err(|m| invalid(format!("url: {m}")))?;
        let from_url = userinfo_authorization(&mut url);
        let url: Uri = url
            .as_str()
            .parse()
            .map_err(|_| invalid(format!("url {:?} is not valid", redact_url(&config.url))))?;
        let authorization = secret(
            &config.name,
            "authorization",
            config.authorization.clone(),
            config.authorization_file.as_deref(),
            config.authorization_env.as_deref(),
        )?
        .or(from_url)
        .map(|value| {
            crate::secrets::check_value(value.as_bytes()).map_err(|weak| TargetError::Secret {
                webhook: config.name.clone(),
                what: "authorization",
                message: format!("the value {weak}"),
            })?;
            let mut header = HeaderValue::from_str(&value)
                .map_err(|_| invalid("authorization is not a valid header value".into()))?;
            header.set_sensitive(true);
            Ok::<_, TargetError>(header)
        })
        .transpose()?;
        let secrets: Vec<String> = match (
            &config.signing_secret,
            &config.signing_secret_file,
            &config.signing_secret_env,
        ) {
            (Some(inline), _, _) => inline.list(),
            (None, file, env) => secret(
                &config.name,
                "signing_secret",
                None,
                file.as_deref(),
                env.as_deref(),
            )?
            .map(|text| text.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
        };
        let derivation = config
            .signature_key
            .unwrap_or_else(|| config.dialect.default_key_derivation());
        let signer = if secrets.is_empty() {
            None
        } else {
            Some(Signer::with_derivation(&secrets, derivation).map_err(|e| {
                TargetError::Secret {
                    webhook: config.name.clone(),
                    what: "signing_secret",
                    message: e.to_string(),
                }
            })?)
        };
        let headers = config
            .headers
            .iter()
            .map(|(name, value)| {
                let name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| invalid(format!("header name {name:?} is not valid")))?;
                let mut value = HeaderValue::from_str(value)
                    .map_err(|_| invalid(format!("the value of header {name} is not valid")))?;
                value.set_sensitive(true);
                Ok((name, value))
            })
            .collect::<Result<_, TargetError>>()?;
        let filters = config
            .events
            .iter()
            .map(|f| Filter::parse(f).map_err(invalid))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            name: config.name.clone(),
            url,
            format: config.format,
            filters,
            timeout: config.timeout,
            headers,
            credentials: std::sync::RwLock::new(Credentials {
                authorization,
                signer,
            }),
            schemes: config
                .signature
                .clone()
                .unwrap_or_else(|| config.dialect.default_schemes()),
            signature_header: HeaderName::from_bytes(
                config
                    .signature_header
                    .as_deref()
                    .unwrap_or(config.dialect.default_signature_header())
                    .as_bytes(),
            )
            .map_err(|_| invalid("signature_header is not a valid header name".into()))?,
            custom_content_type: config
                .headers
                .keys()
                .any(|name| name.eq_ignore_ascii_case("content-type")),
        })
    }

    /// Reads the secrets again from `config` (the same webhook as re-read from the
    /// configuration file: inline values, files, environment variables) and uses
    /// them from the next request on; nothing changes when one cannot be read.
    pub fn reload(&self, config: &WebhookConfig) -> Result<Reloaded, TargetError> {
        let fresh = Target::new(config)?;
        let fresh = fresh.credentials.into_inner().expect("not poisoned");
        let mut credentials = self.credentials.write().expect("not poisoned");
        let reloaded = Reloaded {
            authorization: credentials.authorization != fresh.authorization,
            signing_secrets: credentials.signer != fresh.signer,
        };
        *credentials = fresh;
        Ok(reloaded)
    }

    /// The request delivering `encoded`. `id` is the event id (one event) or a batch
    /// id stable across retries.
    pub fn request(&self, id: &str, encoded: Encoded, now: SystemTime) -> Request<Full<Bytes>> {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(self.url.clone())
            .header(USER_AGENT, concat!("wgpulse/", env!("CARGO_PKG_VERSION")))
            .header("webhook-id", id);
        if !self.custom_content_type {
            builder = builder.header(CONTENT_TYPE, encoded.content_type.as_str());
        }
        for (name, value) in &encoded.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        for (name, value) in &self.headers {
            builder = builder.header(name, value.clone());
        }
        let body = Bytes::from(encoded.body);
        let credentials = self.credentials.read().expect("not poisoned");
        if let Some(authorization) = &credentials.authorization {
            builder = builder.header(AUTHORIZATION, authorization.clone());
        }
        if let Some(signer) = &credentials.signer {
            let timestamp = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let signatures = signer.sign(id, timestamp, &body);
            for scheme in &self.schemes {
                builder = match scheme {
                    Scheme::StandardWebhooks => builder
                        .header("webhook-timestamp", timestamp.to_string())
                        .header("webhook-signature", signatures.standard.as_str()),
                    Scheme::Sha256Hex => {
                        builder.header(&self.signature_header, signatures.body.as_str())
                    }
                };
            }
        }
        builder
            .body(Full::new(body))
            .expect("every header was validated")
    }
}

#[cfg(test)]
mod tests;
