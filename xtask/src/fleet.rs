//! `cargo xtask demo --fleet`: three gateways, each a namespace with its own
//! wireguard-go server, two clients and its own `wgpulse run`, publishing into one
//! JetStream stream on a NATS server in a fourth namespace; a consumer (nats-py, as a
//! fleet's consumers would be) prints every node's connects and disconnects as they
//! arrive. Clients connect, fall silent and disconnect, one starts a new session,
//! a peer is removed; then each agent's `wgpulse target list`, and everything is torn down
//! (also on Ctrl-C).

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::demo::{indent, ns_run, step, wait_seconds, Demo};
use crate::{cmd, setup};

const GATEWAYS: u8 = 3;
const CLIENTS: u8 = 2;
const STREAM: &str = "FLEET";

/// One gateway: its namespace, WireGuard device and clients.
struct Gateway {
    ns: String,
    wg: String,
    config: std::path::PathBuf,
    /// (namespace, device, public key) per client.
    clients: Vec<(String, String, String)>,
}

pub fn run() -> anyhow::Result<()> {
    setup::run()?;
    cmd::cargo(&["build", "--release", "-p", "wgpulse"])?;
    let agent_binary = cmd::workspace_root().join("target/release/wgpulse");
    let consumer = cmd::workspace_root().join("tests/receivers/nats_consumer.py");
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
        .context("installing the Ctrl-C handler")?;
    let root = std::path::Path::new("/tmp/wgpulse-fleet");
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root)?;
    let mut demo = Demo::default();

    step(
        &interrupted,
        "a NATS server with JetStream in its own namespace (the bus)",
    )?;
    let bus = demo.namespace("wpbus")?;
    let nats_conf = root.join("nats.conf");
    std::fs::write(
        &nats_conf,
        format!(
            "server_name: bus\nlisten: 0.0.0.0:4222\njetstream {{ store_dir: {:?} }}\n",
            root.join("nats").display().to_string()
        ),
    )?;
    let nats_log = std::fs::File::create(root.join("nats.log"))?;
    demo.children.push(
        Command::new("ip")
            .args(["netns", "exec", &bus, "nats-server", "-c"])
            .arg(&nats_conf)
            .stdout(Stdio::from(nats_log.try_clone()?))
            .stderr(Stdio::from(nats_log))
            .spawn()
            .context("starting nats-server")?,
    );

    step(
        &interrupted,
        "three gateways, each with a wireguard-go server, two clients and an agent",
    )?;
    let mut gateways = Vec::new();
    for g in 1..=GATEWAYS {
        let ns = demo.namespace(&format!("wpgw{g}x"))?;
        demo.veth(
            &bus,
            &format!("10.210.{g}.1"),
            &ns,
            &format!("10.210.{g}.2"),
            &format!("b{g}"),
        )?;
        let (wg, server_key) =
            demo.wireguard(&ns, &format!("wgw{g}x"), 51820, &format!("10.21{g}.0.1/24"))?;
        let mut clients = Vec::new();
        let mut interfaces = Vec::new();
        for c in 1..=CLIENTS {
            let client = demo.namespace(&format!("wpg{g}c{c}x"))?;
            let (gw_side, _) = demo.veth(
                &ns,
                &format!("10.22{g}.{c}.1"),
                &client,
                &format!("10.22{g}.{c}.2"),
                &format!("{g}{c}"),
            )?;
            interfaces.push(format!("{gw_side:?}"));
            let tunnel = format!("10.21{g}.0.{}", c + 1);
            let (cwg, key) = demo.wireguard(
                &client,
                &format!("wgc{g}{c}x"),
                51900,
                &format!("{tunnel}/24"),
            )?;
            ns_run(
                &client,
                &[
                    "wg",
                    "set",
                    &cwg,
                    "peer",
                    &server_key,
                    "endpoint",
                    &format!("10.22{g}.{c}.1:51820"),
                    "allowed-ips",
                    &format!("10.21{g}.0.1/32"),
                ],
            )?;
            ns_run(
                &ns,
                &[
                    "wg",
                    "set",
                    &wg,
                    "peer",
                    &key,
                    "allowed-ips",
                    &format!("{tunnel}/32"),
                ],
            )?;
            clients.push((client, cwg, key));
        }
        let state = root.join(format!("gw-{g}"));
        std::fs::create_dir_all(&state)?;
        let config = state.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "node = \"gw-{g}\"\nstate_dir = {:?}\ninterfaces = [{}]\nrefresh_interval = \"2s\"\ndisconnect_after = \"12s\"\n\n\
                 [[nats]]\nname = \"fleet\"\nservers = [\"nats://10.210.{g}.1:4222\"]\nstream = {STREAM:?}\ncreate_stream = true\n",
                state.display().to_string(),
                interfaces.join(", ")
            ),
        )?;
        gateways.push(Gateway {
            ns,
            wg,
            config,
            clients,
        });
    }
    println!(
        "config of gw-1 ({}):\n{}",
        gateways[0].config.display(),
        indent(&std::fs::read_to_string(&gateways[0].config)?)
    );

    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<u8>();
    for (i, gateway) in gateways.iter().enumerate() {
        let mut agent = Command::new("ip")
            .args(["netns", "exec", &gateway.ns])
            .arg(&agent_binary)
            .args(["run", "--config", gateway.config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting an agent")?;
        let stderr = agent.stderr.take().unwrap();
        let ready = ready_tx.clone();
        let node = i as u8 + 1;
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("ready to publish") {
                    let _ = ready.send(node);
                }
                if line.contains("WARN") || line.contains("ERROR") || line.contains("NATS target") {
                    println!("  [gw-{node}] {line}");
                }
            }
        });
        demo.children.push(agent);
    }
    for _ in 0..GATEWAYS {
        ready_rx
            .recv_timeout(Duration::from_secs(60))
            .context("an agent did not reach the stream")?;
    }

    step(
        &interrupted,
        "a consumer (nats-py) follows wgpulse.*.peer_metric.* in the stream",
    )?;
    let mut follower = Command::new("ip")
        .args(["netns", "exec", &bus, "python3", "-u"])
        .arg(&consumer)
        .args(["follow", "nats://127.0.0.1:4222", STREAM])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the consumer")?;
    let out = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            println!("  \x1b[32m[consumer]\x1b[0m {line}");
        }
    });
    demo.children.push(follower);

    for (g, gateway) in gateways.iter().enumerate() {
        step(&interrupted, &format!("gw-{}: both clients connect", g + 1))?;
        for (client, _, _) in &gateway.clients {
            ns_run(
                client,
                &[
                    "ping",
                    "-q",
                    "-c",
                    "2",
                    "-i",
                    "0.3",
                    &format!("10.21{}.0.1", g + 1),
                ],
            )?;
        }
    }
    step(&interrupted, "silence: every peer disconnects once its last handshake is older than disconnect_after (12 s here)")?;
    wait_seconds(&interrupted, 14)?;
    step(
        &interrupted,
        "gw-1's first client starts a new session (a new handshake: a connect)",
    )?;
    {
        let (client, cwg, _) = &gateways[0].clients[0];
        let server_key = ns_run(
            &gateways[0].ns,
            &["wg", "show", &gateways[0].wg, "public-key"],
        )?;
        let server_key = server_key.trim();
        ns_run(client, &["wg", "set", cwg, "peer", server_key, "remove"])?;
        ns_run(
            client,
            &[
                "wg",
                "set",
                cwg,
                "peer",
                server_key,
                "endpoint",
                "10.221.1.1:51820",
                "allowed-ips",
                "10.211.0.1/32",
            ],
        )?;
        ns_run(
            client,
            &["ping", "-q", "-c", "2", "-i", "0.3", "10.211.0.1"],
        )?;
    }
    step(
        &interrupted,
        "gw-3 removes its second client (a peer.delete, not shown by this consumer)",
    )?;
    ns_run(
        &gateways[2].ns,
        &[
            "wg",
            "set",
            &gateways[2].wg,
            "peer",
            &gateways[2].clients[1].2,
            "remove",
        ],
    )?;
    wait_seconds(&interrupted, 3)?;
    for (g, gateway) in gateways.iter().enumerate() {
        step(
            &interrupted,
            &format!("gw-{}: `wgpulse target list`", g + 1),
        )?;
        print!(
            "{}",
            indent(&ns_run(
                &gateway.ns,
                &[
                    agent_binary.to_str().unwrap(),
                    "target",
                    "list",
                    "--config",
                    gateway.config.to_str().unwrap()
                ]
            )?)
        );
    }
    step(&interrupted, "the stream")?;
    print!(
        "{}",
        indent(&ns_run(
            &bus,
            &[
                "python3",
                consumer.to_str().unwrap(),
                "info",
                "nats://127.0.0.1:4222",
                STREAM
            ]
        )?)
    );
    Ok(())
}
