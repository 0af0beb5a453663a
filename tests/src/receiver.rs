//! A real HTTP/1.1 webhook receiver on loopback for the delivery tests: records every
//! request (headers and raw body) and answers from a script — statuses, extra
//! headers, delays, garbage that is not HTTP, or a dropped connection — so faults
//! are injected on the wire, not by mocking the client. Optionally over TLS with a
//! test CA.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What the receiver answers to one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// A status with an empty body.
    Status(u16),
    /// A status with extra headers.
    WithHeaders(u16, Vec<(String, String)>),
    /// Waits, then answers the status.
    Delayed(Duration, u16),
    /// Bytes that are not an HTTP response, then closes.
    Garbage,
    /// Closes the connection without answering.
    Close,
}

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct Received {
    /// Request line method.
    pub method: String,
    /// Request target.
    pub path: String,
    /// Headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// The raw body.
    pub body: Vec<u8>,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    /// The first value of a header (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

#[derive(Default)]
struct State {
    script: std::collections::VecDeque<Reply>,
    default: Option<Reply>,
    requests: Vec<Received>,
}

/// A running receiver; stops on drop.
pub struct Receiver {
    addr: SocketAddr,
    tls: bool,
    state: Arc<(Mutex<State>, Condvar)>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    /// Listens on a free loopback port, answering 200 unless scripted.
    pub fn start() -> Self {
        Self::bind("127.0.0.1:0".parse().unwrap(), None)
    }

    /// Listens on `addr` (e.g. the port of a receiver that was stopped).
    pub fn start_on(addr: SocketAddr) -> Self {
        Self::bind(addr, None)
    }

    /// Listens over TLS with `config` (see [`tls_config`]).
    pub fn start_tls(config: Arc<rustls::ServerConfig>) -> Self {
        Self::bind("127.0.0.1:0".parse().unwrap(), Some(config))
    }

    fn bind(addr: SocketAddr, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("binding {addr}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state: Arc<(Mutex<State>, Condvar)> = Arc::default();
        state.0.lock().unwrap().default = Some(Reply::Status(200));
        let stop = Arc::new(AtomicBool::new(false));
        let receiver = Self {
            addr,
            tls: tls.is_some(),
            state: state.clone(),
            stop: stop.clone(),
        };
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let state = state.clone();
                        let stop = stop.clone();
                        let tls = tls.clone();
                        std::thread::spawn(move || serve(stream, tls, state, stop));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => return,
                }
            }
        });
        receiver
    }

    /// The receiver's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>/hook` (or https).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/hook", self.addr)
    }

    /// Answers the next requests with `replies`, in order, then the default.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.0.lock().unwrap().script.extend(replies);
    }

    /// Changes the answer after the script runs out.
    pub fn set_default(&self, reply: Reply) {
        self.state.0.lock().unwrap().default = Some(reply);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Received> {
        self.state.0.lock().unwrap().requests.clone()
    }

    /// The requests after the first `skip`.
    pub fn requests_since(&self, skip: usize) -> Vec<Received> {
        let state = self.state.0.lock().unwrap();
        state.requests.get(skip..).unwrap_or_default().to_vec()
    }

    /// Waits until at least `n` requests arrived; panics after `timeout`.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        assert!(
            self.await_count(n, timeout),
            "the receiver got {} requests within {timeout:?}, expected {n}",
            self.requests().len()
        );
        self.requests()
    }

    /// Waits until at least `n` requests arrived; false if `timeout` passes first.
    pub fn await_count(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, ready) = &*self.state;
        let mut state = lock.lock().unwrap();
        while state.requests.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = ready.wait_timeout(state, left).unwrap().0;
        }
        true
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

fn serve(
    stream: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    state: Arc<(Mutex<State>, Condvar)>,
    stop: Arc<AtomicBool>,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let stream: Box<dyn Stream> = match tls {
        Some(config) => {
            let connection = rustls::ServerConnection::new(config).expect("TLS session");
            Box::new(rustls::StreamOwned::new(connection, stream))
        }
        None => Box::new(stream),
    };
    let mut reader = BufReader::new(stream);
    while !stop.load(Ordering::Relaxed) {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();
        let mut headers = Vec::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        let mut read = 0;
        while read < length {
            match reader.read(&mut body[read..]) {
                Ok(0) => return,
                Ok(n) => read += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(_) => return,
            }
        }
        // Stamped before the lock: a test or bench that copies the requests under it
        // (100k events at 100k peers) must not shift the arrival time it measures.
        let at = Instant::now();
        let reply = {
            let (lock, ready) = &*state;
            let mut state = lock.lock().unwrap();
            state.requests.push(Received {
                method,
                path,
                headers,
                body,
                at,
            });
            ready.notify_all();
            let default = state.default.clone().unwrap_or(Reply::Status(200));
            state.script.pop_front().unwrap_or(default)
        };
        let stream = reader.get_mut();
        let (status, extra) = match reply {
            Reply::Status(status) => (status, Vec::new()),
            Reply::WithHeaders(status, headers) => (status, headers),
            Reply::Delayed(delay, status) => {
                std::thread::sleep(delay);
                (status, Vec::new())
            }
            Reply::Garbage => {
                let _ = stream.write_all(b"\x00\x01garbage, not HTTP\r\n\r\n");
                let _ = stream.flush();
                return;
            }
            Reply::Close => return,
        };
        let mut response = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n");
        for (name, value) in extra {
            response.push_str(&format!("{name}: {value}\r\n"));
        }
        response.push_str("\r\nok");
        if stream.write_all(response.as_bytes()).is_err() || stream.flush().is_err() {
            return;
        }
    }
}

/// A test CA and a server certificate for `127.0.0.1` signed by it: the server's
/// TLS configuration and the CA's PEM (for `ca_file`).
pub fn tls_config() -> (Arc<rustls::ServerConfig>, String) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "wgpulse test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let chain = vec![cert.der().clone()];
    let private = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, private)
    .unwrap();
    (Arc::new(config), ca.pem())
}
