//! Receiver dialects: the body shape, event names, headers and default signature of
//! the systems users already run, so that a receiver written from that system's
//! documentation accepts wgpulse's deliveries unchanged. The outbox stores the
//! canonical event (wgpulse's shape); a dialect translates it when it is sent, so
//! every dialect shares the outbox, retries, filters, per-peer order and dead
//! letters.
//!
//! One file per dialect: [`wgpulse`], [`wg_portal`] (its v2 and v1 shapes),
//! [`defguard`], [`procustodibus`], [`vpn_enterprise`], [`standard_webhooks`],
//! [`chat`] (Slack and Discord), [`template`] (any other target); [`text`] writes the
//! one-line sentences chat and templates use.

pub mod chat;
pub mod defguard;
pub mod procustodibus;
pub mod standard_webhooks;
pub mod template;
pub mod text;
pub mod vpn_enterprise;
pub mod wg_portal;
pub mod wgpulse;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::config::Format;
use super::sign::{KeyDerivation, Scheme};

/// A webhook's dialect (`dialect`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dialect {
    /// wgpulse's own shape: wg-portal's shell plus `id`, `timestamp`, `node`.
    #[default]
    Wgpulse,
    /// wg-portal's v2 shell `{event, entity, identifier, payload}`, exactly.
    WgPortal,
    /// wg-portal's v1 shape: connects on entity `peer` with the flat status payload.
    WgPortalV1,
    /// defguard: the entity object as the body, `X-Defguard-Event: <name>`.
    Defguard,
    /// Pro Custodibus: a JSON list of resources `{id, type, attributes, relationships}`.
    Procustodibus,
    /// VPN Enterprise: `{id, type, created_at, data}`, `X-VPN-Signature`.
    VpnEnterprise,
    /// Standard Webhooks: `{type, timestamp, data}` with its three headers.
    StandardWebhooks,
    /// Slack (and Mattermost, Rocket.Chat) incoming webhooks: `{"text": ...}`.
    Slack,
    /// Discord incoming webhooks: `{"content": ...}`.
    Discord,
    /// A body template (`template` or `template_file`), rendered per event.
    Template,
}

impl Dialect {
    /// Its configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Wgpulse => "wgpulse",
            Dialect::WgPortal => "wg-portal",
            Dialect::WgPortalV1 => "wg-portal-v1",
            Dialect::Defguard => "defguard",
            Dialect::Procustodibus => "procustodibus",
            Dialect::VpnEnterprise => "vpn-enterprise",
            Dialect::StandardWebhooks => "standard-webhooks",
            Dialect::Slack => "slack",
            Dialect::Discord => "discord",
            Dialect::Template => "template",
        }
    }

    /// How events go out: one per request, or batches, given the configured
    /// `format`; an error for a combination the receivers cannot take.
    pub fn shape(self, format: Format) -> Result<Shape, String> {
        match (self, format) {
            (Dialect::Procustodibus, _) => Ok(Shape::List),
            (Dialect::Wgpulse | Dialect::Slack | Dialect::Discord, Format::Batch) => {
                Ok(Shape::List)
            }
            (_, Format::Single) => Ok(Shape::One),
            (dialect, Format::Batch) => Err(format!(
                "the {} dialect takes one event per request: remove format = \"batch\"",
                dialect.name()
            )),
        }
    }

    /// The signature schemes used when a signing secret is set and `signature` is not.
    pub fn default_schemes(self) -> Vec<Scheme> {
        match self {
            Dialect::VpnEnterprise => vec![Scheme::Sha256Hex],
            Dialect::StandardWebhooks => vec![Scheme::StandardWebhooks],
            _ => vec![Scheme::StandardWebhooks, Scheme::Sha256Hex],
        }
    }

    /// The header of the `sha256-hex` scheme when `signature_header` is not set.
    pub fn default_signature_header(self) -> &'static str {
        match self {
            Dialect::VpnEnterprise => "X-VPN-Signature",
            _ => "X-Signature-256",
        }
    }

    /// The header naming each request's event, for the dialects that send one.
    pub fn event_header(self) -> Option<&'static str> {
        match self {
            Dialect::Wgpulse => Some("X-Wgpulse-Event"),
            Dialect::Defguard => Some("X-Defguard-Event"),
            _ => None,
        }
    }

    /// The key derivation when `signature_key` is not set.
    pub fn default_key_derivation(self) -> KeyDerivation {
        match self {
            Dialect::VpnEnterprise => KeyDerivation::Raw,
            _ => KeyDerivation::Auto,
        }
    }

    /// Whether receivers of this dialect reject unsigned requests (a config error
    /// without a signing secret).
    pub fn needs_signature(self) -> bool {
        matches!(self, Dialect::VpnEnterprise | Dialect::StandardWebhooks)
    }
}

