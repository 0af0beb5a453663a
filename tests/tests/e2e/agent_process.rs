//! `wgpulse run` as a process in a namespace with wireguard-go: it discovers the
//! device over UAPI, attaches to the underlay by default selection, reports the
//! peer's connect event, saves its state, and on SIGTERM exits 0 leaving none of its
//! programs (and so none of its links) in the kernel.

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use wgpulse_tests::netns::{NetNs, Veth};
use wgpulse_tests::process::{run, wait_for, ChildGuard};
use wgpulse_tests::wireguard::WgDevice;
use wgpulse_tests::{require_root_and_tools, unique_octet};

/// The agent binary built by `cargo xtask test` (debug profile).
fn agent_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let binary = exe.parent().unwrap().parent().unwrap().join("wgpulse");
    assert!(
        binary.exists(),
        "{} missing: build it first (`cargo build -p wgpulse`; `cargo xtask test` does)",
        binary.display()
    );
    binary
}

/// Ids of loaded BPF programs whose name starts with `wgpulse_`.
fn wgpulse_programs() -> BTreeSet<u32> {
    let out = run("bpftool", &["prog", "list"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" name wgpulse_"))
        .filter_map(|l| l.split(':').next()?.trim().parse().ok())
        .collect()
}

/// Waits for a log line containing `needle`.
fn expect_line(lines: &mpsc::Receiver<String>, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(_) => panic!("no agent log line containing {needle:?} within {timeout:?}"),
        }
    }
}

#[test]
fn run_discovers_attaches_reports_and_detaches_on_sigterm() {
    require_root_and_tools();
    let binary = agent_binary();
    let a = NetNs::new("apa");
    let b = NetNs::new("apb");
    let block = unique_octet();
    let link = Veth::connect(&a, &b, block, 7);
    let port_b = 45000 + (std::process::id() % 1000) as u16;
    let wg_a = WgDevice::start(&a, "wpa", port_b + 1000, &[format!("10.{block}.201.1/24")]);
    let wg_b = WgDevice::start(&b, "wpb", port_b, &[format!("10.{block}.201.2/24")]);
    wg_a.set_peer(
        &wg_b.keys.public,
        Some(SocketAddr::new(IpAddr::V4(link.b.v4), wg_b.port)),
        &format!("10.{block}.201.2/32"),
    );
    wg_b.set_peer(&wg_a.keys.public, None, &format!("10.{block}.201.1/32"));

    let before = wgpulse_programs();
    let state = std::env::temp_dir().join(wgpulse_tests::unique_name("state"));
    let mut child = b
        .command(&[
            binary.to_str().unwrap(),
            "run",
            "--refresh-interval",
            "1s",
            "--state-dir",
            state.to_str().unwrap(),
            "--log-level",
            "info",
        ])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting wgpulse run");
    let stderr = child.stderr.take().unwrap();
    let mut agent = ChildGuard::new(child, "wgpulse run");
    let (send, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[agent] {line}");
            let _ = send.send(line);
        }
    });

    let devices = expect_line(&lines, "WireGuard devices", Duration::from_secs(30));
    assert!(devices.contains(&wg_b.name), "{devices}");
    assert!(devices.contains(&port_b.to_string()), "{devices}");
    assert!(
        !devices.contains(&wg_a.name),
        "a device of another namespace was reported: {devices}"
    );
    let attached = expect_line(&lines, "datapath attached", Duration::from_secs(10));
    assert!(attached.contains(&link.b.name), "{attached}");

    a.run(&[
        "ping",
        "-q",
        "-c",
        "2",
        "-i",
        "0.2",
        &format!("10.{block}.201.2"),
    ]);
    let connect = expect_line(&lines, "event=peer_metric.connect", Duration::from_secs(5));
    assert!(connect.contains(&wg_a.keys.public), "{connect}");
    let ours: BTreeSet<u32> = wgpulse_programs().difference(&before).copied().collect();
    assert!(
        !ours.is_empty(),
        "the agent's programs are not in the kernel"
    );
    // jemalloc runs with its options (main.rs): one background thread that hands
    // freed pages back to the kernel even while the agent is idle.
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", agent.id()))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect();
    assert_eq!(
        threads.iter().filter(|t| *t == "jemalloc_bg_thd").count(),
        1,
        "{threads:?}"
    );

    agent.signal(libc::SIGTERM);
    let status = agent.wait_timeout(Duration::from_secs(15));
    assert!(status.success(), "wgpulse run exited with {status}");
    expect_line(&lines, "datapath detached", Duration::from_secs(1));
    // Programs are freed once nothing (fd or link) references them.
    wait_for(
        "the agent's programs to leave the kernel",
        Duration::from_secs(10),
        || wgpulse_programs().is_disjoint(&ours),
    );
    // The state survives the process: the peer is saved as connected.
    let saved =
        std::fs::read_to_string(state.join("peers.json")).expect("the agent saved its state");
    let saved: serde_json::Value = serde_json::from_str(&saved).unwrap();
    let peer = saved["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["key"]["public_key"] == wg_a.keys.public.as_str())
        .expect("the peer is in the saved state");
    assert_eq!(peer["connected"], true, "{peer}");
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn without_privileges_it_says_which_capability_is_missing_once_and_fails() {
    require_root_and_tools();
    let ns = NetNs::new("wgnp");
    let state = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        state.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let binary = agent_binary();
    let out = ns.try_run(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        binary.to_str().unwrap(),
        "run",
        "--state-dir",
        state.path().to_str().unwrap(),
        "--metrics-listen",
        "",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let error = stderr
        .lines()
        .find(|l| l.starts_with("wgpulse: "))
        .unwrap_or_else(|| panic!("no error line in {stderr}"));
    assert!(
        error.contains("missing the capabilities CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN"),
        "{error}"
    );
    assert!(error.contains("run as root"), "{error}");
    assert!(
        error.matches("Operation not permitted").count() <= 1,
        "the cause once: {error}"
    );
    assert!(!error.contains("failed to create map"), "{error}");
}
