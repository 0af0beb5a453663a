//! Prometheus metrics built at scrape time: no second copy of per-peer state, and a
//! removed peer leaves no stale series. Per-peer and per-device series are written
//! straight from the live peer table into the text exposition ([`encode_peers`]);
//! the agent's own metrics come from a `prometheus` Collector ([`AgentCollector`])
//! and the delivery metrics from the registry. Per-peer series carry only `device`
//! and `public_key` (low cardinality); endpoint, allowed IPs and name are on
//! `wireguard_peer_info`.
//!
//! Why not a Collector for the peers too: building a `MetricVec` child per peer and
//! series (label hashing, an `Arc` each, sorting) cost 75 µs per peer, 0.76 s per
//! scrape at 10k peers; writing the lines directly from the table costs a few µs per
//! peer (see the scrape benchmark).
//!
//! `wireguard_peer_receive_bytes_total` / `transmit` are WireGuard's own counters (as
//! `wg show` and the exporters report them, kept monotonic across device resets);
//! packets and everything else come from the wire view, and the wire view's bytes
//! are `wgpulse_peer_wire_receive_bytes_total` / `transmit`, so what WireGuard rejected
//! or the socket dropped is one subtraction away.

use std::fmt::Write as _;
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

/// The agent's own metrics, read from its shared state at every scrape.
pub struct AgentCollector {
    shared: Arc<Shared>,
    descs: Vec<Desc>,
}

