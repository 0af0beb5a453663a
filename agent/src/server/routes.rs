//! The routes: `/metrics`, `/healthz`, `/readyz`, `/api/v1/peers[/{key}]`,
//! `/api/v1/devices`, `/api/v1/targets[/{name}/deliveries|dead-letters|test|replay]`
//! (also under its old name `/api/v1/webhooks`).
//! Errors are JSON `{"error": "..."}`, never a stack trace.

use std::net::SocketAddr;
use std::time::SystemTime;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::views::{DeviceView, PeerView};
use super::ApiState;
use crate::wg::PublicKey;

/// A response of the listener.
pub type Reply = Response<super::body::ReplyBody>;

fn json_reply(status: StatusCode, value: serde_json::Value) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(super::body::whole(value.to_string()))
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

/// The API's answer to a client beyond loopback when no API token is configured.
const API_NEEDS_TOKEN: &str =
    "the API answers clients beyond loopback only with a bearer token: set api.token_file";

/// The path's segments, percent-decoded; an error for `.`/`..` or empty segments
/// (one trailing slash is allowed).
fn segments(path: &str) -> Result<Vec<String>, String> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    trimmed
        .split('/')
        .map(|raw| {
            let segment = percent_encoding::percent_decode_str(raw)
                .decode_utf8()
                .map_err(|_| format!("path segment {raw:?} is not UTF-8 once decoded"))?;
            match segment.as_ref() {
                "" => Err(format!("path {path:?} has an empty segment")),
                "." | ".." => Err(format!(
                    "path {path:?} has a {segment:?} segment: not allowed"
                )),
                _ => Ok(segment.into_owned()),
            }
        })
        .collect()
}

fn method_not_allowed(allowed: &'static str) -> Reply {
    let mut reply = error(StatusCode::METHOD_NOT_ALLOWED, format!("use {allowed}"));
    reply
        .headers_mut()
        .insert(hyper::header::ALLOW, allowed.parse().expect("valid"));
    reply
}

