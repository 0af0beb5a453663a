//! The peer table on simulated timelines: the time is passed in, so an hour of
//! rekeying runs in microseconds and every threshold can be hit exactly.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use super::*;
use crate::snapshot::{Endpoint, EndpointStats};
use crate::wg::{Device, DeviceKind, Peer, PublicKey};

const DEV: &str = "wgtest0";
const THRESHOLD: Duration = Duration::from_secs(180);

fn t(seconds: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
}

fn key(n: u8) -> PublicKey {
    PublicKey([n; 32])
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn wg_peer(n: u8, endpoint: &str, last_handshake: Option<SystemTime>) -> Peer {
    let mut peer = Peer::new(key(n));
    peer.endpoint = Some(addr(endpoint));
    peer.allowed_ips = vec![format!("10.0.0.{n}/32")];
    peer.last_handshake = last_handshake;
    peer
}

fn device(peers: Vec<Peer>) -> Device {
    Device {
        name: DEV.into(),
        kind: DeviceKind::Userspace,
        public_key: Some(key(200)),
        listen_port: 51820,
        fwmark: 0,
        peers,
    }
}

fn completed(endpoint: &str, at: SystemTime) -> SessionNotice {
    SessionNotice::HandshakeComplete {
        endpoint: Endpoint {
            device: 1,
            addr: addr(endpoint),
        },
        role: Role::Responder,
        at,
        local_index: 1,
        remote_index: 2,
        rtt: None,
    }
}

fn roamed(from: &str, to: &str, at: SystemTime) -> SessionNotice {
    SessionNotice::EndpointChanged {
        previous: Endpoint {
            device: 1,
            addr: addr(from),
        },
        endpoint: Endpoint {
            device: 1,
            addr: addr(to),
        },
        at,
        local_index: 1,
    }
}

fn sample(endpoint: &str, rx_packets: u64, rx_bytes: u64) -> WireSample {
    let mut delta = EndpointStats::default();
    delta.rx.packets = rx_packets;
    delta.rx.bytes = rx_bytes;
    WireSample {
        device: DEV.into(),
        endpoint: addr(endpoint),
        delta,
        last_rx: None,
        last_tx: None,
    }
}

/// A short name per change, to compare sequences.
fn names(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .map(|change| match change {
            Change::Interface { kind, device, .. } => format!("interface.{kind:?}:{}", device.name),
            Change::Peer {
                kind, peer, fields, ..
            } => format!("peer.{kind:?}:{}{fields:?}", peer.key.public_key.0[0]),
            Change::Connected { peer, .. } => format!("connect:{}", peer.key.public_key.0[0]),
            Change::Handshake { peer, .. } => format!("handshake:{}", peer.key.public_key.0[0]),
            Change::Disconnected { peer, reason, .. } => {
                format!("disconnect:{}:{reason:?}", peer.key.public_key.0[0])
            }
        })
        .collect()
}

/// A table that has read `peers` once (the quiet baseline).
fn table_with(peers: Vec<Peer>, now: SystemTime) -> PeerTable {
    let mut table = PeerTable::new(THRESHOLD);
    let changes = table.apply_devices(&[device(peers)], now, now);
    assert!(
        changes
            .iter()
            .all(|c| matches!(c, Change::Connected { .. })),
        "the baseline read reports no creates: {:?}",
        names(&changes)
    );
    table
}

#[test]
fn rekeying_every_120_s_for_an_hour_stays_connected() {
    let mut table = table_with(vec![wg_peer(1, "192.0.2.1:1000", None)], t(0));
    let mut all = Vec::new();
    for second in 0..=3600 {
        if second % 120 == 0 {
            all.extend(
                table
                    .apply_notice(DEV, &completed("192.0.2.1:1000", t(second)), t(second))
                    .changes,
            );
        }
        all.extend(table.tick(t(second)));
    }
    assert_eq!(names(&all), ["connect:1"]);
    let peer = table.peer(DEV, &key(1)).unwrap();
    assert!(peer.connected);
    assert_eq!(peer.handshakes_completed(), 31);
    assert_eq!(peer.connected_since, Some(t(0)));
    assert_eq!(peer.last_handshake, Some(t(3600)));
}

#[test]
fn silence_disconnects_at_exactly_the_threshold() {
    let mut table = table_with(vec![wg_peer(1, "192.0.2.1:1000", None)], t(0));
    let changes = table
        .apply_notice(DEV, &completed("192.0.2.1:1000", t(10)), t(10))
        .changes;
    assert_eq!(names(&changes), ["connect:1"]);
    let just_before = t(190) - Duration::from_nanos(1);
    assert!(table.tick(just_before).is_empty());
    assert_eq!(table.next_expiry(), Some(t(190)));
    let changes = table.tick(t(190));
    assert_eq!(names(&changes), ["disconnect:1:HandshakeExpired"]);
    let Change::Disconnected { peer, .. } = &changes[0] else {
        unreachable!()
    };
    assert_eq!(peer.disconnected_at, Some(t(190)));
    assert!(table.tick(t(10_000)).is_empty(), "no second disconnect");
    assert_eq!(table.next_expiry(), None);
}

#[test]
fn a_rekey_that_arrives_late_reconnects_once() {
    let mut table = table_with(vec![wg_peer(1, "192.0.2.1:1000", None)], t(0));
    table.apply_notice(DEV, &completed("192.0.2.1:1000", t(0)), t(0));
    assert_eq!(
        names(&table.tick(t(180))),
        ["disconnect:1:HandshakeExpired"]
    );
    let changes = table
        .apply_notice(DEV, &completed("192.0.2.1:1000", t(200)), t(200))
        .changes;
    assert_eq!(names(&changes), ["connect:1"]);
    assert_eq!(
        table.peer(DEV, &key(1)).unwrap().session_start,
        Some(t(200))
    );
}

#[test]
fn wireguards_own_handshake_connects_when_the_datapath_missed_it() {
    let mut table = table_with(vec![wg_peer(1, "192.0.2.1:1000", None)], t(0));
    let changes = table.apply_devices(
        &[device(vec![wg_peer(1, "192.0.2.1:1000", Some(t(5)))])],
        t(6),
        t(6),
    );
    assert_eq!(names(&changes), ["connect:1"]);
    assert_eq!(
        table.peer(DEV, &key(1)).unwrap().handshakes_completed(),
        0,
        "only handshakes the datapath saw are counted"
    );
}

#[test]
fn the_first_read_is_a_quiet_baseline_but_reports_who_is_connected() {
    let mut table = PeerTable::new(THRESHOLD);
    let changes = table.apply_devices(
        &[device(vec![
            wg_peer(1, "192.0.2.1:1000", Some(t(100))),
            wg_peer(2, "192.0.2.2:1000", Some(t(0))),
            wg_peer(3, "192.0.2.3:1000", None),
        ])],
        t(200),
        t(200),
    );
    assert_eq!(names(&changes), ["connect:1"]);
}

#[test]
fn restart_reports_only_what_changed_while_down() {
    let peers = vec![
        wg_peer(1, "192.0.2.1:1000", Some(t(0))), // connected, stays so
        wg_peer(2, "192.0.2.2:1000", Some(t(0))), // connected, expires while down
        wg_peer(3, "192.0.2.3:1000", None),       // disconnected, connects while down
        wg_peer(4, "192.0.2.4:1000", None),       // disconnected, stays so
        wg_peer(5, "192.0.2.5:1000", None),       // removed while down
    ];
    let table = table_with(peers, t(10));
    let saved = table.save(t(20));
    let text = serde_json::to_string(&saved).unwrap();
    let saved: persist::SavedState = serde_json::from_str(&text).unwrap();

    let mut table = PeerTable::restore(saved, THRESHOLD);
    let now = t(150);
    let changes = table.apply_devices(
        &[device(vec![
            wg_peer(1, "192.0.2.1:1000", Some(t(120))),
            wg_peer(2, "192.0.2.2:1000", Some(t(0))),
            wg_peer(3, "192.0.2.3:1000", Some(t(140))),
            wg_peer(4, "192.0.2.4:1000", None),
            wg_peer(6, "192.0.2.6:1000", None), // added while down
        ])],
        now,
        now,
    );
    // Peer 2's handshake (t0) is 150 s old at restart: still connected.
    assert_eq!(
        names(&changes),
        ["peer.Delete:5[]", "peer.Create:6[]", "connect:3"]
    );
    let changes = table.tick(t(180));
    assert_eq!(names(&changes), ["disconnect:2:HandshakeExpired"]);
}

#[test]
fn restart_after_a_long_outage_disconnects_the_expired() {
    let table = table_with(vec![wg_peer(1, "192.0.2.1:1000", Some(t(0)))], t(1));
    let saved = table.save(t(2));
    let mut table = PeerTable::restore(saved, THRESHOLD);
    let changes = table.apply_devices(
        &[device(vec![wg_peer(1, "192.0.2.1:1000", Some(t(0)))])],
        t(1000),
        t(1000),
    );
    assert_eq!(names(&changes), ["disconnect:1:HandshakeExpired"]);
    let Change::Disconnected { peer, .. } = &changes[0] else {
        unreachable!()
    };
    assert_eq!(
        peer.disconnected_at,
        Some(t(180)),
        "the disconnect is dated when the handshake expired, not when the agent noticed"
    );
}

#[test]
fn roaming_moves_the_endpoint_once_and_keeps_the_traffic() {
    let mut table = table_with(vec![wg_peer(1, "192.0.2.1:1000", None)], t(0));
    table.apply_notice(DEV, &completed("192.0.2.1:1000", t(1)), t(1));
    table.apply_samples(&[sample("192.0.2.1:1000", 3, 300)], t(2));

    let changes = table
        .apply_notice(
            DEV,
            &roamed("192.0.2.1:1000", "198.51.100.9:2000", t(5)),
            t(5),
        )
        .changes;
    assert_eq!(names(&changes), ["peer.Update:1[\"Endpoint\"]"]);

    // The drain after the roam still holds the old endpoint's last packets: the peer's.
    table.apply_samples(
        &[
            sample("192.0.2.1:1000", 1, 100),
            sample("198.51.100.9:2000", 2, 200),
        ],
        t(6),
    );
    // A device read that began before the roam still shows the old endpoint.
    let stale = table.apply_devices(
        &[device(vec![wg_peer(1, "192.0.2.1:1000", None)])],
        t(4),
        t(7),
    );
    assert!(stale.is_empty(), "stale read: {:?}", names(&stale));
    // WireGuard catches up: nothing new to report.
    let caught_up = table.apply_devices(
        &[device(vec![wg_peer(1, "198.51.100.9:2000", None)])],
        t(8),
        t(8),
    );
    assert!(caught_up.is_empty(), "{:?}", names(&caught_up));

    // Later traffic from the old endpoint is no longer the peer's.
    table.apply_samples(&[sample("192.0.2.1:1000", 5, 500)], t(9));
    table.apply_devices(
        &[device(vec![wg_peer(1, "198.51.100.9:2000", None)])],
        t(10),
        t(10),
    );

    let peer = table.peer(DEV, &key(1)).unwrap();
    assert_eq!(peer.endpoint, Some(addr("198.51.100.9:2000")));
    assert_eq!((peer.wire.rx_packets, peer.wire.rx_bytes), (6, 600));
    let unknown = &table.device(DEV).unwrap().unknown;
    assert_eq!(
        (unknown.totals.rx_packets, unknown.totals.rx_bytes),
        (5, 500)
    );
}

#[test]
fn a_roam_only_wireguard_saw_is_an_update() {
    let mut table = table_with(vec![wg_peer(1, "192.0.2.1:1000", None)], t(0));
    let changes = table.apply_devices(
        &[device(vec![wg_peer(1, "192.0.2.7:1000", None)])],
        t(10),
        t(10),
    );
    assert_eq!(names(&changes), ["peer.Update:1[\"Endpoint\"]"]);
}

#[test]
fn a_roam_wireguard_rejected_is_corrected_at_the_next_read() {
    let mut table = table_with(vec![wg_peer(1, "192.0.2.1:1000", None)], t(0));
    table.apply_notice(
        DEV,
        &roamed("192.0.2.1:1000", "203.0.113.66:666", t(5)),
        t(5),
    );
    // WireGuard never accepted the move (the read began after the notice).
    let changes = table.apply_devices(
        &[device(vec![wg_peer(1, "192.0.2.1:1000", None)])],
        t(6),
        t(6),
    );
    assert_eq!(names(&changes), ["peer.Update:1[\"Endpoint\"]"]);
    assert_eq!(
        table.peer(DEV, &key(1)).unwrap().endpoint,
        Some(addr("192.0.2.1:1000"))
    );
}

#[test]
fn removing_a_connected_peer_disconnects_then_deletes_and_stays_quiet() {
    let mut table = table_with(vec![wg_peer(1, "192.0.2.1:1000", None)], t(0));
    table.apply_notice(DEV, &completed("192.0.2.1:1000", t(1)), t(1));
    let changes = table.apply_devices(&[device(vec![])], t(2), t(2));
    assert_eq!(
        names(&changes),
        ["disconnect:1:PeerRemoved", "peer.Delete:1[]"]
    );
    assert!(table.tick(t(1000)).is_empty());
    assert!(table.peer(DEV, &key(1)).is_none());

    // Added again: a create, and a connect at its next handshake.
    let changes = table.apply_devices(
        &[device(vec![wg_peer(1, "192.0.2.1:1000", None)])],
        t(3),
        t(3),
    );
    assert_eq!(names(&changes), ["peer.Create:1[]"]);
    let changes = table
        .apply_notice(DEV, &completed("192.0.2.1:1000", t(4)), t(4))
        .changes;
    assert_eq!(names(&changes), ["connect:1"]);
}

#[test]
fn a_new_peers_handshake_waits_for_the_read_then_creates_and_connects() {
    let mut table = table_with(vec![], t(0));
    table.apply_samples(&[sample("192.0.2.9:9000", 1, 148)], t(1));
    let outcome = table.apply_notice(DEV, &completed("192.0.2.9:9000", t(1)), t(1));
    assert!(outcome.needs_refresh);
    assert!(outcome.changes.is_empty());
    let changes = table.apply_devices(
        &[device(vec![wg_peer(9, "192.0.2.9:9000", Some(t(1)))])],
        t(1),
        t(1),
    );
    assert_eq!(names(&changes), ["peer.Create:9[]", "connect:9"]);
    let peer = table.peer(DEV, &key(9)).unwrap();
    assert_eq!(peer.handshakes_responded, 1);
    assert_eq!(peer.connected_since, Some(t(1)));
    assert_eq!(
        (peer.wire.rx_packets, peer.wire.rx_bytes),
        (1, 148),
        "traffic drained before the read is the new peer's"
    );
    assert_eq!(
        table.device(DEV).unwrap().unknown.totals,
        WireCounters::default()
    );
}

#[test]
fn a_handshake_during_a_read_waits_for_the_next_read_when_this_one_lacks_its_peer() {
    // The read began at t(1); the peer was added and shook hands at t(2), while it
    // was in flight (the reader thread), so the read does not list it.
    let mut table = table_with(vec![], t(0));
    table.apply_samples(&[sample("192.0.2.9:9000", 1, 148)], t(2));
    let outcome = table.apply_notice(DEV, &completed("192.0.2.9:9000", t(2)), t(2));
    assert!(outcome.needs_refresh);
    let changes = table.apply_devices(&[device(vec![])], t(1), t(3));
    assert!(changes.is_empty(), "{:?}", names(&changes));
    assert!(
        table.awaits_read(),
        "the notice waits for a read that began after it"
    );
    assert_eq!(table.device(DEV).unwrap().unknown.handshakes_completed, 0);
    assert_eq!(table.device(DEV).unwrap().unknown.endpoints_seen, 0);

    let changes = table.apply_devices(
        &[device(vec![wg_peer(9, "192.0.2.9:9000", Some(t(2)))])],
        t(3),
        t(4),
    );
    assert_eq!(names(&changes), ["peer.Create:9[]", "connect:9"]);
    assert!(!table.awaits_read());
    let peer = table.peer(DEV, &key(9)).unwrap();
    assert_eq!(peer.handshakes_responded, 1);
    assert_eq!((peer.wire.rx_packets, peer.wire.rx_bytes), (1, 148));
}

#[test]
fn a_stray_sender_stays_unknown() {
    let mut table = table_with(vec![wg_peer(1, "192.0.2.1:1000", None)], t(0));
    table.apply_samples(&[sample("203.0.113.5:4444", 0, 0)], t(1)); // nothing: ignored
    let mut garbage = sample("203.0.113.5:4444", 0, 0);
    garbage.delta.rx.invalid_packets = 50;
    garbage.delta.rx.invalid_bytes = 5000;
    table.apply_samples(&[garbage], t(1));
    let outcome = table.apply_notice(DEV, &completed("203.0.113.5:4444", t(1)), t(1));
    assert!(outcome.needs_refresh);
    let changes = table.apply_devices(
        &[device(vec![wg_peer(1, "192.0.2.1:1000", None)])],
        t(2),
        t(2),
    );
    assert!(changes.is_empty(), "{:?}", names(&changes));
    let unknown = &table.device(DEV).unwrap().unknown;
    assert_eq!(unknown.totals.rx_invalid_packets, 50);
    assert_eq!(unknown.endpoints_seen, 1);
    assert_eq!(unknown.handshakes_completed, 1);
    assert_eq!(unknown.endpoints[0].endpoint, addr("203.0.113.5:4444"));
    let peer = table.peer(DEV, &key(1)).unwrap();
    assert_eq!(peer.wire, WireCounters::default());
}

#[test]
fn unknown_endpoints_are_bounded_but_totals_exact() {
    let mut table = table_with(vec![], t(0));
    let samples: Vec<WireSample> = (0..UNKNOWN_ENDPOINTS_KEPT + 10)
        .map(|i| sample(&format!("10.9.{}.{}:53", i / 250, i % 250), 1, 10))
        .collect();
    table.apply_samples(&samples, t(1));
    table.apply_devices(&[device(vec![])], t(2), t(2));
    let unknown = &table.device(DEV).unwrap().unknown;
    assert_eq!(unknown.endpoints.len(), UNKNOWN_ENDPOINTS_KEPT);
    assert_eq!(unknown.endpoints_seen, (UNKNOWN_ENDPOINTS_KEPT + 10) as u64);
    assert_eq!(
        unknown.totals.rx_packets,
        (UNKNOWN_ENDPOINTS_KEPT + 10) as u64
    );
}

#[test]
fn configuration_changes_are_updates_naming_the_fields() {
    let mut table = table_with(vec![wg_peer(1, "192.0.2.1:1000", None)], t(0));
    let mut changed = wg_peer(1, "192.0.2.1:1000", None);
    changed.allowed_ips.push("10.1.0.0/16".into());
    changed.persistent_keepalive = 25;
    changed.has_preshared_key = true;
    let mut dev = device(vec![changed]);
    dev.listen_port = 51999;
    let changes = table.apply_devices(&[dev], t(1), t(1));
    assert_eq!(
        names(&changes),
        [
            "interface.Update:wgtest0",
            "peer.Update:1[\"AllowedIPsStr\", \"PersistentKeepalive\", \"HasPresharedKey\"]"
        ]
    );
}

#[test]
fn a_device_that_disappears_takes_its_peers_with_it() {
    let mut table = table_with(
        vec![
            wg_peer(1, "192.0.2.1:1000", None),
            wg_peer(2, "192.0.2.2:1000", None),
        ],
        t(0),
    );
    table.apply_notice(DEV, &completed("192.0.2.2:1000", t(1)), t(1));
    let changes = table.apply_devices(&[], t(2), t(2));
    assert_eq!(
        names(&changes),
        [
            "peer.Delete:1[]",
            "disconnect:2:DeviceRemoved",
            "peer.Delete:2[]",
            "interface.Delete:wgtest0"
        ]
    );
    let changes = table.apply_devices(&[device(vec![])], t(3), t(3));
    assert_eq!(names(&changes), ["interface.Create:wgtest0"]);
}

#[test]
fn wireguard_counters_stay_monotonic_across_a_device_reset() {
    let mut counters = WgCounters::first(1000, 500);
    counters.update(1500, 700);
    counters.update(100, 50); // recreated
    counters.update(300, 60);
    assert_eq!((counters.rx_bytes, counters.tx_bytes), (1800, 760));
    assert_eq!(counters.resets, 1);
}

#[test]
fn the_handshake_feed_reports_at_the_next_drain_with_deltas_that_sum_to_the_totals() {
    let mut table = table_with(vec![wg_peer(1, "192.0.2.1:1000", None)], t(0));
    let mut deltas = 0;
    let mut feed = Vec::new();
    for round in 0..5u64 {
        let at = t(round * 120);
        let outcome = table.apply_notice(DEV, &completed("192.0.2.1:1000", at), at);
        assert!(outcome
            .changes
            .iter()
            .all(|c| !matches!(c, Change::Handshake { .. })));
        let mut s = sample("192.0.2.1:1000", 10 + round, 1000 * (round + 1));
        s.delta.rx.messages.initiations = round + 1;
        feed.extend(table.apply_samples(&[s], at + Duration::from_secs(1)));
    }
    assert_eq!(feed.len(), 5);
    for change in &feed {
        let Change::Handshake {
            since_previous,
            role,
            ..
        } = change
        else {
            panic!("{change:?}")
        };
        assert_eq!(*role, Role::Responder);
        deltas += since_previous.rx_bytes;
    }
    let total = table.peer(DEV, &key(1)).unwrap().wire.rx_bytes;
    assert_eq!(deltas, total);
    assert_eq!(total, 15_000);
    let Change::Handshake { since_previous, .. } = &feed[2] else {
        unreachable!()
    };
    assert_eq!(
        since_previous.handshakes.rx_initiations, 3,
        "attempts of the third"
    );
}

#[test]
fn names_fill_peers_now_and_later() {
    let mut table = table_with(vec![wg_peer(1, "192.0.2.1:1000", None)], t(0));
    let name = std::sync::Arc::new(names::PeerName::from(names::PeerNameFields {
        name: Some("alice".into()),
        ..Default::default()
    }));
    table.set_names([(key(1), name.clone()), (key(2), name.clone())].into());
    assert_eq!(table.peer(DEV, &key(1)).unwrap().name, Some(name.clone()));
    table.apply_devices(
        &[device(vec![
            wg_peer(1, "192.0.2.1:1000", None),
            wg_peer(2, "192.0.2.2:1000", None),
        ])],
        t(1),
        t(1),
    );
    assert_eq!(table.peer(DEV, &key(2)).unwrap().name, Some(name));
}

#[test]
fn a_roam_to_an_address_never_used_is_flagged_once() {
    let mut table = table_with(vec![wg_peer(1, "192.0.2.1:1000", None)], t(0));
    let flag = |changes: &[Change]| match &changes[0] {
        Change::Peer { new_address, .. } => *new_address,
        other => panic!("{other:?}"),
    };
    let c = table
        .apply_notice(DEV, &roamed("192.0.2.1:1000", "198.51.100.1:1", t(1)), t(1))
        .changes;
    assert_eq!(flag(&c), Some("198.51.100.1".parse().unwrap()));
    let c = table
        .apply_notice(DEV, &roamed("198.51.100.1:1", "192.0.2.1:2000", t(2)), t(2))
        .changes;
    assert_eq!(flag(&c), None, "back to an address it used before");
}

#[test]
fn the_first_address_learned_is_not_a_new_address_alert() {
    let mut peer = wg_peer(1, "192.0.2.1:1000", None);
    peer.endpoint = None;
    let mut table = table_with(vec![peer], t(0));
    let changes = table.apply_devices(
        &[device(vec![wg_peer(1, "192.0.2.1:1000", None)])],
        t(1),
        t(1),
    );
    match &changes[..] {
        [Change::Peer {
            fields,
            new_address,
            ..
        }] => {
            assert_eq!(fields, &["Endpoint"]);
            assert_eq!(*new_address, None);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_key_removed_from_one_device_keeps_its_endpoint_on_another() {
    let mut table = PeerTable::new(THRESHOLD);
    let mut second = device(vec![wg_peer(1, "192.0.2.9:2000", None)]);
    second.name = "wgtest1".into();
    second.listen_port = 51821;
    table.apply_devices(
        &[
            device(vec![wg_peer(1, "192.0.2.1:1000", None)]),
            second.clone(),
        ],
        t(0),
        t(0),
    );
    assert_eq!(
        table.owner_of("wgtest1", &addr("192.0.2.9:2000")),
        Some(key(1))
    );
    // The same public key leaves the first device only.
    table.apply_devices(&[device(vec![]), second], t(1), t(1));
    assert_eq!(table.owner_of(DEV, &addr("192.0.2.1:1000")), None);
    assert_eq!(
        table.owner_of("wgtest1", &addr("192.0.2.9:2000")),
        Some(key(1)),
        "the other device's peer still owns its endpoint"
    );
}

#[test]
fn peers_by_device_groups_every_peer_under_its_own_device() {
    // Names where one is a prefix of another, and keys at both ends of the range.
    let named = |name: &str, keys: &[u8]| Device {
        name: name.into(),
        peers: keys
            .iter()
            .map(|&n| wg_peer(n, "192.0.2.1:1000", None))
            .collect(),
        ..device(vec![])
    };
    let mut low = wg_peer(0, "192.0.2.1:1000", None);
    low.public_key = PublicKey([0; 32]);
    let mut high = wg_peer(0, "192.0.2.1:1000", None);
    high.public_key = PublicKey([0xff; 32]);
    let mut wg1 = named("wg1", &[3, 1]);
    wg1.peers.extend([low, high]);
    let devices = [wg1, named("wg10", &[2]), named("wg1-", &[4, 5])];
    let mut table = PeerTable::new(THRESHOLD);
    table.apply_devices(&devices, t(0), t(0));
    let groups: Vec<(String, Vec<String>)> = table
        .peers_by_device()
        .into_iter()
        .map(|(device, peers)| {
            (
                device.to_owned(),
                peers
                    .map(|p| {
                        assert_eq!(p.key.device, device);
                        p.key.public_key.to_base64()[..4].to_owned()
                    })
                    .collect(),
            )
        })
        .collect();
    let expected: Vec<(String, Vec<String>)> =
        table
            .peers()
            .fold(Vec::new(), |mut groups: Vec<(String, Vec<String>)>, p| {
                let key = p.key.public_key.to_base64()[..4].to_owned();
                match groups.last_mut() {
                    Some((device, keys)) if *device == p.key.device => keys.push(key),
                    _ => groups.push((p.key.device.clone(), vec![key])),
                }
                groups
            });
    assert_eq!(groups.len(), 3);
    assert_eq!(
        groups[0].1.len(),
        4,
        "wg1 keeps its all-zero and all-ones keys"
    );
    assert_eq!(groups, expected);
}

#[test]
fn an_update_carries_the_configuration_it_replaced() {
    let mut table = table_with(vec![wg_peer(1, "192.0.2.1:1000", None)], t(0));
    let mut changed = wg_peer(1, "192.0.2.9:1000", None);
    changed.allowed_ips = vec!["10.9.0.0/16".into()];
    let changes = table.apply_devices(&[device(vec![changed])], t(1), t(1));
    let [Change::Peer {
        kind: ChangeKind::Update,
        peer,
        previous: Some(previous),
        fields,
        ..
    }] = changes.as_slice()
    else {
        panic!("one update: {:?}", names(&changes));
    };
    assert_eq!(fields, &["AllowedIPsStr", "Endpoint"]);
    assert_eq!(previous.allowed_ips, ["10.0.0.1/32"]);
    assert_eq!(previous.endpoint, Some(addr("192.0.2.1:1000")));
    assert_eq!(peer.allowed_ips, ["10.9.0.0/16"]);
    // The endpoint's owner moved with it.
    assert_eq!(table.owner_of(DEV, &addr("192.0.2.9:1000")), Some(key(1)));
    assert_eq!(table.owner_of(DEV, &addr("192.0.2.1:1000")), None);

    // Only the endpoint changes: the previous allowed IPs are the current ones.
    let moved = {
        let mut p = wg_peer(1, "192.0.2.10:1000", None);
        p.allowed_ips = vec!["10.9.0.0/16".into()];
        p
    };
    let changes = table.apply_devices(&[device(vec![moved])], t(2), t(2));
    let [Change::Peer {
        previous: Some(previous),
        ..
    }] = changes.as_slice()
    else {
        panic!("one update: {:?}", names(&changes));
    };
    assert_eq!(previous.allowed_ips, ["10.9.0.0/16"]);
}

#[test]
fn a_removed_peers_endpoint_goes_back_to_the_peer_that_shared_it() {
    // Two peers configured with one endpoint: the owner map holds one of them.
    let table_peers = vec![
        wg_peer(1, "192.0.2.1:1000", None),
        wg_peer(2, "192.0.2.1:1000", None),
    ];
    let mut table = table_with(table_peers, t(0));
    let first_owner = table.owner_of(DEV, &addr("192.0.2.1:1000"));
    assert!(first_owner.is_some());
    let stays = if first_owner == Some(key(1)) { 2 } else { 1 };
    // The owner is removed: the other peer owns the endpoint after the read.
    table.apply_devices(
        &[device(vec![wg_peer(stays, "192.0.2.1:1000", None)])],
        t(1),
        t(1),
    );
    assert_eq!(
        table.owner_of(DEV, &addr("192.0.2.1:1000")),
        Some(key(stays))
    );
    // A read that changes nothing keeps it.
    table.apply_devices(
        &[device(vec![wg_peer(stays, "192.0.2.1:1000", None)])],
        t(2),
        t(2),
    );
    assert_eq!(
        table.owner_of(DEV, &addr("192.0.2.1:1000")),
        Some(key(stays))
    );
}

#[test]
fn an_unreadable_device_keeps_its_peers_whatever_the_read_holds_for_it() {
    let mut table = table_with(vec![wg_peer(1, "192.0.2.1:1000", None)], t(0));
    // The read has only the device's header (no peers): not a removal.
    let changes = table.apply_read(&[device(vec![])], &[DEV.to_owned()], t(1), t(1));
    assert!(changes.is_empty(), "{:?}", names(&changes));
    assert!(table.peer(DEV, &key(1)).is_some());
    // Not even listed: still not gone.
    let changes = table.apply_read(&[], &[DEV.to_owned()], t(2), t(2));
    assert!(changes.is_empty(), "{:?}", names(&changes));
    assert!(table.device(DEV).is_some() && table.peer(DEV, &key(1)).is_some());
    // Readable again without the peer: now it is removed.
    let changes = table.apply_read(&[device(vec![])], &[], t(3), t(3));
    assert_eq!(names(&changes), ["peer.Delete:1[]"]);
}
