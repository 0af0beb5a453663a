//! The per-peer and per-device series, written straight from the live table into the
//! text exposition at scrape time (no second copy of per-peer state; a removed peer
//! leaves no stale series).

use std::fmt::Write as _;

use super::unix;
use crate::status::Shared;

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

/// Appends `name{labels} value` and a newline: the per-peer sample line, written
/// without `core::fmt` (tens of thousands of them per scrape at 10k peers).
fn sample(out: &mut String, name: &str, labels: &str, value: u64) {
    out.push_str(name);
    out.push('{');
    out.push_str(labels);
    out.push_str("} ");
    out.push_str(itoa::Buffer::new().format(value));
    out.push('\n');
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

/// The round-trip gauges, for the peers with a sample.
fn encode_rtt(peers: &[&crate::peers::PeerState], labels: &[String], out: &mut String) {
    let now = std::time::SystemTime::now();
    type Sample = fn(&crate::peers::PeerState, std::time::SystemTime) -> Option<f64>;
    let families: [(&str, &str, Sample); 2] = [
        (
            "wgpulse_peer_handshake_rtt_seconds",
            "Round trip of the peer's last handshake, timed by the datapath (initiation out to response in, or response out to the first data in).",
            |p, _| p.path.last_rtt().map(|s| s.seconds()),
        ),
        (
            "wgpulse_peer_handshake_rtt_min_seconds",
            "Smallest handshake round trip of the last hour.",
            |p, now| p.path.min_rtt(now).map(|s| s.seconds()),
        ),
    ];
    for (name, help, value) in families {
        header(out, name, help, "gauge");
        for (peer, labels) in peers.iter().zip(labels) {
            if let Some(seconds) = value(peer, now) {
                let _ = writeln!(out, "{name}{{{labels}}} {seconds}");
            }
        }
    }
}

/// The per-device histogram of handshake round trips.
fn encode_rtt_histograms(devices: &[&crate::peers::DeviceState], out: &mut String) {
    let name = "wgpulse_device_handshake_rtt_seconds";
    header(
        out,
        name,
        "Handshake round trips of the device's peers, timed by the datapath.",
        "histogram",
    );
    for device in devices {
        let device_label = escape(&device.name);
        let h = &device.rtt;
        for (bound, count) in h.cumulative() {
            let _ = writeln!(
                out,
                "{name}_bucket{{device=\"{device_label}\",le=\"{bound}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{device=\"{device_label}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(
            out,
            "{name}_sum{{device=\"{device_label}\"}} {}",
            h.sum_nanos as f64 / 1e9
        );
        let _ = writeln!(out, "{name}_count{{device=\"{device_label}\"}} {}", h.count);
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
    let counters: [(&str, &str, Value); 15] = [
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
        (
            "wgpulse_peer_receive_data_packets_total",
            "Distinct data messages (keepalives included) received from the peer, by their counters (wire view).",
            |p| p.path.receive.packets,
        ),
        (
            "wgpulse_peer_receive_lost_packets_total",
            "Data messages the peer numbered that never reached us (gaps in its counters).",
            |p| p.path.receive.lost,
        ),
        (
            "wgpulse_peer_receive_reordered_packets_total",
            "Data messages from the peer that arrived below the highest counter seen (late).",
            |p| p.path.receive.late,
        ),
        (
            "wgpulse_peer_receive_duplicate_packets_total",
            "Data messages from the peer whose counter was already seen (within a 64-message window).",
            |p| p.path.receive.duplicates,
        ),
        (
            "wgpulse_peer_transmit_data_packets_total",
            "Distinct data messages sent to the peer, by their counters (wire view).",
            |p| p.path.transmit.packets,
        ),
        (
            "wgpulse_peer_transmit_unsent_packets_total",
            "Data messages our WireGuard numbered for the peer that never reached the wire (local drops).",
            |p| p.path.transmit.lost,
        ),
    ];
    for (name, help, value) in counters {
        header(out, name, help, "counter");
        for (peer, labels) in peers.iter().zip(&labels) {
            sample(out, name, labels, value(peer));
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
            out.push_str(name);
            out.push('{');
            out.push_str(labels);
            out.push_str(",direction=\"");
            out.push_str(direction);
            out.push_str("\",type=\"");
            out.push_str(kind);
            out.push_str("\"} ");
            out.push_str(itoa::Buffer::new().format(value));
            out.push('\n');
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
        sample(out, name, labels, unix(peer.last_handshake).floor() as u64);
    }
    encode_rtt(&peers, &labels, out);
    let name = "wireguard_peer_connected";
    header(
        out,
        name,
        "1 while the peer's last handshake is younger than disconnect_after.",
        "gauge",
    );
    for (peer, labels) in peers.iter().zip(&labels) {
        sample(out, name, labels, u64::from(peer.connected));
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
    encode_rtt_histograms(&devices, out);
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
    fn a_sample_line_is_name_labels_value() {
        let mut out = String::new();
        sample(
            &mut out,
            "m_total",
            "device=\"wg0\"",
            18_446_744_073_709_551_615,
        );
        sample(&mut out, "m_total", "device=\"wg0\"", 0);
        assert_eq!(
            out,
            "m_total{device=\"wg0\"} 18446744073709551615\nm_total{device=\"wg0\"} 0\n"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("plain"), "plain");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
