//! The command line's side of the local API: `wgpulse peers` and `wgpulse webhook`
//! ask the running agent over HTTP and print what it says.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};

use crate::cli::{ApiArgs, WebhookAction};
use crate::server::views::PeerView;

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum ApiClientError {
    /// The configuration could not be read.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The token file could not be read.
    #[error("reading token file {path}: {source}")]
    Token {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The agent could not be reached.
    #[error("cannot reach the agent at {url}: {message} (is `wgpulse run` running? see --api)")]
    Unreachable {
        /// Where.
        url: String,
        /// Why.
        message: String,
    },
    /// The agent answered an error.
    #[error("the agent answered {status}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Its error message.
        message: String,
    },
}

struct Target {
    base: String,
    token: Option<zeroize::Zeroizing<String>>,
}

fn target(args: &ApiArgs) -> Result<Target, ApiClientError> {
    let config = match &args.config {
        Some(path) => Some(crate::config::Config::load(path)?),
        None => None,
    };
    let base = args.api.clone().unwrap_or_else(|| {
        let listen = config
            .as_ref()
            .map(|c| c.metrics.listen.clone())
            .unwrap_or_else(|| "127.0.0.1:9586".into());
        let tls = config
            .as_ref()
            .is_some_and(|c| c.metrics.tls_cert.is_some());
        format!("{}://{listen}", if tls { "https" } else { "http" })
    });
    let token_file = args
        .token_file
        .clone()
        .or_else(|| config.as_ref().and_then(|c| c.api.token_file.clone()));
    let token = token_file
        .map(|path| {
            std::fs::read_to_string(&path)
                .map(|t| zeroize::Zeroizing::new(t.trim().to_owned()))
                .map_err(|source| ApiClientError::Token { path, source })
        })
        .transpose()?;
    Ok(Target {
        base: base.trim_end_matches('/').to_owned(),
        token,
    })
}

/// Sends one request; returns the JSON body of a 2xx.
fn call(
    target: &Target,
    method: hyper::Method,
    path: &str,
) -> Result<serde_json::Value, ApiClientError> {
    let url = format!("{}{path}", target.base);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let unreachable = |message: String| ApiClientError::Unreachable {
            url: url.clone(),
            message,
        };
        let client = crate::sink::client::build(None).map_err(|e| unreachable(e.to_string()))?;
        let mut request = hyper::Request::builder().method(method).uri(&url);
        if let Some(token) = &target.token {
            request = request.header("authorization", format!("Bearer {}", token.as_str()));
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| unreachable(e.to_string()))?;
        let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
            .await
            .map_err(|_| unreachable("no answer within 30 s".into()))?
            .map_err(|e| {
                unreachable(format!(
                    "{e}: {}",
                    std::error::Error::source(&e)
                        .map(|s| s.to_string())
                        .unwrap_or_default()
                ))
            })?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| serde_json::json!({"error": String::from_utf8_lossy(&body)}));
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            Err(ApiClientError::Api {
                status,
                message: value["error"].as_str().unwrap_or("(no message)").to_owned(),
            })
        }
    })
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn age(seconds: Option<f64>) -> String {
    match seconds {
        None => "never".into(),
        Some(s) => {
            let s = s as u64;
            if s < 60 {
                format!("{s}s ago")
            } else if s < 3600 {
                format!("{}m {}s ago", s / 60, s % 60)
            } else if s < 86400 {
                format!("{}h {}m ago", s / 3600, (s % 3600) / 60)
            } else {
                format!("{}d {}h ago", s / 86400, (s % 86400) / 3600)
            }
        }
    }
}

/// The last handshake round trip, in ms.
fn rtt_cell(peer: &PeerView) -> String {
    match &peer.path.rtt {
        Some(rtt) if rtt.seconds < 1.0 => format!("{:.1}ms", rtt.seconds * 1000.0),
        Some(rtt) => format!("{:.2}s", rtt.seconds),
        None => "-".into(),
    }
}

/// Received messages lost, as a share, with the count.
fn loss_cell(peer: &PeerView) -> String {
    let receive = &peer.path.receive;
    match receive.loss_ratio {
        Some(ratio) => format!("{:.2}% ({})", ratio * 100.0, receive.lost),
        None => "-".into(),
    }
}