/// Answers one request from `remote`.
pub async fn handle(state: &ApiState, request: Request<Incoming>, remote: SocketAddr) -> Reply {
    let authorization = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let segments = match segments(&path) {
        Ok(segments) => segments,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let get_only = |reply: &dyn Fn() -> Reply| {
        if method == Method::GET {
            reply()
        } else {
            method_not_allowed("GET")
        }
    };
    match segments.as_slice() {
        ["metrics"] => {
            if method != Method::GET {
                return method_not_allowed("GET");
            }
            if let Some(token) = &state.metrics_token {
                if !token.accepts(authorization.as_deref()) {
                    return unauthorized();
                }
            }
            metrics(state)
        }
        ["healthz"] => get_only(&|| json_reply(StatusCode::OK, json!({"status": "ok"}))),
        ["readyz"] => get_only(&|| ready(state)),
        ["api", "v1", rest @ ..] => {
            match &state.api_token {
                Some(token) if !token.accepts(authorization.as_deref()) => {
                    return unauthorized();
                }
                Some(_) => {}
                None if !remote.ip().to_canonical().is_loopback() => {
                    return error(StatusCode::FORBIDDEN, API_NEEDS_TOKEN);
                }
                None => {}
            }
            api(state, &method, rest).await
        }
        _ => error(StatusCode::NOT_FOUND, format!("no route {path}")),
    }
}

/// `/metrics`: the agent's own families are encoded here (an error is still a 500);
/// the per-peer text is written on a blocking thread, after a read-through device
/// read if the counters are stale, and streamed in chunks as it is written.
fn metrics(state: &ApiState) -> Reply {
    let families = state.registry.gather();
    let mut own = String::new();
    if let Err(err) = prometheus::TextEncoder::new().encode_utf8(&families, &mut own) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {err}"),
        );
    }
    let (sender, body) = super::body::streamed();
    let shared = state.shared.clone();
    tokio::task::spawn_blocking(move || {
        // WireGuard's counters as of now, not of the last periodic device read.
        let freshness = shared
            .read_through
            .refresh_for_scrape(std::time::Instant::now());
        if freshness == crate::pipeline::read_through::Freshness::Stale {
            tracing::debug!(
                "scrape: the device read did not finish in time; serving older counters"
            );
        }
        let snapshot = {
            let table = shared.table.read().expect("not poisoned");
            crate::metrics::snapshot::Snapshot::take(&table, SystemTime::now())
        };
        let sent = stream_exposition(&snapshot, own, &sender);
        if sent.is_ok() {
            let _ = sender.finish_blocking();
        } else {
            tracing::debug!("scrape: the client went away before the end of /metrics");
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", prometheus::TEXT_FORMAT)
        .body(http_body_util::Either::Right(body))
        .expect("valid response")
}

/// Writes the peer families of `snapshot`, then `own`, into `sender` in chunks.
fn stream_exposition(
    snapshot: &crate::metrics::snapshot::Snapshot,
    own: String,
    sender: &super::body::StreamSender,
) -> Result<(), crate::metrics::chunks::Gone> {
    use crate::metrics::chunks::{ChunkWriter, Gone, CHUNK_BYTES};
    let mut out = ChunkWriter::new(
        CHUNK_BYTES,
        Box::new(|chunk| sender.send_blocking(Bytes::from(chunk)).map_err(|_| Gone)),
    );
    crate::metrics::encode_peers(snapshot, &mut out)?;
    out.finish()?;
    sender.send_blocking(Bytes::from(own)).map_err(|_| Gone)
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
    if let Some(problem) = state.writer.as_ref().and_then(|w| w.problem()) {
        reasons.push(problem);
    }
    if let Some(delivery) = &state.delivery {
        let unwritten = delivery.unwritten();
        if unwritten > 0 {
            reasons.push(format!(
                "the outbox cannot be written: {unwritten} events are held in memory"
            ));
        }
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
    let get = method == Method::GET;
    match rest {
        ["peers"] if get => {
            let table = state.shared.table.read().expect("not poisoned");
            let peers: Vec<PeerView> = table.peers().map(|p| PeerView::new(p, now)).collect();
            json_reply(StatusCode::OK, json!({ "peers": peers }))
        }
        ["peers", key] if get => {
            let Ok(key) = key.parse::<PublicKey>() else {
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
        ["peers", _, _, ..] => error(
            StatusCode::BAD_REQUEST,
            "a public key in the path must be URL-encoded ('/' as %2F, '+' as %2B, '=' as %3D)",
        ),
        ["devices"] if get => {
            let table = state.shared.table.read().expect("not poisoned");
            let devices: Vec<DeviceView> = table.devices().map(DeviceView::new).collect();
            json_reply(StatusCode::OK, json!({ "devices": devices }))
        }
        ["peers"] | ["peers", _] | ["devices"] => method_not_allowed("GET"),
        // `targets` covers webhooks and NATS targets; `webhooks` is its old name,
        // answering the same under its old list key.
        ["targets", ..] => targets(state, method, &rest[1..], "targets").await,
        ["webhooks", ..] => targets(state, method, &rest[1..], "webhooks").await,
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no route /api/v1/{}", rest.join("/")),
        ),
    }
}

async fn targets(state: &ApiState, method: &Method, rest: &[&str], route: &str) -> Reply {
    let Some(delivery) = &state.delivery else {
        return match rest {
            [] if method == Method::GET => json_reply(StatusCode::OK, json!({ route: [] })),
            [] => method_not_allowed("GET"),
            _ => error(StatusCode::NOT_FOUND, "no targets are configured"),
        };
    };
    let unknown = |name: &str| error(StatusCode::NOT_FOUND, format!("no target named {name:?}"));
    match (method, rest) {
        (&Method::GET, []) => json_reply(StatusCode::OK, json!({ route: delivery.webhooks() })),
        (&Method::GET, [name, "deliveries"]) => match delivery.deliveries(name) {
            Some(records) => json_reply(StatusCode::OK, json!({ "deliveries": records })),
            None => unknown(name),
        },
        (&Method::GET, [name, "dead-letters"]) => {
            // The outbox is read with blocking I/O: off the async workers.
            let (delivery, owned) = (delivery.clone(), (*name).to_owned());
            match tokio::task::spawn_blocking(move || delivery.dead_letters(&owned)).await {
                Ok(Ok(dead)) => json_reply(
                    StatusCode::OK,
                    json!({ "dead_letters": dead.into_iter().map(|(id, reason)| json!({"id": id, "reason": reason})).collect::<Vec<_>>() }),
                ),
                Ok(Err(crate::sink::SinkError::UnknownWebhook(_))) => unknown(name),
                Ok(Err(err)) => error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
                Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
            }
        }
        (&Method::POST, [name, "test"]) => match delivery.test(name).await {
            Ok(outcome) => json_reply(StatusCode::OK, json!(outcome)),
            Err(crate::sink::SinkError::UnknownWebhook(_)) => unknown(name),
            Err(err) => error(StatusCode::BAD_GATEWAY, err.to_string()),
        },
        (&Method::POST, [name, "replay"]) => {
            // Replaying commits (fsyncs) the outbox: off the async workers.
            let (delivery, owned) = (delivery.clone(), (*name).to_owned());
            match tokio::task::spawn_blocking(move || delivery.replay(&owned)).await {
                Ok(Ok(count)) => json_reply(StatusCode::OK, json!({ "replayed": count })),
                Ok(Err(crate::sink::SinkError::UnknownWebhook(_))) => unknown(name),
                Ok(Err(err)) => error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
                Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
            }
        }
        (_, [_, "test" | "replay"]) => method_not_allowed("POST"),
        (_, [] | [_, "deliveries" | "dead-letters"]) => method_not_allowed("GET"),
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no route /api/v1/{route}/{}", rest.join("/")),
        ),
    }
}
