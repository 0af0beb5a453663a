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
