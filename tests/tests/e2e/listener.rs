//! `wgpulse run`'s listener attacked as a hostile user would: more idle connections
//! than the process has file descriptors (log and CPU stay bounded, `/metrics`
//! answers again within seconds), the API reached from a second network namespace
//! (no 200 without a token, only the right token with one), and placeholder tokens
//! that must stop the agent at start.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wgpulse_tests::agent::{http, AgentProcess};
use wgpulse_tests::netns::NetNs;
use wgpulse_tests::process::wait_for;
use wgpulse_tests::wireguard::{Underlay, WgPair};
use wgpulse_tests::{require_root_and_tools, unique_name};

/// A state directory with a config file for the agent; removed on drop.
struct AgentDir {
    path: PathBuf,
}

impl AgentDir {
    fn new(config: &str) -> Self {
        let path = std::env::temp_dir().join(unique_name("wgpl"));
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(
            path.join("config.toml"),
            format!("state_dir = {:?}\n{config}", path.display().to_string()),
        )
        .unwrap();
        Self { path }
    }

    fn config(&self) -> PathBuf {
        self.path.join("config.toml")
    }

    fn file(&self, name: &str, text: &str) -> String {
        let path = self.path.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

impl Drop for AgentDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `GET /metrics` over one new connection from the calling thread's namespace;
/// the status, or `None` if the connection failed or timed out.
fn scrape(addr: SocketAddr, timeout: Duration) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

#[test]
fn out_of_file_descriptors_the_log_and_cpu_stay_bounded_and_metrics_comes_back() {
    require_root_and_tools();
    let ns = NetNs::new("wgfd");
    let addr: SocketAddr = "127.0.0.1:9586".parse().unwrap();
    // A connection cap above the fd limit, so that the process runs out of fds first.
    let dir = AgentDir::new(&format!(
        "drain_interval = \"1s\"\n[metrics]\nlisten = \"{addr}\"\nmax_connections = 4096\n"
    ));
    let agent =
        AgentProcess::start_with(&ns, &["prlimit", "--nofile=128:128", "--"], &dir.config());
    agent.await_line("serving /metrics", Duration::from_secs(30));
    let _inside = ns.enter();
    assert_eq!(scrape(addr, Duration::from_secs(5)), Some(200));

    // 300 idle connections: more than the 128 descriptors the agent may hold.
    let cpu_before = agent.cpu_time();
    let lines_before = agent.lines.lock().unwrap().len();
    let attack_started = Instant::now();
    let hogs: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(addr).expect("the backlog takes the connection"))
        .collect();
    agent.await_line("Too many open files", Duration::from_secs(10));
    // A scraper keeps trying; it is answered again within a few seconds.
    let mut answered = None;
    while attack_started.elapsed() < Duration::from_secs(20) {
        if scrape(addr, Duration::from_secs(2)) == Some(200) {
            answered = Some(attack_started.elapsed());
            break;
        }
    }
    let answered = answered.expect("/metrics never answered during the attack");
    eprintln!("/metrics answered {answered:?} after the attack began");
    assert!(answered < Duration::from_secs(10), "took {answered:?}");
    // The attack goes on for ten seconds in all: measure what it cost.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(attack_started.elapsed()));
    let cpu = agent.cpu_time() - cpu_before;
    let lines: Vec<String> = agent.lines.lock().unwrap()[lines_before..].to_vec();
    let bytes: usize = lines.iter().map(String::len).sum();
    let accept_lines = lines
        .iter()
        .filter(|l| l.contains("accepting a connection"))
        .count();
    eprintln!(
        "during the attack: {} log lines ({bytes} bytes, {accept_lines} about accept), CPU {cpu:?}",
        lines.len()
    );
    assert!(
        accept_lines <= 3,
        "accept errors logged {accept_lines} times in 10 s"
    );
    assert!(bytes < 20_000, "{bytes} bytes of log in 10 s");
    assert!(
        cpu < Duration::from_secs(2),
        "the agent used {cpu:?} of CPU in 10 s of attack"
    );
    assert_eq!(scrape(addr, Duration::from_secs(5)), Some(200));
    drop(hogs);
}

#[test]
fn beyond_loopback_the_api_answers_only_with_the_right_token() {
    require_root_and_tools();
    let pair = WgPair::new(Underlay::V4);
    let listen = SocketAddr::new(pair.link.b.addr(false), 9586);
    let base = format!("http://{listen}");
    let api_routes: &[(&str, &str)] = &[
        ("GET", "/api/v1/peers"),
        (
            "GET",
            &format!(
                "/api/v1/peers/{}",
                pair.wg_a
                    .keys
                    .public
                    .replace('/', "%2F")
                    .replace('+', "%2B")
                    .replace('=', "%3D")
            ),
        ),
        ("GET", "/api/v1/devices"),
        ("GET", "/api/v1/webhooks"),
        ("GET", "/api/v1/webhooks/hook/deliveries"),
        ("GET", "/api/v1/webhooks/hook/dead-letters"),
        ("POST", "/api/v1/webhooks/hook/test"),
        ("POST", "/api/v1/webhooks/hook/replay"),
        ("GET", "/api/v1/nothing"),
    ];
    // Top-level keys and the webhook; the [metrics] and [api] tables follow it.
    let base_config = format!(
        "interfaces = [{:?}]\ndevices = [{:?}]\n[[webhooks]]\nname = \"hook\"\nurl = \"http://127.0.0.1:9/x\"\n",
        pair.link.b.name, pair.wg_b.name
    );

    // No token: every API route is refused to a client in the other namespace.
    {
        let dir = AgentDir::new(&format!("{base_config}[metrics]\nlisten = \"{listen}\"\n"));
        let agent = AgentProcess::start(&pair.b, &dir.config());
        agent.await_line("serving /metrics", Duration::from_secs(30));
        assert!(
            agent.count("api.token_file is not set") == 1,
            "a WARN at start says the API is closed beyond loopback:\n{}",
            agent.log()
        );
        for (method, route) in api_routes {
            let (status, body) = http(&pair.a, method, &format!("{base}{route}"), None);
            assert_eq!(status, 403, "{method} {route}: {body}");
            assert!(body.contains("api.token_file"), "{body}");
        }
        // /metrics stays open by design (as an exporter's is).
        assert_eq!(
            http(&pair.a, "GET", &format!("{base}/metrics"), None).0,
            200
        );
        agent.kill();
    }

    // With a token: only that token.
    {
        let dir = AgentDir::new(&base_config);
        let token = "7d0c0e4f6b8a4d1e9f3a2b5c6d7e8f90";
        let token_file = dir.file("api-token", &format!("{token}\n"));
        std::fs::write(
            dir.config(),
            format!(
                "state_dir = {:?}\n{base_config}[metrics]\nlisten = \"{listen}\"\n[api]\ntoken_file = {token_file:?}\n",
                dir.path.display().to_string()
            ),
        )
        .unwrap();
        let agent = AgentProcess::start(&pair.b, &dir.config());
        agent.await_line("serving /metrics", Duration::from_secs(30));
        for (method, route) in api_routes {
            let url = format!("{base}{route}");
            assert_eq!(http(&pair.a, method, &url, None).0, 401, "{route}");
            assert_eq!(
                http(
                    &pair.a,
                    method,
                    &url,
                    Some("7d0c0e4f6b8a4d1e9f3a2b5c6d7e8f9")
                )
                .0,
                401,
                "{route}"
            );
        }
        for route in ["/api/v1/peers", "/api/v1/devices", "/api/v1/webhooks"] {
            let (status, body) = http(&pair.a, "GET", &format!("{base}{route}"), Some(token));
            assert_eq!(status, 200, "{route}: {body}");
        }
        agent.kill();
    }

    // A placeholder or a short token stops the agent at start, naming the key only.
    for weak in ["change-me-api-token", "short-token"] {
        let dir = AgentDir::new("");
        let token_file = dir.file("api-token", &format!("{weak}\n"));
        std::fs::write(
            dir.config(),
            format!(
                "state_dir = {:?}\n{base_config}[metrics]\nlisten = \"{listen}\"\n[api]\ntoken_file = {token_file:?}\n",
                dir.path.display().to_string()
            ),
        )
        .unwrap();
        let mut agent = AgentProcess::start(&pair.b, &dir.config());
        let status = agent.child.wait_timeout(Duration::from_secs(30));
        assert!(!status.success(), "the agent ran with the token {weak:?}");
        wait_for("the error line", Duration::from_secs(5), || {
            agent.count("api.token_file") > 0
        });
        let log = agent.log();
        assert!(!log.contains(weak), "the token is in the log: {log}");
        assert!(!log.contains("serving /metrics"), "{log}");
        let _ = Path::new("");
    }
}
