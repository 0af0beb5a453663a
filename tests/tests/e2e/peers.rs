//! The peer table and its events end to end: the agent runs in-process inside the
//! server's namespace next to wireguard-go, and the test drives a real peer through
//! connect, roam, silence, removal and re-adding, with a stray sender beside it, and
//! a restart of the agent. Assertions are on the emitted events' JSON.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use wgpulse::events::Event;
use wgpulse::wg::PublicKey;
use wgpulse_tests::agent::{kinds, InProcessAgent};
use wgpulse_tests::process::wait_for;
use wgpulse_tests::wireguard::{Underlay, WgPair, WgPairOptions};
use wgpulse_tests::{require_root_and_tools, traffic, unique_name};

/// An agent with the test's threshold.
fn start_agent(pair: &WgPair, state_dir: &Path, disconnect_after: Duration) -> InProcessAgent {
    let mut config = InProcessAgent::config(pair, state_dir);
    config.disconnect_after = disconnect_after;
    InProcessAgent::start(pair, config)
}

/// The next state event (the handshake feed and alerts are tested in `alerts.rs`).
fn next(agent: &mut InProcessAgent, what: &str, timeout: Duration) -> Event {
    agent.next_matching(what, timeout, is_state_event)
}

/// State events already queued.
fn pending(agent: &mut InProcessAgent) -> Vec<Event> {
    agent.pending().into_iter().filter(is_state_event).collect()
}

/// A peer's field from the agent's table.
fn table_peer<T>(
    agent: &InProcessAgent,
    device: &str,
    key: &str,
    read: impl FnOnce(&wgpulse::peers::PeerState) -> T,
) -> T {
    let shared = agent.shared();
    let table = shared.table.read().unwrap();
    let key: PublicKey = key.parse().unwrap();
    read(table.peer(device, &key).expect("peer in the table"))
}

/// Connect/disconnect and create/update/delete, not the feed or alerts.
fn is_state_event(event: &Event) -> bool {
    event.entity != "alert" && event.event != "handshake"
}

fn state_dir() -> PathBuf {
    std::env::temp_dir().join(unique_name("wgps"))
}

/// A pair whose B learns nothing by polling fast enough to fake a connect: B knows
/// A's endpoint, no keepalive, and both sides share a preshared key (which must never
/// appear in an event).
fn pair_with_psk() -> (WgPair, String) {
    let pair = WgPair::with_options(WgPairOptions {
        underlay: Underlay::V4,
        ..WgPairOptions::default()
    });
    let psk = String::from_utf8(wgpulse_tests::process::run("wg", &["genpsk"]).stdout)
        .unwrap()
        .trim()
        .to_owned();
    let file = std::env::temp_dir().join(unique_name("psk"));
    std::fs::write(&file, format!("{psk}\n")).unwrap();
    let path = file.to_str().unwrap();
    pair.wg_a.wg(&[
        "set",
        &pair.wg_a.name,
        "peer",
        &pair.wg_b.keys.public,
        "preshared-key",
        path,
    ]);
    pair.wg_b.wg(&[
        "set",
        &pair.wg_b.name,
        "peer",
        &pair.wg_a.keys.public,
        "preshared-key",
        path,
    ]);
    std::fs::remove_file(&file).unwrap();
    (pair, psk)
}

/// Polls `wg show` on B until A's latest handshake differs from `before`; returns
/// when it was seen and the new value.
fn await_wg_handshake(pair: &WgPair, before: u64) -> (SystemTime, u64) {
    let mut latest = before;
    wait_for(
        "wg show to report a new handshake",
        Duration::from_secs(10),
        || {
            latest = pair.wg_b.peer(&pair.wg_a.keys.public).latest_handshake;
            latest != before
        },
    );
    (SystemTime::now(), latest)
}

/// The distance between two wall-clock times.
fn gap(a: SystemTime, b: SystemTime) -> Duration {
    a.duration_since(b)
        .or_else(|_| b.duration_since(a))
        .unwrap()
}

