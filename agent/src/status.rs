//! What the running agent shares with its readers (metrics, the API, tests): the live
//! peer table and the health of each stage. Writers are the pipeline thread only;
//! readers take a read lock and copy out what they need.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use crate::events::QueueStats;
use crate::peers::PeerTable;
use crate::snapshot::GlobalStats;

/// Health and datapath figures of the running agent.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct AgentStatus {
    /// Interfaces the classifiers are attached to.
    pub attached: Vec<String>,
    /// Kernel-mode attribution: whether it is on (kernel WireGuard peers read by the
    /// kprobes) and, when off, why.
    pub kernel_mode: bool,
    /// What kernel mode attached, or why it is off.
    pub kernel_mode_detail: String,
    /// When devices were last read successfully.
    pub devices_read_at: Option<SystemTime>,
    /// Duration of the last device read (every device, netlink or UAPI, and the
    /// table update).
    pub last_device_read: Duration,
    /// CPU time the agent spent on the last device read (its reader thread: what
    /// the periodic-read budget charges).
    pub last_device_read_cpu: Duration,
    /// The last device read's error, if it failed.
    pub discovery_error: Option<String>,
    /// The last attach error, if any.
    pub attach_error: Option<String>,
    /// The last state-file write error, if the last write failed.
    pub persist_error: Option<String>,
    /// State-file writes that failed.
    pub persist_failures: u64,
    /// State-file writes that succeeded.
    pub persist_saves: u64,
    /// Why the peers file could not be read (the previous names stay in force).
    pub names_error: Option<String>,
    /// Alerts raised, by type.
    pub alerts: std::collections::BTreeMap<String, u64>,
    /// Drains completed.
    pub drains: u64,
    /// Duration of the last drain.
    pub last_drain: Duration,
    /// Entries in the endpoint map at the last drain.
    pub map_entries: usize,
    /// Capacity of the endpoint map.
    pub map_capacity: u32,
    /// Datapath-wide counters at the last drain.
    #[serde(skip)]
    pub globals: GlobalStats,
    /// Session notices received.
    pub notices: u64,
    /// Device reads triggered at once by a handshake from an unknown endpoint.
    pub immediate_refreshes: u64,
}

/// Everything the agent shares, behind one `Arc`.
#[derive(Debug)]
pub struct Shared {
    /// The live peer table.
    pub table: RwLock<PeerTable>,
    /// Stage health.
    pub status: RwLock<AgentStatus>,
    /// Counters of the event queue.
    pub events: Arc<QueueStats>,
    /// Device reads a scrape asks for.
    pub read_through: crate::pipeline::read_through::ReadThrough,
}
