//! The per-peer and per-device series, written from a [`Snapshot`] of the live table
//! into the text exposition in chunks (no second copy of per-peer state between
//! scrapes; a removed peer leaves no stale series).

use std::fmt::Write as _;

use super::chunks::{ChunkWriter, Gone};
use super::snapshot::{Snapshot, COUNTERS as COUNTER_COUNT};

/// A label value escaped for the text exposition.
pub(super) fn escape(value: &str) -> std::borrow::Cow<'_, str> {
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
/// without `core::fmt` (hundreds of thousands of them per scrape at 10k peers).
fn sample(out: &mut String, name: &str, labels: &str, value: u64) {
    out.push_str(name);
    out.push('{');
    out.push_str(labels);
    out.push_str("} ");
    out.push_str(itoa::Buffer::new().format(value));
    out.push('\n');
}

fn header(out: &mut ChunkWriter<'_>, name: &str, help: &str, kind: &str) -> Result<(), Gone> {
    let _ = writeln!(out.text(), "# HELP {name} {help}\n# TYPE {name} {kind}");
    out.line_done()
}

/// The per-peer counter families, in the order of [`Snapshot::counters`].
pub const COUNTERS: [(&str, &str); COUNTER_COUNT] = [
    (
        "wireguard_peer_receive_bytes_total",
        "Bytes WireGuard accepted from the peer (its own counter, as wg show reports it).",
    ),
    (
        "wireguard_peer_transmit_bytes_total",
        "Bytes WireGuard sent to the peer (its own counter, as wg show reports it).",
    ),
    (
        "wireguard_peer_receive_packets_total",
        "Valid WireGuard datagrams received from the peer (wire view).",
    ),
    (
        "wireguard_peer_transmit_packets_total",
        "WireGuard datagrams sent to the peer (wire view).",
    ),
    (
        "wgpulse_peer_wire_receive_bytes_total",
        "UDP payload bytes of valid WireGuard datagrams received from the peer (wire view).",
    ),
    (
        "wgpulse_peer_wire_transmit_bytes_total",
        "UDP payload bytes of WireGuard datagrams sent to the peer (wire view).",
    ),
    (
        "wireguard_peer_handshakes_completed_total",
        "Handshakes with the peer that completed (seen by the datapath).",
    ),
    (
        "wireguard_peer_socket_drops_total",
        "Datagrams from the peer dropped before WireGuard read them.",
    ),
    (
        "wireguard_peer_invalid_packets_total",
        "Datagrams from the peer's endpoint that were not WireGuard messages.",
    ),
    (
        "wgpulse_peer_receive_data_packets_total",
        "Distinct data messages (keepalives included) received from the peer, by their counters (wire view).",
    ),
    (
        "wgpulse_peer_receive_lost_packets_total",
        "Data messages the peer numbered that never reached us (gaps in its counters).",
    ),
    (
        "wgpulse_peer_receive_reordered_packets_total",
        "Data messages from the peer that arrived below the highest counter seen (late).",
    ),
    (
        "wgpulse_peer_receive_duplicate_packets_total",
        "Data messages from the peer whose counter was already seen (within a 64-message window).",
    ),
    (
        "wgpulse_peer_transmit_data_packets_total",
        "Distinct data messages sent to the peer, by their counters (wire view).",
    ),
    (
        "wgpulse_peer_transmit_unsent_packets_total",
        "Data messages our WireGuard numbered for the peer that never reached the wire (local drops).",
    ),
];

/// The kernel-mode families: name, help, type, in the order of [`Snapshot::kernel`].
const KERNEL_MODE: [(&str, &str, &str); 4] = [
    (
        "wgpulse_peer_kernel_receive_bytes_total",
        "Bytes WireGuard accepted from the peer, read from the kernel at every drain (kernel-mode attribution).",
        "counter",
    ),
    (
        "wgpulse_peer_kernel_transmit_bytes_total",
        "Bytes WireGuard sent to the peer, read from the kernel at every drain (kernel-mode attribution).",
        "counter",
    ),
    (
        "wgpulse_peer_rejected_receive_bytes",
        "Received bytes on the wire that WireGuard did not accept (invalid, replayed, unauthenticated, cookie replies, socket drops) since the first quiet drain of this run.",
        "gauge",
    ),
    (
        "wgpulse_peer_unaccounted_transmit_bytes",
        "Sent bytes on the wire that WireGuard's counter does not hold (cookie replies) since the first quiet drain of this run.",
        "gauge",
    ),
];

/// The round-trip gauges, in the order of [`Snapshot::rtt`].
const RTT: [(&str, &str); 2] = [
    (
        "wgpulse_peer_handshake_rtt_seconds",
        "Round trip of the peer's last handshake, timed by the datapath (initiation out to response in, or response out to the first data in).",
    ),
    (
        "wgpulse_peer_handshake_rtt_min_seconds",
        "Smallest handshake round trip of the last hour.",
    ),
];

