//! The connection rule: connected while the last completed handshake is younger than
//! `disconnect_after` (see the module documentation of [`super`]).

use std::time::{Duration, SystemTime};

use super::*;

impl PeerTable {
    /// Applies the connection rule at `now`: connects peers with a fresh handshake
    /// and disconnects those whose last handshake expired.
    pub fn tick(&mut self, now: SystemTime) -> Vec<Change> {
        let mut changes = Vec::new();
        for peer in self.peers.values_mut() {
            // Most peers do not change: only those that do need their device's key.
            if peer.connected == fresh(peer, now, self.disconnect_after) {
                continue;
            }
            let device_public_key = self
                .devices
                .get(&peer.key.device)
                .and_then(|d| d.public_key);
            if let Some(change) = evaluate(peer, now, self.disconnect_after, device_public_key) {
                changes.push(change);
            }
        }
        changes
    }

    /// The earliest time a connected peer's handshake expires (when [`PeerTable::tick`]
    /// has something to do), if any peer is connected.
    pub fn next_expiry(&self) -> Option<SystemTime> {
        self.peers
            .values()
            .filter(|p| p.connected)
            .filter_map(|p| p.last_handshake)
            .min()
            .map(|t| t + self.disconnect_after)
    }
}

/// Whether the peer's last handshake is younger than `disconnect_after` at `now`.
pub(super) fn fresh(peer: &PeerState, now: SystemTime, disconnect_after: Duration) -> bool {
    peer.last_handshake.is_some_and(|handshake| {
        // A handshake "in the future" (clock stepped back) counts as fresh.
        now.duration_since(handshake)
            .map_or(true, |age| age < disconnect_after)
    })
}

/// The connection rule for one peer (see the module documentation).
pub(super) fn evaluate(
    peer: &mut PeerState,
    now: SystemTime,
    disconnect_after: Duration,
    device_public_key: Option<PublicKey>,
) -> Option<Change> {
    match (peer.connected, fresh(peer, now, disconnect_after)) {
        (false, true) => {
            peer.connected = true;
            peer.connected_since = peer.last_handshake;
            peer.session_start = peer.last_handshake;
            Some(Change::Connected {
                peer: peer.clone(),
                device_public_key,
            })
        }
        (true, false) => {
            peer.connected = false;
            peer.connected_since = None;
            peer.disconnected_at = peer.last_handshake.map(|t| t + disconnect_after);
            Some(Change::Disconnected {
                peer: peer.clone(),
                device_public_key,
                reason: DisconnectReason::HandshakeExpired,
            })
        }
        _ => None,
    }
}
