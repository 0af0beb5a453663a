//! The webhook transport: a batch becomes one HTTP POST whose body the webhook's
//! dialect writes ([`super::dialect`]: one event, or a list), built and signed by the
//! webhook's request template ([`super::request`]), sent over the pooled client of its
//! trust set, and its status classified ([`super::retry::classify`]).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::client::HttpClient;
use super::config::Format;
use super::dialect::{Encoded, Encoder, Shape};
use super::http;
use super::request::Target as RequestTemplate;
use super::retry::{self, Outcome};
use super::transport::{Attempted, BoxFuture, Loaded, Transport};
use super::TestOutcome;

/// One webhook.
pub struct Webhook {
    /// How its requests are built (URL, headers, secrets, signatures).
    pub template: Arc<RequestTemplate>,
    encoder: Encoder,
    client: HttpClient,
}

impl Webhook {
    /// A webhook sending `template`'s requests, with bodies by `encoder`, over
    /// `client`.
    pub fn new(template: RequestTemplate, encoder: Encoder, client: HttpClient) -> Self {
        Self {
            template: Arc::new(template),
            encoder,
            client,
        }
    }

    /// The request id and body of a batch: the event's id, or
    /// `batch_<first id>_<count>` for a list (stable across retries).
    fn frame(&self, batch: &[Loaded]) -> (String, Encoded) {
        let bodies: Vec<&[u8]> = batch.iter().map(|e| e.body.as_ref()).collect();
        let encoded = self.encoder.encode(&bodies);
        let id = match self.encoder.shape() {
            Shape::One => batch[0].head.id.clone(),
            Shape::List => format!("batch_{}_{}", batch[0].head.id, batch.len()),
        };
        (id, encoded)
    }
}

impl Transport for Webhook {
    fn name(&self) -> &str {
        &self.template.name
    }

    fn location(&self) -> String {
        super::address::redact_url(&self.template.url.to_string())
    }

    fn format(&self) -> Format {
        match self.encoder.shape() {
            Shape::One => Format::Single,
            Shape::List => Format::Batch,
        }
    }

    fn send<'a>(&'a self, batch: &'a [Loaded], now: SystemTime) -> BoxFuture<'a, Attempted> {
        Box::pin(async move {
            let (id, encoded) = self.frame(batch);
            let request = self.template.request(&id, encoded, now);
            match http::exchange(&self.client, self.template.timeout, request).await {
                Ok(answer) => Attempted {
                    id,
                    outcome: retry::classify(
                        answer.status,
                        answer.retry_after.as_deref(),
                        SystemTime::now(),
                    ),
                    status: Some(answer.status),
                    error: None,
                    acked: Vec::new(),
                    given_up: Vec::new(),
                },
                Err(err) => Attempted {
                    id,
                    outcome: Outcome::Retry {
                        status: None,
                        after: None,
                        reason: err.to_string(),
                    },
                    status: None,
                    error: Some(err.to_string()),
                    acked: Vec::new(),
                    given_up: Vec::new(),
                },
            }
        })
    }

    fn test<'a>(&'a self, event: &'a Loaded) -> BoxFuture<'a, Result<TestOutcome, String>> {
        Box::pin(async move {
            let (id, encoded) = self.frame(std::slice::from_ref(event));
            let request = self.template.request(&id, encoded, SystemTime::now());
            let started = Instant::now();
            let answer = http::exchange(&self.client, self.template.timeout, request)
                .await
                .map_err(|e| e.to_string())?;
            Ok(TestOutcome {
                status: Some(answer.status),
                latency_ms: started.elapsed().as_secs_f64() * 1000.0,
                body: String::from_utf8_lossy(&answer.body[..answer.body.len().min(1024)])
                    .into_owned(),
                id: event.head.id.clone(),
            })
        })
    }
}