/// The `wgpulse peers` table.
pub fn peers_table(peers: &[PeerView]) -> String {
    let mut rows = vec![[
        "DEVICE".to_owned(),
        "PEER".to_owned(),
        "ENDPOINT".to_owned(),
        "CONNECTED".to_owned(),
        "LAST HANDSHAKE".to_owned(),
        "RX".to_owned(),
        "TX".to_owned(),
        "DROPS".to_owned(),
        "RTT".to_owned(),
        "LOSS".to_owned(),
    ]];
    for peer in peers {
        let who = match &peer.name {
            Some(name) => format!("{name} ({}…)", &peer.public_key[..8]),
            None => peer.public_key.clone(),
        };
        rows.push([
            peer.device.clone(),
            who,
            peer.endpoint.clone().unwrap_or_else(|| "-".into()),
            if peer.connected { "yes" } else { "no" }.into(),
            age(peer.last_handshake_age_seconds),
            bytes(peer.wireguard.rx_bytes),
            bytes(peer.wireguard.tx_bytes),
            peer.wire.socket_drops.to_string(),
            rtt_cell(peer),
            loss_cell(peer),
        ]);
    }
    let widths: Vec<usize> = (0..10)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `wgpulse peers`.
pub fn peers(args: &ApiArgs, json: bool) -> Result<String, ApiClientError> {
    let value = call(&target(args)?, hyper::Method::GET, "/api/v1/peers")?;
    if json {
        return Ok(serde_json::to_string_pretty(&value).expect("serializes") + "\n");
    }
    let peers: Vec<PeerView> = serde_json::from_value(value["peers"].clone()).unwrap_or_default();
    Ok(peers_table(&peers))
}

/// `wgpulse target ...` (alias `wgpulse webhook ...`).
pub fn webhook(args: &ApiArgs, action: &WebhookAction) -> Result<String, ApiClientError> {
    let target = target(args)?;
    let encode = |name: &str| {
        percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    match action {
        WebhookAction::List => {
            let value = call(&target, hyper::Method::GET, "/api/v1/targets")?;
            let mut out = String::new();
            for w in value["targets"].as_array().cloned().unwrap_or_default() {
                out.push_str(&format!(
                    "{name}  {kind}  {url}  {state}  queued={queued} delivered={delivered} failed={failed} retries={retries} dead={dead} dropped={dropped} avg_latency_ms={latency}\n",
                    name = w["name"].as_str().unwrap_or(""),
                    kind = w["kind"].as_str().unwrap_or("webhook"),
                    url = w["url"].as_str().unwrap_or(""),
                    state = if let Some(reason) = w["paused"].as_str() {
                        format!("PAUSED ({reason})")
                    } else if let Some(problem) = w["problem"].as_str() {
                        format!("NOT DELIVERING ({problem})")
                    } else if w["enabled"] == false {
                        "disabled".into()
                    } else {
                        "active".into()
                    },
                    queued = w["queued"],
                    delivered = w["delivered"],
                    failed = w["failed"],
                    retries = w["retries"],
                    dead = w["dead_letters"],
                    dropped = w["dropped"],
                    latency = w["average_latency_ms"].as_f64().map(|l| format!("{l:.1}")).unwrap_or_else(|| "-".into()),
                ));
            }
            if out.is_empty() {
                out.push_str("no targets configured\n");
            }
            Ok(out)
        }
        WebhookAction::Test { name } => {
            let value = call(
                &target,
                hyper::Method::POST,
                &format!("/api/v1/targets/{}/test", encode(name)),
            )?;
            Ok(format!(
                "{} in {:.1} ms (event {})\n{}\n",
                match value["status"].as_u64() {
                    Some(status) => format!("status {status}"),
                    None => "acknowledged".into(),
                },
                value["latency_ms"].as_f64().unwrap_or(0.0),
                value["id"].as_str().unwrap_or(""),
                value["body"].as_str().unwrap_or("")
            ))
        }
        WebhookAction::Replay { name } => {
            let value = call(
                &target,
                hyper::Method::POST,
                &format!("/api/v1/targets/{}/replay", encode(name)),
            )?;
            Ok(format!("{} dead letters queued again\n", value["replayed"]))
        }
        WebhookAction::Deliveries { name } => {
            let value = call(
                &target,
                hyper::Method::GET,
                &format!("/api/v1/targets/{}/deliveries", encode(name)),
            )?;
            let mut out = String::new();
            for d in value["deliveries"].as_array().cloned().unwrap_or_default() {
                out.push_str(&format!(
                    "{}  {}  status={}  events={}  {:.1} ms  {}\n",
                    d["at"].as_str().unwrap_or(""),
                    d["outcome"].as_str().unwrap_or(""),
                    d["status"],
                    d["events"],
                    d["latency_ms"].as_f64().unwrap_or(0.0),
                    d["error"].as_str().unwrap_or("")
                ));
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::path::PathHealth;
    use crate::snapshot::PathCounts;
    use std::time::{Duration, SystemTime};

    #[test]
    fn the_peers_table_shows_the_round_trip_and_the_loss() {
        let now = SystemTime::now();
        let mut table = crate::peers::PeerTable::new(Duration::from_secs(180));
        let device = crate::wg::Device {
            name: "wg0".into(),
            kind: crate::wg::DeviceKind::Kernel,
            public_key: None,
            listen_port: 51820,
            fwmark: 0,
            peers: vec![crate::wg::Peer::new(crate::wg::PublicKey([7; 32]))],
        };
        table.apply_devices(&[device], now, now);
        let mut peer = table.peers().next().unwrap().clone();
        let mut path = PathHealth::default();
        path.record_rtt(now, Duration::from_micros(40_800));
        path.receive = PathCounts {
            packets: 95,
            lost: 5,
            late: 0,
            duplicates: 0,
        };
        peer.path = path;
        let view = PeerView::new(&peer, now);
        assert_eq!(view.path.receive.loss_ratio, Some(0.05));
        let text = peers_table(&[view]);
        let header = text.lines().next().unwrap();
        assert!(header.ends_with("RTT     LOSS"), "{header}");
        let row = text.lines().nth(1).unwrap();
        assert!(row.ends_with("40.8ms  5.00% (5)"), "{row}");
        // A peer with no data messages yet.
        let quiet = PeerView::new(table.peers().next().unwrap(), now);
        let row = peers_table(&[quiet]).lines().nth(1).unwrap().to_owned();
        assert!(row.ends_with("0      -    -"), "{row}");
    }
}
