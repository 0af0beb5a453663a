//! Real WireGuard for tests: wireguard-go devices in namespaces, keys from `wg`, and
//! `wg show dump` as WireGuard's own view of each peer.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::netns::NetNs;
use crate::process::{run, wait_for, ChildGuard};

/// A key pair; the private key stays in memory and reaches `wg` through a 0600 temp file.
#[derive(Clone)]
pub struct WgKeys {
    private: String,
    /// The base64 public key.
    pub public: String,
}

impl WgKeys {
    /// Generates a key pair with `wg genkey` / `wg pubkey`.
    pub fn generate() -> Self {
        let private = String::from_utf8(run("wg", &["genkey"]).stdout)
            .unwrap()
            .trim()
            .to_owned();
        let mut pubkey = std::process::Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("wg pubkey");
        pubkey
            .stdin
            .take()
            .unwrap()
            .write_all(private.as_bytes())
            .unwrap();
        let out = pubkey.wait_with_output().unwrap();
        Self {
            private,
            public: String::from_utf8(out.stdout).unwrap().trim().to_owned(),
        }
    }
}

/// A wireguard-go device in a namespace; the daemon is killed and its socket
/// removed on drop.
pub struct WgDevice {
    /// Interface name (unique on the host).
    pub name: String,
    /// UDP listen port.
    pub port: u16,
    /// The device's keys.
    pub keys: WgKeys,
    ns_name: String,
    daemon: Option<ChildGuard>,
}

/// One peer in `wg show <dev> dump`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpPeer {
    /// Base64 public key.
    pub public_key: String,
    /// Endpoint, if any.
    pub endpoint: Option<SocketAddr>,
    /// Latest handshake, Unix seconds (0: never).
    pub latest_handshake: u64,
    /// Bytes WireGuard accepted from the peer.
    pub rx_bytes: u64,
    /// Bytes WireGuard sent to the peer.
    pub tx_bytes: u64,
}

impl WgDevice {
    /// Starts `wireguard-go -f` in `ns`, waits for its UAPI socket, sets the key and
    /// port, adds `tunnel_cidrs` (e.g. `10.9.0.1/24`) and brings the link up.
    pub fn start(ns: &NetNs, prefix: &str, port: u16, tunnel_cidrs: &[String]) -> Self {
        let name = crate::unique_name(prefix);
        let daemon = ns.spawn(&["wireguard-go", "-f", &name]);
        let socket = PathBuf::from(format!("/var/run/wireguard/{name}.sock"));
        wait_for(
            &format!("{} to listen", socket.display()),
            Duration::from_secs(10),
            || socket.exists() && ns.try_run(&["wg", "show", &name]).status.success(),
        );
        let device = Self {
            name,
            port,
            keys: WgKeys::generate(),
            ns_name: ns.name().to_owned(),
            daemon: Some(daemon),
        };
        let key_file = device.write_private_key();
        ns.run(&[
            "wg",
            "set",
            &device.name,
            "private-key",
            key_file.to_str().unwrap(),
            "listen-port",
            &port.to_string(),
        ]);
        let _ = std::fs::remove_file(&key_file);
        for cidr in tunnel_cidrs {
            let family = if cidr.contains(':') { "-6" } else { "-4" };
            ns.run(&["ip", family, "addr", "add", cidr, "dev", &device.name]);
        }
        ns.run(&["ip", "link", "set", &device.name, "up"]);
        device
    }

    fn write_private_key(&self) -> PathBuf {
        let path = std::env::temp_dir().join(format!("{}.key", self.name));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .expect("writing the key file");
        file.write_all(self.keys.private.as_bytes()).unwrap();
        path
    }

    fn wg(&self, args: &[&str]) -> std::process::Output {
        let mut command = vec!["ip", "netns", "exec", &self.ns_name, "wg"];
        command.extend_from_slice(args);
        run(command[0], &command[1..])
    }

    /// Adds (or updates) a peer.
    pub fn set_peer(&self, public_key: &str, endpoint: Option<SocketAddr>, allowed_ips: &str) {
        let endpoint = endpoint.map(|e| e.to_string());
        let mut args = vec![
            "set",
            &self.name,
            "peer",
            public_key,
            "allowed-ips",
            allowed_ips,
        ];
        if let Some(endpoint) = &endpoint {
            args.extend(["endpoint", endpoint.as_str()]);
        }
        self.wg(&args);
    }

    /// Removes a peer (its sessions with it).
    pub fn remove_peer(&self, public_key: &str) {
        self.wg(&["set", &self.name, "peer", public_key, "remove"]);
    }

    /// `wg show <dev> dump`, peers only.
    pub fn dump(&self) -> Vec<DumpPeer> {
        let out = self.wg(&["show", &self.name, "dump"]);
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .skip(1)
            .map(|line| {
                let f: Vec<&str> = line.split('\t').collect();
                assert!(f.len() >= 8, "unexpected dump line {line:?}");
                DumpPeer {
                    public_key: f[0].to_owned(),
                    endpoint: f[2].parse().ok(),
                    latest_handshake: f[4].parse().unwrap(),
                    rx_bytes: f[5].parse().unwrap(),
                    tx_bytes: f[6].parse().unwrap(),
                }
            })
            .collect()
    }

    /// The dump entry of one peer.
    pub fn peer(&self, public_key: &str) -> DumpPeer {
        self.dump()
            .into_iter()
            .find(|p| p.public_key == public_key)
            .unwrap_or_else(|| panic!("peer {public_key} not on {}", self.name))
    }
}

impl Drop for WgDevice {
    fn drop(&mut self) {
        drop(self.daemon.take());
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.name));
    }
}
