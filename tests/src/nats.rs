//! Real `nats-server` processes with JetStream for the delivery tests: one server, or
//! a cluster of several on loopback ports inside a test's network namespace, each
//! with its own store directory (removed on drop); servers can be killed with
//! SIGKILL and started again on the same ports and store. Streams are read with the
//! `nats-py` consumer in `tests/receivers/nats_consumer.py`, not with our code.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::netns::NetNs;
use crate::process::{wait_for, ChildGuard};

/// One message of a stream as the consumer read it.
#[derive(Clone, Debug)]
pub struct StreamMessage {
    /// Stream sequence.
    pub seq: u64,
    /// Subject it was published to.
    pub subject: String,
    /// Its `Nats-Msg-Id` header.
    pub msg_id: Option<String>,
    /// When the stream stored it (Unix seconds, the server's clock).
    pub stored: f64,
    /// The event (its JSON payload).
    pub event: Value,
}

/// One server of a [`NatsCluster`].
struct Node {
    name: String,
    port: u16,
    monitor: u16,
    config: PathBuf,
    process: Option<ChildGuard>,
}

/// A JetStream server, or a cluster of them, in a namespace.
pub struct NatsCluster<'a> {
    ns: &'a NetNs,
    nodes: Vec<Node>,
    dir: PathBuf,
}

impl<'a> NatsCluster<'a> {
    /// Starts `size` servers in `ns` (client ports 4222.., cluster 6222..,
    /// monitoring 8222..; `size == 1`: a standalone server), optionally requiring
    /// `token`; waits until JetStream is ready (a meta leader elected).
    pub fn start(ns: &'a NetNs, size: usize, token: Option<&str>) -> Self {
        let dir = std::env::temp_dir().join(crate::unique_name("wgpnats"));
        std::fs::create_dir_all(&dir).unwrap();
        let routes: Vec<String> = (0..size)
            .map(|i| format!("nats-route://127.0.0.1:{}", 6222 + i))
            .collect();
        let nodes = (0..size)
            .map(|i| {
                let name = format!("n{}", i + 1);
                let port = 4222 + i as u16;
                let monitor = 8222 + i as u16;
                let store = dir.join(&name);
                let mut text = format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor}\n\
                     jetstream {{ store_dir: {store:?}, max_memory_store: 64MB, max_file_store: 1GB }}\n",
                    store = store.display().to_string()
                );
                if size > 1 {
                    text.push_str(&format!(
                        "cluster {{ name: wgpulse, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                        6222 + i,
                        routes.join(", ")
                    ));
                }
                if let Some(token) = token {
                    text.push_str(&format!("authorization {{ token: {token:?} }}\n"));
                }
                let config = dir.join(format!("{name}.conf"));
                std::fs::write(&config, text).unwrap();
                Node {
                    name,
                    port,
                    monitor,
                    config,
                    process: None,
                }
            })
            .collect();
        let mut cluster = Self { ns, nodes, dir };
        for i in 0..size {
            cluster.start_node(i);
        }
        cluster.await_ready();
        cluster
    }

    fn start_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = self.dir.join(format!("{}.log", node.name));
        let file = std::fs::File::create(&log).unwrap();
        let child = self
            .ns
            .command(&["nats-server", "-c", node.config.to_str().unwrap()])
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("starting nats-server (cargo xtask setup installs it)");
        node.process = Some(ChildGuard::with_log(
            child,
            format!("nats-server {}", node.name),
            log,
        ));
    }

    /// The client URLs of the servers (running or not).
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The URL of the server named `name` (`n1`, ...).
    pub fn url_of(&self, name: &str) -> String {
        let node = self
            .nodes
            .iter()
            .find(|n| n.name == name)
            .expect("a server of the cluster");
        format!("nats://127.0.0.1:{}", node.port)
    }

    /// The URLs as one comma-separated string (for the consumer).
    pub fn url_list(&self) -> String {
        self.urls().join(",")
    }

    /// The monitoring JSON of `path` (`/jsz`, ...) from the first running server.
    fn monitor(&self, path: &str) -> Option<Value> {
        let node = self.nodes.iter().find(|n| n.process.is_some())?;
        let out = self.ns.try_run(&[
            "python3",
            "-c",
            &format!(
                "import urllib.request,sys\ntry:\n print(urllib.request.urlopen('http://127.0.0.1:{}{path}', timeout=2).read().decode())\nexcept Exception as e:\n sys.exit(1)",
                node.monitor
            ),
        ]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// Waits until every running server answers and JetStream has a meta leader.
    pub fn await_ready(&self) {
        wait_for(
            "NATS JetStream to be ready",
            Duration::from_secs(30),
            || {
                let healthy = self
                .nodes
                .iter()
                .filter(|n| n.process.is_some())
                .all(|n| {
                    self.ns
                        .try_run(&[
                            "python3",
                            "-c",
                            &format!("import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{}/healthz', timeout=2)", n.monitor),
                        ])
                        .status
                        .success()
                });
                healthy
                    && (self.nodes.len() == 1
                        || self
                            .monitor("/jsz")
                            .is_some_and(|jsz| jsz["meta_cluster"]["leader"].is_string()))
            },
        );
    }

    /// SIGKILLs the server named `name`.
    pub fn kill(&mut self, name: &str) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.name == name)
            .expect("a server of the cluster");
        let mut process = node.process.take().expect("the server is running");
        process.signal(libc::SIGKILL);
        process.wait_timeout(Duration::from_secs(10));
    }

    /// SIGKILLs every server.
    pub fn kill_all(&mut self) {
        let names: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.process.is_some())
            .map(|n| n.name.clone())
            .collect();
        for name in names {
            self.kill(&name);
        }
    }

    /// Starts every stopped server again (same ports, same store).
    pub fn restart_stopped(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].process.is_none() {
                self.start_node(i);
            }
        }
        self.await_ready();
    }

    /// Runs the nats-py consumer with `args` after the command; its stdout.
    fn consumer(&self, command: &str, args: &[&str]) -> String {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/receivers/nats_consumer.py");
        let urls = self.url_list();
        let mut argv = vec!["python3", script, command, urls.as_str()];
        argv.extend_from_slice(args);
        let out = self.ns.run_timeout(&argv, Duration::from_secs(60));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Every message of `stream`, in stream order.
    pub fn read(&self, stream: &str) -> Vec<StreamMessage> {
        self.consumer("read", &[stream])
            .lines()
            .map(|line| {
                let v: Value = serde_json::from_str(line).unwrap();
                StreamMessage {
                    seq: v["seq"].as_u64().unwrap(),
                    subject: v["subject"].as_str().unwrap().to_owned(),
                    msg_id: v["msg_id"].as_str().map(str::to_owned),
                    stored: v["stored"].as_f64().unwrap(),
                    event: v["event"].clone(),
                }
            })
            .collect()
    }

    /// `{messages, leader, replicas}` of `stream`.
    pub fn info(&self, stream: &str) -> Value {
        serde_json::from_str(self.consumer("info", &[stream]).trim()).unwrap()
    }

    /// Creates `stream` on `subject` with `replicas`, refusing new messages beyond
    /// `max_bytes` (0: no limit).
    pub fn create_stream(&self, stream: &str, subject: &str, replicas: usize, max_bytes: u64) {
        self.consumer(
            "create",
            &[
                stream,
                subject,
                &replicas.to_string(),
                &max_bytes.to_string(),
            ],
        );
    }
}

impl Drop for NatsCluster<'_> {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.process.take();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