/// The kernel-mode families, for the peers that have a kernel-mode view (none
/// without kernel-mode attribution: the families are left out then).
fn encode_kernel_mode(snapshot: &Snapshot, out: &mut ChunkWriter<'_>) -> Result<(), Gone> {
    if snapshot.kernel.iter().all(Option::is_none) {
        return Ok(());
    }
    for (i, (name, help, kind)) in KERNEL_MODE.into_iter().enumerate() {
        header(out, name, help, kind)?;
        for (peer, kernel) in snapshot.kernel.iter().enumerate() {
            if let Some(value) = kernel.and_then(|k| k[i]) {
                let labels = snapshot.labels(peer);
                let _ = writeln!(out.text(), "{name}{{{labels}}} {value}");
                out.line_done()?;
            }
        }
    }
    Ok(())
}

/// The round-trip gauges, for the peers with a sample.
fn encode_rtt(snapshot: &Snapshot, out: &mut ChunkWriter<'_>) -> Result<(), Gone> {
    for ((name, help), column) in RTT.into_iter().zip(&snapshot.rtt) {
        header(out, name, help, "gauge")?;
        for (peer, seconds) in column.iter().enumerate() {
            if let Some(seconds) = seconds {
                let labels = snapshot.labels(peer);
                let _ = writeln!(out.text(), "{name}{{{labels}}} {seconds}");
                out.line_done()?;
            }
        }
    }
    Ok(())
}

/// The per-device histogram of handshake round trips.
fn encode_rtt_histograms(snapshot: &Snapshot, out: &mut ChunkWriter<'_>) -> Result<(), Gone> {
    let name = "wgpulse_device_handshake_rtt_seconds";
    header(
        out,
        name,
        "Handshake round trips of the device's peers, timed by the datapath.",
        "histogram",
    )?;
    for device in &snapshot.devices {
        let device_label = escape(&device.name);
        let h = &device.rtt;
        let text = out.text();
        for (bound, count) in h.cumulative() {
            let _ = writeln!(
                text,
                "{name}_bucket{{device=\"{device_label}\",le=\"{bound}\"}} {count}"
            );
        }
        let _ = writeln!(
            text,
            "{name}_bucket{{device=\"{device_label}\",le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(
            text,
            "{name}_sum{{device=\"{device_label}\"}} {}",
            h.sum_nanos as f64 / 1e9
        );
        let _ = writeln!(
            text,
            "{name}_count{{device=\"{device_label}\"}} {}",
            h.count
        );
        out.line_done()?;
    }
    Ok(())
}

