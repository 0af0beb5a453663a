//! The webhook transport: a batch becomes one HTTP POST — one event's JSON, or a JSON
//! array for the batch format — built and signed by the webhook's request template
//! ([`super::request`]), sent over the pooled client of its trust set, and its status
//! classified ([`super::retry::classify`]).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;

use super::client::HttpClient;
use super::config::Format;
use super::http;
use super::request::Target as RequestTemplate;
use super::retry::{self, Outcome};
use super::transport::{Attempted, BoxFuture, Loaded, Transport};
use super::TestOutcome;

/// One webhook.
pub struct Webhook {
    /// How its requests are built (URL, headers, secrets, signatures).
    pub template: Arc<RequestTemplate>,
    client: HttpClient,
}

impl Webhook {
    /// A webhook sending `template`'s requests over `client`.
    pub fn new(template: RequestTemplate, client: HttpClient) -> Self {
        Self {
            template: Arc::new(template),
            client,
        }
    }

    /// The request id and body of a batch: the event itself and its id, or a JSON
    /// array with `batch_<first id>_<count>` (stable across retries).
    fn frame(&self, batch: &[Loaded]) -> (String, Option<String>, Bytes) {
        match self.template.format {
            Format::Single => {
                let event = &batch[0];
                (
                    event.head.id.clone(),
                    Some(format!("{}.{}", event.head.entity, event.head.event)),
                    event.body.clone(),
                )
            }
            Format::Batch => {
                let mut body =
                    Vec::with_capacity(batch.iter().map(|e| e.body.len() + 1).sum::<usize>() + 2);
                body.push(b'[');
                for (i, event) in batch.iter().enumerate() {
                    if i > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(&event.body);
                }
                body.push(b']');
                (
                    format!("batch_{}_{}", batch[0].head.id, batch.len()),
                    None,
                    Bytes::from(body),
                )
            }
        }
    }
}

impl Transport for Webhook {
    fn name(&self) -> &str {
        &self.template.name
    }

    fn location(&self) -> String {
        super::config::redact_url(&self.template.url.to_string())
    }

    fn format(&self) -> Format {
        self.template.format
    }

    fn send<'a>(&'a self, batch: &'a [Loaded], now: SystemTime) -> BoxFuture<'a, Attempted> {
        Box::pin(async move {
            let (id, kind, body) = self.frame(batch);
            let request = self.template.request(&id, kind.as_deref(), body, now);
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
                },
            }
        })
    }

    fn test<'a>(&'a self, event: &'a Loaded) -> BoxFuture<'a, Result<TestOutcome, String>> {
        Box::pin(async move {
            let (id, kind, body) = self.frame(std::slice::from_ref(event));
            let request = self
                .template
                .request(&id, kind.as_deref(), body, SystemTime::now());
            let started = Instant::now();
            let answer = http::exchange(&self.client, self.template.timeout, request)
                .await
                .map_err(|e| e.to_string())?;
            Ok(TestOutcome {
                status: answer.status,
                latency_ms: started.elapsed().as_secs_f64() * 1000.0,
                body: String::from_utf8_lossy(&answer.body[..answer.body.len().min(1024)])
                    .into_owned(),
                id: event.head.id.clone(),
            })
        })
    }
}
