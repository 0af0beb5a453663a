//! Prometheus metrics built at scrape time from the live peer table (a `Collector`,
//! like rust-prometheus's pulling gauge): no second copy of per-peer state, and a
//! removed peer leaves no stale series. Per-peer series carry only `device` and
//! `public_key` (low cardinality); endpoint, allowed IPs and name are on
//! `wireguard_peer_info`.
//!
//! `wireguard_peer_receive_bytes_total` / `transmit` are WireGuard's own counters (as
//! `wg show` and the exporters report them, kept monotonic across device resets);
//! packets and everything else come from the wire view, and the wire view's bytes
//! are `wgpulse_peer_wire_receive_bytes_total` / `transmit`, so what WireGuard rejected
//! or the socket dropped is one subtraction away.

use std::sync::Arc;
use std::time::SystemTime;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{CounterVec, GaugeVec, IntCounterVec, IntGaugeVec, Opts};

use crate::status::Shared;

fn unix(at: Option<SystemTime>) -> f64 {
    at.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The metric families of one scrape.
struct Families {
    families: Vec<MetricFamily>,
}

impl Families {
    fn counter(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
        fill: impl FnOnce(&IntCounterVec),
    ) {
        let vec = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
        fill(&vec);
        self.families.extend(vec.collect());
    }

    fn float_counter(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
        fill: impl FnOnce(&CounterVec),
    ) {
        let vec = CounterVec::new(Opts::new(name, help), labels).expect("valid metric");
        fill(&vec);
        self.families.extend(vec.collect());
    }

    fn gauge(&mut self, name: &str, help: &str, labels: &[&str], fill: impl FnOnce(&GaugeVec)) {
        let vec = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
        fill(&vec);
        self.families.extend(vec.collect());
    }

    fn int_gauge(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
        fill: impl FnOnce(&IntGaugeVec),
    ) {
        let vec = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
        fill(&vec);
        self.families.extend(vec.collect());
    }
}

/// Reads the agent's shared state at every scrape.
pub struct PeerCollector {
    shared: Arc<Shared>,
    descs: Vec<Desc>,
}

impl PeerCollector {
    /// A collector over `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        let descs = vec![Desc::new(
            "wgpulse_build_info".into(),
            "wgpulse build information.".into(),
            vec!["version".into()],
            Default::default(),
        )
        .expect("valid desc")];
        Self { shared, descs }
    }
}

