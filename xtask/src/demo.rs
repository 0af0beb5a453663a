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

/// Everything the demo created; removed on drop, in reverse order.
#[derive(Default)]
struct Demo {
    namespaces: Vec<String>,
    children: Vec<Child>,
    sockets: Vec<String>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for socket in &self.sockets {
            let _ = std::fs::remove_file(socket);
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        println!("demo: torn down (namespaces, wireguard-go, agent)");
    }
}

fn ns_run(ns: &str, args: &[&str]) -> anyhow::Result<String> {
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

fn step(interrupted: &AtomicBool, text: &str) -> anyhow::Result<()> {
    if interrupted.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    println!("\n\x1b[1m== {text}\x1b[0m");
    Ok(())
}

impl Demo {
    fn namespace(&mut self, name: &str) -> anyhow::Result<String> {
        let name = format!("{name}{}", std::process::id() % 10000);
        cmd::run("ip", &["netns", "add", &name])?;
        self.namespaces.push(name.clone());
        ns_run(&name, &["ip", "link", "set", "lo", "up"])?;
        Ok(name)
    }

    fn wireguard(
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

    step(&interrupted, "starting `wgpulse run` in the server namespace (default: every UP non-WireGuard interface)")?;
    // A fresh state directory: the demo's devices are new every run.
    let _ = std::fs::remove_dir_all("/tmp/wgpulse-demo");
    let mut agent = Command::new("ip")
        .args(["netns", "exec", &server])
        .arg(&agent_binary)
        .args([
            "run",
            "--refresh-interval",
            "2s",
            "--state-dir",
            "/tmp/wgpulse-demo",
            "--log-level",
            "info,wgpulse::agent=debug",
        ])
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
            println!("  [agent] {line}");
        }
    });
    demo.children.push(agent);
    for _ in 0..3 {
        attached_rx
            .recv_timeout(Duration::from_secs(30))
            .context("the agent did not attach to the three interfaces")?;
    }

    for (i, (client, _, _, _)) in clients.iter().enumerate() {
        step(
            &interrupted,
            &format!("client {} pings the server: a handshake, then data", i + 1),
        )?;
        ns_run(
            client,
            &["ping", "-q", "-c", "3", "-i", "0.3", "10.202.0.1"],
        )?;
    }
    step(
        &interrupted,
        "client 1 roams from its IPv4 to its IPv6 address",
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
    step(
        &interrupted,
        "a stray sender throws random bytes at the WireGuard port",
    )?;
    ns_run(
        &clients[2].0,
        &["python3", "-c", &format!("import os,socket\ns=socket.socket()\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor i in range(50): s.sendto(os.urandom(148),('10.201.3.1',{SERVER_PORT}))")],
    )?;
    std::thread::sleep(Duration::from_secs(3));
    step(&interrupted, "the server removes client 3")?;
    ns_run(
        &server,
        &["wg", "set", &server_wg, "peer", &clients[2].2, "remove"],
    )?;
    std::thread::sleep(Duration::from_secs(3));
    step(&interrupted, "WireGuard's own view on the server (wg show)")?;
    print!(
        "{}",
        ns_run(&server, &["wg", "show", &server_wg, "transfer"])?
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
