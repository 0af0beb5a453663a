//! Traffic generators with deadlines: `ping` and `iperf3` between namespaces. A hung
//! tool fails the test (it is killed) instead of hanging CI.

use std::net::IpAddr;
use std::process::Output;
use std::time::Duration;

use crate::netns::NetNs;
use crate::process::{wait_for, ChildGuard};

/// Pings `addr` from `ns` `count` times, 0.2 s apart; panics with ping's output
/// unless every reply came back. ping's own deadline (`-w`) bounds the run.
pub fn ping(ns: &NetNs, addr: IpAddr, count: u32) -> Output {
    let deadline = (count / 5 + 10).to_string();
    let count = count.to_string();
    let addr = addr.to_string();
    ns.run(&[
        "ping", "-q", "-n", "-c", &count, "-i", "0.2", "-W", "2", "-w", &deadline, &addr,
    ])
}

/// An iperf3 server in a namespace, stopped on drop.
pub struct Iperf3Server {
    /// The address it listens on.
    pub addr: IpAddr,
    /// The TCP port it listens on.
    pub port: u16,
    _child: ChildGuard,
}

impl Iperf3Server {
    /// Starts `iperf3 -s` in `ns` bound to `addr`:`port` and returns once it listens.
    pub fn start(ns: &NetNs, addr: IpAddr, port: u16) -> Self {
        let port_text = port.to_string();
        let mut child = ns.spawn(&["iperf3", "-s", "-B", &addr.to_string(), "-p", &port_text]);
        wait_for(
            &format!("iperf3 server on {addr} port {port}"),
            Duration::from_secs(10),
            || {
                if let Some(status) = child.try_wait() {
                    panic!("iperf3 server exited ({status}): {}", child.log());
                }
                let out = ns.try_run(&["ss", "-Hltn", &format!("sport = :{port}")]);
                !out.stdout.is_empty()
            },
        );
        Self {
            addr,
            port,
            _child: child,
        }
    }
}

/// How much an iperf3 client sends.
#[derive(Clone, Copy, Debug)]
pub enum Amount {
    /// For this many seconds (`-t`).
    Seconds(u32),
    /// This many bytes (`-n`).
    Bytes(u64),
}

/// Runs an iperf3 client in `ns` against `server` (TCP), `reverse` for the server
/// to send (`-R`), at most `rate` bits per second if given (`-b`). Killed after
/// `timeout`; panics with its output on failure. Returns the `-J` JSON report.
pub fn iperf3_client(
    ns: &NetNs,
    server: &Iperf3Server,
    amount: Amount,
    reverse: bool,
    rate: Option<&str>,
    timeout: Duration,
) -> Output {
    let (addr, port) = (server.addr.to_string(), server.port.to_string());
    let amount_args = match amount {
        Amount::Seconds(s) => ["-t".to_owned(), s.to_string()],
        Amount::Bytes(b) => ["-n".to_owned(), b.to_string()],
    };
    let mut args = vec![
        "iperf3",
        "-J",
        "-c",
        &addr,
        "-p",
        &port,
        &amount_args[0],
        &amount_args[1],
    ];
    if let Some(rate) = rate {
        args.extend(["-b", rate]);
    }
    if reverse {
        args.push("-R");
    }
    ns.run_timeout(&args, timeout)
}
