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

mod devices;
pub mod names;
pub mod path;
pub mod persist;
mod rule;
pub mod save_schedule;
mod sessions;
pub mod state;
pub mod state_stream;
mod traffic;

use std::collections::{BTreeMap, HashMap};
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
        /// The changed fields' values before the change (updates only).
        previous: Option<PeerPrevious>,
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
        /// The handshake's round trip, timed by the datapath.
        rtt: Option<Duration>,
        /// Path figures since the previous completed handshake.
        path_since_previous: path::PathTotals,
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

/// The configuration of a peer before an update: what a receiver needs to show
/// "old -> new" for each changed field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerPrevious {
    /// The endpoint.
    pub endpoint: Option<SocketAddr>,
    /// The allowed IPs.
    pub allowed_ips: Vec<String>,
    /// The keepalive interval.
    pub persistent_keepalive: u16,
    /// Whether a preshared key was set.
    pub has_preshared_key: bool,
}

impl PeerPrevious {
    /// The configuration of `state` now.
    pub fn of(state: &PeerState) -> Self {
        Self {
            endpoint: state.endpoint,
            allowed_ips: state.allowed_ips.clone(),
            persistent_keepalive: state.persistent_keepalive,
            has_preshared_key: state.has_preshared_key,
        }
    }
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

/// Traffic of an endpoint nobody owned at drain time, kept until a device read that
/// began after it arrived.
#[derive(Clone, Debug, Default)]
struct Pending {
    /// The drain that first brought it (a read that began before may not know the
    /// endpoint's peer yet).
    since: Option<SystemTime>,
    counters: WireCounters,
    path: path::PathTotals,
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
    /// Boxed: the tree's nodes then hold a key and a pointer per peer, not 770 bytes
    /// (its nodes are partly empty: at 100k peers they held about 40% more than the
    /// peers themselves).
    peers: BTreeMap<PeerKey, Box<PeerState>>,
    /// Current endpoints: who owns which.
    owners: HashMap<EndpointId, PublicKey>,
    /// A peer came, went or moved since [`PeerTable::owners`] was built: the next
    /// device read rebuilds it (a read that changes no endpoint leaves it as it is).
    owners_stale: bool,
    /// Endpoints left by a roam, still the peer's until the first drain after the roam.
    former: HashMap<EndpointId, (PublicKey, SystemTime)>,
    pending: HashMap<EndpointId, Pending>,
    /// Notices of endpoints nobody owned, with when they arrived.
    pending_notices: Vec<(String, SessionNotice, SystemTime)>,
    /// Completed handshakes to report at the next drain.
    handshakes_due: Vec<(PeerKey, Role, SocketAddr, SystemTime, Option<Duration>)>,
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
            owners_stale: false,
            former: HashMap::new(),
            pending: HashMap::new(),
            pending_notices: Vec::new(),
            handshakes_due: Vec::new(),
            names: HashMap::new(),
        }
    }

    /// Whether a session notice waits for a device read (one that begins after it).
    pub fn awaits_read(&self) -> bool {
        !self.pending_notices.is_empty()
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
            .map(|p| (p.key.clone(), Box::new(p)))
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
            peers: self.peers.values().map(|p| PeerState::clone(p)).collect(),
        }
    }

    /// Copies up to `limit` peers after `after` (in key order; from the first when
    /// `None`) onto `into`; returns the key to go on after, or `None` once the last
    /// peer is copied. A state saved in slices has every peer that exists throughout
    /// the copy once, each as it was when its slice was taken.
    pub fn copy_peers(
        &self,
        after: Option<&PeerKey>,
        limit: usize,
        into: &mut Vec<PeerState>,
    ) -> Option<PeerKey> {
        use std::ops::Bound::{Excluded, Unbounded};
        let mut slice = match after {
            Some(key) => self.peers.range::<PeerKey, _>((Excluded(key), Unbounded)),
            None => self.peers.range::<PeerKey, _>(..),
        };
        let mut last = None;
        for (key, peer) in slice.by_ref().take(limit) {
            into.push(PeerState::clone(peer));
            last = Some(key);
        }
        slice.next()?;
        last.cloned()
    }

    /// Every device's state, for a save.
    pub fn device_states(&self) -> Vec<DeviceState> {
        self.devices.values().cloned().collect()
    }

    /// The threshold of the connection rule.
    pub fn disconnect_after(&self) -> Duration {
        self.disconnect_after
    }

    /// Every device, by name.
    pub fn devices(&self) -> impl Iterator<Item = &DeviceState> {
        self.devices.values()
    }

    /// How many peers the table holds.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Every peer, device by device: each device's name and its peers by key (no
    /// comparison of device names per peer).
    pub fn peers_by_device(&self) -> Vec<(&str, impl Iterator<Item = &PeerState>)> {
        use std::ops::Bound::{Excluded, Unbounded};
        let mut groups = Vec::new();
        let mut next = self.peers.keys().next();
        while let Some(first) = next {
            let last = PeerKey {
                device: first.device.clone(),
                public_key: PublicKey([0xff; 32]),
            };
            groups.push((
                first.device.as_str(),
                self.peers.range(first..=&last).map(|(_, peer)| &**peer),
            ));
            next = self
                .peers
                .range((Excluded(&last), Unbounded))
                .next()
                .map(|(key, _)| key);
        }
        groups
    }

    /// The keys of one device's peers, in order (a range of the table, not a scan).
    fn device_keys<'a>(&'a self, device: &'a str) -> impl Iterator<Item = &'a PeerKey> + 'a {
        let first = PeerKey {
            device: device.to_owned(),
            public_key: PublicKey([0; 32]),
        };
        self.peers
            .range(first..)
            .map(|(key, _)| key)
            .take_while(move |key| key.device == device)
    }

    /// Every peer, by device then key.
    pub fn peers(&self) -> impl Iterator<Item = &PeerState> {
        self.peers.values().map(|peer| &**peer)
    }

    /// One peer.
    pub fn peer(&self, device: &str, public_key: &PublicKey) -> Option<&PeerState> {
        self.peers
            .get(&PeerKey {
                device: device.to_owned(),
                public_key: *public_key,
            })
            .map(|peer| &**peer)
    }

    /// One device.
    pub fn device(&self, name: &str) -> Option<&DeviceState> {
        self.devices.get(name)
    }

    fn owner(&self, id: &EndpointId) -> Option<PublicKey> {
        self.owners.get(id).copied()
    }

    /// The peer whose current endpoint on `device` is `endpoint`, if any.
    pub fn owner_of(&self, device: &str, endpoint: &SocketAddr) -> Option<PublicKey> {
        self.owners.get(&(device.to_owned(), *endpoint)).copied()
    }

    fn rebuild_owners(&mut self) {
        self.owners_stale = false;
        self.owners = self
            .peers
            .values()
            .filter_map(|p| {
                p.endpoint
                    .map(|e| ((p.key.device.clone(), e), p.key.public_key))
            })
            .collect();
    }
}

#[cfg(test)]
mod tests;
