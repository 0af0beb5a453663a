//! One HTTP exchange with a receiver: the request out, the status, `Retry-After` and
//! at most [`BODY_LIMIT`] of the body back, all within the webhook's timeout.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;

use super::client::HttpClient;

/// Most response body bytes read (and kept for `webhook test`).
pub const BODY_LIMIT: usize = 64 * 1024;

/// A receiver's answer.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// Its `Retry-After` header, if any.
    pub retry_after: Option<String>,
    /// The first [`BODY_LIMIT`] bytes of the body.
    pub body: Bytes,
}

/// Why no answer came.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SendError {
    /// Nothing within the timeout.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// Connecting, TLS or the exchange failed (the error and its causes).
    #[error("{0}")]
    Failed(String),
}

/// Sends `request` and reads the answer within `timeout`.
pub async fn exchange(
    client: &HttpClient,
    timeout: Duration,
    request: hyper::Request<http_body_util::Full<Bytes>>,
) -> Result<Answer, SendError> {
    let exchange = async {
        let response = client.request(request).await.map_err(|e| {
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                message.push_str(": ");
                message.push_str(&cause.to_string());
                source = cause.source();
            }
            SendError::Failed(message)
        })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = http_body_util::Limited::new(response.into_body(), BODY_LIMIT)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(SendError::Timeout(timeout)),
    }
}
