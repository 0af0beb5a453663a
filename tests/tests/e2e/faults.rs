//! `wgpulse run` under faults of its own machine: the state directory's disk fills
//! up (events are delivered from memory meanwhile, `/readyz` says why it is not
//! ready, the log says so once, and the state is saved as soon as space returns,
//! with no temporary file left); SIGHUP re-reads what can be re-read and never stops
//! the agent.

use std::time::Duration;

use wgpulse_tests::agent::{http, AgentProcess};
use wgpulse_tests::process::wait_for;
use wgpulse_tests::receiver::Receiver;
use wgpulse_tests::tmpfs::Tmpfs;
use wgpulse_tests::wireguard::{Underlay, WgPair};
use wgpulse_tests::{require_root_and_tools, traffic};

const AGENT: &str = "http://127.0.0.1:9586";

#[test]
fn a_full_disk_delays_nothing_is_said_once_and_heals_without_a_peer_change() {
    require_root_and_tools();
    let pair = WgPair::new(Underlay::V4);
    let receiver = {
        let _inside = pair.b.enter();
        Receiver::start()
    };
    let tmpfs = Tmpfs::mount("4m");
    let state = tmpfs.path().join("state");
    let config = tmpfs.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\ninterfaces = [{:?}]\ndevices = [{:?}]\nrefresh_interval = \"500ms\"\ndrain_interval = \"200ms\"\n[[webhooks]]\nname = \"hook\"\nurl = \"{}\"\nevents = [\"peer_metric.*\"]\n",
            state.display().to_string(),
            pair.link.b.name,
            pair.wg_b.name,
            receiver.url()
        ),
    )
    .unwrap();
    let agent = AgentProcess::start(&pair.b, &config);
    agent.await_line("serving /metrics", Duration::from_secs(30));
    let ready = || http(&pair.b, "GET", &format!("{AGENT}/readyz"), None);
    wait_for("the agent to be ready", Duration::from_secs(30), || {
        ready().0 == 200
    });

    tmpfs.fill();
    traffic::ping(&pair.a, pair.tunnel_addr_b(false), 2);
    // The connect arrives although neither the outbox nor the state can be written.
    wait_for("the connect", Duration::from_secs(15), || {
        receiver
            .requests()
            .iter()
            .any(|r| r.json()["event"] == "connect")
    });
    wait_for(
        "readyz to say why it is not ready",
        Duration::from_secs(15),
        || {
            let (status, body) = ready();
            status == 503 && (body.contains("state directory") || body.contains("outbox"))
        },
    );
    // Several seconds of a full disk: the failure is logged once, not every second.
    let before = agent.log().len();
    std::thread::sleep(Duration::from_secs(4));
    assert!(agent.log().len() >= before);
    assert_eq!(agent.count("outbox reopened"), 0, "{}", agent.log());
    assert!(
        agent.count("holding events in memory") <= 1,
        "{}",
        agent.log()
    );
    assert!(agent.count("saving peer state") <= 1, "{}", agent.log());

    // Space returns: without any further peer change, the state is saved and the
    // agent is ready again; no temporary file is left behind.
    tmpfs.free();
    wait_for("readyz to recover", Duration::from_secs(40), || {
        ready().0 == 200
    });
    assert!(state.join("peers.json").exists());
    assert!(
        !state.join("peers.json.tmp").exists(),
        "a temporary file was left"
    );
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("peers.json")).unwrap()).unwrap();
    assert!(
        saved["peers"][0]["connected"].as_bool().unwrap_or(false)
            || saved.to_string().contains(&pair.wg_a.keys.public),
        "the saved state knows the connected peer"
    );
    agent.kill();
}

