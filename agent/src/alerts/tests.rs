//! The alert rules on simulated drains.

use std::time::{Duration, SystemTime};

use super::*;
use crate::snapshot::EndpointStats;

fn t(seconds: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
}

fn sample(endpoint: &str, fill: impl FnOnce(&mut EndpointStats)) -> WireSample {
    let mut delta = EndpointStats::default();
    fill(&mut delta);
    WireSample {
        device: "wg0".into(),
        endpoint: endpoint.parse().unwrap(),
        delta,
        last_rx: None,
        last_tx: None,
    }
}

fn nobody(_: &str, _: &SocketAddr) -> Option<PublicKey> {
    None
}

#[test]
fn unanswered_initiations_raise_one_alert_then_stay_suppressed() {
    let mut engine = AlertEngine::new(AlertsConfig::default());
    let mut alerts = Vec::new();
    for second in (0..=120).step_by(5) {
        let s = sample("192.0.2.7:5000", |d| d.rx.messages.initiations = 1);
        let fired = engine.on_drain(&[s], nobody, t(second));
        if !fired.is_empty() {
            alerts.push((second, fired));
        }
    }
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let (second, fired) = &alerts[0];
    assert_eq!(
        *second, 30,
        "raised once the initiations were unanswered for 30 s"
    );
    let alert = &fired[0];
    assert_eq!(alert.kind, AlertType::HandshakeUnanswered);
    assert_eq!(alert.subject, "wg0/192.0.2.7:5000");
    assert_eq!(alert.evidence["Initiations"], 7);
    assert_eq!(alert.evidence["Direction"], "inbound");
    assert_eq!(alert.suppress_until, t(30) + Duration::from_secs(3600));
    assert_eq!(alert.payload()["Type"], "handshake_unanswered");
}

#[test]
fn answered_initiations_raise_nothing() {
    let mut engine = AlertEngine::new(AlertsConfig::default());
    for second in (0..=120).step_by(5) {
        let s = sample("192.0.2.7:5000", |d| {
            d.rx.messages.initiations = 1;
            d.tx.messages.responses = 1;
        });
        assert!(engine.on_drain(&[s], nobody, t(second)).is_empty());
    }
    // Our own initiations that get responses: nothing either.
    for second in (200..=320).step_by(5) {
        let s = sample("192.0.2.8:5000", |d| {
            d.tx.messages.initiations = 1;
            d.rx.messages.responses = u64::from(second % 10 == 0);
        });
        assert!(engine.on_drain(&[s], nobody, t(second)).is_empty());
    }
}

#[test]
fn an_invalid_flood_is_per_source_and_suppressed() {
    let mut engine = AlertEngine::new(AlertsConfig::default());
    let quiet = sample("198.51.100.1:1", |d| d.rx.invalid_packets = 5);
    assert!(engine.on_drain(&[quiet], nobody, t(0)).is_empty());
    let flood = |port: &str| {
        sample(&format!("203.0.113.9:{port}"), |d| {
            d.rx.invalid_packets = 150
        })
    };
    let alerts = engine.on_drain(&[flood("1000"), flood("1001")], nobody, t(1));
    assert_eq!(alerts.len(), 1, "one source address, two ports: one alert");
    assert_eq!(alerts[0].kind, AlertType::InvalidFlood);
    assert_eq!(alerts[0].subject, "wg0/203.0.113.9");
    assert_eq!(alerts[0].evidence["InvalidPackets"], 300);
    assert!(
        engine.on_drain(&[flood("1002")], nobody, t(2)).is_empty(),
        "suppressed"
    );
    assert_eq!(
        engine
            .on_drain(
                &[flood("1003"), flood("1004")],
                nobody,
                t(2) + Duration::from_secs(3600)
            )
            .len(),
        1,
        "raised again after the suppression window"
    );
}

