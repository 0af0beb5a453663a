//! Crash safety of delivery with the real agent process: events queue while the
//! receiver is down, the agent is killed with SIGKILL (once while retrying, once
//! mid-delivery to a slow receiver) and restarted; every event arrives at least once,
//! a duplicate always carries the same id and body, and each peer's events arrive in
//! order.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use wgpulse_tests::agent::{http, AgentProcess};
use wgpulse_tests::process::wait_for;
use wgpulse_tests::receiver::{Receiver, Reply};
use wgpulse_tests::wireguard::{Underlay, WgKeys, WgPair};
use wgpulse_tests::{require_root_and_tools, unique_name};

const PEERS: usize = 20;

/// `id=<uuid>` of every event log line.
fn event_ids(lines: &[String]) -> BTreeSet<String> {
    lines
        .iter()
        .filter(|l| l.contains(" event event="))
        .filter_map(|l| l.split(" id=").nth(1))
        .map(|id| id.split_whitespace().next().unwrap().to_owned())
        .collect()
}

#[test]
fn sigkill_and_restart_lose_nothing_and_keep_per_peer_order() {
    require_root_and_tools();
    let pair = WgPair::new(Underlay::V4);
    let state: PathBuf = std::env::temp_dir().join(unique_name("wgpc"));
    // The receiver lives on B's loopback, where the agent runs (sockets stay in the
    // namespace they were created in).
    let port = {
        let _inside = pair.b.enter();
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let config = state.with_extension("toml");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        &config,
        format!(
            "state_dir = {state:?}\ninterfaces = [{iface:?}]\ndevices = [{dev:?}]\nrefresh_interval = \"500ms\"\n\
             [[webhooks]]\nname = \"crashy\"\nurl = \"http://{port}/hook\"\nconcurrency = 4\n\
             [webhooks.retry]\ninitial_backoff = \"100ms\"\nmax_backoff = \"300ms\"\n",
            state = state.display().to_string(),
            iface = pair.link.b.name,
            dev = pair.wg_b.name,
        ),
    )
    .unwrap();

    // Receiver down: the events of PEERS creates and PEERS updates queue up.
    let agent = AgentProcess::start(&pair.b, &config);
    wait_for("the first device read", Duration::from_secs(30), || {
        agent.count("WireGuard devices") > 0
    });
    let keys: Vec<WgKeys> = (0..PEERS).map(|_| WgKeys::generate()).collect();
    // Allowed IPs outside 10.1-250.x (the pair's own tunnel subnets, `unique_octet`):
    // an overlap would move the pair's allowed IP away from peer A, an update of A.
    for (i, key) in keys.iter().enumerate() {
        pair.wg_b
            .set_peer(&key.public, None, &format!("10.252.{i}.1/32"));
    }
    wait_for("the create events", Duration::from_secs(20), || {
        agent.count("event=peer.create") == PEERS
    });
    for (i, key) in keys.iter().enumerate() {
        pair.wg_b.set_peer(
            &key.public,
            None,
            &format!("10.252.{i}.1/32,10.253.{i}.0/24"),
        );
    }
    wait_for("the update events", Duration::from_secs(20), || {
        agent.count("event=peer.update") == PEERS
    });
    let expected = event_ids(&agent.lines.lock().unwrap());
    assert_eq!(expected.len(), 2 * PEERS);
    // Accepted means stored: wait until the outbox holds them all, then kill.
    wait_for("every event in the outbox", Duration::from_secs(20), || {
        let (status, body) = http(
            &pair.b,
            "GET",
            "http://127.0.0.1:9586/api/v1/webhooks",
            None,
        );
        status == 200
            && serde_json::from_str::<serde_json::Value>(&body).unwrap()["webhooks"][0]["queued"]
                == 2 * PEERS
    });
    agent.kill();

    // A slow receiver; killed again mid-delivery.
    let receiver = {
        let _inside = pair.b.enter();
        Receiver::start_on(port)
    };
    receiver.set_default(Reply::Delayed(Duration::from_millis(300), 200));
    let agent = AgentProcess::start(&pair.b, &config);
    receiver.wait_for(6, Duration::from_secs(30));
    agent.kill();
    let before_restart = receiver.requests().len();
    assert!(before_restart < 2 * PEERS, "the kill came mid-delivery");

    receiver.set_default(Reply::Status(200));
    let agent = AgentProcess::start(&pair.b, &config);
    let mut arrived: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    wait_for(
        "every event at the receiver",
        Duration::from_secs(60),
        || {
            for request in receiver.requests() {
                let body = request.json();
                let id = body["id"].as_str().unwrap().to_owned();
                if let Some(earlier) = arrived.get(&id) {
                    assert_eq!(*earlier, body, "a duplicate carries the same id and body");
                }
                arrived.insert(id, body);
            }
            expected.iter().all(|id| arrived.contains_key(id))
        },
    );
    let unexpected: Vec<&String> = arrived
        .keys()
        .filter(|id| !expected.contains(*id))
        .collect();
    assert!(
        unexpected.is_empty(),
        "events nobody emitted: {unexpected:?}"
    );

    // Per peer: the create arrives before the update (first arrivals).
    let requests = receiver.requests();
    for key in &keys {
        let kinds: Vec<String> = requests
            .iter()
            .map(|r| r.json())
            .filter(|b| b["identifier"] == key.public.as_str())
            .map(|b| b["event"].as_str().unwrap().to_owned())
            .collect();
        let first_update = kinds.iter().position(|k| k == "update").expect("an update");
        let first_create = kinds.iter().position(|k| k == "create").expect("a create");
        assert!(first_create < first_update, "{}: {kinds:?}", key.public);
    }
    eprintln!(
        "{} requests for {} events ({} before the last restart)",
        requests.len(),
        expected.len(),
        before_restart
    );
    agent.kill();
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_file(&config);
}