#[test]
fn connect_roam_silence_remove_readd_and_a_stray_sender() {
    require_root_and_tools();
    let (pair, psk) = pair_with_psk();
    let state = state_dir();
    let disconnect_after = Duration::from_secs(8);
    let mut agent = start_agent(&pair, &state, disconnect_after);
    assert!(
        pending(&mut agent).is_empty(),
        "the baseline read emits nothing: {:?}",
        kinds(&agent.seen)
    );
    let peer_a = pair.wg_a.keys.public.clone();
    let device = pair.wg_b.name.clone();

    // Connect: the event arrives within a second of `wg show` changing.
    traffic::ping(&pair.a, pair.tunnel_addr_b(false), 1);
    let (wg_changed, _) = await_wg_handshake(&pair, 0);
    let connect = next(&mut agent, "peer_metric.connect", Duration::from_secs(5));
    assert_eq!(
        (connect.entity.as_str(), connect.event.as_str()),
        ("peer_metric", "connect")
    );
    assert_eq!(connect.identifier, peer_a);
    let gap = gap(connect.timestamp.into(), wg_changed);
    assert!(
        gap < Duration::from_secs(1),
        "connect event {gap:?} away from wg show's handshake"
    );
    let status = &connect.payload["Status"];
    assert_eq!(status["IsConnected"], true);
    assert_eq!(status["Endpoint"], pair.endpoint_a().to_string());
    assert_eq!(
        status["HandshakesCompleted"], 1,
        "the connect came from the datapath's notice, not from polling"
    );
    assert_eq!(
        connect.payload["Peer"]["InterfaceIdentifier"],
        device.as_str()
    );
    assert_eq!(connect.payload["Peer"]["HasPresharedKey"], true);
    assert_eq!(connect.node, "test-node");

    // Roam: A now reaches B over IPv6, so B sees A's data from a new endpoint.
    let v6_b = SocketAddr::new(IpAddr::V6(pair.link.b.v6), pair.wg_b.port);
    pair.wg_a.set_peer_endpoint(&pair.wg_b.keys.public, v6_b);
    traffic::ping(&pair.a, pair.tunnel_addr_b(false), 1);
    let roam = next(&mut agent, "peer.update (roam)", Duration::from_secs(5));
    assert_eq!(roam.kind(), "peer.update");
    assert_eq!(
        roam.payload["ChangedFields"],
        serde_json::json!(["Endpoint"])
    );
    let new_endpoint = SocketAddr::new(IpAddr::V6(pair.link.a.v6), pair.wg_a.port).to_string();
    assert_eq!(roam.payload["Endpoint"], new_endpoint.as_str());
    wait_for(
        "WireGuard to report the new endpoint",
        Duration::from_secs(5),
        || pair.wg_b.peer(&peer_a).endpoint.map(|e| e.to_string()) == Some(new_endpoint.clone()),
    );

    // Silence: disconnected once the handshake is disconnect_after old.
    let disconnect = next(
        &mut agent,
        "peer_metric.disconnect",
        disconnect_after + Duration::from_secs(5),
    );
    assert_eq!(disconnect.kind(), "peer_metric.disconnect");
    let waited = SystemTime::from(disconnect.timestamp)
        .duration_since(wg_changed)
        .unwrap_or_default();
    assert!(
        waited >= disconnect_after - Duration::from_secs(1)
            && waited < disconnect_after + Duration::from_secs(2),
        "disconnect {waited:?} after the handshake, threshold {disconnect_after:?}"
    );
    assert_eq!(disconnect.payload["Status"]["IsConnected"], false);
    assert_eq!(
        disconnect.payload["Status"]["DisconnectReason"],
        "handshake_expired"
    );
    assert_eq!(
        disconnect.payload["Status"]["Endpoint"],
        new_endpoint.as_str()
    );

    // A stray sender with no peer entry: its datagrams stay "unknown".
    let script = format!(
        "import os,socket\n\
         s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         for i in range(40):\n    s.sendto(os.urandom(100),('{dst}',{port}))\n",
        dst = pair.link.b.v4,
        port = pair.wg_b.port
    );
    pair.a.run(&["python3", "-c", &script]);
    let shared = agent.shared();
    wait_for(
        "the stray datagrams to be counted as unknown",
        Duration::from_secs(10),
        || {
            let table = shared.table.read().unwrap();
            table
                .device(&device)
                .unwrap()
                .unknown
                .totals
                .rx_invalid_packets
                == 40
        },
    );
    let peer_invalid = table_peer(&agent, &device, &peer_a, |p| p.wire.rx_invalid_packets);
    assert_eq!(peer_invalid, 0, "stray traffic was mixed into the peer");

    // Removed (while disconnected: only a delete), then added again (a create).
    pair.wg_b.remove_peer(&peer_a);
    let delete = next(&mut agent, "peer.delete", Duration::from_secs(5));
    assert_eq!(delete.kind(), "peer.delete");
    assert_eq!(delete.identifier, peer_a);
    let allowed = format!("{}/32", pair.tunnel_a.0);
    pair.wg_b.set_peer(&peer_a, None, &allowed);
    let create = next(&mut agent, "peer.create", Duration::from_secs(5));
    assert_eq!(create.kind(), "peer.create");
    assert_eq!(create.payload["AllowedIPsStr"], allowed.as_str());
    assert_eq!(create.payload["HasPresharedKey"], false);

    let all = agent.stop();
    assert_eq!(
        all.iter()
            .filter(|e| e.identifier == peer_a && is_state_event(e))
            .map(Event::kind)
            .collect::<Vec<_>>(),
        [
            "peer_metric.connect",
            "peer.update",
            "peer_metric.disconnect",
            "peer.delete",
            "peer.create"
        ],
        "per-peer order"
    );
    let mut ids: Vec<&str> = all.iter().map(|e| e.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), all.len(), "event ids are unique");
    let text = serde_json::to_string(&all).unwrap();
    for secret in [
        pair.wg_a.keys.private_key(),
        pair.wg_b.keys.private_key(),
        psk.as_str(),
    ] {
        assert!(!text.contains(secret), "key material in the events");
    }
    for field in ["\"PrivateKey\"", "\"PresharedKey\""] {
        assert!(!text.contains(field), "{field} in {text}");
    }
    let _ = std::fs::remove_dir_all(&state);
}

