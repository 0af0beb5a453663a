//! The listener in-process under attack: a slowloris sender is cut off at the header
//! timeout, an idle connection at the idle timeout, connections beyond the cap close
//! the longest-idle one, and a normal client's `/metrics` is answered throughout;
//! paths with `..`, raw slashes or wrong methods get the right status.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::{start, ApiState, MetricsConfig, Server};
use crate::peers::PeerTable;
use crate::status::{AgentStatus, Shared};

struct Running {
    server: Option<Server>,
    registry: prometheus::Registry,
    runtime: tokio::runtime::Runtime,
}

impl Running {
    fn start(config: MetricsConfig, api_token: Option<&str>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let registry = prometheus::Registry::new();
        let state = ApiState {
            shared: Arc::new(Shared {
                read_through: crate::pipeline::read_through::ReadThrough::new().0,
                table: RwLock::new(PeerTable::new(Duration::from_secs(180))),
                status: RwLock::new(AgentStatus::default()),
                events: Arc::default(),
            }),
            registry: registry.clone(),
            delivery: None,
            api_token: api_token.map(super::auth::Token::new),
            metrics_token: None,
            writer: None,
        };
        let server = runtime
            .block_on(start(&config, state))
            .unwrap()
            .expect("enabled");
        Self {
            server: Some(server),
            registry,
            runtime,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.server.as_ref().unwrap().addr()
    }

    fn metric(&self, name: &str, label: Option<&str>) -> f64 {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .find(|(series, _)| {
                series.split('{').next() == Some(name) && label.is_none_or(|l| series.contains(l))
            })
            .map(|(_, value)| value.parse().unwrap())
            .unwrap_or(0.0)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            self.runtime.block_on(server.shutdown());
        }
    }
}

fn config(header: Duration, idle: Duration, max_connections: usize) -> MetricsConfig {
    MetricsConfig {
        listen: "127.0.0.1:0".into(),
        header_read_timeout: header,
        idle_timeout: idle,
        max_connections,
        ..MetricsConfig::default()
    }
}

/// One request on a new connection; the status and body.
fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_owned())
}

/// Blocks until the server closes `stream` (read returns 0 or an error); panics if it
/// is still open after `limit`.
fn await_closed(stream: &mut TcpStream, limit: Duration) -> Instant {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Instant::now(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Instant::now(),
            Err(e) => panic!("the connection is still open after {limit:?}: {e}"),
        }
    }
}

#[test]
fn a_slowloris_sender_is_cut_off_at_the_header_timeout_while_metrics_is_served() {
    let header = Duration::from_millis(800);
    let running = Running::start(config(header, Duration::from_secs(30), 64), None);
    let addr = running.addr();
    let mut slow = TcpStream::connect(addr).unwrap();
    let head = b"GET /metrics HTTP/1.1\r\nhost: x\r\nuser-agent: one-byte-at-a-time\r\n\r\n";
    let first_byte = Instant::now();
    let sender = {
        let mut slow = slow.try_clone().unwrap();
        std::thread::spawn(move || {
            for byte in head {
                if slow.write_all(&[*byte]).is_err() {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            true
        })
    };
    // A normal client is answered while the slow one trickles.
    assert_eq!(request(addr, "GET", "/metrics").0, 200);
    let closed = await_closed(&mut slow, Duration::from_secs(5));
    let took = closed - first_byte;
    assert!(
        took >= header,
        "closed after {took:?}, before the header timeout"
    );
    assert!(
        !sender.join().unwrap(),
        "the whole head went out: the server waited {took:?} for it"
    );
    assert_eq!(
        running.metric(
            "wgpulse_http_connections_closed_total",
            Some("header_timeout")
        ),
        1.0
    );
}

#[test]
fn idle_connections_close_at_the_idle_timeout_even_after_a_request() {
    let idle = Duration::from_millis(600);
    let running = Running::start(config(Duration::from_secs(5), idle, 64), None);
    let addr = running.addr();
    let opened = Instant::now();
    let mut silent = TcpStream::connect(addr).unwrap();
    let closed = await_closed(&mut silent, Duration::from_secs(5));
    assert!(
        closed - opened >= idle,
        "closed after {:?}",
        closed - opened
    );

    let mut kept = TcpStream::connect(addr).unwrap();
    write!(kept, "GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 512];
    let n = kept.read(&mut buf).unwrap();
    let answered = Instant::now();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let closed = await_closed(&mut kept, Duration::from_secs(5));
    assert!(closed - answered >= idle - Duration::from_millis(50));
    assert_eq!(
        running.metric(
            "wgpulse_http_connections_closed_total",
            Some("idle_timeout")
        ),
        2.0
    );
}

#[test]
fn beyond_the_cap_the_longest_idle_connection_makes_room_for_a_scrape() {
    let running = Running::start(
        config(Duration::from_secs(30), Duration::from_secs(30), 4),
        None,
    );
    let addr = running.addr();
    let mut hogs: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // Each of these connections is accepted before the next: wait for all four.
    let deadline = Instant::now() + Duration::from_secs(10);
    while running.metric("wgpulse_http_connections", None) < 4.0 {
        assert!(Instant::now() < deadline, "four connections not accepted");
        std::thread::yield_now();
    }
    assert_eq!(request(addr, "GET", "/metrics").0, 200);
    // The scrape closed the oldest idle hog; the others stay.
    await_closed(&mut hogs[0], Duration::from_secs(5));
    assert_eq!(
        running.metric("wgpulse_http_connections_closed_total", Some("evicted")),
        1.0
    );
    hogs[1].set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(
        hogs[1].read(&mut buf).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "a younger idle connection stays open"
    );
    assert!(running.metric("wgpulse_http_connections", None) <= 4.0);
}

#[test]
fn path_and_method_errors_say_what_is_wrong() {
    let running = Running::start(
        config(Duration::from_secs(5), Duration::from_secs(5), 64),
        None,
    );
    let addr = running.addr();
    let (status, body) = request(addr, "GET", "/api/v1/peers/abc/def+ghi=");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("URL-encoded"), "{body}");
    for path in [
        "/api/v1/../metrics",
        "/api/v1/peers/%2e%2e",
        "/api//v1/peers",
    ] {
        let (status, body) = request(addr, "GET", path);
        assert_eq!(status, 400, "{path}: {body}");
    }
    let (status, body) = request(addr, "GET", "/api/v1/nothing");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("/api/v1/nothing"), "{body}");
    assert_eq!(request(addr, "POST", "/metrics").0, 405);
    assert_eq!(request(addr, "DELETE", "/api/v1/peers").0, 405);
    assert_eq!(request(addr, "GET", "/api/v1/peers").0, 200);
    assert_eq!(request(addr, "GET", "/api/v1/peers/").0, 200);
}
