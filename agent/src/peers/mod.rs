//! The live peer table: turns WireGuard's device reads, the datapath's drained
//! per-endpoint counters and its handshake notices into per-peer state, and reports
//! every change (connect, disconnect, peer and device create/update/delete) in the
//! order it happened. Pure logic: the caller passes the time, so timelines can be
//! simulated in tests.
//!
//! # When a peer is connected
//! A peer is connected while its last *completed* handshake is younger than
//! `disconnect_after` (default 180 s, WireGuard's REJECT_AFTER_TIME): after that
//! WireGuard itself refuses the session's keys, so the peer cannot be exchanging data.
//! A peer that keeps talking rekeys every REKEY_AFTER_TIME (120 s), well inside the
//! threshold, so it never flaps; an idle peer without persistent keepalive stops
//! handshaking and is disconnected 180 s after its last handshake, which is the truth
//! (wg-portal's 120 s rule produced false flaps: wg-portal #641). Nothing else (silence
//! on the wire, a missed poll) disconnects a peer, and only a completed handshake
//! connects one: from the datapath's ring buffer the moment it completes, or from
//! WireGuard's own latest-handshake at a device read (the fallback for handshakes the
//! datapath did not see, e.g. before the agent started).
//!
//! # Attribution
//! Each drained endpoint belongs to the peer whose current endpoint it is on that
//! device. After a roam the old endpoint stays the peer's until the next drain (its
//! last packets were counted before the move), then it is released. Traffic of an
//! endpoint nobody owns waits for the next device read (a new peer's first packets
//! arrive before WireGuard's endpoint list is re-read); if still nobody owns it, it
//! goes to the device's `unknown` counters, never into a peer.
//!
//! # Peer removed while connected
//! The table reports a `Disconnected` (reason `PeerRemoved`) first and then the peer's
//! `Delete`: a receiver that pairs every connect with a disconnect sees the session
//! closed, and no event names the peer after its delete.

pub mod names;
pub mod persist;
pub mod save_schedule;
pub mod state;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

pub use state::{
    DeviceState, HandshakeMessages, KernelView, PeerKey, PeerState, UnknownEndpoint,
    UnknownTraffic, WgCounters, WireCounters, UNKNOWN_ENDPOINTS_KEPT,
};

use crate::snapshot::{has_traffic, EndpointStats, Role, SessionNotice};
use crate::wg::{Device, Peer, PublicKey};

/// Create, update or delete of a peer or a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// It appeared.
    Create,
    /// Its configuration changed.
    Update,
    /// It disappeared.
    Delete,
}

/// Why a peer stopped being connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectReason {
    /// Its last handshake became older than `disconnect_after`.
    HandshakeExpired,
    /// It was removed from its device.
    PeerRemoved,
    /// Its device disappeared.
    DeviceRemoved,
}

/// One change, in the order it happened; [`crate::events`] turns it into an event.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// A device appeared, changed (listen port, key, fwmark) or disappeared.
    Interface {
        /// Create, update or delete.
        kind: ChangeKind,
        /// The device after the change (before it, for a delete).
        device: DeviceState,
        /// Payload field names that changed (updates only).
        fields: Vec<&'static str>,
    },
    /// A peer appeared, changed (allowed IPs, keepalive, endpoint: a roam, preshared
    /// key set or unset) or disappeared.
    Peer {
        /// Create, update or delete.
        kind: ChangeKind,
        /// The peer after the change (before it, for a delete).
        peer: PeerState,
        /// Public key of the peer's device.
        device_public_key: Option<PublicKey>,
        /// Payload field names that changed (updates only).
        fields: Vec<&'static str>,
        /// The endpoint moved to an address the peer never used before.
        new_address: Option<IpAddr>,
    },
    /// A handshake completed (the handshake feed), reported at the first drain after
    /// it so the counters include every packet up to it.
    Handshake {
        /// The peer after the handshake.
        peer: PeerState,
        /// Public key of the peer's device.
        device_public_key: Option<PublicKey>,
        /// Our role.
        role: Role,
        /// The endpoint it completed from.
        endpoint: SocketAddr,
        /// When it completed.
        at: SystemTime,
        /// Wire counters since the previous completed handshake.
        since_previous: WireCounters,
    },
    /// A peer became connected.
    Connected {
        /// The peer after the change.
        peer: PeerState,
        /// Public key of the peer's device.
        device_public_key: Option<PublicKey>,
    },
    /// A peer stopped being connected.
    Disconnected {
        /// The peer after the change.
        peer: PeerState,
        /// Public key of the peer's device.
        device_public_key: Option<PublicKey>,
        /// Why.
        reason: DisconnectReason,
    },
}

