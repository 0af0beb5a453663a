//! `wgpulse example`: the HTTP request a webhook of a dialect receives for sample
//! events ([`crate::events::samples`], made by the real code), built, encoded and
//! signed by the same code that delivers (a demo signing secret and token stand in
//! for real ones). For writing a receiver or a template against.

use std::time::SystemTime;

use http_body_util::BodyExt as _;

use super::config::{Format, WebhookConfig};
use super::dialect::{self, Dialect, Encoder, Shape};
use super::filter::{self, Filter};
use super::request::Target;

/// The signing secret of the examples: the Standard Webhooks specification's own
/// example secret, so that its published verifiers can check them.
pub const DEMO_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What to show.
#[derive(Clone, Debug)]
pub struct ExampleRequest {
    /// The dialect.
    pub dialect: Dialect,
    /// Event filters (`entity.event`, wildcards); empty: `peer_metric.connect`.
    pub events: Vec<String>,
    /// Several events per request (`format = "batch"`).
    pub batch: bool,
    /// The body template (dialect `template`).
    pub template: Option<String>,
}

/// The requests for `example`, as HTTP/1.1 text: one per event, or one list.
pub fn render(example: &ExampleRequest) -> Result<String, String> {
    let dialect_name = example.dialect.name();
    let mut config: WebhookConfig = toml::from_str(&format!(
        "name = \"example\"\nurl = \"https://receiver.example/hook\"\ndialect = {dialect_name:?}\n"
    ))
    .map_err(|e| e.to_string())?;
    config.format = if example.batch {
        Format::Batch
    } else {
        Format::Single
    };
    config.template = example.template.clone();
    config.signing_secret = Some(super::config::Secrets::One(DEMO_SECRET.into()));
    if matches!(example.dialect, Dialect::WgPortal | Dialect::Defguard) {
        config.authorization = Some("Bearer example-receiver-token".into());
    }
    if let Some((key, message)) = config.problems().into_iter().next() {
        return Err(format!("{key}: {message}"));
    }
    let target = Target::new(&config).map_err(|e| e.to_string())?;
    let shape = example
        .dialect
        .shape(config.format)
        .map_err(|e| e.to_string())?;
    let template = dialect::template::load(&config)?;
    let encoder = Encoder::new(example.dialect, shape, Default::default(), template);
    let filters: Vec<Filter> = if example.events.is_empty() {
        vec![Filter::parse("peer_metric.connect")?]
    } else {
        example
            .events
            .iter()
            .map(|f| Filter::parse(f))
            .collect::<Result<_, _>>()?
    };
    let events: Vec<Vec<u8>> = crate::events::samples::samples("gw-1")
        .into_iter()
        .filter(|event| filter::any_matches(&filters, event))
        .map(|event| serde_json::to_vec(&event).expect("events serialize"))
        .collect();
    if events.is_empty() {
        return Err(format!(
            "no sample event matches {:?}",
            example.events.join(", ")
        ));
    }
    let now = SystemTime::now();
    let groups: Vec<Vec<&[u8]>> = match shape {
        Shape::One => events.iter().map(|e| vec![e.as_slice()]).collect(),
        Shape::List => vec![events.iter().map(Vec::as_slice).collect()],
    };
    let mut out = String::new();
    for group in groups {
        let first: serde_json::Value = serde_json::from_slice(group[0]).expect("samples are JSON");
        let id = first["id"].as_str().unwrap_or_default();
        let id = match shape {
            Shape::One => id.to_owned(),
            Shape::List => format!("batch_{id}_{}", group.len()),
        };
        let request = target.request(&id, encoder.encode(&group), now);
        out.push_str(&format!(
            "POST {} HTTP/1.1\n",
            request.uri().path_and_query().map_or("/", |p| p.as_str())
        ));
        out.push_str("host: receiver.example\n");
        for (name, value) in request.headers() {
            out.push_str(&format!(
                "{name}: {}\n",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        let body = full_body(request.into_body());
        out.push('\n');
        out.push_str(&String::from_utf8_lossy(&body));
        out.push_str("\n\n");
    }
    Ok(out)
}

/// The bytes of a full body (ready at once; collected on a current-thread runtime).
fn full_body(body: http_body_util::Full<bytes::Bytes>) -> Vec<u8> {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime")
        .block_on(body.collect())
        .map(|collected| collected.to_bytes().to_vec())
        .unwrap_or_else(|never| match never {})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(dialect: &str, events: &[&str], template: Option<&str>) -> Result<String, String> {
        render(&ExampleRequest {
            dialect: serde_json::from_value(serde_json::Value::String(dialect.into())).unwrap(),
            events: events.iter().map(|e| e.to_string()).collect(),
            batch: false,
            template: template.map(str::to_owned),
        })
    }

    #[test]
    fn every_dialect_shows_a_signed_request_per_sample() {
        for dialect in [
            "wgpulse",
            "wg-portal",
            "wg-portal-v1",
            "defguard",
            "procustodibus",
            "vpn-enterprise",
            "standard-webhooks",
            "slack",
            "discord",
        ] {
            let text = example(dialect, &["*"], None).unwrap();
            assert!(
                text.starts_with("POST /hook HTTP/1.1\n"),
                "{dialect}: {text}"
            );
            assert!(text.contains("signature"), "{dialect}: unsigned: {text}");
        }
        let vpn = example("vpn-enterprise", &[], None).unwrap();
        assert!(vpn.contains("x-vpn-signature: sha256="), "{vpn}");
        assert!(vpn.contains("\"type\":\"vpn.connected\""), "{vpn}");
        assert_eq!(vpn.matches("POST ").count(), 1, "one connect sample");
    }

    #[test]
    fn a_template_is_rendered_and_mistakes_are_errors() {
        let text = example("template", &["peer_metric.connect"], Some("{{ text }}")).unwrap();
        assert!(
            text.contains("connected from 192.0.2.7:51820 on wg0"),
            "{text}"
        );
        assert!(example("template", &[], None).is_err());
        assert!(example("wgpulse", &["nothing.matches"], None)
            .unwrap_err()
            .contains("no sample event"));
    }
}
