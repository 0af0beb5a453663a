//! Event filters of a webhook: `*`, `<entity>.*`, `<entity>.<event>`. The handshake
//! feed (`peer_metric.handshake`) is chatty: wildcards do not match it, only a filter
//! naming it exactly.

use crate::events::{Event, ENTITY_PEER_METRIC, EVENT_HANDSHAKE};

/// One parsed filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Every event (but the handshake feed).
    All,
    /// Every event of one entity (but the handshake feed).
    Entity(String),
    /// One entity and event.
    Exact(String, String),
}

impl Filter {
    /// Parses `*`, `entity.*` or `entity.event`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let valid = |part: &str| {
            !part.is_empty() && part.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        };
        match text.split_once('.') {
            None if text == "*" => Ok(Filter::All),
            Some((entity, "*")) if valid(entity) => Ok(Filter::Entity(entity.into())),
            Some((entity, event)) if valid(entity) && valid(event) => {
                Ok(Filter::Exact(entity.into(), event.into()))
            }
            _ => Err(format!(
                "{text:?} is not an event filter (`*`, `<entity>.*` or `<entity>.<event>`, e.g. `peer_metric.connect`)"
            )),
        }
    }

    /// Whether the filter selects `event`.
    pub fn matches(&self, event: &Event) -> bool {
        let feed = event.entity == ENTITY_PEER_METRIC && event.event == EVENT_HANDSHAKE;
        match self {
            Filter::All => !feed,
            Filter::Entity(entity) => !feed && *entity == event.entity,
            Filter::Exact(entity, name) => *entity == event.entity && *name == event.event,
        }
    }
}

/// Whether any of `filters` selects `event`.
pub fn any_matches(filters: &[Filter], event: &Event) -> bool {
    filters.iter().any(|f| f.matches(event))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(entity: &str, name: &str) -> Event {
        Event::new("n", entity, name, "x", serde_json::Value::Null)
    }

    #[test]
    fn wildcards_match_all_but_the_feed() {
        let all = Filter::parse("*").unwrap();
        let metrics = Filter::parse("peer_metric.*").unwrap();
        let connect = Filter::parse("peer_metric.connect").unwrap();
        let feed = Filter::parse("peer_metric.handshake").unwrap();
        assert!(all.matches(&event("peer", "create")));
        assert!(all.matches(&event("alert", "invalid_flood")));
        assert!(!all.matches(&event("peer_metric", "handshake")));
        assert!(metrics.matches(&event("peer_metric", "disconnect")));
        assert!(!metrics.matches(&event("peer_metric", "handshake")));
        assert!(!metrics.matches(&event("peer", "create")));
        assert!(connect.matches(&event("peer_metric", "connect")));
        assert!(!connect.matches(&event("peer_metric", "disconnect")));
        assert!(feed.matches(&event("peer_metric", "handshake")));
    }

    #[test]
    fn bad_filters_are_named() {
        for bad in [
            "",
            "peer",
            "peer.",
            ".x",
            "Peer.create",
            "*.connect",
            "peer.*.x",
        ] {
            let err = Filter::parse(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }
}