/// Verifies a Standard Webhooks request with the reference library (PyPI
/// `standardwebhooks`); true if `secret` signed it.
fn standard_webhooks_verifies(secret: &str, request: &wgpulse_tests::receiver::Received) -> bool {
    let script = r#"
import json, sys
from standardwebhooks import Webhook
secret, headers, body = sys.argv[1], json.loads(sys.argv[2]), sys.stdin.buffer.read()
try:
    Webhook(secret).verify(body, headers)
    print("valid")
except Exception as e:
    print("invalid", e)
"#;
    let headers: serde_json::Map<String, serde_json::Value> = request
        .headers
        .iter()
        .map(|(n, v)| (n.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            secret,
            &serde_json::Value::Object(headers).to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&request.body)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "valid"
}

#[test]
fn sighup_rereads_the_log_level_names_and_secrets_and_never_stops_the_agent() {
    require_root_and_tools();
    let pair = WgPair::new(Underlay::V4);
    let receiver = {
        let _inside = pair.b.enter();
        Receiver::start()
    };
    let dir = std::env::temp_dir().join(wgpulse_tests::unique_name("wgph"));
    std::fs::create_dir_all(&dir).unwrap();
    let first_secret = "whsec_Zmlyc3Qtc2VjcmV0LWZpcnN0LXNlY3JldA==";
    let second_secret = "whsec_c2Vjb25kLXNlY3JldC1zZWNvbmQtc2VjcmV0";
    std::fs::write(dir.join("secret"), format!("{first_secret}\n")).unwrap();
    std::fs::write(dir.join("auth"), "Bearer first-0123456789abcdef\n").unwrap();
    let peer = pair.wg_a.keys.public.clone();
    let names = |name: &str| {
        std::fs::write(
            dir.join("peers.toml"),
            format!("[peers.\"{peer}\"]\nname = \"{name}\"\n"),
        )
        .unwrap()
    };
    names("first-name");
    let config = dir.join("config.toml");
    let write_config = |log_level: &str| {
        std::fs::write(
            &config,
            format!(
                "state_dir = {state:?}\ninterfaces = [{iface:?}]\ndevices = [{dev:?}]\nlog_level = {log_level:?}\npeers_file = {peers:?}\nrefresh_interval = \"500ms\"\n[[webhooks]]\nname = \"hook\"\nurl = \"{url}\"\nevents = [\"test.*\"]\nsigning_secret_file = {secret:?}\nauthorization_file = {auth:?}\n",
                state = dir.display().to_string(),
                iface = pair.link.b.name,
                dev = pair.wg_b.name,
                peers = dir.join("peers.toml").display().to_string(),
                url = receiver.url(),
                secret = dir.join("secret").display().to_string(),
                auth = dir.join("auth").display().to_string(),
            ),
        )
        .unwrap()
    };
    write_config("info");
    let mut agent = AgentProcess::start(&pair.b, &config);
    agent.await_line("serving /metrics", Duration::from_secs(30));
    agent.await_line("peer names loaded", Duration::from_secs(30));
    let peer_name = || {
        let (_, body) = http(&pair.b, "GET", &format!("{AGENT}/api/v1/peers"), None);
        let peers: serde_json::Value = serde_json::from_str(&body).unwrap();
        peers["peers"][0]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(peer_name(), "first-name");
    let (status, _) = http(
        &pair.b,
        "POST",
        &format!("{AGENT}/api/v1/webhooks/hook/test"),
        None,
    );
    assert_eq!(status, 200);
    let before = receiver.requests();
    assert!(standard_webhooks_verifies(first_secret, &before[0]));
    assert_eq!(
        before[0].header("authorization"),
        Some("Bearer first-0123456789abcdef")
    );
    assert_eq!(agent.count("DEBUG"), 0);

    // New secrets, names and log level; then SIGHUP.
    std::fs::write(dir.join("secret"), format!("{second_secret}\n")).unwrap();
    std::fs::write(dir.join("auth"), "Bearer second-0123456789abcdef\n").unwrap();
    names("second-name");
    write_config("info,wgpulse=debug");
    agent.child.signal(libc::SIGHUP);
    agent.await_line("SIGHUP: re-read", Duration::from_secs(10));
    assert!(
        agent.child.try_wait().is_none(),
        "SIGHUP must not stop the agent"
    );
    let line = agent
        .lines
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("SIGHUP: re-read"))
        .cloned()
        .unwrap();
    for what in [
        "log_level",
        "webhook hook: authorization",
        "webhook hook: signing secrets",
    ] {
        assert!(line.contains(what), "{what} not in {line}");
    }
    assert!(!line.contains("second-0123456789abcdef") && !line.contains(second_secret));
    wait_for("the new name", Duration::from_secs(10), || {
        peer_name() == "second-name"
    });
    let (status, _) = http(
        &pair.b,
        "POST",
        &format!("{AGENT}/api/v1/webhooks/hook/test"),
        None,
    );
    assert_eq!(status, 200);
    let after = receiver.requests();
    let last = after.last().unwrap();
    assert!(
        standard_webhooks_verifies(second_secret, last),
        "signed with the new secret"
    );
    assert!(
        !standard_webhooks_verifies(first_secret, last),
        "not with the old one"
    );
    assert_eq!(
        last.header("authorization"),
        Some("Bearer second-0123456789abcdef")
    );
    agent.await_line("DEBUG", Duration::from_secs(10));

    // A broken file changes nothing and stops nothing.
    std::fs::write(&config, "max_peers = \"lots\"\n").unwrap();
    agent.child.signal(libc::SIGHUP);
    agent.await_line("not applied, it has problems", Duration::from_secs(10));
    assert!(agent.child.try_wait().is_none());
    assert_eq!(peer_name(), "second-name");
    agent.kill();
    let _ = std::fs::remove_dir_all(&dir);
}
