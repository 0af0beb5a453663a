//! Network namespaces (removed on drop), veth links between them, and entering a
//! namespace from the calling thread.

use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::process::{Command, Output, Stdio};

use nix::sched::{setns, CloneFlags};

use crate::process::{run, try_run, ChildGuard};

/// A network namespace created for a test; deleted (with its links) on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a namespace named from `prefix` and sets its loopback up.
    pub fn new(prefix: &str) -> Self {
        let name = crate::unique_name(prefix);
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace; panics with its stderr on failure.
    pub fn run(&self, command: &[&str]) -> Output {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(command);
        run("ip", &args)
    }

    /// Runs a command inside the namespace, whatever its exit status.
    pub fn try_run(&self, command: &[&str]) -> Output {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(command);
        try_run("ip", &args)
    }

    /// A `Command` that runs `command` inside the namespace.
    pub fn command(&self, command: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(command);
        cmd
    }

    /// Spawns a long-running command inside the namespace, killed on drop.
    pub fn spawn(&self, command: &[&str]) -> ChildGuard {
        let child = self
            .command(command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {command:?} in {}: {e}", self.name));
        ChildGuard::new(child, format!("{command:?} in {}", self.name))
    }

    /// Moves the calling thread into the namespace until the guard drops.
    pub fn enter(&self) -> NsEnterGuard {
        let original = File::open("/proc/thread-self/ns/net").expect("opening our netns");
        let target = File::open(format!("/var/run/netns/{}", self.name))
            .unwrap_or_else(|e| panic!("opening netns {}: {e}", self.name));
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("entering netns {}: {e}", self.name));
        NsEnterGuard { original }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Returns the calling thread to its original namespace on drop.
pub struct NsEnterGuard {
    original: File,
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
    /// Interface name.
    pub name: String,
    /// IPv4 address on it.
    pub v4: Ipv4Addr,
    /// IPv6 address on it.
    pub v6: Ipv6Addr,
}

/// A veth pair between two namespaces with IPv4 and IPv6 addresses on both ends.
pub struct Veth {
    /// The end in the first namespace.
    pub a: LinkEnd,
    /// The end in the second namespace.
    pub b: LinkEnd,
}

impl Veth {
    /// Connects `ns_a` and `ns_b` with `10.<block>.<sub>.{1,2}/24` and
    /// `fd00:<block>:<sub>::{1,2}/64` (addresses exist only in these namespaces).
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
        let a = LinkEnd {
            name: a_name,
            v4: Ipv4Addr::new(10, block, sub, 1),
            v6: format!("fd00:{block}:{sub}::1").parse().unwrap(),
        };
        let b = LinkEnd {
            name: b_name,
            v4: Ipv4Addr::new(10, block, sub, 2),
            v6: format!("fd00:{block}:{sub}::2").parse().unwrap(),
        };
        for (ns, end) in [(ns_a, &a), (ns_b, &b)] {
            ns.run(&[
                "ip",
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
