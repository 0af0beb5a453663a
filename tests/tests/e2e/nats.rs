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
/// and waits for their deletes: 2 × `count` events of distinct peers. Waits first
/// for the agent's baseline device read (the classifiers attach right after it): a
/// peer already there at the baseline raises no create (a CI run added peers while
/// that read ran and saw 2 creates of 5).
fn churn(pair: &WgPair, agent: &AgentProcess, count: usize, round: usize) {
    agent.await_line("datapath attached", Duration::from_secs(30));
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
    // The handshake must cross attached classifiers for the feed to report it (the
    // device read alone would still connect the peer, without a handshake event).
    agent.await_line("datapath attached", Duration::from_secs(30));
    // A connect (with its handshake), peers added and removed, a disconnect.
    traffic::ping(&pair.a, pair.tunnel_addr_b(false), 3);
    churn(&pair, &agent, 10, 1);
    let updates = agent.count("event=peer.update");
    let allowed = format!("{}/32,10.254.254.1/32", pair.tunnel_addr_a(false));
    pair.wg_b.set_peer(&pair.wg_a.keys.public, None, &allowed);
    // The update (the next device read) and the disconnect (silence since the
    // connect) come in either order.
    wait_for("the update", Duration::from_secs(30), || {
        agent.count("event=peer.update") > updates
    });
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

#[test]
fn r3_leader_and_agent_killed_mid_stream_every_event_once_in_order() {
    require_root_and_tools();
    let pair = WgPair::new(Underlay::V4);
    let mut nats = NatsCluster::start(&pair.b, 3, None);
    nats.create_stream("FLEET", "wgpulse.>", 3, 0);
    let leader = nats.info("FLEET")["leader"].as_str().unwrap().to_owned();
    let dir = std::env::temp_dir().join(unique_name("wgpnats"));
    std::fs::create_dir_all(&dir).unwrap();
    // Only the leader's URL: the client learns the other servers from it, and the
    // leader's death takes the agent's connection with it.
    let config = write_config(
        &dir,
        &pair,
        &format!(
            "[[nats]]\nname = \"bus\"\nservers = [{:?}]\nstream = \"FLEET\"\ntimeout = \"2s\"\n\
             [nats.retry]\ninitial_backoff = \"200ms\"\nmax_backoff = \"1s\"\n",
            nats.url_of(&leader)
        ),
    );
    let agent = AgentProcess::start(&pair.b, &config);
    agent.await_line("NATS target bus: ready to publish", Duration::from_secs(30));
    churn(&pair, &agent, 20, 1);
    nats.kill(&leader);
    for round in 2..6 {
        churn(&pair, &agent, 20, round);
    }
    let retries_seen = target(&pair.b, "bus")["retries"].as_u64().unwrap();
    // Everything emitted is stored (queued or delivered) before the SIGKILL.
    let emitted = logged(&agent.lines.lock().unwrap()).len();
    wait_for("every event stored", Duration::from_secs(20), || {
        let bus = target(&pair.b, "bus");
        bus["queued"].as_u64().unwrap() + bus["delivered"].as_u64().unwrap() >= emitted as u64
    });
    let mut expected = logged(&agent.lines.lock().unwrap());
    agent.kill();
    nats.restart_stopped();
    let agent = AgentProcess::start(&pair.b, &config);
    agent.await_line("NATS target bus: ready to publish", Duration::from_secs(30));
    churn(&pair, &agent, 5, 7);
    expected.extend(logged(&agent.lines.lock().unwrap()));
    wait_for("every event in the stream", Duration::from_secs(60), || {
        target(&pair.b, "bus")["queued"] == 0
            && nats.info("FLEET")["messages"].as_u64().unwrap() as usize >= expected.len()
    });
    let messages = nats.read("FLEET");
    assert_exactly_once_in_order(&messages, &expected);
    assert!(
        retries_seen > 0,
        "the leader's death cost retries, and the counters show them"
    );
    agent.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_whole_cluster_down_for_a_minute_loses_nothing_and_the_backlog_drains() {
    require_root_and_tools();
    let pair = WgPair::new(Underlay::V4);
    let mut nats = NatsCluster::start(&pair.b, 3, None);
    nats.create_stream("FLEET", "wgpulse.>", 3, 0);
    let dir = std::env::temp_dir().join(unique_name("wgpnats"));
    std::fs::create_dir_all(&dir).unwrap();
    let servers: Vec<String> = nats.urls().iter().map(|u| format!("{u:?}")).collect();
    let config = write_config(
        &dir,
        &pair,
        &format!(
            "[[nats]]\nname = \"bus\"\nservers = [{}]\nstream = \"FLEET\"\ntimeout = \"2s\"\n",
            servers.join(", ")
        ),
    );
    let agent = AgentProcess::start(&pair.b, &config);
    agent.await_line("NATS target bus: ready to publish", Duration::from_secs(30));
    churn(&pair, &agent, 5, 1);
    wait_for(
        "the first events delivered",
        Duration::from_secs(20),
        || target(&pair.b, "bus")["queued"] == 0,
    );
    nats.kill_all();
    let down = std::time::Instant::now();
    // While it is down: a connect, peers added and removed, the disconnect.
    traffic::ping(&pair.a, pair.tunnel_addr_b(false), 3);
    churn(&pair, &agent, 10, 2);
    agent.await_line("event=peer_metric.disconnect", Duration::from_secs(30));
    churn(&pair, &agent, 10, 3);
    let oldest = |pair: &WgPair| {
        metric(
            &pair.b,
            "wgpulse_webhook_oldest_queued_age_seconds",
            &[("webhook", "bus")],
        )
    };
    wait_for("a minute of outage", Duration::from_secs(90), || {
        down.elapsed() >= Duration::from_secs(60)
    });
    let during = oldest(&pair);
    assert!(
        during >= 45.0,
        "the oldest queued event is {during} s old after a minute down"
    );
    assert!(target(&pair.b, "bus")["queued"].as_u64().unwrap() > 0);
    assert_eq!(
        metric(&pair.b, "wgpulse_nats_connected", &[("target", "bus")]),
        0.0
    );
    let expected = logged(&agent.lines.lock().unwrap());
    nats.restart_stopped();
    wait_for("the backlog drained", Duration::from_secs(60), || {
        target(&pair.b, "bus")["queued"] == 0
    });
    // The gauge is refreshed every second: it falls back within a few.
    wait_for(
        "the oldest-queued age to fall back",
        Duration::from_secs(5),
        || oldest(&pair) == 0.0,
    );
    let messages = nats.read("FLEET");
    assert_exactly_once_in_order(&messages, &expected);
    agent.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_credentials_a_missing_stream_and_a_full_one_are_named_and_other_targets_deliver() {
    require_root_and_tools();
    let pair = WgPair::new(Underlay::V4);
    let token = "nats-server-token-0123456789";
    let nats = NatsCluster::start(&pair.b, 1, Some(token));
    let url = nats.urls()[0].clone();
    let authed = url.replace("nats://", &format!("nats://{token}@"));
    // A stream that takes about two events, then refuses new ones.
    {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/receivers/nats_consumer.py");
        pair.b.run(&[
            "python3", script, "create", &authed, "SMALL", "small.>", "1", "3000",
        ]);
    }
    let dir = std::env::temp_dir().join(unique_name("wgpnats"));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("token");
    std::fs::write(&good, format!("{token}\n")).unwrap();
    let wrong = dir.join("wrong-token");
    std::fs::write(&wrong, "not-the-token-0123456789\n").unwrap();
    let receiver = {
        let _inside = pair.b.enter();
        wgpulse_tests::receiver::Receiver::start()
    };
    let config = write_config(
        &dir,
        &pair,
        &format!(
            "[[webhooks]]\nname = \"hook\"\nurl = \"{hook}\"\n\
             [[nats]]\nname = \"wrongauth\"\nservers = [{url:?}]\ntoken_file = {wrong:?}\n\
             [[nats]]\nname = \"nostream\"\nservers = [{url:?}]\ntoken_file = {good:?}\nstream = \"MISSING\"\n\
             [[nats]]\nname = \"full\"\nservers = [{url:?}]\ntoken_file = {good:?}\nstream = \"SMALL\"\nsubject = \"small.{{node}}.{{entity}}.{{event}}\"\n",
            hook = receiver.url(),
            wrong = wrong.display().to_string(),
            good = good.display().to_string(),
        ),
    );
    let agent = AgentProcess::start(&pair.b, &config);
    agent.await_line(
        "NATS target wrongauth: the server refused the credentials",
        Duration::from_secs(30),
    );
    agent.await_line(
        "NATS target nostream: stream MISSING does not exist",
        Duration::from_secs(30),
    );
    agent.await_line(
        "NATS target full: ready to publish",
        Duration::from_secs(30),
    );
    let log = agent.log();
    assert!(
        log.contains("check nats[0].token_file"),
        "the key to fix is named"
    );
    assert!(
        log.contains("nats[1].create_stream = true (key nats[1].stream)"),
        "the key to fix is named"
    );
    assert!(!log.contains("not-the-token"), "the token is never logged");
    churn(&pair, &agent, 10, 1);
    let emitted = logged(&agent.lines.lock().unwrap()).len();
    // The webhook gets everything.
    wait_for("the webhook delivered", Duration::from_secs(20), || {
        target(&pair.b, "hook")["delivered"].as_u64().unwrap() >= emitted as u64
    });
    // The full stream: a stated outcome, counted and logged; the events stay queued.
    wait_for("the full stream refused", Duration::from_secs(20), || {
        metric(
            &pair.b,
            "wgpulse_nats_publish_errors_total",
            &[("target", "full"), ("reason", "stream_full")],
        ) > 0.0
    });
    assert!(agent.log().contains("the stream is full"), "logged");
    let full = target(&pair.b, "full");
    assert!(full["queued"].as_u64().unwrap() > 0, "{full}");
    assert_eq!(full["dead_letters"], 0, "{full}");
    for name in ["wrongauth", "nostream"] {
        let status = target(&pair.b, name);
        assert_eq!(
            status["queued"].as_u64().unwrap() as usize,
            emitted,
            "{status}"
        );
        assert!(status["problem"].is_string(), "{status}");
        assert!(
            metric(
                &pair.b,
                "wgpulse_nats_publish_errors_total",
                &[("target", name), ("reason", "not_ready")]
            ) > 0.0
        );
    }
    // One line per distinct failure, not one per attempt and lane.
    for (needle, what) in [
        ("webhook=full", "delivery failed: the stream is full"),
        (
            "webhook=wrongauth",
            "delivery failed: the server refused the credentials",
        ),
        (
            "webhook=nostream",
            "delivery failed: stream MISSING does not exist",
        ),
    ] {
        let lines = agent
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(what) && l.contains(needle))
            .count();
        assert_eq!(lines, 1, "{what}: said {lines} times");
    }
    let (_, list) = http(&pair.b, "GET", &format!("{AGENT}/api/v1/targets"), None);
    assert!(!list.contains(token), "no secret in the API");
    agent.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn nats_mistakes_are_config_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, wanted) in [
        (
            "[[nats]]\nname = \"bus\"\nsubject = \"wgpulse.{nodes}.{event}\"\n",
            vec![
                "3: key `nats[0].subject`",
                "unknown field {nodes}",
                "{identifier}",
            ],
        ),
        (
            "[[nats]]\nname = \"bus\"\nservers = [\"http://127.0.0.1:4222\"]\n",
            vec!["3: key `nats[0].servers`", "nats:// or tls://"],
        ),
        (
            "[[nats]]\nname = \"bus\"\ntoken_file = \"/nonexistent/token\"\n",
            vec!["3: key `nats[0].token_file`", "/nonexistent/token"],
        ),
        (
            "[[nats]]\nname = \"bus\"\ntoken = \"change-me-change-me\"\n",
            vec!["nats[0].token", "placeholder"],
        ),
        (
            "[[webhooks]]\nname = \"bus\"\nurl = \"http://x/\"\n[[nats]]\nname = \"bus\"\n",
            vec!["nats[0].name", "duplicate target name"],
        ),
        ("[[nats]]\nname = \"bus\"\nstreem = \"X\"\n", vec!["streem"]),
    ] {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(wgpulse_tests::agent::binary())
            .args(["check-config", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text}: {stderr}");
        for want in wanted {
            assert!(stderr.contains(want), "{text}: {want:?} not in {stderr}");
        }
        assert!(!stderr.contains("change-me"), "{stderr}");
    }
}
