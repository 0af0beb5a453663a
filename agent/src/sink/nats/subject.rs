//! Subject templates: `wgpulse.{node}.{entity}.{event}` and the like. A template is
//! dot-separated tokens of literal text and fields; every field's value is escaped
//! into (part of) one valid token, so that a node named `gw.1 berlin` or `*` can
//! neither split a token nor act as a wildcard: `.`, `*`, `>`, `%`, whitespace,
//! control and non-ASCII characters become `%XX` (their UTF-8 bytes in upper-case
//! hex), an empty value becomes `_`. Base64 keys keep `+`, `/` and `=`, which NATS
//! allows in a token.

use serde_json::Value;

use crate::sink::transport::EventHead;

/// The fields a template may name.
pub const FIELDS: &[&str] = &["node", "entity", "event", "identifier", "device"];

/// A field of the template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Node,
    Entity,
    Event,
    Identifier,
    Device,
}

/// A piece of a token.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(Field),
}

/// A parsed subject template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectTemplate {
    tokens: Vec<Vec<Piece>>,
}

impl SubjectTemplate {
    /// Parses `text`; the error names what is wrong (an unknown field, an empty
    /// token, a wildcard, a brace without its pair).
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("the subject is empty".into());
        }
        let mut tokens = Vec::new();
        for token in text.split('.') {
            if token.is_empty() {
                return Err(format!(
                    "{text:?} has an empty token ('..' or a '.' at an end)"
                ));
            }
            let mut pieces = Vec::new();
            let mut rest = token;
            while !rest.is_empty() {
                match rest.find('{') {
                    Some(0) => {
                        let close = rest
                            .find('}')
                            .ok_or_else(|| format!("{text:?}: a '{{' without its '}}'"))?;
                        let name = &rest[1..close];
                        let field = match name {
                            "node" => Field::Node,
                            "entity" => Field::Entity,
                            "event" => Field::Event,
                            "identifier" => Field::Identifier,
                            "device" => Field::Device,
                            other => {
                                return Err(format!(
                                    "unknown field {{{other}}} in {text:?}: the fields are {}",
                                    FIELDS
                                        .iter()
                                        .map(|f| format!("{{{f}}}"))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ))
                            }
                        };
                        pieces.push(Piece::Field(field));
                        rest = &rest[close + 1..];
                    }
                    found => {
                        let end = found.unwrap_or(rest.len());
                        let literal = &rest[..end];
                        if literal.contains('}') {
                            return Err(format!("{text:?}: a '}}' without its '{{'"));
                        }
                        if let Some(bad) = literal
                            .chars()
                            .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '*' | '>'))
                        {
                            return Err(format!(
                                "{text:?}: {bad:?} is not allowed in a subject one publishes to"
                            ));
                        }
                        pieces.push(Piece::Text(literal.to_owned()));
                        rest = &rest[end..];
                    }
                }
            }
            tokens.push(pieces);
        }
        Ok(Self { tokens })
    }

    /// The literal tokens before the first field (`wgpulse` for the default), joined
    /// with dots: the stream a target creates listens on `<prefix>.>`.
    pub fn literal_prefix(&self) -> String {
        self.tokens
            .iter()
            .take_while(|t| t.iter().all(|p| matches!(p, Piece::Text(_))))
            .map(|t| {
                t.iter()
                    .map(|p| match p {
                        Piece::Text(s) => s.as_str(),
                        Piece::Field(_) => "",
                    })
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The subjects the stream a target creates listens on.
    pub fn stream_subjects(&self) -> Vec<String> {
        let prefix = self.literal_prefix();
        if prefix.split('.').count() == self.tokens.len() {
            vec![prefix]
        } else {
            vec![format!("{prefix}.>")]
        }
    }

    /// Whether the template names `{device}` (which needs the event's body).
    pub fn needs_device(&self) -> bool {
        self.tokens
            .iter()
            .flatten()
            .any(|p| *p == Piece::Field(Field::Device))
    }

    /// The subject of an event of `node`; `body` is read only for `{device}`.
    pub fn render(&self, node: &str, head: &EventHead, body: &[u8]) -> String {
        let device = if self.needs_device() {
            device_of(body)
        } else {
            String::new()
        };
        let mut subject = String::new();
        for (i, token) in self.tokens.iter().enumerate() {
            if i > 0 {
                subject.push('.');
            }
            let start = subject.len();
            for piece in token {
                match piece {
                    Piece::Text(text) => subject.push_str(text),
                    Piece::Field(field) => {
                        let value = match field {
                            Field::Node => node,
                            Field::Entity => &head.entity,
                            Field::Event => &head.event,
                            Field::Identifier => &head.identifier,
                            Field::Device => &device,
                        };
                        escape_into(value, &mut subject);
                    }
                }
            }
            if subject.len() == start {
                subject.push('_');
            }
        }
        subject
    }
}

/// The WireGuard device an event is about: a peer's interface, an interface's name,
/// an alert's device; empty when the event has none.
fn device_of(body: &[u8]) -> String {
    let event: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let payload = &event["payload"];
    let device = match event["entity"].as_str() {
        Some("interface") => &event["identifier"],
        Some("peer") => &payload["InterfaceIdentifier"],
        Some("peer_metric") => &payload["Peer"]["InterfaceIdentifier"],
        Some("alert") => &payload["Device"],
        _ => &Value::Null,
    };
    device.as_str().unwrap_or_default().to_owned()
}

/// Appends `value` escaped into token characters (see the module docs).
pub fn escape_into(value: &str, out: &mut String) {
    for c in value.chars() {
        let plain = c.is_ascii_graphic() && !matches!(c, '.' | '*' | '>' | '%');
        if plain {
            out.push(c);
        } else {
            let mut bytes = [0; 4];
            for byte in c.encode_utf8(&mut bytes).bytes() {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
    }
}

/// Whether NATS subject `subject` matches filter `filter` (`*` one token, `>` the
/// rest).
pub fn matches(filter: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for token in filter.split('.') {
        match (token, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (literal, Some(found)) if literal == found => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(entity: &str, event: &str, identifier: &str) -> EventHead {
        EventHead {
            id: "1".into(),
            entity: entity.into(),
            event: event.into(),
            identifier: identifier.into(),
        }
    }

    #[test]
    fn the_default_template_gives_one_token_per_field() {
        let template = SubjectTemplate::parse(super::super::config::DEFAULT_SUBJECT).unwrap();
        let subject = template.render("gw-1", &head("peer_metric", "connect", "k+/="), b"{}");
        assert_eq!(subject, "wgpulse.gw-1.peer_metric.connect");
        assert_eq!(template.stream_subjects(), ["wgpulse.>"]);
        assert!(matches("wgpulse.*.peer_metric.connect", &subject));
        assert!(matches("wgpulse.gw-1.>", &subject));
        assert!(!matches("wgpulse.gw-2.>", &subject));
        assert!(!matches("wgpulse.*.peer_metric", &subject));
    }

    #[test]
    fn hostile_node_names_stay_one_token() {
        let template = SubjectTemplate::parse("wg.{node}.{identifier}").unwrap();
        let subject = template.render("gw.1 berlin*>%", &head("peer", "create", "ab+/="), b"{}");
        assert_eq!(subject, "wg.gw%2E1%20berlin%2A%3E%25.ab+/=");
        assert_eq!(subject.split('.').count(), 3);
        assert_eq!(
            template.render("", &head("peer", "create", "k"), b"{}"),
            "wg._.k"
        );
        assert_eq!(
            template.render("zürich", &head("p", "c", "k"), b"{}"),
            "wg.z%C3%BCrich.k"
        );
    }

    #[test]
    fn device_comes_from_the_body() {
        let template = SubjectTemplate::parse("wg.{device}.{event}").unwrap();
        let body = br#"{"entity":"peer_metric","payload":{"Peer":{"InterfaceIdentifier":"wg0"}}}"#;
        assert_eq!(
            template.render("n", &head("peer_metric", "connect", "k"), body),
            "wg.wg0.connect"
        );
        assert_eq!(template.stream_subjects(), ["wg.>"]);
    }

    #[test]
    fn bad_templates_say_why() {
        for (text, why) in [
            ("wg.{nodes}", "unknown field {nodes}"),
            ("wg..x", "empty token"),
            ("wg.*", "'*' is not allowed"),
            ("wg.{node", "without its"),
            ("wg.node}", "without its"),
            ("wg x", "' ' is not allowed"),
            ("", "empty"),
        ] {
            let err = SubjectTemplate::parse(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
        assert_eq!(
            SubjectTemplate::parse("events").unwrap().stream_subjects(),
            ["events"]
        );
    }
}
