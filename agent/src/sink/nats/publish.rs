//! Publishing one batch: the events of each peer one after the other (the next only
//! after the previous one's PubAck, so that a lost publish can never be overtaken),
//! different peers at once (bounded by `max_in_flight` in the JetStream context);
//! every message carries `Nats-Msg-Id` = the event id and `Nats-Expected-Stream`.
//! What each failure means is stated here: which are retried and which are given up.

use async_nats::jetstream::{self, context::PublishErrorKind};

use crate::sink::transport::{EventHead, Loaded};

/// Why a publish failed: the metric label, whether retrying can help, the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// `timeout`, `disconnected`, `no_stream`, `stream_full`, `wrong_stream`,
    /// `permission`, `too_large`, `other`.
    pub reason: &'static str,
    /// A retry cannot succeed (the message is larger than the server takes).
    pub permanent: bool,
    /// What happened, naming the key to check.
    pub message: String,
}

/// Classifies a publish error of a target whose configuration is under `key`.
pub fn classify(err: &jetstream::context::PublishError, key: &str, subject: &str) -> Failure {
    let text = err.to_string();
    let lower = text.to_ascii_lowercase();
    let (reason, permanent, message) = match err.kind() {
        PublishErrorKind::StreamNotFound => (
            "no_stream",
            false,
            format!("no stream answered on {subject} (a leader election, or no stream listens there: check {key}.stream and {key}.subject)"),
        ),
        PublishErrorKind::TimedOut => ("timeout", false, format!("no PubAck within {key}.timeout")),
        PublishErrorKind::BrokenPipe => ("disconnected", false, "the connection was lost before the PubAck".into()),
        PublishErrorKind::MaxPayloadExceeded => (
            "too_large",
            true,
            format!("{text}: the event is larger than the servers' max_payload"),
        ),
        _ if lower.contains("maximum") && lower.contains("exceeded") => (
            "stream_full",
            false,
            format!("the stream is full ({text}): it discards new messages; raise its limits or let consumers free space"),
        ),
        _ if lower.contains("expected stream") => (
            "wrong_stream",
            false,
            format!("{text}: the subject {subject} belongs to another stream than {key}.stream"),
        ),
        _ if lower.contains("permission") => (
            "permission",
            false,
            format!("{text}: the credentials may not publish to {subject}"),
        ),
        _ => ("other", false, text),
    };
    Failure {
        reason,
        permanent,
        message,
    }
}

/// What publishing one event came to.
#[derive(Debug)]
pub enum Published {
    /// Acknowledged (`duplicate`: the stream already had it).
    Acked {
        /// The stream said it was a duplicate.
        duplicate: bool,
    },
    /// Failed.
    Failed(Failure),
    /// Not sent: an earlier event of the same peer failed.
    Held,
}

/// Publishes `event` and waits for its PubAck.
pub async fn publish_one(
    context: &jetstream::Context,
    stream: &str,
    subject: String,
    event: &Loaded,
    key: &str,
) -> Result<jetstream::publish::PublishAck, Failure> {
    let message = jetstream::message::PublishMessage::build()
        .payload(event.body.clone())
        .message_id(&event.head.id)
        .expected_stream(stream)
        .header("Content-Type", "application/json")
        .header(
            "Wgpulse-Event",
            format!("{}.{}", event.head.entity, event.head.event).as_str(),
        );
    let ack = context
        .send_publish(subject.clone(), message)
        .await
        .map_err(|e| classify(&e, key, &subject))?;
    ack.await.map_err(|e| classify(&e, key, &subject))
}

/// Indices of `batch` grouped by peer (identifier), each group in batch order,
/// groups in the order of their first event.
pub fn by_peer(batch: &[Loaded]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, event) in batch.iter().enumerate() {
        let group = *index
            .entry(event.head.identifier.as_str())
            .or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
        groups[group].push(i);
    }
    groups
}

/// The subject and event of a test publish.
pub fn test_event(node: &str, name: &str) -> Loaded {
    let event = crate::events::Event::new(
        node,
        "test",
        "test",
        name,
        serde_json::json!({"Message": "wgpulse target test"}),
    );
    let body = serde_json::to_vec(&event).expect("serializes");
    Loaded {
        head: EventHead::of(&body),
        body: body.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(identifier: &str) -> Loaded {
        Loaded {
            head: EventHead {
                id: "x".into(),
                entity: "peer".into(),
                event: "update".into(),
                identifier: identifier.into(),
            },
            body: bytes::Bytes::from_static(b"{}"),
        }
    }

    #[test]
    fn peers_keep_their_order_in_their_group() {
        let batch: Vec<Loaded> = ["a", "b", "a", "c", "b", "a"]
            .iter()
            .map(|i| loaded(i))
            .collect();
        assert_eq!(by_peer(&batch), vec![vec![0, 2, 5], vec![1, 4], vec![3]]);
    }

    #[test]
    fn failures_say_what_they_mean() {
        let err = jetstream::context::PublishError::new(PublishErrorKind::TimedOut);
        let failure = classify(&err, "nats[0]", "wgpulse.a.b.c");
        assert_eq!(failure.reason, "timeout");
        assert!(!failure.permanent);
        assert!(failure.message.contains("nats[0].timeout"));
        let err = jetstream::context::PublishError::new(PublishErrorKind::MaxPayloadExceeded);
        assert!(classify(&err, "nats[0]", "s").permanent);
        let err = jetstream::context::PublishError::new(PublishErrorKind::StreamNotFound);
        assert_eq!(classify(&err, "nats[0]", "s").reason, "no_stream");
    }
}