#[test]
fn cookie_storms_and_socket_drops_are_per_device_with_peers_in_evidence() {
    let mut engine = AlertEngine::new(AlertsConfig::default());
    let peer = PublicKey([3; 32]);
    let owner = |_: &str, e: &SocketAddr| (e.port() == 1).then_some(peer);
    let samples = [
        sample("192.0.2.1:1", |d| {
            d.socket_drops = 15;
            d.tx.messages.cookies = 60;
        }),
        sample("192.0.2.2:2", |d| d.socket_drops = 5),
    ];
    let mut alerts = engine.on_drain(&samples, owner, t(0));
    alerts.sort_by_key(|a| a.kind);
    let kinds: Vec<AlertType> = alerts.iter().map(|a| a.kind).collect();
    assert_eq!(kinds, [AlertType::CookieStorm, AlertType::SocketDrops]);
    let drops = &alerts[1];
    assert_eq!(drops.severity, Severity::Critical);
    assert_eq!(drops.evidence["Drops"], 20);
    assert_eq!(drops.evidence["DropsByPeer"][peer.to_base64()], 15);
    assert_eq!(drops.evidence["DropsByPeer"]["unknown"], 5);
    assert!(drops.evidence["Hint"]
        .as_str()
        .unwrap()
        .contains("rmem_max"));
}

#[test]
fn socket_drops_evidence_names_the_worst_peers_and_sums_the_rest() {
    let mut engine = AlertEngine::new(AlertsConfig::default());
    // 30 peers on ports 1..=30, peer n dropping n datagrams.
    let owner = |_: &str, e: &SocketAddr| Some(PublicKey([e.port() as u8; 32]));
    let samples: Vec<_> = (1..=30u16)
        .map(|n| sample(&format!("192.0.2.1:{n}"), |d| d.socket_drops = u64::from(n)))
        .collect();
    let alerts = engine.on_drain(&samples, owner, t(0));
    let drops = alerts
        .iter()
        .find(|a| a.kind == AlertType::SocketDrops)
        .expect("a socket_drops alert");
    let listed = drops.evidence["DropsByPeer"].as_object().unwrap();
    assert_eq!(listed.len(), DROPS_BY_PEER_LISTED);
    // The 20 worst are peers 11..=30; 1..=10 (55 drops) are summed.
    assert_eq!(listed[&PublicKey([30; 32]).to_base64()], 30);
    assert_eq!(listed[&PublicKey([11; 32]).to_base64()], 11);
    assert!(!listed.contains_key(&PublicKey([10; 32]).to_base64()));
    assert_eq!(drops.evidence["OtherPeers"]["Peers"], 10);
    assert_eq!(drops.evidence["OtherPeers"]["Drops"], 55);
    assert_eq!(drops.evidence["Drops"], 465);
}

#[test]
fn a_rate_below_the_threshold_raises_nothing() {
    let mut engine = AlertEngine::new(AlertsConfig::default());
    for second in 0..60 {
        // 5 drops per second over a 10 s window is above 1/s; 5 per 10 s is not.
        let drops = u64::from(second % 10 == 0) * 5;
        let s = sample("192.0.2.1:1", |d| d.socket_drops = drops);
        assert!(
            engine.on_drain(&[s], nobody, t(second)).is_empty(),
            "at {second}"
        );
    }
}

#[test]
fn new_addresses_alert_once_per_address() {
    let mut engine = AlertEngine::new(AlertsConfig::default());
    let table_peer = {
        let mut table = crate::peers::PeerTable::new(Duration::from_secs(180));
        let mut wg_peer = crate::wg::Peer::new(PublicKey([4; 32]));
        wg_peer.endpoint = Some("192.0.2.1:1".parse().unwrap());
        let device = crate::wg::Device {
            name: "wg0".into(),
            kind: crate::wg::DeviceKind::Userspace,
            public_key: None,
            listen_port: 1,
            fwmark: 0,
            peers: vec![wg_peer],
        };
        table.apply_devices(&[device], t(0), t(0));
        let peer = table.peers().next().unwrap().clone();
        peer
    };
    let address: IpAddr = "198.51.100.4".parse().unwrap();
    let alerts = engine.on_new_address(&table_peer, address, t(1));
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].kind, AlertType::EndpointNewAddress);
    assert_eq!(alerts[0].severity, Severity::Info);
    assert!(engine.on_new_address(&table_peer, address, t(2)).is_empty());
}