/// One event per request, or a JSON list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// One event per request.
    One,
    /// Several events per request.
    List,
}

/// A request body and the headers the dialect adds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Encoded {
    /// The body.
    pub body: Vec<u8>,
    /// Its content type.
    pub content_type: String,
    /// Headers of the dialect (`X-Defguard-Event`, ...).
    pub headers: Vec<(String, String)>,
}

impl Encoded {
    /// A JSON body.
    pub fn json(value: &Value, headers: Vec<(String, String)>) -> Self {
        Self {
            body: serde_json::to_vec(value).expect("JSON serializes"),
            content_type: "application/json".into(),
            headers,
        }
    }
}

/// Translates canonical events for one webhook.
pub struct Encoder {
    dialect: Dialect,
    shape: Shape,
    extra_fields: serde_json::Map<String, Value>,
    template: Option<template::Template>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("dialect", &self.dialect)
            .finish_non_exhaustive()
    }
}

impl Encoder {
    /// An encoder for `dialect` adding `extra_fields` to every event body (and
    /// rendering `template` for [`Dialect::Template`]).
    pub fn new(
        dialect: Dialect,
        shape: Shape,
        extra_fields: serde_json::Map<String, Value>,
        template: Option<template::Template>,
    ) -> Self {
        Self {
            dialect,
            shape,
            extra_fields,
            template,
        }
    }

    /// One event per request, or a list.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The dialect.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The body of a request carrying `bodies` (canonical events as stored; one
    /// unless the shape is a list).
    pub fn encode(&self, bodies: &[&[u8]]) -> Encoded {
        let extra = &self.extra_fields;
        if self.dialect == Dialect::Wgpulse {
            // The stored bytes as they are (no parse) unless fields are added.
            return wgpulse::encode(bodies, self.shape, extra);
        }
        let events: Vec<Value> = bodies
            .iter()
            .map(|body| serde_json::from_slice(body).unwrap_or(Value::Null))
            .collect();
        let events = &events[..];
        match self.dialect {
            Dialect::Wgpulse => unreachable!("handled above"),
            Dialect::WgPortal => wg_portal::encode_v2(&events[0], extra),
            Dialect::WgPortalV1 => wg_portal::encode_v1(&events[0], extra),
            Dialect::Defguard => defguard::encode(&events[0], extra),
            Dialect::Procustodibus => procustodibus::encode(events, extra),
            Dialect::VpnEnterprise => vpn_enterprise::encode(&events[0], extra),
            Dialect::StandardWebhooks => standard_webhooks::encode(&events[0], extra),
            Dialect::Slack => chat::slack(events, extra),
            Dialect::Discord => chat::discord(events, extra),
            Dialect::Template => match &self.template {
                Some(template) => template.render_event(&events[0], extra),
                None => Encoded::json(&events[0], Vec::new()),
            },
        }
    }
}

/// Adds `extra` to a JSON object (its own fields win over an extra field's name).
pub fn with_extra(mut value: Value, extra: &serde_json::Map<String, Value>) -> Value {
    if let Value::Object(map) = &mut value {
        for (key, field) in extra {
            map.entry(key.clone()).or_insert_with(|| field.clone());
        }
    }
    value
}

/// `entity.event` of a canonical event.
pub fn kind(event: &Value) -> String {
    format!(
        "{}.{}",
        event["entity"].as_str().unwrap_or_default(),
        event["event"].as_str().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests;