#[test]
fn a_restart_reports_only_what_changed_while_the_agent_was_down() {
    require_root_and_tools();
    let (pair, _psk) = pair_with_psk();
    let state = state_dir();
    let disconnect_after = Duration::from_secs(6);
    let peer_a = pair.wg_a.keys.public.clone();

    let mut agent = start_agent(&pair, &state, disconnect_after);
    traffic::ping(&pair.a, pair.tunnel_addr_b(false), 1);
    let connect = next(&mut agent, "peer_metric.connect", Duration::from_secs(5));
    assert_eq!(connect.kind(), "peer_metric.connect");
    agent.stop();

    // Nothing changed while it was down: no connect, no disconnect.
    let mut agent = start_agent(&pair, &state, disconnect_after);
    assert!(
        pending(&mut agent).is_empty(),
        "spurious events after a restart: {:?}",
        kinds(&agent.seen)
    );
    let connected = table_peer(&agent, &pair.wg_b.name, &peer_a, |p| p.connected);
    assert!(connected, "the peer is still connected after the restart");
    agent.stop();

    // The handshake expires while the agent is down: the restart reports it.
    let handshake = pair.wg_b.peer(&peer_a).latest_handshake;
    let expired = SystemTime::UNIX_EPOCH + Duration::from_secs(handshake + 1) + disconnect_after;
    while SystemTime::now() < expired {
        // Waiting for wall-clock time itself to pass: there is no event to await.
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut agent = start_agent(&pair, &state, disconnect_after);
    let disconnect = pending(&mut agent);
    assert_eq!(
        kinds(&disconnect),
        [format!("peer_metric.disconnect {}", &peer_a[..8])]
    );
    agent.stop();
    let _ = std::fs::remove_dir_all(&state);
}