fn path_sample(lost: u64, packets: u64) -> (String, crate::snapshot::PathSample) {
    (
        "wg0".into(),
        crate::snapshot::PathSample {
            endpoint: crate::snapshot::Endpoint {
                device: 1,
                addr: "192.0.2.7:5000".parse().unwrap(),
            },
            direction: crate::snapshot::PathDirection::Receive,
            index: 1,
            delta: crate::snapshot::PathCounts {
                packets,
                lost,
                late: 0,
                duplicates: 0,
            },
        },
    )
}

fn peer7(_: &str, _: &SocketAddr) -> Option<PublicKey> {
    Some(PublicKey([7; 32]))
}

#[test]
fn path_loss_needs_the_share_and_enough_packets() {
    let mut engine = AlertEngine::new(AlertsConfig::default());
    // Three lost keepalives of five: 60%, but too few to judge.
    assert!(engine
        .on_paths(&[path_sample(3, 2)], peer7, t(0))
        .is_empty());
    // 2 of 200 in the window (1%): below the 2% default.
    let mut engine = AlertEngine::new(AlertsConfig::default());
    assert!(engine
        .on_paths(&[path_sample(2, 198)], peer7, t(0))
        .is_empty());
    // 3% over the window, in two drains: raised once, with its evidence.
    let mut engine = AlertEngine::new(AlertsConfig::default());
    assert!(engine
        .on_paths(&[path_sample(0, 100)], peer7, t(0))
        .is_empty());
    let fired = engine.on_paths(&[path_sample(6, 94)], peer7, t(5));
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!(fired[0].kind, AlertType::PathLoss);
    assert_eq!(fired[0].evidence["Lost"], 6);
    assert_eq!(fired[0].evidence["Received"], 194);
    assert!(
        engine
            .on_paths(&[path_sample(50, 50)], peer7, t(6))
            .is_empty(),
        "suppressed"
    );
}

#[test]
fn path_latency_is_off_unless_set() {
    use crate::wg::{Device, DeviceKind, Peer};
    let mut table = crate::peers::PeerTable::new(Duration::from_secs(180));
    let device = Device {
        name: "wg0".into(),
        kind: DeviceKind::Kernel,
        public_key: None,
        listen_port: 51820,
        fwmark: 0,
        peers: vec![Peer::new(PublicKey([7; 32]))],
    };
    table.apply_devices(&[device], t(0), t(0));
    let peer_state = table.peers().next().expect("the peer").clone();
    let mut engine = AlertEngine::new(AlertsConfig::default());
    assert!(engine
        .on_round_trip(&peer_state, Duration::from_secs(3), t(0))
        .is_empty());
    let mut engine = AlertEngine::new(AlertsConfig {
        path_latency_above: Some(Duration::from_millis(200)),
        ..AlertsConfig::default()
    });
    assert!(engine
        .on_round_trip(&peer_state, Duration::from_millis(150), t(0))
        .is_empty());
    let fired = engine.on_round_trip(&peer_state, Duration::from_millis(250), t(1));
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].kind, AlertType::PathLatency);
    assert_eq!(fired[0].evidence["RoundTripSeconds"], 0.25);
}

#[test]
fn a_quiet_peers_path_window_is_forgotten_once_it_leaves_the_window() {
    let mut engine = AlertEngine::new(AlertsConfig::default());
    let width = AlertsConfig::default().window.as_secs();
    assert!(engine
        .on_paths(&[path_sample(0, 100)], peer7, t(0))
        .is_empty());
    assert_eq!(engine.path_windows(), 1);
    // Within the window: kept.
    engine.on_paths(&[], peer7, t(1));
    assert_eq!(engine.path_windows(), 1);
    // A drain a window later with nothing from the peer: gone.
    engine.on_paths(&[], peer7, t(width + 1));
    assert_eq!(
        engine.path_windows(),
        0,
        "the quiet peer's window was dropped"
    );
    // Loss after it is judged on the new window only: 3 of 5 is too few packets.
    assert!(engine
        .on_paths(&[path_sample(3, 2)], peer7, t(width + 2))
        .is_empty());
}
