//! tshark captures: the independent oracle for what crossed the wire.
//!
//! tshark says "Capturing on" before the capture is live and loses packets still in
//! the kernel's buffer when it is interrupted, so a capture is bracketed by probe
//! datagrams (to the discard port, 9) sent across the link: it is live once the
//! first probe is seen, and complete once the last one is. Lines are read live
//! (`-l -T fields`); probes are left out of the result.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::netns::NetNs;
use crate::process::ChildGuard;

/// The port probe datagrams go to (discard).
const PROBE_PORT: u16 = 9;

/// A running capture on one interface of a namespace.
pub struct Capture {
    child: ChildGuard,
    lines: Arc<Mutex<Vec<String>>>,
    probe_from: String,
    probe_to: IpAddr,
    probes_sent: u32,
}

/// One captured UDP datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// UDP payload length.
    pub payload: u64,
}

/// Packets and payload bytes per remote endpoint and direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Datagrams.
    pub packets: u64,
    /// UDP payload bytes.
    pub bytes: u64,
}

impl Capture {
    /// Starts tshark in `ns` on `iface` for UDP datagrams to or from `port`, and
    /// returns once it is live. Probes are sent from namespace `probe_from` to
    /// `probe_to` (an address of `iface`) so that they cross the captured link.
    pub fn start(ns: &NetNs, iface: &str, port: u16, probe_from: &NetNs, probe_to: IpAddr) -> Self {
        let filter = format!("udp port {port} or udp dst port {PROBE_PORT}");
        let mut child = ns
            .command(&[
                "tshark",
                "-l",
                "-n",
                "-B",
                "64",
                "-i",
                iface,
                "-f",
                &filter,
                "-T",
                "fields",
                "-E",
                "separator=,",
                "-e",
                "ip.src",
                "-e",
                "ipv6.src",
                "-e",
                "udp.srcport",
                "-e",
                "ip.dst",
                "-e",
                "ipv6.dst",
                "-e",
                "udp.dstport",
                "-e",
                "udp.length",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting tshark");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut capture = Self {
            child: ChildGuard::new(child, "tshark"),
            lines,
            probe_from: probe_from.name().to_owned(),
            probe_to,
            probes_sent: 0,
        };
        capture.probe_until_seen(Duration::from_secs(30));
        capture
    }

    fn probes_seen(&self) -> u32 {
        let suffix = format!(",{PROBE_PORT},");
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(&suffix))
            .count() as u32
    }

    /// Sends probes until one sent now has been captured.
    fn probe_until_seen(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let target = self.probes_seen() + 1;
        loop {
            let script = format!(
                "import socket\ns=socket.socket(socket.AF_INET6 if ':' in '{to}' else socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'probe',('{to}',{PROBE_PORT}))",
                to = self.probe_to
            );
            let _ = std::process::Command::new("ip")
                .args(["netns", "exec", &self.probe_from, "python3", "-c", &script])
                .status();
            self.probes_sent += 1;
            let sent_at = Instant::now();
            while sent_at.elapsed() < Duration::from_millis(500) {
                if self.probes_seen() >= target {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(
                Instant::now() < deadline,
                "tshark did not capture a probe within {timeout:?}"
            );
        }
    }

    /// Waits until a final probe is captured (everything before it was read), stops
    /// tshark and returns every datagram of the port, probes left out.
    pub fn stop(mut self) -> Vec<Datagram> {
        self.probe_until_seen(Duration::from_secs(30));
        self.child.signal(libc::SIGKILL);
        let lines = self.lines.lock().unwrap().clone();
        lines
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| parse_line(l))
            .filter(|d| d.dst.port() != PROBE_PORT)
            .collect()
    }
}

fn parse_line(line: &str) -> Datagram {
    let f: Vec<&str> = line.split(',').collect();
    assert_eq!(f.len(), 7, "unexpected tshark line {line:?}");
    let ip = |v4: &str, v6: &str| -> IpAddr {
        let text = if v4.is_empty() { v6 } else { v4 };
        text.parse()
            .unwrap_or_else(|_| panic!("bad address in {line:?}"))
    };
    let src = SocketAddr::new(ip(f[0], f[1]), f[2].parse().unwrap());
    let dst = SocketAddr::new(ip(f[3], f[4]), f[5].parse().unwrap());
    let udp_length: u64 = f[6].parse().unwrap();
    Datagram {
        src,
        dst,
        payload: udp_length - 8,
    }
}

/// Sums datagrams to and from `local_port` per remote endpoint: (received, sent).
pub fn per_endpoint(
    datagrams: &[Datagram],
    local_port: u16,
) -> HashMap<SocketAddr, (Totals, Totals)> {
    let mut out: HashMap<SocketAddr, (Totals, Totals)> = HashMap::new();
    for d in datagrams {
        if d.dst.port() == local_port {
            let entry = &mut out.entry(d.src).or_default().0;
            entry.packets += 1;
            entry.bytes += d.payload;
        } else if d.src.port() == local_port {
            let entry = &mut out.entry(d.dst).or_default().1;
            entry.packets += 1;
            entry.bytes += d.payload;
        }
    }
    out
}
