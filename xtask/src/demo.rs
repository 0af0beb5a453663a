//! `cargo xtask demo`: the whole product on one machine in about a minute. Builds the
//! agent, creates a server namespace with a wireguard-go device and three client
//! namespaces (IPv4 and IPv6 underlays), runs `wgpulse run` in the server namespace
//! with its default interface selection, drives traffic, a roam, garbage on the port
//! and a peer removal, shows what the agent logs, then stops it and tears everything
//! down (also on Ctrl-C).

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::{cmd, setup};

const SERVER_PORT: u16 = 51820;
/// The agent's listener in the server namespace.
const AGENT_PORT: u16 = 9586;
/// The demo's webhook receiver in the server namespace.
const RECEIVER_PORT: u16 = 8088;
/// The demo webhook's signing secret (Standard Webhooks form).
const SECRET: &str = "whsec_ZGVtby1zZWNyZXQtZGVtby1zZWNyZXQtZGVtbw==";

/// The agent's configuration in the demo.
const DEMO_CONFIG: &str = r#"state_dir = "{state}"
refresh_interval = "2s"
disconnect_after = "15s"

[alerts]
invalid_flood_per_second = 2

[[webhooks]]
name = "demo"
url = "http://127.0.0.1:8088/hook"
signing_secret = "whsec_ZGVtby1zZWNyZXQtZGVtby1zZWNyZXQtZGVtbw=="
"#;