/// Writes every per-peer and per-device family of `snapshot` in the text exposition
/// format; stops when the reader of the chunks went away.
pub fn encode_peers(snapshot: &Snapshot, out: &mut ChunkWriter<'_>) -> Result<(), Gone> {
    for ((name, help), column) in COUNTERS.into_iter().zip(&snapshot.counters) {
        header(out, name, help, "counter")?;
        for (peer, &value) in column.iter().enumerate() {
            sample(out.text(), name, snapshot.labels(peer), value);
            out.line_done()?;
        }
    }
    encode_kernel_mode(snapshot, out)?;
    let name = "wireguard_peer_handshakes_total";
    header(out, name, "Handshake messages on the wire by direction (rx, tx) and type (initiation, response, cookie).", "counter")?;
    const KINDS: [(&str, &str); 6] = [
        ("rx", "initiation"),
        ("rx", "response"),
        ("rx", "cookie"),
        ("tx", "initiation"),
        ("tx", "response"),
        ("tx", "cookie"),
    ];
    for (peer, handshakes) in snapshot.handshakes.iter().enumerate() {
        let labels = snapshot.labels(peer);
        let text = out.text();
        for ((direction, kind), &value) in KINDS.into_iter().zip(handshakes) {
            text.push_str(name);
            text.push('{');
            text.push_str(labels);
            text.push_str(",direction=\"");
            text.push_str(direction);
            text.push_str("\",type=\"");
            text.push_str(kind);
            text.push_str("\"} ");
            text.push_str(itoa::Buffer::new().format(value));
            text.push('\n');
        }
        out.line_done()?;
    }
    let name = "wireguard_peer_last_handshake_seconds";
    header(
        out,
        name,
        "Unix time of the peer's last completed handshake (0: never).",
        "gauge",
    )?;
    for (peer, &seconds) in snapshot.last_handshake.iter().enumerate() {
        sample(out.text(), name, snapshot.labels(peer), seconds);
        out.line_done()?;
    }
    encode_rtt(snapshot, out)?;
    let name = "wireguard_peer_connected";
    header(
        out,
        name,
        "1 while the peer's last handshake is younger than disconnect_after.",
        "gauge",
    )?;
    for (peer, &connected) in snapshot.connected.iter().enumerate() {
        sample(
            out.text(),
            name,
            snapshot.labels(peer),
            u64::from(connected),
        );
        out.line_done()?;
    }
    let name = "wireguard_peer_info";
    header(out, name, "Peer attributes (value 1).", "gauge")?;
    for peer in 0..snapshot.len() {
        let text = out.text();
        text.push_str(name);
        text.push('{');
        text.push_str(snapshot.labels(peer));
        text.push(',');
        text.push_str(snapshot.info(peer));
        text.push_str("} 1\n");
        out.line_done()?;
    }
    let name = "wireguard_device_info";
    header(out, name, "Device attributes (value 1).", "gauge")?;
    for device in &snapshot.devices {
        let driver = match device.kind {
            crate::wg::DeviceKind::Kernel => "kernel",
            crate::wg::DeviceKind::Userspace => "userspace",
        };
        let _ = writeln!(
            out.text(),
            "{name}{{device=\"{}\",public_key=\"{}\",listen_port=\"{}\",driver=\"{driver}\"}} 1",
            escape(&device.name),
            device.public_key.map(|k| k.to_base64()).unwrap_or_default(),
            device.listen_port
        );
        out.line_done()?;
    }
    encode_rtt_histograms(snapshot, out)?;
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
        header(out, name, help, "counter")?;
        for device in &snapshot.devices {
            let _ = writeln!(
                out.text(),
                "{name}{{device=\"{}\"}} {}",
                escape(&device.name),
                value(&device.unknown)
            );
            out.line_done()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wg::PublicKey;

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

    /// A table with two devices (one name needs escaping), peers with and without
    /// an endpoint and with several allowed IPs.
    fn table() -> crate::peers::PeerTable {
        use crate::wg::{Device, DeviceKind, Peer, PublicKey};
        let device = |name: &str, keys: std::ops::Range<u8>| Device {
            name: name.into(),
            kind: DeviceKind::Userspace,
            public_key: Some(PublicKey([9; 32])),
            listen_port: 51820,
            fwmark: 0,
            peers: keys
                .map(|n| {
                    let mut peer = Peer::new(PublicKey([n; 32]));
                    peer.endpoint =
                        (n % 2 == 0).then(|| format!("192.0.2.{n}:51820").parse().unwrap());
                    peer.allowed_ips = vec![format!("10.0.0.{n}/32"), format!("fd00::{n}/128")];
                    peer.rx_bytes = u64::from(n) * 1000;
                    peer
                })
                .collect(),
        };
        let mut table = crate::peers::PeerTable::new(std::time::Duration::from_secs(180));
        let now = std::time::SystemTime::now();
        table.apply_devices(&[device("wg0", 1..40), device("wg\"x", 40..45)], now, now);
        table
    }

    #[test]
    fn the_text_does_not_depend_on_the_chunk_size_and_chunks_end_lines() {
        let snapshot = Snapshot::take(&table(), std::time::SystemTime::now());
        let whole = super::super::chunks::collect(1 << 30, |out| encode_peers(&snapshot, out));
        let mut chunks = Vec::new();
        let mut writer = ChunkWriter::new(
            1,
            Box::new(|chunk| {
                chunks.push(chunk);
                Ok(())
            }),
        );
        encode_peers(&snapshot, &mut writer).unwrap();
        writer.finish().unwrap();
        assert!(
            chunks.len() > 44 * 15,
            "about a chunk per line: {}",
            chunks.len()
        );
        assert!(chunks.iter().all(|c| c.ends_with('\n')));
        assert_eq!(chunks.concat(), whole);
        // Every peer in every per-peer family, under its own device.
        let key = PublicKey([41; 32]).to_base64();
        let labels = format!("device=\"wg\\\"x\",public_key=\"{key}\"");
        assert!(whole.contains(&format!(
            "wireguard_peer_receive_bytes_total{{{labels}}} 41000\n"
        )));
        assert!(whole.contains(&format!(
            "wireguard_peer_info{{{labels},endpoint=\"\",allowed_ips=\"10.0.0.41/32,fd00::41/128\",name=\"Peer {}\"}} 1\n",
            &key[..8]
        )));
        let key = PublicKey([2; 32]).to_base64();
        assert!(whole.contains(&format!(
            "wireguard_peer_info{{device=\"wg0\",public_key=\"{key}\",endpoint=\"192.0.2.2:51820\","
        )));
        for (name, _) in COUNTERS {
            assert_eq!(whole.matches(&format!("\n{name}{{")).count(), 44, "{name}");
        }
        assert_eq!(
            whole.matches("\nwireguard_peer_handshakes_total{").count(),
            44 * 6
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("plain"), "plain");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
