//! Delivery into NATS JetStream with real `nats-server`s (one, and a three-node
//! cluster with an R3 stream) in the test's namespace, real wireguard-go events, and
//! the streams read back by a `nats-py` consumer (not our code). The oracle for what
//! the agent emitted is its own event log (one line per event, with its id, logged
//! before the event is stored).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use wgpulse_tests::agent::{http, AgentProcess};
use wgpulse_tests::nats::{NatsCluster, StreamMessage};
use wgpulse_tests::netns::NetNs;
use wgpulse_tests::process::wait_for;
use wgpulse_tests::wireguard::{Underlay, WgKeys, WgPair};
use wgpulse_tests::{require_root_and_tools, traffic, unique_name};

const AGENT: &str = "http://127.0.0.1:9586";

/// One event the agent logged: kind, identifier, id.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Logged {
    kind: String,
    identifier: String,
    id: String,
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split(&format!(" {name}="))
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
}

/// Every event in the agent's log so far, in the order it was emitted.
fn logged(lines: &[String]) -> Vec<Logged> {
    lines
        .iter()
        .filter(|l| l.contains(" event event="))
        .map(|l| Logged {
            kind: field(l, "event").unwrap().to_owned(),
            identifier: field(l, "identifier").unwrap().to_owned(),
            id: field(l, "id").unwrap().to_owned(),
        })
        .collect()
}

fn write_config(dir: &Path, pair: &WgPair, extra: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "node = \"gw.1 lab\"\nstate_dir = {state:?}\ninterfaces = [{iface:?}]\ndevices = [{dev:?}]\n\
             drain_interval = \"200ms\"\nrefresh_interval = \"300ms\"\ndisconnect_after = \"6s\"\n{extra}",
            state = dir.join("state").display().to_string(),
            iface = pair.link.b.name,
            dev = pair.wg_b.name,
        ),
    )
    .unwrap();
    path
}

/// The API's view of target `name`.
fn target(ns: &NetNs, name: &str) -> Value {
    let (status, body) = http(ns, "GET", &format!("{AGENT}/api/v1/targets"), None);
    assert_eq!(status, 200, "{body}");
    let all: Value = serde_json::from_str(&body).unwrap();
    all["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no target {name} in {all}"))
}

/// A metric of the agent's /metrics for the labels given (0 when absent).
fn metric(ns: &NetNs, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, text) = http(ns, "GET", &format!("{AGENT}/metrics"), None);
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(series, _)| {
            series.split('{').next() == Some(name)
                && labels
                    .iter()
                    .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, value)| value.parse().unwrap())
        .unwrap_or(0.0)
}

/// Adds `count` peers (no traffic) and waits for their creates, then removes them
/// and waits for their deletes: 2 × `count` events of distinct peers.
fn churn(pair: &WgPair, agent: &AgentProcess, count: usize, round: usize) {
    let keys: Vec<WgKeys> = (0..count).map(|_| WgKeys::generate()).collect();
    let creates = agent.count("event=peer.create");
    for (i, key) in keys.iter().enumerate() {
        pair.wg_b
            .set_peer(&key.public, None, &format!("10.252.{round}.{}/32", i + 1));
    }
    wait_for("the creates", Duration::from_secs(20), || {
        agent.count("event=peer.create") >= creates + count
    });
    let deletes = agent.count("event=peer.delete");
    for key in &keys {
        pair.wg_b.remove_peer(&key.public);
    }
    wait_for("the deletes", Duration::from_secs(20), || {
        agent.count("event=peer.delete") >= deletes + count
    });
}

