//! Network namespaces (removed on drop), veth links between them, and moving the
//! calling thread into a namespace for as long as a guard lives.

use std::fs::File;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use nix::sched::{setns, CloneFlags};

use crate::process::{output_within, run, ChildGuard, DEFAULT_TIMEOUT};

/// A network namespace created for a test; deleted (with its links) on drop, after
/// any process still running inside it has been killed.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a namespace named `<prefix><pid>_<n>` (see [`crate::unique_name`]) and
    /// sets its loopback up.
    pub fn new(prefix: &str) -> Self {
        let name = crate::unique_name(prefix);
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name (as in `ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace within [`DEFAULT_TIMEOUT`]; panics with its
    /// stderr if it fails.
    pub fn run(&self, command: &[&str]) -> Output {
        self.run_timeout(command, DEFAULT_TIMEOUT)
    }

    /// Runs a command inside the namespace within `timeout`; panics with its stderr
    /// if it fails or times out.
    pub fn run_timeout(&self, command: &[&str], timeout: Duration) -> Output {
        let output = self.try_run_timeout(command, timeout);
        assert!(
            output.status.success(),
            "`{}` in netns {} failed ({}): {}{}",
            command.join(" "),
            self.name,
            output.status,
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout),
        );
        output
    }

    /// Runs a command inside the namespace and tells whether it succeeded.
    pub fn run_ok(&self, command: &[&str]) -> bool {
        self.try_run(command).status.success()
    }

    /// Runs a command inside the namespace and returns its output whatever its exit
    /// status (panics only if it cannot start or exceeds [`DEFAULT_TIMEOUT`]).
    pub fn try_run(&self, command: &[&str]) -> Output {
        self.try_run_timeout(command, DEFAULT_TIMEOUT)
    }

    /// [`NetNs::try_run`] with an explicit deadline.
    pub fn try_run_timeout(&self, command: &[&str], timeout: Duration) -> Output {
        let what = format!("{} (in netns {})", command.join(" "), self.name);
        output_within(self.command(command), &what, timeout)
    }

    /// A `Command` that runs `command` inside the namespace (`ip netns exec` execs
    /// it, so the child's pid is the command's own).
    pub fn command(&self, command: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(command);
        cmd
    }

    /// Spawns a long-running command inside the namespace. Its stdout and stderr go
    /// to a log file ([`ChildGuard::log`]); it is stopped and reaped on drop.
    pub fn spawn(&self, command: &[&str]) -> ChildGuard {
        let what = format!("`{}` in netns {}", command.join(" "), self.name);
        let log = std::env::temp_dir().join(format!("{}.log", crate::unique_name("log")));
        let file = File::create(&log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let child = self
            .command(command)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("duplicating the log fd"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
        ChildGuard::with_log(child, what, log)
    }

    /// Moves the calling thread (only it) into the namespace until the guard drops,
    /// e.g. to load and attach eBPF programs to the namespace's interfaces from the
    /// test process. The guard cannot leave the thread.
    pub fn enter(&self) -> NsEnterGuard {
        let original = File::open("/proc/thread-self/ns/net")
            .unwrap_or_else(|e| panic!("opening this thread's netns: {e}"));
        let path = format!("/var/run/netns/{}", self.name);
        let target = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("entering netns {}: {e}", self.name));
        NsEnterGuard {
            original,
            _not_send: PhantomData,
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // A process left inside would keep the namespace (and its devices) alive
        // after `ip netns del`; never kill ourselves though (a thread may be inside).
        let own = std::process::id().to_string();
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .stderr(Stdio::null())
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if pid != own {
                    if let Ok(pid) = pid.parse::<i32>() {
                        // SAFETY: kill(2) has no memory-safety preconditions.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
        }
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::piped())
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("ip netns del {}: {e}", self.name),
        }
    }
}

/// The names of all namespaces `ip netns list` shows.
pub fn list() -> Vec<String> {
    let out = run("ip", &["netns", "list"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Returns the calling thread to the namespace it came from on drop. Not `Send`:
/// it must drop on the thread that entered.
pub struct NsEnterGuard {
    original: File,
    _not_send: PhantomData<*const ()>,
}

impl Drop for NsEnterGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(self.original.as_fd(), CloneFlags::CLONE_NEWNET) {
            eprintln!("returning to the original netns: {e}");
        }
    }
}

/// One end of a veth link.
#[derive(Clone, Debug)]
pub struct LinkEnd {
    /// Interface name (unique on the host).
    pub name: String,
    /// The namespace the end is in.
    pub netns: String,
    /// IPv4 address on it (prefix length 24).
    pub v4: Ipv4Addr,
    /// IPv6 ULA address on it (prefix length 64, added without DAD).
    pub v6: Ipv6Addr,
}

impl LinkEnd {
    /// The end's IPv4 or IPv6 address.
    pub fn addr(&self, ipv6: bool) -> IpAddr {
        if ipv6 {
            IpAddr::V6(self.v6)
        } else {
            IpAddr::V4(self.v4)
        }
    }

    /// The end's IPv4 or IPv6 address with a port.
    pub fn socket(&self, ipv6: bool, port: u16) -> SocketAddr {
        SocketAddr::new(self.addr(ipv6), port)
    }
}

/// A veth pair between two namespaces with IPv4 and IPv6 addresses on both ends,
/// both ends up. It goes away with either namespace.
pub struct Veth {
    /// The end in the first namespace (`.1` / `::1`).
    pub a: LinkEnd,
    /// The end in the second namespace (`.2` / `::2`).
    pub b: LinkEnd,
}

impl Veth {
    /// Connects `ns_a` and `ns_b` with `10.<block>.<sub>.{1,2}/24` and
    /// `fd00:<block>:<sub>::{1,2}/64` (block and sub written as hex groups in IPv6).
    /// The addresses exist only in these two namespaces.
    pub fn connect(ns_a: &NetNs, ns_b: &NetNs, block: u8, sub: u8) -> Self {
        let a_name = crate::unique_name("va");
        let b_name = crate::unique_name("vb");
        run(
            "ip",
            &[
                "link",
                "add",
                &a_name,
                "netns",
                ns_a.name(),
                "type",
                "veth",
                "peer",
                "name",
                &b_name,
                "netns",
                ns_b.name(),
            ],
        );
        let v6 = |host: u16| Ipv6Addr::new(0xfd00, block.into(), sub.into(), 0, 0, 0, 0, host);
        let a = LinkEnd {
            name: a_name,
            netns: ns_a.name().to_owned(),
            v4: Ipv4Addr::new(10, block, sub, 1),
            v6: v6(1),
        };
        let b = LinkEnd {
            name: b_name,
            netns: ns_b.name().to_owned(),
            v4: Ipv4Addr::new(10, block, sub, 2),
            v6: v6(2),
        };
        for (ns, end) in [(ns_a, &a), (ns_b, &b)] {
            ns.run(&[
                "ip",
                "-4",
                "addr",
                "add",
                &format!("{}/24", end.v4),
                "dev",
                &end.name,
            ]);
            ns.run(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{}/64", end.v6),
                "dev",
                &end.name,
                "nodad",
            ]);
            ns.run(&["ip", "link", "set", &end.name, "up"]);
        }
        Self { a, b }
    }
}
