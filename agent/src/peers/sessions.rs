//! Session notices from the datapath's ring buffer: a completed handshake (the
//! connect, the moment it happens) and an endpoint change (a roam).

use std::time::SystemTime;

use super::rule::evaluate;
use super::traffic::{add_path, add_traffic};
use super::*;

impl PeerTable {
    /// Applies a session notice from the datapath (`device` resolved from its id).
    pub fn apply_notice(
        &mut self,
        device: &str,
        notice: &SessionNotice,
        now: SystemTime,
    ) -> NoticeOutcome {
        self.apply_notice_inner(device, notice, now, Some(now))
    }

    pub(super) fn apply_notice_inner(
        &mut self,
        device: &str,
        notice: &SessionNotice,
        now: SystemTime,
        wait_since: Option<SystemTime>,
    ) -> NoticeOutcome {
        let mut outcome = NoticeOutcome::default();
        match notice {
            SessionNotice::HandshakeComplete {
                endpoint,
                role,
                at,
                rtt,
                ..
            } => {
                let id = (device.to_owned(), endpoint.addr);
                let owner = self
                    .owner(&id)
                    .or_else(|| self.former.get(&id).map(|(key, _)| *key));
                let Some(public_key) = owner else {
                    if let Some(arrived) = wait_since {
                        self.pending_notices
                            .push((device.to_owned(), notice.clone(), arrived));
                        outcome.needs_refresh = true;
                    } else if let Some(state) = self.devices.get_mut(device) {
                        state.unknown.handshakes_completed += 1;
                    }
                    return outcome;
                };
                let key = PeerKey {
                    device: device.to_owned(),
                    public_key,
                };
                let device_public_key = self.devices.get(device).and_then(|d| d.public_key);
                if !self.peers.contains_key(&key) {
                    return outcome;
                }
                if let Some(rtt) = rtt {
                    self.record_rtt(&key, *at, *rtt);
                }
                let peer = self.peers.get_mut(&key).expect("peer checked above");
                match role {
                    Role::Initiator => peer.handshakes_initiated += 1,
                    Role::Responder => peer.handshakes_responded += 1,
                }
                self.handshakes_due
                    .push((key.clone(), *role, endpoint.addr, *at, *rtt));
                peer.last_handshake = peer.last_handshake.max(Some(*at));
                if peer.endpoint != Some(endpoint.addr) {
                    // A handshake from the endpoint it had before a roam: it roamed back.
                    self.move_endpoint(&key, endpoint.addr, *at, now, &mut outcome.changes);
                }
                let peer = self.peers.get_mut(&key).expect("peer checked above");
                if let Some(change) = evaluate(peer, now, self.disconnect_after, device_public_key)
                {
                    outcome.changes.push(change);
                }
            }
            SessionNotice::EndpointChanged {
                previous,
                endpoint,
                at,
                ..
            } => {
                let previous_id = (device.to_owned(), previous.addr);
                let owner = self
                    .owner(&previous_id)
                    .or_else(|| self.former.get(&previous_id).map(|(key, _)| *key));
                let Some(public_key) = owner else {
                    // Nobody owned the session's old endpoint: the next read tells.
                    outcome.needs_refresh = wait_since.is_some();
                    return outcome;
                };
                let key = PeerKey {
                    device: device.to_owned(),
                    public_key,
                };
                if self
                    .peers
                    .get(&key)
                    .is_some_and(|p| p.endpoint != Some(endpoint.addr))
                {
                    self.move_endpoint(&key, endpoint.addr, *at, now, &mut outcome.changes);
                }
            }
        }
        outcome
    }

    /// The datapath saw the peer at a new endpoint: move it now (WireGuard's endpoint
    /// list catches up at the next read) and report the roam.
    pub(super) fn move_endpoint(
        &mut self,
        key: &PeerKey,
        to: SocketAddr,
        at: SystemTime,
        now: SystemTime,
        changes: &mut Vec<Change>,
    ) {
        let device_public_key = self.devices.get(&key.device).and_then(|d| d.public_key);
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        let previous = PeerPrevious::of(peer);
        if let Some(from) = peer.endpoint {
            self.owners.remove(&(key.device.clone(), from));
            self.former
                .insert((key.device.clone(), from), (key.public_key, at));
        }
        peer.endpoint = Some(to);
        peer.endpoint_noticed_at = Some(at);
        peer.updated_at = now;
        // The first address a peer is seen at is not news.
        let first = peer.addresses_seen.is_empty();
        let new_address = (peer.remember_address(to.ip()) && !first).then_some(to.ip());
        let id = (key.device.clone(), to);
        self.former.remove(&id);
        self.owners.insert(id.clone(), key.public_key);
        // WireGuard's list catches up at the next read, which rebuilds the owners
        // (a peer that shared the old endpoint gets it back).
        self.owners_stale = true;
        if let Some(pending) = self.pending.remove(&id) {
            add_traffic(peer, &pending.counters, pending.last_rx, pending.last_tx);
            add_path(peer, &pending.path);
        }
        changes.push(Change::Peer {
            kind: ChangeKind::Update,
            peer: PeerState::clone(peer),
            device_public_key,
            fields: vec!["Endpoint"],
            new_address,
            previous: Some(previous),
        });
    }
}