/// A webhook receiver that checks each request's Standard Webhooks signature and
/// prints one line per event.
const RECEIVER: &str = r#"
import base64, hashlib, hmac, http.server, json, sys
port, secret = int(sys.argv[1]), base64.b64decode(sys.argv[2][len("whsec_"):])
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        msg_id, ts = self.headers["webhook-id"], self.headers["webhook-timestamp"]
        want = "v1," + base64.b64encode(hmac.new(secret, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
        ok = want in self.headers["webhook-signature"].split(" ")
        event = json.loads(body)
        p = event["payload"]
        detail = ""
        if event["entity"] == "peer_metric":
            st = p["Status"]
            detail = f"connected={st['IsConnected']} endpoint={st['Endpoint']} handshakes={st.get('HandshakesCompleted')}"
            if "DisconnectReason" in st:
                detail += f" reason={st['DisconnectReason']}"
        elif event["entity"] == "peer":
            detail = f"endpoint={p.get('Endpoint')!r} changed={p.get('ChangedFields', [])}"
        elif event["entity"] == "alert":
            detail = f"severity={p['Severity']} subject={p['Subject']}"
        print(f"{event['entity']}.{event['event']:<10} {event['identifier'][:12]:<12} {detail}  (signature {'ok' if ok else 'BAD'})", flush=True)
        self.send_response(200 if ok else 401)
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", port), Hook)
print("ready", flush=True)
server.serve_forever()
"#;

pub(crate) fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// Waits `seconds` (the demo lets wall-clock time pass), checking for Ctrl-C.
pub(crate) fn wait_seconds(interrupted: &AtomicBool, seconds: u64) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < until {
        if interrupted.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Everything the demo created; removed on drop, in reverse order.
#[derive(Default)]
pub(crate) struct Demo {
    pub(crate) namespaces: Vec<String>,
    pub(crate) children: Vec<Child>,
    pub(crate) sockets: Vec<String>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        // The last started first: agents and consumers before the servers they use.
        for child in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for socket in &self.sockets {
            let _ = std::fs::remove_file(socket);
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        println!("demo: torn down (namespaces, processes)");
    }
}

pub(crate) fn ns_run(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .with_context(|| format!("running {args:?} in {ns}"))?;
    if !out.status.success() {
        bail!(
            "{args:?} in {ns} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn step(interrupted: &AtomicBool, text: &str) -> anyhow::Result<()> {
    if interrupted.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    println!("\n\x1b[1m== {text}\x1b[0m");
    Ok(())
}

impl Demo {
    pub(crate) fn namespace(&mut self, name: &str) -> anyhow::Result<String> {
        let name = format!("{name}{}", std::process::id() % 10000);
        cmd::run("ip", &["netns", "add", &name])?;
        self.namespaces.push(name.clone());
        ns_run(&name, &["ip", "link", "set", "lo", "up"])?;
        Ok(name)
    }

    /// A veth pair from `a` (address `addr_a`, a /24) to `b` (`addr_b`), both up.
    pub(crate) fn veth(
        &mut self,
        a: &str,
        addr_a: &str,
        b: &str,
        addr_b: &str,
        tag: &str,
    ) -> anyhow::Result<(String, String)> {
        let id = std::process::id() % 10000;
        let (va, vb) = (format!("va{tag}x{id}"), format!("vb{tag}x{id}"));
        cmd::run(
            "ip",
            &[
                "link", "add", &va, "netns", a, "type", "veth", "peer", "name", &vb, "netns", b,
            ],
        )?;
        ns_run(
            a,
            &["ip", "addr", "add", &format!("{addr_a}/24"), "dev", &va],
        )?;
        ns_run(
            b,
            &["ip", "addr", "add", &format!("{addr_b}/24"), "dev", &vb],
        )?;
        ns_run(a, &["ip", "link", "set", &va, "up"])?;
        ns_run(b, &["ip", "link", "set", &vb, "up"])?;
        Ok((va, vb))
    }

    pub(crate) fn wireguard(
        &mut self,
        ns: &str,
        name: &str,
        port: u16,
        address: &str,
    ) -> anyhow::Result<(String, String)> {
        let ifname = format!("{name}{}", std::process::id() % 10000);
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "wireguard-go", "-f", &ifname])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting wireguard-go")?;
        self.children.push(child);
        let socket = format!("/var/run/wireguard/{ifname}.sock");
        self.sockets.push(socket.clone());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::path::Path::new(&socket).exists() {
            if Instant::now() > deadline {
                bail!("wireguard-go {ifname} did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let key_path = std::env::temp_dir().join(format!("{ifname}.key"));
        let private = cmd::output("wg", &["genkey"]).context("wg genkey")?;
        std::fs::write(&key_path, private.trim())?;
        let public = Command::new("sh")
            .args(["-c", &format!("wg pubkey < {}", key_path.display())])
            .output()?;
        let public = String::from_utf8_lossy(&public.stdout).trim().to_owned();
        ns_run(
            ns,
            &[
                "wg",
                "set",
                &ifname,
                "private-key",
                key_path.to_str().unwrap(),
                "listen-port",
                &port.to_string(),
            ],
        )?;
        let _ = std::fs::remove_file(&key_path);
        ns_run(ns, &["ip", "addr", "add", address, "dev", &ifname])?;
        ns_run(ns, &["ip", "link", "set", &ifname, "up"])?;
        Ok((ifname, public))
    }
}

pub fn run() -> anyhow::Result<()> {
    setup::run()?;
    cmd::cargo(&["build", "--release", "-p", "wgpulse"])?;
    let agent_binary = cmd::workspace_root().join("target/release/wgpulse");

    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
        .context("installing the Ctrl-C handler")?;

    let mut demo = Demo::default();
    step(
        &interrupted,
        "creating a server namespace and three clients (IPv4, IPv6, IPv4)",
    )?;
    let server = demo.namespace("wpsrv")?;
    let (server_wg, server_key) = demo.wireguard(&server, "wgsrv", SERVER_PORT, "10.202.0.1/24")?;
    let mut clients = Vec::new();
    for (i, v6) in [(1u8, false), (2, true), (3, false)] {
        let client = demo.namespace(&format!("wpc{i}x"))?;
        let (vs, vc) = (
            format!("vs{i}x{}", std::process::id() % 10000),
            format!("vc{i}x{}", std::process::id() % 10000),
        );
        cmd::run(
            "ip",
            &[
                "link", "add", &vs, "netns", &server, "type", "veth", "peer", "name", &vc, "netns",
                &client,
            ],
        )?;
        ns_run(
            &server,
            &["ip", "addr", "add", &format!("10.201.{i}.1/24"), "dev", &vs],
        )?;
        ns_run(
            &server,
            &[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("fd00:201:{i}::1/64"),
                "dev",
                &vs,
                "nodad",
            ],
        )?;
        ns_run(
            &client,
            &["ip", "addr", "add", &format!("10.201.{i}.2/24"), "dev", &vc],
        )?;
        ns_run(
            &client,
            &[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("fd00:201:{i}::2/64"),
                "dev",
                &vc,
                "nodad",
            ],
        )?;
        ns_run(&server, &["ip", "link", "set", &vs, "up"])?;
        ns_run(&client, &["ip", "link", "set", &vc, "up"])?;
        let tunnel = format!("10.202.0.{}", i + 1);
        let (wg, key) = demo.wireguard(
            &client,
            &format!("wgc{i}x"),
            51900 + i as u16,
            &format!("{tunnel}/24"),
        )?;
        let endpoint = if v6 {
            format!("[fd00:201:{i}::1]:{SERVER_PORT}")
        } else {
            format!("10.201.{i}.1:{SERVER_PORT}")
        };
        ns_run(
            &client,
            &[
                "wg",
                "set",
                &wg,
                "peer",
                &server_key,
                "endpoint",
                &endpoint,
                "allowed-ips",
                "10.202.0.1/32",
            ],
        )?;
        ns_run(
            &server,
            &[
                "wg",
                "set",
                &server_wg,
                "peer",
                &key,
                "allowed-ips",
                &format!("{tunnel}/32"),
            ],
        )?;
        println!("client {i}: {wg} in {client}, endpoint {endpoint}, tunnel {tunnel}, key {key}");
        clients.push((client, wg, key, tunnel));
    }

    step(
        &interrupted,
        "starting a webhook receiver and `wgpulse run` in the server namespace",
    )?;
    // A fresh state directory: the demo's devices are new every run.
    let state = std::path::Path::new("/tmp/wgpulse-demo");
    let _ = std::fs::remove_dir_all(state);
    std::fs::create_dir_all(state)?;
    let config = state.join("config.toml");
    std::fs::write(
        &config,
        DEMO_CONFIG.replace("{state}", &state.display().to_string()),
    )?;
    println!(
        "config ({}):\n{}",
        config.display(),
        indent(&std::fs::read_to_string(&config)?)
    );
    let receiver_script = state.join("receiver.py");
    std::fs::write(&receiver_script, RECEIVER)?;
    let mut receiver = Command::new("ip")
        .args(["netns", "exec", &server, "python3", "-u"])
        .arg(&receiver_script)
        .args([&RECEIVER_PORT.to_string(), SECRET])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the webhook receiver")?;
    let receiver_out = receiver.stdout.take().unwrap();
    demo.children.push(receiver);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver_printer = std::thread::spawn(move || {
        for line in BufReader::new(receiver_out).lines().map_while(Result::ok) {
            if line == "ready" {
                let _ = ready_tx.send(());
                continue;
            }
            println!("  \x1b[32m[webhook]\x1b[0m {line}");
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .context("the webhook receiver did not start")?;

    let mut agent = Command::new("ip")
        .args(["netns", "exec", &server])
        .arg(&agent_binary)
        .args(["run", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the agent")?;
    let stderr = agent.stderr.take().unwrap();
    let (attached_tx, attached_rx) = std::sync::mpsc::channel();
    let printer = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("datapath attached") {
                let _ = attached_tx.send(());
            }
            // Events and alerts are shown by the receiver; the agent's own
            // problems and its attach/detach are shown here.
            if (line.contains("WARN") || line.contains("ERROR") || line.contains("datapath"))
                && !line.contains(" alert ")
            {
                println!("  [agent] {line}");
            }
        }
    });
    demo.children.push(agent);
    for _ in 0..3 {
        attached_rx
            .recv_timeout(Duration::from_secs(30))
            .context("the agent did not attach to the three interfaces")?;
    }
    let cli = |args: &[&str]| -> anyhow::Result<String> {
        let mut all = vec![agent_binary.to_str().unwrap()];
        all.extend_from_slice(args);
        all.extend(["--config", config.to_str().unwrap()]);
        ns_run(&server, &all)
    };

    for (i, (client, _, _, _)) in clients.iter().enumerate() {
        step(
            &interrupted,
            &format!(
                "client {} pings the server: a handshake, then data (connect within the second)",
                i + 1
            ),
        )?;
        ns_run(
            client,
            &["ping", "-q", "-c", "3", "-i", "0.3", "10.202.0.1"],
        )?;
    }
    step(
        &interrupted,
        "client 1 roams from its IPv4 to its IPv6 address (update, and an alert: a new address)",
    )?;
    let (c1, c1_wg, _, _) = &clients[0];
    ns_run(
        c1,
        &[
            "wg",
            "set",
            c1_wg,
            "peer",
            &server_key,
            "endpoint",
            &format!("[fd00:201:1::1]:{SERVER_PORT}"),
        ],
    )?;
    ns_run(c1, &["ping", "-q", "-c", "3", "-i", "0.3", "10.202.0.1"])?;
    step(&interrupted, "a stray sender throws random bytes at the WireGuard port (kept apart as unknown; an invalid_flood alert)")?;
    ns_run(
        &clients[2].0,
        &["python3", "-c", &format!("import os,socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor i in range(300): s.sendto(os.urandom(148),('10.201.3.1',{SERVER_PORT}))")],
    )?;
    wait_seconds(&interrupted, 2)?;
    step(&interrupted, "the live peer table (`wgpulse peers`)")?;
    print!("{}", indent(&cli(&["peers"])?));
    step(&interrupted, "a slice of /metrics")?;
    let metrics = ns_run(&server, &["python3", "-c", &format!("import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:{AGENT_PORT}/metrics').read().decode())")])?;
    for line in metrics.lines().filter(|l| {
        l.starts_with("wireguard_peer_connected")
            || l.starts_with("wireguard_peer_receive_bytes_total")
            || l.starts_with("wgpulse_peer_wire_receive_bytes_total")
            || l.starts_with("wgpulse_webhook_requests_total")
            || l.starts_with("wgpulse_device_unknown_invalid")
    }) {
        println!("  {line}");
    }
    step(&interrupted, "silence: every peer disconnects once its last handshake is older than disconnect_after (15 s here, 180 s by default)")?;
    wait_seconds(&interrupted, 17)?;
    step(&interrupted, "the server removes client 3 (a peer.delete)")?;
    ns_run(
        &server,
        &["wg", "set", &server_wg, "peer", &clients[2].2, "remove"],
    )?;
    wait_seconds(&interrupted, 3)?;
    step(
        &interrupted,
        "webhook delivery statistics (`wgpulse webhook list`)",
    )?;
    print!("{}", indent(&cli(&["webhook", "list"])?));
    step(&interrupted, "WireGuard's own view on the server (wg show)")?;
    print!(
        "{}",
        indent(&ns_run(&server, &["wg", "show", &server_wg, "transfer"])?)
    );
    let count_links = || {
        cmd::output("bpftool", &["prog", "list"])
            .unwrap_or_default()
            .matches("name wgpulse_")
            .count()
    };
    let attached = count_links();
    println!("wgpulse programs in the kernel while running: {attached}");
    step(
        &interrupted,
        "stopping the agent (SIGTERM): it detaches from every interface",
    )?;
    if let Some(agent) = demo.children.last_mut() {
        let _ = Command::new("kill")
            .args(["-TERM", &agent.id().to_string()])
            .status();
        let _ = agent.wait();
    }
    let _ = printer.join();
    let _ = receiver_printer;
    // The kernel frees programs shortly after the last reference (the process's fds,
    // or a leaked link) goes away: wait for that, with a deadline.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut left = count_links();
    while left != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = count_links();
    }
    println!("wgpulse programs left in the kernel (a leaked link would keep one): {left}");
    if left != 0 {
        bail!("the agent left {left} links behind");
    }
    Ok(())
}
