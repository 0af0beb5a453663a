//! The numbers a scrape exports, copied out of the peer table under its read lock
//! (about 300 bytes a peer, against about 1.6 kB a peer of exposition text), so that
//! the text is written and sent without holding the lock: a client that reads slowly
//! never stalls the pipeline.

use std::fmt::Write as _;
use std::ops::Range;
use std::time::SystemTime;

use super::unix;
use crate::peers::{DeviceState, PeerState, PeerTable};

/// How many per-peer counter families [`Snapshot::counters`] holds, in the order of
/// [`super::peers::COUNTERS`].
pub const COUNTERS: usize = 15;

/// What one scrape exports, a column per family (a family's pass over the peers
/// then reads only its own values: 80 kB at 10k peers, not every peer's row).
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Each peer's `device="...",public_key="..."`, back to back in [`Self::text`],
    /// in the table's order (by device, then key): where each ends.
    pub label_ends: Vec<usize>,
    /// Each peer's `wireguard_peer_info` labels after `public_key` (endpoint,
    /// allowed IPs, name), escaped, in [`Self::text`].
    pub info: Vec<Range<usize>>,
    /// The counter families' values, a column each, in the order of
    /// [`super::peers::COUNTERS`].
    pub counters: [Vec<u64>; COUNTERS],
    /// Handshake messages: rx initiation, response, cookie; tx the same.
    pub handshakes: Vec<[u64; 6]>,
    /// Unix seconds of the last completed handshake (0: never).
    pub last_handshake: Vec<u64>,
    /// Whether each peer is connected.
    pub connected: Vec<bool>,
    /// The kernel-mode view: kernel rx and tx bytes, rejected rx bytes and
    /// unaccounted tx bytes (`None`: no kernel-mode view).
    pub kernel: Vec<Option<[Option<i64>; 4]>>,
    /// Last handshake round trip and the hour's smallest, seconds.
    pub rtt: [Vec<Option<f64>>; 2],
    /// Every device.
    pub devices: Vec<DeviceState>,
    /// Text the columns refer to by range.
    pub text: String,
}

impl Snapshot {
    /// Copies what the scrape needs out of `table` at `now`.
    pub fn take(table: &PeerTable, now: SystemTime) -> Self {
        let n = table.peer_count();
        let mut snapshot = Self {
            label_ends: Vec::with_capacity(n),
            info: Vec::with_capacity(n),
            counters: std::array::from_fn(|_| Vec::with_capacity(n)),
            handshakes: Vec::with_capacity(n),
            last_handshake: Vec::with_capacity(n),
            connected: Vec::with_capacity(n),
            kernel: Vec::with_capacity(n),
            rtt: [Vec::with_capacity(n), Vec::with_capacity(n)],
            devices: table.devices().cloned().collect(),
            text: String::with_capacity(n * 160),
        };
        for (device, peers) in table.peers_by_device() {
            let escaped = super::peers::escape(device);
            for peer in peers {
                snapshot.push(&escaped, peer, now);
            }
        }
        snapshot
    }

    /// Appends one peer of the device whose escaped name is `device`.
    fn push(&mut self, device: &str, peer: &PeerState, now: SystemTime) {
        let snapshot = self;
        {
            let key = peer.key.public_key.to_base64();
            let text = &mut snapshot.text;
            text.push_str("device=\"");
            text.push_str(device);
            text.push_str("\",public_key=\"");
            text.push_str(&key);
            text.push('"');
            snapshot.label_ends.push(text.len());
            let info = info(text, peer, &key);
            snapshot.info.push(info);
            for (column, value) in snapshot.counters.iter_mut().zip(counters(peer)) {
                column.push(value);
            }
            let h = &peer.wire.handshakes;
            snapshot.handshakes.push([
                h.rx_initiations,
                h.rx_responses,
                h.rx_cookies,
                h.tx_initiations,
                h.tx_responses,
                h.tx_cookies,
            ]);
            snapshot
                .last_handshake
                .push(unix(peer.last_handshake).floor() as u64);
            snapshot.connected.push(peer.connected);
            snapshot.kernel.push(peer.kernel.as_ref().map(|k| {
                [
                    Some(k.rx_bytes as i64),
                    Some(k.tx_bytes as i64),
                    k.rejected_rx_bytes,
                    k.unaccounted_tx_bytes,
                ]
            }));
            snapshot.rtt[0].push(peer.path.last_rtt().map(|s| s.seconds()));
            snapshot.rtt[1].push(peer.path.min_rtt(now).map(|s| s.seconds()));
        }
    }

    /// How many peers.
    pub fn len(&self) -> usize {
        self.label_ends.len()
    }

    /// Whether there are no peers.
    pub fn is_empty(&self) -> bool {
        self.label_ends.is_empty()
    }

    /// Peer `i`'s `device="...",public_key="..."`.
    #[inline]
    pub fn labels(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.info[i - 1].end };
        &self.text[start..self.label_ends[i]]
    }

    /// Peer `i`'s info labels after `public_key`.
    #[inline]
    pub fn info(&self, i: usize) -> &str {
        &self.text[self.info[i].clone()]
    }
}

/// Writes the peer's info labels (its key in base64 is `key`) into `text`.
fn info(text: &mut String, peer: &PeerState, key: &str) -> Range<usize> {
    let start = text.len();
    text.push_str("endpoint=\"");
    if let Some(endpoint) = peer.endpoint {
        let _ = write!(text, "{endpoint}");
    }
    text.push_str("\",allowed_ips=\"");
    for (i, ips) in peer.allowed_ips.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&super::peers::escape(ips));
    }
    // The display name dashboards put in legends: the peers file's, else the same
    // default the payloads' DisplayName has ("Peer <first 8 of the key>").
    text.push_str("\",name=\"");
    match peer.name.as_ref().and_then(|n| n.name()) {
        Some(named) => text.push_str(&super::peers::escape(named)),
        None => {
            use crate::events::payload::{DISPLAY_NAME_KEY_CHARS, DISPLAY_NAME_PREFIX};
            text.push_str(DISPLAY_NAME_PREFIX);
            text.push_str(&key[..DISPLAY_NAME_KEY_CHARS]);
        }
    }
    text.push('"');
    start..text.len()
}

/// The counter families' values, in the order of [`super::peers::COUNTERS`].
fn counters(p: &PeerState) -> [u64; COUNTERS] {
    [
        p.wg.rx_bytes,
        p.wg.tx_bytes,
        p.wire.rx_packets,
        p.wire.tx_packets,
        p.wire.rx_bytes,
        p.wire.tx_bytes,
        p.handshakes_completed(),
        p.wire.socket_drops,
        p.wire.rx_invalid_packets,
        p.path.receive.packets,
        p.path.receive.lost,
        p.path.receive.late,
        p.path.receive.duplicates,
        p.path.transmit.packets,
        p.path.transmit.lost,
    ]
}
