//! Device reads: devices and peers appearing, changing and disappearing, and the
//! traffic and notices that waited for a read applied after it.

use std::collections::{BTreeSet, HashSet};
use std::time::SystemTime;

use super::traffic::{add_path, add_traffic};
use super::*;

impl PeerTable {
    /// Applies a device read. `read_started` is when the read began (a roam the
    /// datapath reported after it is newer than what the read returned).
    pub fn apply_devices(
        &mut self,
        devices: &[Device],
        read_started: SystemTime,
        now: SystemTime,
    ) -> Vec<Change> {
        self.apply_read(devices, &[], read_started, now)
    }

    /// [`PeerTable::apply_devices`] of a read in which the devices named in
    /// `unreadable` exist but did not answer (a stopped or busy daemon): they and
    /// their peers stay as they were (not deleted), whatever `devices` holds for them.
    pub fn apply_read(
        &mut self,
        devices: &[Device],
        unreadable: &[String],
        read_started: SystemTime,
        now: SystemTime,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        let quiet = !self.baseline;
        let names: BTreeSet<&str> = devices
            .iter()
            .map(|d| d.name.as_str())
            .chain(unreadable.iter().map(String::as_str))
            .collect();

        let gone: Vec<String> = self
            .devices
            .keys()
            .filter(|name| !names.contains(name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.remove_device(&name, &mut changes);
        }
        for device in devices.iter().filter(|d| !unreadable.contains(&d.name)) {
            self.apply_device(device, read_started, now, quiet, &mut changes);
        }
        self.baseline = true;
        if std::mem::take(&mut self.owners_stale) {
            self.rebuild_owners();
        }

        for (id, pending) in std::mem::take(&mut self.pending) {
            match self.owner(&id) {
                // It came while this read was in flight: the next read tells.
                None if pending.since.is_some_and(|since| since >= read_started) => {
                    self.pending.insert(id, pending);
                }
                Some(public_key) => {
                    let key = PeerKey {
                        device: id.0.clone(),
                        public_key,
                    };
                    if let Some(peer) = self.peers.get_mut(&key) {
                        add_traffic(peer, &pending.counters, pending.last_rx, pending.last_tx);
                        add_path(peer, &pending.path);
                    }
                }
                None => self.add_unknown(&id, &pending.counters, now),
            }
        }
        for (device, notice, arrived) in std::mem::take(&mut self.pending_notices) {
            // One that came while this read was in flight waits for the next read
            // if this one does not know its endpoint; an older one is unknown.
            let wait = (arrived >= read_started).then_some(arrived);
            let outcome = self.apply_notice_inner(&device, &notice, now, wait);
            changes.extend(outcome.changes);
        }
        changes.extend(self.tick(now));
        changes
    }

    pub(super) fn apply_device(
        &mut self,
        device: &Device,
        read_started: SystemTime,
        now: SystemTime,
        quiet: bool,
        changes: &mut Vec<Change>,
    ) {
        match self.devices.get_mut(&device.name) {
            None => {
                let state = DeviceState {
                    name: device.name.clone(),
                    kind: device.kind,
                    public_key: device.public_key,
                    listen_port: device.listen_port,
                    fwmark: device.fwmark,
                    created_at: now,
                    updated_at: now,
                    unknown: UnknownTraffic::default(),
                    rtt: Default::default(),
                };
                if !quiet {
                    changes.push(Change::Interface {
                        kind: ChangeKind::Create,
                        device: state.clone(),
                        fields: Vec::new(),
                    });
                }
                self.devices.insert(device.name.clone(), state);
            }
            Some(state) => {
                let mut fields = Vec::new();
                if state.public_key != device.public_key {
                    state.public_key = device.public_key;
                    fields.push("PublicKey");
                }
                if state.listen_port != device.listen_port {
                    state.listen_port = device.listen_port;
                    fields.push("ListenPort");
                }
                if state.fwmark != device.fwmark {
                    state.fwmark = device.fwmark;
                    fields.push("FirewallMark");
                }
                if state.kind != device.kind {
                    state.kind = device.kind;
                    fields.push("DriverType");
                }
                if !fields.is_empty() {
                    state.updated_at = now;
                    changes.push(Change::Interface {
                        kind: ChangeKind::Update,
                        device: state.clone(),
                        fields,
                    });
                }
            }
        }
        let device_public_key = device.public_key;

        let current: HashSet<PublicKey> = device.peers.iter().map(|p| p.public_key).collect();
        let removed: Vec<PeerKey> = self
            .device_keys(&device.name)
            .filter(|k| !current.contains(&k.public_key))
            .cloned()
            .collect();
        drop(current);
        for key in removed {
            self.remove_peer(
                &key,
                device_public_key,
                DisconnectReason::PeerRemoved,
                changes,
            );
        }
        // One key, its public key replaced per peer: no allocation per known peer.
        let mut key = PeerKey {
            device: device.name.clone(),
            public_key: PublicKey([0; 32]),
        };
        for peer in &device.peers {
            key.public_key = peer.public_key;
            match self.peers.get_mut(&key) {
                None => {
                    let mut state = new_peer(key.clone(), peer, now);
                    state.name = self.names.get(&peer.public_key).cloned();
                    if !quiet {
                        changes.push(Change::Peer {
                            kind: ChangeKind::Create,
                            peer: state.clone(),
                            device_public_key,
                            fields: Vec::new(),
                            new_address: None,
                            previous: None,
                        });
                    }
                    self.peers.insert(key.clone(), Box::new(state));
                    self.owners_stale = true;
                }
                Some(state) => {
                    let Some((fields, previous)) = update_peer(state, peer, read_started) else {
                        continue;
                    };
                    state.updated_at = now;
                    let new_address = if fields.contains(&"Endpoint") {
                        self.owners_stale = true;
                        // The first address a peer is seen at is not news.
                        let first = state.addresses_seen.is_empty();
                        state
                            .endpoint
                            .map(|e| e.ip())
                            .filter(|ip| state.remember_address(*ip) && !first)
                    } else {
                        None
                    };
                    changes.push(Change::Peer {
                        kind: ChangeKind::Update,
                        peer: PeerState::clone(state),
                        device_public_key,
                        fields,
                        new_address,
                        previous: Some(previous),
                    });
                }
            }
        }
    }

    pub(super) fn remove_device(&mut self, name: &str, changes: &mut Vec<Change>) {
        let Some(device) = self.devices.remove(name) else {
            return;
        };
        let keys: Vec<PeerKey> = self.device_keys(name).cloned().collect();
        for key in keys {
            self.remove_peer(
                &key,
                device.public_key,
                DisconnectReason::DeviceRemoved,
                changes,
            );
        }
        changes.push(Change::Interface {
            kind: ChangeKind::Delete,
            device,
            fields: Vec::new(),
        });
    }

    pub(super) fn remove_peer(
        &mut self,
        key: &PeerKey,
        device_public_key: Option<PublicKey>,
        reason: DisconnectReason,
        changes: &mut Vec<Change>,
    ) {
        let Some(mut peer) = self.peers.remove(key).map(|peer| *peer) else {
            return;
        };
        // Its endpoint's owner entry goes when the read being applied rebuilds the
        // owners (one rebuild, not a scan of them per removed peer: a device of 50k
        // peers going away cost 50k scans of 100k entries).
        self.owners_stale = true;
        self.former
            .retain(|id, (owner, _)| !(id.0 == key.device && *owner == key.public_key));
        if peer.connected {
            peer.connected = false;
            peer.connected_since = None;
            changes.push(Change::Disconnected {
                peer: peer.clone(),
                device_public_key,
                reason,
            });
        }
        changes.push(Change::Peer {
            kind: ChangeKind::Delete,
            peer,
            device_public_key,
            fields: Vec::new(),
            new_address: None,
            previous: None,
        });
    }
}

pub(super) fn new_peer(key: PeerKey, peer: &Peer, now: SystemTime) -> PeerState {
    PeerState {
        key,
        endpoint: peer.endpoint,
        allowed_ips: peer.allowed_ips.clone(),
        persistent_keepalive: peer.persistent_keepalive,
        has_preshared_key: peer.has_preshared_key,
        connected: false,
        connected_since: None,
        disconnected_at: None,
        last_handshake: peer.last_handshake,
        session_start: None,
        handshakes_initiated: 0,
        handshakes_responded: 0,
        wire: WireCounters::default(),
        wg: WgCounters::first(peer.rx_bytes, peer.tx_bytes),
        last_rx: None,
        last_tx: None,
        created_at: now,
        updated_at: now,
        wg_endpoint: peer.endpoint,
        endpoint_noticed_at: None,
        addresses_seen: peer.endpoint.map(|e| e.ip()).into_iter().collect(),
        at_last_handshake: WireCounters::default(),
        name: None,
        kernel: None,
        path: Default::default(),
    }
}

/// Folds a device read into a known peer; returns the payload fields that changed
/// and the configuration before the change, or `None` when nothing a payload
/// carries changed (WireGuard's counters and handshake time are folded in either
/// way).
pub(super) fn update_peer(
    state: &mut PeerState,
    peer: &Peer,
    read_started: SystemTime,
) -> Option<(Vec<&'static str>, PeerPrevious)> {
    let mut fields = Vec::new();
    let mut previous = PeerPrevious {
        endpoint: state.endpoint,
        allowed_ips: Vec::new(),
        persistent_keepalive: state.persistent_keepalive,
        has_preshared_key: state.has_preshared_key,
    };
    let mut allowed_ips_before = None;
    if state.allowed_ips != peer.allowed_ips {
        allowed_ips_before = Some(std::mem::replace(
            &mut state.allowed_ips,
            peer.allowed_ips.clone(),
        ));
        fields.push("AllowedIPsStr");
    }
    if state.persistent_keepalive != peer.persistent_keepalive {
        state.persistent_keepalive = peer.persistent_keepalive;
        fields.push("PersistentKeepalive");
    }
    if state.has_preshared_key != peer.has_preshared_key {
        state.has_preshared_key = peer.has_preshared_key;
        fields.push("HasPresharedKey");
    }
    if peer.endpoint != state.endpoint {
        // WireGuard moved the endpoint since the last read: a roam (or a roam the
        // datapath did not report). If WireGuard still reports the endpoint of the
        // last read while the datapath saw a move after this read began, the read is
        // just older than the notice: keep the datapath's. Otherwise WireGuard is
        // right (e.g. the datapath saw spoofed data that WireGuard rejected).
        let roamed_in_wireguard = peer.endpoint != state.wg_endpoint;
        let datapath_is_newer = state
            .endpoint_noticed_at
            .is_some_and(|at| at >= read_started);
        if roamed_in_wireguard || !datapath_is_newer {
            state.endpoint = peer.endpoint;
            fields.push("Endpoint");
        }
    }
    state.wg_endpoint = peer.endpoint;
    state.wg.update(peer.rx_bytes, peer.tx_bytes);
    state.last_handshake = state.last_handshake.max(peer.last_handshake);
    if fields.is_empty() {
        return None;
    }
    previous.allowed_ips = allowed_ips_before.unwrap_or_else(|| state.allowed_ips.clone());
    Some((fields, previous))
}
