//! Real WireGuard for tests: wireguard-go devices in namespaces, keys from `wg`,
//! `wg show dump` as WireGuard's own view, and [`WgPair`], two namespaces whose
//! devices are each other's peer.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::netns::{NetNs, Veth};
use crate::process::{output_within, ChildGuard, DEFAULT_TIMEOUT};
pub use crate::wgshow::{DumpPeer, WgDump};

/// Where wireguard-go puts its UAPI sockets; shared by all namespaces.
pub const UAPI_DIR: &str = "/var/run/wireguard";

/// How long wireguard-go may take to open its UAPI socket.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A key pair. The private key stays in this process's memory; it reaches `wg`
/// only through a 0600 temp file deleted right after use, and is never printed.
#[derive(Clone)]
pub struct WgKeys {
    private: String,
    /// The base64 public key.
    pub public: String,
}

impl std::fmt::Debug for WgKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgKeys")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl WgKeys {
    /// The base64 private key, only so tests can assert it never appears in what the
    /// agent emits. Never print it.
    pub fn private_key(&self) -> &str {
        &self.private
    }

    /// Generates a key pair with `wg genkey` and `wg pubkey`.
    pub fn generate() -> Self {
        let out = crate::process::run("wg", &["genkey"]);
        let private = String::from_utf8(out.stdout)
            .expect("wg genkey printed non-UTF-8")
            .trim()
            .to_owned();
        let mut pubkey = std::process::Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting wg pubkey: {e}"));
        pubkey
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(private.as_bytes())
            .expect("writing to wg pubkey");
        let out = pubkey.wait_with_output().expect("waiting for wg pubkey");
        assert!(
            out.status.success(),
            "wg pubkey failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            private,
            public: String::from_utf8(out.stdout)
                .expect("wg pubkey printed non-UTF-8")
                .trim()
                .to_owned(),
        }
    }

    /// Writes the private key to a fresh 0600 file, deleted when the guard drops.
    pub(crate) fn private_key_file(&self) -> TempFile {
        let path = std::env::temp_dir().join(format!("{}.key", crate::unique_name("key")));
        let mut file = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .unwrap_or_else(|e| panic!("creating key file {}: {e}", path.display()));
        let guard = TempFile(path);
        file.write_all(self.private.as_bytes())
            .unwrap_or_else(|e| panic!("writing key file {}: {e}", guard.0.display()));
        guard
    }
}