impl AgentCollector {
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

impl Collector for AgentCollector {
    fn desc(&self) -> Vec<&Desc> {
        // The families vary with the table; describing one keeps the registry's
        // duplicate check meaningful without freezing the label sets.
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut out = Families {
            families: Vec::new(),
        };
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
            "wgpulse_kernel_mode",
            "1 while kernel-mode attribution reads kernel WireGuard's peers (kprobes), 0 when the datapath counts with the TC classifiers only.",
            &[],
            |vec| {
                vec.with_label_values(&[] as &[&str])
                    .set(i64::from(status.kernel_mode));
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
            "wgpulse_state_saves_total",
            "Writes of the peer state file.",
            &[],
            |vec| {
                vec.with_label_values(&[] as &[&str])
                    .inc_by(status.persist_saves);
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

/// A label value escaped for the text exposition.
fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains(['\\', '"', '\n']) {
        value
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        value.into()
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The kernel-mode families, for the peers that have a kernel-mode view (none
/// without kernel-mode attribution: the families are left out then).
fn encode_kernel_mode(peers: &[&crate::peers::PeerState], labels: &[String], out: &mut String) {
    use crate::peers::KernelView;
    let with_view: Vec<(&KernelView, &String)> = peers
        .iter()
        .zip(labels)
        .filter_map(|(p, l)| p.kernel.as_ref().map(|k| (k, l)))
        .collect();
    if with_view.is_empty() {
        return;
    }
    type Value = fn(&KernelView) -> Option<i64>;
    let families: [(&str, &str, &str, Value); 4] = [
        (
            "wgpulse_peer_kernel_receive_bytes_total",
            "Bytes WireGuard accepted from the peer, read from the kernel at every drain (kernel-mode attribution).",
            "counter",
            |k| Some(k.rx_bytes as i64),
        ),
        (
            "wgpulse_peer_kernel_transmit_bytes_total",
            "Bytes WireGuard sent to the peer, read from the kernel at every drain (kernel-mode attribution).",
            "counter",
            |k| Some(k.tx_bytes as i64),
        ),
        (
            "wgpulse_peer_rejected_receive_bytes",
            "Received bytes on the wire that WireGuard did not accept (invalid, replayed, unauthenticated, cookie replies, socket drops) since the first quiet drain of this run.",
            "gauge",
            |k| k.rejected_rx_bytes,
        ),
        (
            "wgpulse_peer_unaccounted_transmit_bytes",
            "Sent bytes on the wire that WireGuard's counter does not hold (cookie replies) since the first quiet drain of this run.",
            "gauge",
            |k| k.unaccounted_tx_bytes,
        ),
    ];
    for (name, help, kind, value) in families {
        header(out, name, help, kind);
        for (view, labels) in &with_view {
            if let Some(value) = value(view) {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        }
    }
}

/// Writes every per-peer and per-device family from the live table in the text
/// exposition format.
pub fn encode_peers(shared: &Shared, out: &mut String) {
    use crate::peers::PeerState;
    let table = shared.table.read().expect("not poisoned");
    let peers: Vec<&PeerState> = table.peers().collect();
    let labels: Vec<String> = peers
        .iter()
        .map(|p| {
            format!(
                "device=\"{}\",public_key=\"{}\"",
                escape(&p.key.device),
                p.key.public_key.to_base64()
            )
        })
        .collect();
    out.reserve(peers.len() * 1600);
    type Value = fn(&PeerState) -> u64;
    let counters: [(&str, &str, Value); 9] = [
        (
            "wireguard_peer_receive_bytes_total",
            "Bytes WireGuard accepted from the peer (its own counter, as wg show reports it).",
            |p| p.wg.rx_bytes,
        ),
        (
            "wireguard_peer_transmit_bytes_total",
            "Bytes WireGuard sent to the peer (its own counter, as wg show reports it).",
            |p| p.wg.tx_bytes,
        ),
        (
            "wireguard_peer_receive_packets_total",
            "Valid WireGuard datagrams received from the peer (wire view).",
            |p| p.wire.rx_packets,
        ),
        (
            "wireguard_peer_transmit_packets_total",
            "WireGuard datagrams sent to the peer (wire view).",
            |p| p.wire.tx_packets,
        ),
        (
            "wgpulse_peer_wire_receive_bytes_total",
            "UDP payload bytes of valid WireGuard datagrams received from the peer (wire view).",
            |p| p.wire.rx_bytes,
        ),
        (
            "wgpulse_peer_wire_transmit_bytes_total",
            "UDP payload bytes of WireGuard datagrams sent to the peer (wire view).",
            |p| p.wire.tx_bytes,
        ),
        (
            "wireguard_peer_handshakes_completed_total",
            "Handshakes with the peer that completed (seen by the datapath).",
            |p| p.handshakes_completed(),
        ),
        (
            "wireguard_peer_socket_drops_total",
            "Datagrams from the peer dropped before WireGuard read them.",
            |p| p.wire.socket_drops,
        ),
        (
            "wireguard_peer_invalid_packets_total",
            "Datagrams from the peer's endpoint that were not WireGuard messages.",
            |p| p.wire.rx_invalid_packets,
        ),
    ];
    for (name, help, value) in counters {
        header(out, name, help, "counter");
        for (peer, labels) in peers.iter().zip(&labels) {
            let _ = writeln!(out, "{name}{{{labels}}} {}", value(peer));
        }
    }
    encode_kernel_mode(&peers, &labels, out);
    let name = "wireguard_peer_handshakes_total";
    header(out, name, "Handshake messages on the wire by direction (rx, tx) and type (initiation, response, cookie).", "counter");
    for (peer, labels) in peers.iter().zip(&labels) {
        let h = &peer.wire.handshakes;
        for (direction, kind, value) in [
            ("rx", "initiation", h.rx_initiations),
            ("rx", "response", h.rx_responses),
            ("rx", "cookie", h.rx_cookies),
            ("tx", "initiation", h.tx_initiations),
            ("tx", "response", h.tx_responses),
            ("tx", "cookie", h.tx_cookies),
        ] {
            let _ = writeln!(
                out,
                "{name}{{{labels},direction=\"{direction}\",type=\"{kind}\"}} {value}"
            );
        }
    }
    let name = "wireguard_peer_last_handshake_seconds";
    header(
        out,
        name,
        "Unix time of the peer's last completed handshake (0: never).",
        "gauge",
    );
    for (peer, labels) in peers.iter().zip(&labels) {
        let _ = writeln!(
            out,
            "{name}{{{labels}}} {}",
            unix(peer.last_handshake).floor() as u64
        );
    }
    let name = "wireguard_peer_connected";
    header(
        out,
        name,
        "1 while the peer's last handshake is younger than disconnect_after.",
        "gauge",
    );
    for (peer, labels) in peers.iter().zip(&labels) {
        let _ = writeln!(out, "{name}{{{labels}}} {}", u8::from(peer.connected));
    }
    let name = "wireguard_peer_info";
    header(out, name, "Peer attributes (value 1).", "gauge");
    for (peer, labels) in peers.iter().zip(&labels) {
        let endpoint = peer.endpoint.map(|e| e.to_string()).unwrap_or_default();
        // The display name dashboards put in legends: the peers file's, else the
        // same default the payloads' DisplayName has ("Peer <first 8 of the key>").
        let display = match peer.name.as_ref().and_then(|n| n.name()) {
            Some(named) => escape(named).into_owned(),
            None => crate::events::payload::display_name(&peer.key.public_key),
        };
        let _ = writeln!(
            out,
            "{name}{{{labels},endpoint=\"{endpoint}\",allowed_ips=\"{}\",name=\"{display}\"}} 1",
            escape(&peer.allowed_ips.join(",")),
        );
    }
    let devices: Vec<_> = table.devices().collect();
    let name = "wireguard_device_info";
    header(out, name, "Device attributes (value 1).", "gauge");
    for device in &devices {
        let driver = match device.kind {
            crate::wg::DeviceKind::Kernel => "kernel",
            crate::wg::DeviceKind::Userspace => "userspace",
        };
        let _ = writeln!(
            out,
            "{name}{{device=\"{}\",public_key=\"{}\",listen_port=\"{}\",driver=\"{driver}\"}} 1",
            escape(&device.name),
            device.public_key.map(|k| k.to_base64()).unwrap_or_default(),
            device.listen_port
        );
    }
    type Unknown = fn(&crate::peers::UnknownTraffic) -> u64;
    let unknown: [(&str, &str, Unknown); 4] = [
        (
            "wgpulse_device_unknown_receive_packets_total",
            "Valid WireGuard datagrams from endpoints that belong to no peer.",
            |u| u.totals.rx_packets,
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
    ];
    for (name, help, value) in unknown {
        header(out, name, help, "counter");
        for device in &devices {
            let _ = writeln!(
                out,
                "{name}{{device=\"{}\"}} {}",
                escape(&device.name),
                value(&device.unknown)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("plain"), "plain");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