/// A drained endpoint with its device resolved to a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireSample {
    /// The WireGuard device whose port the traffic used.
    pub device: String,
    /// The remote endpoint.
    pub endpoint: SocketAddr,
    /// Counters since the previous drain.
    pub delta: EndpointStats,
    /// Last datagram received from the endpoint.
    pub last_rx: Option<SystemTime>,
    /// Last datagram sent to it.
    pub last_tx: Option<SystemTime>,
}

/// What applying a session notice did.
#[derive(Debug, Default)]
pub struct NoticeOutcome {
    /// The changes it caused.
    pub changes: Vec<Change>,
    /// The notice's endpoint belongs to no peer yet: re-read the devices now (the
    /// notice is kept and applied again after the read).
    pub needs_refresh: bool,
}

type EndpointId = (String, SocketAddr);

/// Traffic of an endpoint nobody owned at drain time, kept until the next device read.
#[derive(Clone, Debug, Default)]
struct Pending {
    counters: WireCounters,
    last_rx: Option<SystemTime>,
    last_tx: Option<SystemTime>,
}

/// The live table of devices and peers. See the module documentation for the rules.
#[derive(Debug)]
pub struct PeerTable {
    disconnect_after: Duration,
    /// Devices have been read (or state restored) at least once: from then on, every
    /// new device or peer is a `Create`.
    baseline: bool,
    devices: BTreeMap<String, DeviceState>,
    peers: BTreeMap<PeerKey, PeerState>,
    /// Current endpoints: who owns which.
    owners: HashMap<EndpointId, PublicKey>,
    /// Endpoints left by a roam, still the peer's until the first drain after the roam.
    former: HashMap<EndpointId, (PublicKey, SystemTime)>,
    pending: HashMap<EndpointId, Pending>,
    pending_notices: Vec<(String, SessionNotice)>,
    /// Completed handshakes to report at the next drain.
    handshakes_due: Vec<(PeerKey, Role, SocketAddr, SystemTime)>,
    /// Names from `peers_file`.
    names: names::Names,
}

impl PeerTable {
    /// An empty table: the first device read is the baseline (no create events).
    pub fn new(disconnect_after: Duration) -> Self {
        Self {
            disconnect_after,
            baseline: false,
            devices: BTreeMap::new(),
            peers: BTreeMap::new(),
            owners: HashMap::new(),
            former: HashMap::new(),
            pending: HashMap::new(),
            pending_notices: Vec::new(),
            handshakes_due: Vec::new(),
            names: HashMap::new(),
        }
    }

    /// Replaces the names from `peers_file`; every peer's `name` follows at once.
    pub fn set_names(&mut self, names: names::Names) {
        for peer in self.peers.values_mut() {
            peer.name = names.get(&peer.key.public_key).cloned();
        }
        self.names = names;
    }

    /// A table resumed from persisted state: the first device read reports what
    /// changed while the agent was down, and connect/disconnect only for peers whose
    /// state changed.
    pub fn restore(saved: persist::SavedState, disconnect_after: Duration) -> Self {
        let mut table = Self::new(disconnect_after);
        table.baseline = true;
        table.devices = saved
            .devices
            .into_iter()
            .map(|d| (d.name.clone(), d))
            .collect();
        table.peers = saved
            .peers
            .into_iter()
            .filter(|p| table.devices.contains_key(&p.key.device))
            .map(|p| (p.key.clone(), p))
            .collect();
        table.rebuild_owners();
        table
    }