/// A file removed on drop.
pub(crate) struct TempFile(pub(crate) PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A wireguard-go device in a namespace. On drop the daemon is stopped (SIGTERM,
/// then SIGKILL) and reaped, and its UAPI socket removed.
pub struct WgDevice {
    /// Interface name (unique on the host: the UAPI socket directory is shared).
    pub name: String,
    /// UDP listen port.
    pub port: u16,
    /// The device's keys.
    pub keys: WgKeys,
    ns_name: String,
    daemon: ChildGuard,
}

impl WgDevice {
    /// Starts `wireguard-go -f <name>` in `ns` (name from `prefix`, see
    /// [`crate::unique_name`]), waits until its UAPI socket answers, sets a fresh
    /// private key and `port`, adds `tunnel_cidrs` (e.g. `10.9.0.1/24`,
    /// `fd10::1/64`; IPv6 without DAD) and brings the link up.
    pub fn start(ns: &NetNs, prefix: &str, port: u16, tunnel_cidrs: &[String]) -> Self {
        let name = crate::unique_name(prefix);
        let mut daemon = ns.spawn(&["wireguard-go", "-f", &name]);
        let socket = Path::new(UAPI_DIR).join(format!("{name}.sock"));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = daemon.try_wait() {
                panic!(
                    "wireguard-go {name} exited ({status}) before its UAPI socket answered: {}",
                    daemon.log()
                );
            }
            if socket.exists() && ns.run_ok(&["wg", "show", &name]) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not answer within {START_TIMEOUT:?}; wireguard-go said: {}",
                socket.display(),
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let device = Self {
            name,
            port,
            keys: WgKeys::generate(),
            ns_name: ns.name().to_owned(),
            daemon,
        };
        let key_file = device.keys.private_key_file();
        device.wg(&[
            "set",
            &device.name,
            "private-key",
            key_file.0.to_str().expect("UTF-8 temp dir"),
            "listen-port",
            &port.to_string(),
        ]);
        drop(key_file);
        for cidr in tunnel_cidrs {
            let mut command = vec!["ip", "addr", "add", cidr.as_str(), "dev", &device.name];
            if cidr.contains(':') {
                command.push("nodad");
            }
            ns.run(&command);
        }
        ns.run(&["ip", "link", "set", &device.name, "up"]);
        device
    }

    /// Gives the device a new key pair (its sessions end; the next packet to a peer
    /// starts a handshake under the new identity).
    pub fn set_private_key(&mut self, keys: WgKeys) {
        let key_file = keys.private_key_file();
        self.wg(&[
            "set",
            &self.name,
            "private-key",
            key_file.0.to_str().expect("UTF-8 temp dir"),
        ]);
        self.keys = keys;
    }

    /// The namespace the device is in.
    pub fn netns(&self) -> &str {
        &self.ns_name
    }

    /// The wireguard-go daemon's process id.
    pub fn pid(&self) -> u32 {
        self.daemon.id()
    }

    /// Runs `wg <args>` in the device's namespace; panics with its stderr on failure.
    pub fn wg(&self, args: &[&str]) -> std::process::Output {
        let mut command = std::process::Command::new("ip");
        command
            .args(["netns", "exec", &self.ns_name, "wg"])
            .args(args);
        let what = format!("wg {} (in netns {})", args.join(" "), self.ns_name);
        let out = output_within(command, &what, DEFAULT_TIMEOUT);
        assert!(
            out.status.success(),
            "`{what}` failed ({}): {}; wireguard-go said: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.daemon.log()
        );
        out
    }

    /// Adds a peer, or updates it: its endpoint (if given), its allowed IPs (replacing
    /// the old list; `&[]` for none) and persistent keepalive in seconds (`None`: off).
    pub fn add_peer(
        &self,
        public_key: &str,
        endpoint: Option<SocketAddr>,
        allowed_ips: &[&str],
        keepalive: Option<u16>,
    ) {
        let endpoint = endpoint.map(|e| e.to_string());
        let allowed = allowed_ips.join(",");
        let keepalive = keepalive.map_or("off".to_owned(), |k| k.to_string());
        let mut args = vec![
            "set",
            &self.name,
            "peer",
            public_key,
            "allowed-ips",
            &allowed,
        ];
        if let Some(endpoint) = &endpoint {
            args.extend(["endpoint", endpoint.as_str()]);
        }
        args.extend(["persistent-keepalive", &keepalive]);
        self.wg(&args);
    }

    /// Adds or updates a peer with one allowed-IPs entry (or a comma-separated
    /// list) and no keepalive; see [`WgDevice::add_peer`].
    pub fn set_peer(&self, public_key: &str, endpoint: Option<SocketAddr>, allowed_ips: &str) {
        self.add_peer(public_key, endpoint, &[allowed_ips], None);
    }

    /// Points an existing peer at a new endpoint (roaming).
    pub fn set_peer_endpoint(&self, public_key: &str, endpoint: SocketAddr) {
        self.wg(&[
            "set",
            &self.name,
            "peer",
            public_key,
            "endpoint",
            &endpoint.to_string(),
        ]);
    }

    /// Removes a peer (and its sessions).
    pub fn remove_peer(&self, public_key: &str) {
        self.wg(&["set", &self.name, "peer", public_key, "remove"]);
    }

    /// `wg show <dev> dump`, parsed.
    pub fn dump(&self) -> WgDump {
        let out = self.wg(&["show", &self.name, "dump"]);
        WgDump::parse(&String::from_utf8_lossy(&out.stdout))
    }

    /// The dump entry of one peer; panics if it is not configured.
    pub fn peer(&self, public_key: &str) -> DumpPeer {
        let dump = self.dump();
        dump.peer(public_key)
            .cloned()
            .unwrap_or_else(|| panic!("peer {public_key} not on {}: {dump:?}", self.name))
    }
}

impl Drop for WgDevice {
    fn drop(&mut self) {
        self.daemon.stop();
        let _ = std::fs::remove_file(Path::new(UAPI_DIR).join(format!("{}.sock", self.name)));
    }
}

/// Which IP version carries the encrypted UDP between the two namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Underlay {
    /// The veth's IPv4 addresses.
    V4,
    /// The veth's IPv6 addresses.
    V6,
}

/// How to build a [`WgPair`].
#[derive(Clone, Copy, Debug)]
pub struct WgPairOptions {
    /// Underlay the peers' endpoints use.
    pub underlay: Underlay,
    /// Listen port of A's device.
    pub port_a: u16,
    /// Listen port of B's device.
    pub port_b: u16,
    /// Persistent keepalive both sides configure for each other (`None`: off).
    pub keepalive: Option<u16>,
    /// Whether B knows A's endpoint up front; if not, B learns it from A's
    /// handshake (A must send first).
    pub b_knows_a: bool,
}

impl Default for WgPairOptions {
    fn default() -> Self {
        Self {
            underlay: Underlay::V4,
            port_a: 51821,
            port_b: 51820,
            keepalive: None,
            b_knows_a: true,
        }
    }
}

/// Two fresh namespaces `a` and `b` joined by a veth (`10.<t>.1.{1,2}/24`,
/// `fd00:<t>:1::{1,2}/64`), a wireguard-go device in each, configured as each
/// other's peer over the chosen underlay, with tunnel addresses `10.<t>.0.{1,2}/24`
/// and `fd10::{1,2}/64` and allowed IPs of the other side's two tunnel addresses.
/// Ready for `ping`; everything is removed on drop.
pub struct WgPair {
    /// A's device (dropped first: the daemons stop before their namespaces go).
    pub wg_a: WgDevice,
    /// B's device.
    pub wg_b: WgDevice,
    /// The veth between the namespaces.
    pub link: Veth,
    /// Namespace A.
    pub a: NetNs,
    /// Namespace B.
    pub b: NetNs,
    /// The underlay in use.
    pub underlay: Underlay,
    /// A's tunnel addresses.
    pub tunnel_a: (Ipv4Addr, Ipv6Addr),
    /// B's tunnel addresses.
    pub tunnel_b: (Ipv4Addr, Ipv6Addr),
}

impl WgPair {
    /// Builds a pair with default options over `underlay`.
    pub fn new(underlay: Underlay) -> Self {
        Self::with_options(WgPairOptions {
            underlay,
            ..WgPairOptions::default()
        })
    }

    /// Builds a pair as `options` say.
    pub fn with_options(options: WgPairOptions) -> Self {
        let a = NetNs::new("wpa");
        let b = NetNs::new("wpb");
        let t = crate::unique_octet();
        let link = Veth::connect(&a, &b, t, 1);
        let tunnel_a = (
            Ipv4Addr::new(10, t, 0, 1),
            Ipv6Addr::new(0xfd10, 0, 0, 0, 0, 0, 0, 1),
        );
        let tunnel_b = (
            Ipv4Addr::new(10, t, 0, 2),
            Ipv6Addr::new(0xfd10, 0, 0, 0, 0, 0, 0, 2),
        );
        let cidrs = |(v4, v6): (Ipv4Addr, Ipv6Addr)| [format!("{v4}/24"), format!("{v6}/64")];
        let wg_a = WgDevice::start(&a, "wga", options.port_a, &cidrs(tunnel_a));
        let wg_b = WgDevice::start(&b, "wgb", options.port_b, &cidrs(tunnel_b));
        let v6 = options.underlay == Underlay::V6;
        let allowed = |(v4, v6): (Ipv4Addr, Ipv6Addr)| [format!("{v4}/32"), format!("{v6}/128")];
        let allowed_b = allowed(tunnel_b);
        let allowed_a = allowed(tunnel_a);
        wg_a.add_peer(
            &wg_b.keys.public,
            Some(link.b.socket(v6, options.port_b)),
            &[&allowed_b[0], &allowed_b[1]],
            options.keepalive,
        );
        wg_b.add_peer(
            &wg_a.keys.public,
            options.b_knows_a.then(|| link.a.socket(v6, options.port_a)),
            &[&allowed_a[0], &allowed_a[1]],
            options.keepalive,
        );
        Self {
            wg_a,
            wg_b,
            link,
            a,
            b,
            underlay: options.underlay,
            tunnel_a,
            tunnel_b,
        }
    }

    /// A's WireGuard endpoint on the underlay (address and port).
    pub fn endpoint_a(&self) -> SocketAddr {
        self.link
            .a
            .socket(self.underlay == Underlay::V6, self.wg_a.port)
    }

    /// B's WireGuard endpoint on the underlay (address and port).
    pub fn endpoint_b(&self) -> SocketAddr {
        self.link
            .b
            .socket(self.underlay == Underlay::V6, self.wg_b.port)
    }

    /// A's tunnel address of the given family.
    pub fn tunnel_addr_a(&self, ipv6: bool) -> IpAddr {
        if ipv6 {
            self.tunnel_a.1.into()
        } else {
            self.tunnel_a.0.into()
        }
    }

    /// B's tunnel address of the given family.
    pub fn tunnel_addr_b(&self, ipv6: bool) -> IpAddr {
        if ipv6 {
            self.tunnel_b.1.into()
        } else {
            self.tunnel_b.0.into()
        }
    }
}