impl Collector for PeerCollector {
    fn desc(&self) -> Vec<&Desc> {
        // The families vary with the table; describing one keeps the registry's
        // duplicate check meaningful without freezing the label sets.
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut out = Families {
            families: Vec::new(),
        };
        let table = self.shared.table.read().expect("not poisoned");
        let peers: Vec<_> = table.peers().collect();
        let devices: Vec<_> = table.devices().collect();
        let labels = ["device", "public_key"];
        let keys: Vec<(String, String)> = peers
            .iter()
            .map(|p| (p.key.device.clone(), p.key.public_key.to_base64()))
            .collect();
        macro_rules! per_peer_counter {
            ($name:expr, $help:expr, $value:expr) => {
                out.counter($name, $help, &labels, |vec| {
                    for (peer, (device, key)) in peers.iter().zip(&keys) {
                        #[allow(clippy::redundant_closure_call)]
                        vec.with_label_values(&[device, key]).inc_by(($value)(peer));
                    }
                });
            };
        }
        per_peer_counter!(
            "wireguard_peer_receive_bytes_total",
            "Bytes WireGuard accepted from the peer (its own counter, as wg show reports it).",
            |p: &&crate::peers::PeerState| p.wg.rx_bytes
        );
        per_peer_counter!(
            "wireguard_peer_transmit_bytes_total",
            "Bytes WireGuard sent to the peer (its own counter, as wg show reports it).",
            |p: &&crate::peers::PeerState| p.wg.tx_bytes
        );
        per_peer_counter!(
            "wireguard_peer_receive_packets_total",
            "Valid WireGuard datagrams received from the peer (wire view).",
            |p: &&crate::peers::PeerState| p.wire.rx_packets
        );
        per_peer_counter!(
            "wireguard_peer_transmit_packets_total",
            "WireGuard datagrams sent to the peer (wire view).",
            |p: &&crate::peers::PeerState| p.wire.tx_packets
        );
        per_peer_counter!(
            "wgpulse_peer_wire_receive_bytes_total",
            "UDP payload bytes of valid WireGuard datagrams received from the peer (wire view).",
            |p: &&crate::peers::PeerState| p.wire.rx_bytes
        );
        per_peer_counter!(
            "wgpulse_peer_wire_transmit_bytes_total",
            "UDP payload bytes of WireGuard datagrams sent to the peer (wire view).",
            |p: &&crate::peers::PeerState| p.wire.tx_bytes
        );
        per_peer_counter!(
            "wireguard_peer_handshakes_completed_total",
            "Handshakes with the peer that completed (seen by the datapath).",
            |p: &&crate::peers::PeerState| p.handshakes_completed()
        );
        per_peer_counter!(
            "wireguard_peer_socket_drops_total",
            "Datagrams from the peer dropped before WireGuard read them.",
            |p: &&crate::peers::PeerState| p.wire.socket_drops
        );
        per_peer_counter!(
            "wireguard_peer_invalid_packets_total",
            "Datagrams from the peer's endpoint that were not WireGuard messages.",
            |p: &&crate::peers::PeerState| p.wire.rx_invalid_packets
        );
        out.counter(
            "wireguard_peer_handshakes_total",
            "Handshake messages on the wire by direction (rx, tx) and type (initiation, response, cookie).",
            &["device", "public_key", "direction", "type"],
            |vec| {
                for (peer, (device, key)) in peers.iter().zip(&keys) {
                    let h = &peer.wire.handshakes;
                    for (direction, kind, value) in [
                        ("rx", "initiation", h.rx_initiations),
                        ("rx", "response", h.rx_responses),
                        ("rx", "cookie", h.rx_cookies),
                        ("tx", "initiation", h.tx_initiations),
                        ("tx", "response", h.tx_responses),
                        ("tx", "cookie", h.tx_cookies),
                    ] {
                        vec.with_label_values(&[device, key, direction, kind]).inc_by(value);
                    }
                }
            },
        );
        out.gauge(
            "wireguard_peer_last_handshake_seconds",
            "Unix time of the peer's last completed handshake (0: never).",
            &labels,
            |vec| {
                for (peer, (device, key)) in peers.iter().zip(&keys) {
                    vec.with_label_values(&[device, key])
                        .set(unix(peer.last_handshake).floor());
                }
            },
        );
        out.int_gauge(
            "wireguard_peer_connected",
            "1 while the peer's last handshake is younger than disconnect_after.",
            &labels,
            |vec| {
                for (peer, (device, key)) in peers.iter().zip(&keys) {
                    vec.with_label_values(&[device, key])
                        .set(i64::from(peer.connected));
                }
            },
        );
        out.int_gauge(
            "wireguard_peer_info",
            "Peer attributes (value 1).",
            &["device", "public_key", "endpoint", "allowed_ips", "name"],
            |vec| {
                for (peer, (device, key)) in peers.iter().zip(&keys) {
                    let endpoint = peer.endpoint.map(|e| e.to_string()).unwrap_or_default();
                    let name = peer
                        .name
                        .as_ref()
                        .and_then(|n| n.name.clone())
                        .unwrap_or_default();
                    vec.with_label_values(&[
                        device,
                        key,
                        &endpoint,
                        &peer.allowed_ips.join(","),
                        &name,
                    ])
                    .set(1);
                }
            },
        );
        out.int_gauge(
            "wireguard_device_info",
            "Device attributes (value 1).",
            &["device", "public_key", "listen_port", "driver"],
            |vec| {
                for device in &devices {
                    let key = device.public_key.map(|k| k.to_base64()).unwrap_or_default();
                    let driver = match device.kind {
                        crate::wg::DeviceKind::Kernel => "kernel",
                        crate::wg::DeviceKind::Userspace => "userspace",
                    };
                    vec.with_label_values(&[
                        &device.name,
                        &key,
                        &device.listen_port.to_string(),
                        driver,
                    ])
                    .set(1);
                }
            },
        );
        for (name, help, value) in [
            (
                "wgpulse_device_unknown_receive_packets_total",
                "Valid WireGuard datagrams from endpoints that belong to no peer.",
                (|u: &crate::peers::UnknownTraffic| u.totals.rx_packets)
                    as fn(&crate::peers::UnknownTraffic) -> u64,
            ),
            (
                "wgpulse_device_unknown_receive_bytes_total",
                "Their bytes.",
                |u| u.totals.rx_bytes,
            ),
            (
                "wgpulse_device_unknown_invalid_packets_total",
                "Invalid datagrams from endpoints that belong to no peer.",
                |u| u.totals.rx_invalid_packets,
            ),
            (
                "wgpulse_device_unknown_handshakes_completed_total",
                "Handshakes completed with endpoints that belong to no peer.",
                |u| u.handshakes_completed,
            ),
        ] {
            out.counter(name, help, &["device"], |vec| {
                for device in &devices {
                    vec.with_label_values(&[&device.name])
                        .inc_by(value(&device.unknown));
                }
            });
        }
        drop(table);

        let status = self.shared.status.read().expect("not poisoned").clone();
        out.gauge(
            "wgpulse_drain_duration_seconds",
            "Duration of the last drain of the datapath maps.",
            &[],
            |vec| {
                vec.with_label_values(&[] as &[&str])
                    .set(status.last_drain.as_secs_f64());
            },
        );
        out.counter(
            "wgpulse_drains_total",
            "Drains of the datapath maps.",
            &[],
            |vec| {
                vec.with_label_values(&[] as &[&str]).inc_by(status.drains);
            },
        );
        out.int_gauge(
            "wgpulse_map_entries",
            "Entries in the per-endpoint map.",
            &[],
            |vec| {
                vec.with_label_values(&[] as &[&str])
                    .set(status.map_entries as i64);
            },
        );
        out.int_gauge(
            "wgpulse_map_capacity",
            "Capacity of the per-endpoint map (max_peers).",
            &[],
            |vec| {
                vec.with_label_values(&[] as &[&str])
                    .set(i64::from(status.map_capacity));
            },
        );
        out.counter(
            "wgpulse_map_overflow_packets_total",
            "Datagrams not counted per endpoint because the map was full.",
            &[],
            |vec| {
                vec.with_label_values(&[] as &[&str])
                    .inc_by(status.globals.overflow_packets);
            },
        );
        out.counter(
            "wgpulse_ringbuf_lost_events_total",
            "Session notices lost because the ring buffer was full.",
            &[],
            |vec| {
                vec.with_label_values(&[] as &[&str])
                    .inc_by(status.globals.events_lost);
            },
        );
        out.counter(
            "wgpulse_session_notices_total",
            "Session notices read from the ring buffer.",
            &[],
            |vec| {
                vec.with_label_values(&[] as &[&str]).inc_by(status.notices);
            },
        );
        out.counter(
            "wgpulse_state_save_failures_total",
            "Failed writes of the peer state file.",
            &[],
            |vec| {
                vec.with_label_values(&[] as &[&str])
                    .inc_by(status.persist_failures);
            },
        );
        out.counter(
            "wgpulse_alerts_total",
            "Alerts raised, by type.",
            &["type"],
            |vec| {
                for (kind, count) in &status.alerts {
                    vec.with_label_values(&[kind]).inc_by(*count);
                }
            },
        );
        out.counter(
            "wgpulse_events_total",
            "Events emitted, by entity and event.",
            &["entity", "event"],
            |vec| {
                for (kind, count) in self.shared.events.by_kind() {
                    let (entity, event) = kind.split_once('.').unwrap_or((&kind, ""));
                    vec.with_label_values(&[entity, event]).inc_by(count);
                }
            },
        );
        out.float_counter(
            "wgpulse_events_blocked_seconds_total",
            "Time the pipeline waited on a full event queue.",
            &[],
            |vec| {
                vec.with_label_values(&[] as &[&str])
                    .inc_by(self.shared.events.blocked_seconds())
            },
        );
        out.int_gauge(
            "wgpulse_build_info",
            "wgpulse build information (value 1).",
            &["version"],
            |vec| {
                vec.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
            },
        );
        out.families
    }
}
