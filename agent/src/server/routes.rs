//! The routes: `/metrics`, `/healthz`, `/readyz`, `/api/v1/peers[/{key}]`,
//! `/api/v1/devices`, `/api/v1/webhooks[/{name}/deliveries|dead-letters|test|replay]`.
//! Errors are JSON `{"error": "..."}`, never a stack trace.

use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::views::{DeviceView, PeerView};
use super::ApiState;
use crate::wg::PublicKey;

type Reply = Response<Full<Bytes>>;

fn json_reply(status: StatusCode, value: serde_json::Value) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .expect("valid response")
}

fn error(status: StatusCode, message: impl Into<String>) -> Reply {
    json_reply(status, json!({ "error": message.into() }))
}

fn unauthorized() -> Reply {
    let mut reply = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
    reply
        .headers_mut()
        .insert("www-authenticate", "Bearer".parse().expect("valid"));
    reply
}

/// Answers one request.
pub async fn handle(state: &ApiState, request: Request<Incoming>) -> Reply {
    let authorization = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["metrics"] => {
            if method != Method::GET {
                return error(StatusCode::METHOD_NOT_ALLOWED, "use GET");
            }
            if let Some(token) = &state.metrics_token {
                if !token.accepts(authorization.as_deref()) {
                    return unauthorized();
                }
            }
            metrics(state)
        }
        ["healthz"] => json_reply(StatusCode::OK, json!({"status": "ok"})),
        ["readyz"] => ready(state),
        ["api", "v1", rest @ ..] => {
            if let Some(token) = &state.api_token {
                if !token.accepts(authorization.as_deref()) {
                    return unauthorized();
                }
            }
            api(state, &method, rest).await
        }
        _ => error(StatusCode::NOT_FOUND, format!("no route {path}")),
    }
}

fn metrics(state: &ApiState) -> Reply {
    let mut text = String::new();
    crate::metrics::encode_peers(&state.shared, &mut text);
    let families = state.registry.gather();
    match prometheus::TextEncoder::new().encode_utf8(&families, &mut text) {
        Ok(()) => Response::builder()
            .status(StatusCode::OK)
            .header("content-type", prometheus::TEXT_FORMAT)
            .body(Full::new(Bytes::from(text)))
            .expect("valid response"),
        Err(err) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {err}"),
        ),
    }
}

fn ready(state: &ApiState) -> Reply {
    let status = state.shared.status.read().expect("not poisoned").clone();
    let mut reasons = Vec::new();
    if status.attached.is_empty() {
        reasons.push(match &status.attach_error {
            Some(err) => format!("the datapath is attached to no interface: {err}"),
            None => "the datapath is attached to no interface yet".to_owned(),
        });
    }
    match (&status.devices_read_at, &status.discovery_error) {
        (_, Some(err)) => reasons.push(format!("reading WireGuard devices failed: {err}")),
        (None, None) => reasons.push("WireGuard devices have not been read yet".into()),
        _ => {}
    }
    if let Some(err) = &status.persist_error {
        reasons.push(format!("the state directory is not writable: {err}"));
    }
    if reasons.is_empty() {
        json_reply(
            StatusCode::OK,
            json!({
                "status": "ready",
                "attached": status.attached,
                "kernel_mode": status.kernel_mode,
                "kernel_mode_detail": status.kernel_mode_detail,
            }),
        )
    } else {
        json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "not ready", "reasons": reasons}),
        )
    }
}

async fn api(state: &ApiState, method: &Method, rest: &[&str]) -> Reply {
    let now = SystemTime::now();
    match (method, rest) {
        (&Method::GET, ["peers"]) => {
            let table = state.shared.table.read().expect("not poisoned");
            let peers: Vec<PeerView> = table.peers().map(|p| PeerView::new(p, now)).collect();
            json_reply(StatusCode::OK, json!({ "peers": peers }))
        }
        (&Method::GET, ["peers", key]) => {
            let decoded = percent_encoding::percent_decode_str(key).decode_utf8_lossy();
            let Ok(key) = decoded.parse::<PublicKey>() else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "not a WireGuard public key (URL-encoded standard base64 expected)",
                );
            };
            let table = state.shared.table.read().expect("not poisoned");
            let found: Vec<PeerView> = table
                .peers()
                .filter(|p| p.key.public_key == key)
                .map(|p| PeerView::new(p, now))
                .collect();
            match found.len() {
                0 => error(StatusCode::NOT_FOUND, format!("no peer {key}")),
                1 => json_reply(StatusCode::OK, json!(found[0])),
                _ => json_reply(StatusCode::OK, json!({ "peers": found })),
            }
        }
        (&Method::GET, ["devices"]) => {
            let table = state.shared.table.read().expect("not poisoned");
            let devices: Vec<DeviceView> = table.devices().map(DeviceView::new).collect();
            json_reply(StatusCode::OK, json!({ "devices": devices }))
        }
        (_, ["webhooks", ..]) => webhooks(state, method, &rest[1..]).await,
        (_, ["peers", ..] | ["devices"]) => error(StatusCode::METHOD_NOT_ALLOWED, "use GET"),
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no route /api/v1/{}", rest.join("/")),
        ),
    }
}

async fn webhooks(state: &ApiState, method: &Method, rest: &[&str]) -> Reply {
    let Some(delivery) = &state.delivery else {
        return match rest {
            [] => json_reply(StatusCode::OK, json!({ "webhooks": [] })),
            _ => error(StatusCode::NOT_FOUND, "no webhooks are configured"),
        };
    };
    let unknown = |name: &str| error(StatusCode::NOT_FOUND, format!("no webhook named {name:?}"));
    match (method, rest) {
        (&Method::GET, []) => {
            json_reply(StatusCode::OK, json!({ "webhooks": delivery.webhooks() }))
        }
        (&Method::GET, [name, "deliveries"]) => match delivery.deliveries(name) {
            Some(records) => json_reply(StatusCode::OK, json!({ "deliveries": records })),
            None => unknown(name),
        },
        (&Method::GET, [name, "dead-letters"]) => match delivery.dead_letters(name) {
            Ok(dead) => json_reply(
                StatusCode::OK,
                json!({ "dead_letters": dead.into_iter().map(|(id, reason)| json!({"id": id, "reason": reason})).collect::<Vec<_>>() }),
            ),
            Err(crate::sink::SinkError::UnknownWebhook(_)) => unknown(name),
            Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
        },
        (&Method::POST, [name, "test"]) => match delivery.test(name).await {
            Ok(outcome) => json_reply(StatusCode::OK, json!(outcome)),
            Err(crate::sink::SinkError::UnknownWebhook(_)) => unknown(name),
            Err(err) => error(StatusCode::BAD_GATEWAY, err.to_string()),
        },
        (&Method::POST, [name, "replay"]) => match delivery.replay(name) {
            Ok(count) => json_reply(StatusCode::OK, json!({ "replayed": count })),
            Err(crate::sink::SinkError::UnknownWebhook(_)) => unknown(name),
            Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
        },
        (_, [_, "test" | "replay"]) => error(StatusCode::METHOD_NOT_ALLOWED, "use POST"),
        (_, [] | [_, "deliveries" | "dead-letters"]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "use GET")
        }
        _ => error(StatusCode::NOT_FOUND, "no such webhook route"),
    }
}