/// Checks that `messages` hold every event of `expected` exactly once, with its id
/// as `Nats-Msg-Id`, and each peer's events in the order they were emitted.
fn assert_exactly_once_in_order(messages: &[StreamMessage], expected: &[Logged]) {
    let mut seen = BTreeSet::new();
    for message in messages {
        let id = message.event["id"].as_str().unwrap().to_owned();
        assert_eq!(
            message.msg_id.as_deref(),
            Some(id.as_str()),
            "Nats-Msg-Id is the event id"
        );
        assert!(seen.insert(id.clone()), "event {id} is in the stream twice");
    }
    let wanted: BTreeSet<String> = expected.iter().map(|e| e.id.clone()).collect();
    let missing: Vec<&String> = wanted.difference(&seen).collect();
    let unknown: Vec<&String> = seen.difference(&wanted).collect();
    assert!(
        missing.is_empty(),
        "{} events never reached the stream: {missing:?}",
        missing.len()
    );
    assert!(unknown.is_empty(), "events nobody emitted: {unknown:?}");
    // Per peer: stream order == emission order.
    let position: BTreeMap<&str, usize> = expected
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id.as_str(), i))
        .collect();
    let mut last: BTreeMap<String, usize> = BTreeMap::new();
    for message in messages {
        let identifier = message.event["identifier"].as_str().unwrap().to_owned();
        let at = position[message.event["id"].as_str().unwrap()];
        if let Some(before) = last.insert(identifier.clone(), at) {
            assert!(
                before < at,
                "events of {identifier} out of order in the stream"
            );
        }
    }
}

#[test]
fn one_server_every_event_once_in_peer_order_read_by_nats_py() {
    require_root_and_tools();
    let pair = WgPair::new(Underlay::V4);
    let nats = NatsCluster::start(&pair.b, 1, None);
    let dir = std::env::temp_dir().join(unique_name("wgpnats"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = write_config(
        &dir,
        &pair,
        &format!(
            "[[nats]]\nname = \"bus\"\nservers = [{:?}]\ncreate_stream = true\nevents = [\"*\", \"peer_metric.handshake\"]\n",
            nats.urls()[0]
        ),
    );
    let agent = AgentProcess::start(&pair.b, &config);
    agent.await_line("NATS target bus: ready to publish", Duration::from_secs(30));
    // A connect (with its handshake), peers added and removed, a disconnect.
    traffic::ping(&pair.a, pair.tunnel_addr_b(false), 3);
    churn(&pair, &agent, 10, 1);
    let allowed = format!("{}/32,10.254.254.1/32", pair.tunnel_addr_a(false));
    pair.wg_b.set_peer(&pair.wg_a.keys.public, None, &allowed);
    agent.await_line("event=peer_metric.disconnect", Duration::from_secs(30));
    let expected = logged(&agent.lines.lock().unwrap());
    let kinds: BTreeSet<&str> = expected.iter().map(|e| e.kind.as_str()).collect();
    for kind in [
        "peer_metric.connect",
        "peer.create",
        "peer.update",
        "peer.delete",
        "peer_metric.disconnect",
    ] {
        assert!(kinds.contains(kind), "{kind} not among {kinds:?}");
    }
    wait_for("every event in the stream", Duration::from_secs(30), || {
        target(&pair.b, "bus")["queued"] == 0
            && nats.info("WGPULSE")["messages"].as_u64().unwrap() as usize >= expected.len()
    });
    let messages = nats.read("WGPULSE");
    // Handshake events are logged at debug level: the rest must match the log exactly.
    let (handshakes, rest): (Vec<StreamMessage>, Vec<StreamMessage>) = messages
        .into_iter()
        .partition(|m| m.event["event"] == "handshake");
    assert!(
        !handshakes.is_empty(),
        "the handshake feed reached the stream"
    );
    assert_exactly_once_in_order(&rest, &expected);
    for message in &rest {
        let event = &message.event;
        assert_eq!(
            message.subject,
            format!(
                "wgpulse.gw%2E1%20lab.{}.{}",
                event["entity"].as_str().unwrap(),
                event["event"].as_str().unwrap()
            ),
            "one token per field, the node escaped"
        );
    }
    let bus = target(&pair.b, "bus");
    assert_eq!(bus["kind"], "nats");
    assert_eq!(bus["queued"], 0, "{bus}");
    assert_eq!(bus["failed"], 0, "{bus}");
    assert!(bus["problem"].is_null(), "{bus}");
    assert_eq!(
        metric(&pair.b, "wgpulse_nats_connected", &[("target", "bus")]),
        1.0
    );
    // `target test` publishes into the stream and says where it landed.
    let out = pair
        .b
        .run(&[&wgpulse_tests::agent::binary(), "target", "test", "bus"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("published to wgpulse.gw%2E1%20lab.test.test: stream WGPULSE"),
        "{text}"
    );
    agent.kill();
    let _ = std::fs::remove_dir_all(&dir);
}