    /// What to persist.
    pub fn save(&self, now: SystemTime) -> persist::SavedState {
        persist::SavedState {
            version: persist::VERSION,
            saved_at: now,
            devices: self.devices.values().cloned().collect(),
            peers: self.peers.values().cloned().collect(),
        }
    }

    /// The threshold of the connection rule.
    pub fn disconnect_after(&self) -> Duration {
        self.disconnect_after
    }

    /// Every device, by name.
    pub fn devices(&self) -> impl Iterator<Item = &DeviceState> {
        self.devices.values()
    }

    /// Every peer, by device then key.
    pub fn peers(&self) -> impl Iterator<Item = &PeerState> {
        self.peers.values()
    }

    /// One peer.
    pub fn peer(&self, device: &str, public_key: &PublicKey) -> Option<&PeerState> {
        self.peers.get(&PeerKey {
            device: device.to_owned(),
            public_key: *public_key,
        })
    }

    /// One device.
    pub fn device(&self, name: &str) -> Option<&DeviceState> {
        self.devices.get(name)
    }

    /// Applies a device read. `read_started` is when the read began (a roam the
    /// datapath reported after it is newer than what the read returned).
    pub fn apply_devices(
        &mut self,
        devices: &[Device],
        read_started: SystemTime,
        now: SystemTime,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        let quiet = !self.baseline;
        let names: BTreeSet<&str> = devices.iter().map(|d| d.name.as_str()).collect();

        let gone: Vec<String> = self
            .devices
            .keys()
            .filter(|name| !names.contains(name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            self.remove_device(&name, &mut changes);
        }
        for device in devices {
            self.apply_device(device, read_started, now, quiet, &mut changes);
        }
        self.baseline = true;
        self.rebuild_owners();

        for (id, pending) in std::mem::take(&mut self.pending) {
            match self.owner(&id) {
                Some(public_key) => {
                    let key = PeerKey {
                        device: id.0.clone(),
                        public_key,
                    };
                    if let Some(peer) = self.peers.get_mut(&key) {
                        add_traffic(peer, &pending.counters, pending.last_rx, pending.last_tx);
                    }
                }
                None => self.add_unknown(&id, &pending.counters, now),
            }
        }
        for (device, notice) in std::mem::take(&mut self.pending_notices) {
            let outcome = self.apply_notice_inner(&device, &notice, now, false);
            changes.extend(outcome.changes);
        }
        changes.extend(self.tick(now));
        changes
    }

    fn apply_device(
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

        let current: BTreeSet<PublicKey> = device.peers.iter().map(|p| p.public_key).collect();
        let removed: Vec<PeerKey> = self
            .peers
            .keys()
            .filter(|k| k.device == device.name && !current.contains(&k.public_key))
            .cloned()
            .collect();
        for key in removed {
            self.remove_peer(
                &key,
                device_public_key,
                DisconnectReason::PeerRemoved,
                changes,
            );
        }
        for peer in &device.peers {
            let key = PeerKey {
                device: device.name.clone(),
                public_key: peer.public_key,
            };
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
                        });
                    }
                    self.peers.insert(key, state);
                }
                Some(state) => {
                    let fields = update_peer(state, peer, read_started);
                    if !fields.is_empty() {
                        state.updated_at = now;
                        let new_address = if fields.contains(&"Endpoint") {
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
                            peer: state.clone(),
                            device_public_key,
                            fields,
                            new_address,
                        });
                    }
                }
            }
        }
    }

    fn remove_device(&mut self, name: &str, changes: &mut Vec<Change>) {
        let Some(device) = self.devices.remove(name) else {
            return;
        };
        let keys: Vec<PeerKey> = self
            .peers
            .keys()
            .filter(|k| k.device == name)
            .cloned()
            .collect();
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

    fn remove_peer(
        &mut self,
        key: &PeerKey,
        device_public_key: Option<PublicKey>,
        reason: DisconnectReason,
        changes: &mut Vec<Change>,
    ) {
        let Some(mut peer) = self.peers.remove(key) else {
            return;
        };
        self.owners
            .retain(|id, owner| !(*owner == key.public_key && id.0 == key.device));
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
        });
    }

    /// Applies one drain: each endpoint's delta goes to its owner, or waits for the
    /// next device read. `taken_at` is the drain's time. Returns the handshake feed:
    /// one [`Change::Handshake`] per handshake completed since the previous drain.
    pub fn apply_samples(&mut self, samples: &[WireSample], taken_at: SystemTime) -> Vec<Change> {
        for sample in samples.iter().filter(|s| has_traffic(&s.delta)) {
            let id = (sample.device.clone(), sample.endpoint);
            let owner = self
                .owner(&id)
                .or_else(|| self.former.get(&id).map(|(key, _)| *key));
            let mut counters = WireCounters::default();
            counters.add(&sample.delta);
            let peer = owner.and_then(|public_key| {
                self.peers.get_mut(&PeerKey {
                    device: sample.device.clone(),
                    public_key,
                })
            });
            match peer {
                Some(peer) => add_traffic(peer, &counters, sample.last_rx, sample.last_tx),
                None => {
                    let pending = self.pending.entry(id).or_default();
                    pending.counters.add_counters(&counters);
                    pending.last_rx = pending.last_rx.max(sample.last_rx);
                    pending.last_tx = pending.last_tx.max(sample.last_tx);
                }
            }
        }
        // Every packet sent before a roam has now been drained.
        self.former
            .retain(|_, (_, roamed_at)| *roamed_at > taken_at);

        let mut changes = Vec::new();
        for (key, role, endpoint, at) in std::mem::take(&mut self.handshakes_due) {
            let device_public_key = self.devices.get(&key.device).and_then(|d| d.public_key);
            let Some(peer) = self.peers.get_mut(&key) else {
                continue;
            };
            let since_previous = peer.wire.since(&peer.at_last_handshake);
            peer.at_last_handshake = peer.wire;
            changes.push(Change::Handshake {
                peer: peer.clone(),
                device_public_key,
                role,
                endpoint,
                at,
                since_previous,
            });
        }
        changes
    }

    /// Applies the kernel-mode readings of a drain (after its wire samples) to the
    /// peers they belong to; readings of devices or peers the table does not know yet
    /// wait for the next drain.
    pub fn apply_kernel(&mut self, readings: &[crate::kernel_mode::KernelPeerReading]) {
        for reading in readings {
            let Some(device) = &reading.device else {
                continue;
            };
            let key = PeerKey {
                device: device.clone(),
                public_key: reading.public_key,
            };
            if let Some(peer) = self.peers.get_mut(&key) {
                peer.kernel = Some(KernelView::observe(peer.kernel, reading, &peer.wire));
            }
        }
    }

    /// Applies a session notice from the datapath (`device` resolved from its id).
    pub fn apply_notice(
        &mut self,
        device: &str,
        notice: &SessionNotice,
        now: SystemTime,
    ) -> NoticeOutcome {
        self.apply_notice_inner(device, notice, now, true)
    }

    fn apply_notice_inner(
        &mut self,
        device: &str,
        notice: &SessionNotice,
        now: SystemTime,
        may_wait: bool,
    ) -> NoticeOutcome {
        let mut outcome = NoticeOutcome::default();
        match notice {
            SessionNotice::HandshakeComplete {
                endpoint, role, at, ..
            } => {
                let id = (device.to_owned(), endpoint.addr);
                let owner = self
                    .owner(&id)
                    .or_else(|| self.former.get(&id).map(|(key, _)| *key));
                let Some(public_key) = owner else {
                    if may_wait {
                        self.pending_notices
                            .push((device.to_owned(), notice.clone()));
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
                let Some(peer) = self.peers.get_mut(&key) else {
                    return outcome;
                };
                match role {
                    Role::Initiator => peer.handshakes_initiated += 1,
                    Role::Responder => peer.handshakes_responded += 1,
                }
                self.handshakes_due
                    .push((key.clone(), *role, endpoint.addr, *at));
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
                    outcome.needs_refresh = may_wait;
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
    fn move_endpoint(
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
        if let Some(pending) = self.pending.remove(&id) {
            add_traffic(peer, &pending.counters, pending.last_rx, pending.last_tx);
        }
        changes.push(Change::Peer {
            kind: ChangeKind::Update,
            peer: peer.clone(),
            device_public_key,
            fields: vec!["Endpoint"],
            new_address,
        });
    }

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

    fn owner(&self, id: &EndpointId) -> Option<PublicKey> {
        self.owners.get(id).copied()
    }

    /// The peer whose current endpoint on `device` is `endpoint`, if any.
    pub fn owner_of(&self, device: &str, endpoint: &SocketAddr) -> Option<PublicKey> {
        self.owners.get(&(device.to_owned(), *endpoint)).copied()
    }

    fn rebuild_owners(&mut self) {
        self.owners = self
            .peers
            .values()
            .filter_map(|p| {
                p.endpoint
                    .map(|e| ((p.key.device.clone(), e), p.key.public_key))
            })
            .collect();
    }

    fn add_unknown(&mut self, id: &EndpointId, counters: &WireCounters, now: SystemTime) {
        let Some(device) = self.devices.get_mut(&id.0) else {
            tracing::debug!(device = %id.0, endpoint = %id.1, "traffic of a device that is gone: dropped");
            return;
        };
        let unknown = &mut device.unknown;
        unknown.totals.add_counters(counters);
        match unknown.endpoints.iter_mut().find(|e| e.endpoint == id.1) {
            Some(entry) => {
                entry.counters.add_counters(counters);
                entry.last_seen = now;
            }
            None => {
                unknown.endpoints_seen += 1;
                unknown.endpoints.push(UnknownEndpoint {
                    endpoint: id.1,
                    counters: *counters,
                    last_seen: now,
                });
                if unknown.endpoints.len() > UNKNOWN_ENDPOINTS_KEPT {
                    let oldest = unknown
                        .endpoints
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, e)| e.last_seen)
                        .map(|(i, _)| i)
                        .expect("not empty");
                    unknown.endpoints.swap_remove(oldest);
                }
            }
        }
    }
}

/// Whether the peer's last handshake is younger than `disconnect_after` at `now`.
fn fresh(peer: &PeerState, now: SystemTime, disconnect_after: Duration) -> bool {
    peer.last_handshake.is_some_and(|handshake| {
        // A handshake "in the future" (clock stepped back) counts as fresh.
        now.duration_since(handshake)
            .map_or(true, |age| age < disconnect_after)
    })
}

/// The connection rule for one peer (see the module documentation).
fn evaluate(
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

fn add_traffic(
    peer: &mut PeerState,
    counters: &WireCounters,
    last_rx: Option<SystemTime>,
    last_tx: Option<SystemTime>,
) {
    peer.wire.add_counters(counters);
    peer.last_rx = peer.last_rx.max(last_rx);
    peer.last_tx = peer.last_tx.max(last_tx);
}

fn new_peer(key: PeerKey, peer: &Peer, now: SystemTime) -> PeerState {
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
    }
}

/// Folds a device read into a known peer; returns the payload fields that changed.
fn update_peer(state: &mut PeerState, peer: &Peer, read_started: SystemTime) -> Vec<&'static str> {
    let mut fields = Vec::new();
    if state.allowed_ips != peer.allowed_ips {
        state.allowed_ips = peer.allowed_ips.clone();
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
    fields
}

#[cfg(test)]
mod tests;
