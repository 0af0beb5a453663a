//! The agent's run loop: loads and attaches the datapath, keeps the port map and the
//! attachments in step with WireGuard devices and interfaces, feeds the drain's
//! snapshots and session notices into the peer table, and sends the table's changes
//! as events on the event queue. Stopping it saves the state and detaches everything.
//!
//! The files: this module (starting and stopping), `run` (the loop), `refresh`
//! (device reads and attachments), `drained` (snapshots and notices in), `emit`
//! (events and alerts out), `save` (the state out, written on its own thread),
//! [`device_ids`], [`read_through`] (fresh counters
//! for a scrape).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

pub mod device_ids;
mod device_reader;
mod drained;
mod emit;
pub mod read_budget;
pub mod read_through;
mod refresh;
mod run;
mod save;
mod state_writer;
use std::time::{Duration, Instant};

use crate::alerts::AlertEngine;
use crate::datapath::kprobes::KernelAttribution;
use crate::datapath::{Datapath, LoadOptions, LoaderError};
use crate::drain::{Drain, DrainError};
use crate::events::EventQueue;
use crate::peers::names::NamesWatcher;
use crate::peers::persist::{PersistError, StateFile};
use crate::peers::save_schedule::SaveSchedule;
use crate::peers::PeerTable;
use crate::snapshot::{SessionNotice, Snapshot};
use crate::status::{AgentStatus, Shared};
use crate::wg::{Device, DiscoveryOptions};
use device_ids::DeviceIds;
use device_reader::DeviceReader;

/// Errors starting the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The datapath could not be loaded.
    #[error(transparent)]
    Loader(#[from] LoaderError),
    /// The maps could not be opened.
    #[error(transparent)]
    Drain(#[from] DrainError),
    /// A thread could not be started.
    #[error("starting the {0} thread: {1}")]
    Thread(&'static str, #[source] std::io::Error),
}

/// How long the state writer waits for the events of a state to reach the outbox
/// before it gives up on that save (tried again later).
const STORE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bound of the channel between the drain thread and the pipeline.
const DATAPATH_CHANNEL: usize = 1024;

/// What the pipeline is started with: its keys of the configuration (see the README's
/// configuration table for each).
#[derive(Clone, Debug)]
pub struct PipelineSettings {
    /// `node` (or the host name): put in every event.
    pub node: String,
    /// `state_dir`: where `peers.json` lives.
    pub state_dir: std::path::PathBuf,
    /// `interfaces`: where the classifiers attach (empty: the default selection).
    pub interfaces: Vec<String>,
    /// `devices`: the WireGuard devices watched (empty: all).
    pub devices: Vec<String>,
    /// `wireguard_socket_dir`: userspace WireGuard's UAPI sockets.
    pub wireguard_socket_dir: std::path::PathBuf,
    /// `max_peers`: the endpoint map's bound.
    pub max_peers: u32,
    /// `drain_interval`.
    pub drain_interval: Duration,
    /// `refresh_interval`.
    pub refresh_interval: Duration,
    /// `disconnect_after`.
    pub disconnect_after: Duration,
    /// `kernel_attribution`.
    pub kernel_attribution: KernelAttribution,
    /// `peers_file`.
    pub peers_file: Option<std::path::PathBuf>,
    /// `[alerts]`.
    pub alerts: crate::alerts::AlertsConfig,
}

/// What the pipeline reports to whoever watches the agent (tests, the API later).
#[derive(Clone, Debug)]
pub enum Observation {
    /// Devices were (re)read.
    Devices(Vec<Device>),
    /// A drain completed.
    Snapshot(Snapshot),
    /// A session notice arrived.
    Session(SessionNotice),
}

/// A running agent; [`RunningAgent::stop`] (or drop) stops it and detaches the datapath.
pub struct RunningAgent {
    stop: Arc<AtomicBool>,
    /// Set to have the pipeline re-read the peers file at once.
    reload_names: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl RunningAgent {
    /// The live peer table and stage health.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Has the pipeline re-read `peers_file` now (SIGHUP), whether or not it changed.
    pub fn reload_names(&self) {
        self.reload_names.store(true, Ordering::Relaxed);
    }

    /// Stops the threads and waits for them; the datapath is detached when the
    /// pipeline thread exits.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Loads the datapath and starts the drain and pipeline threads. Events go to
/// `events` (the pipeline blocks while it is full); `observer`, if given, receives
/// every device list, snapshot and notice (never blocking the agent: observations
/// are dropped when it is full).
pub fn start(
    config: PipelineSettings,
    events: EventQueue,
    observer: Option<crossbeam_channel::Sender<Observation>>,
) -> Result<RunningAgent, AgentError> {
    let mut datapath = Datapath::load(&LoadOptions {
        max_peers: config.max_peers,
        attach_drop_counter: true,
        kernel_attribution: config.kernel_attribution == KernelAttribution::Auto,
    })?;
    match datapath.drop_counter_mode() {
        Some(mode) => tracing::info!("socket drops counted {mode}"),
        None => tracing::warn!("socket drops are not counted on this kernel"),
    }
    let kernel_mode = datapath
        .kernel_mode()
        .map(str::to_owned)
        .map_err(ToString::to_string);
    match &kernel_mode {
        Ok(how) => tracing::info!("kernel-mode attribution on ({how})"),
        Err(why) => tracing::info!(
            "kernel-mode attribution off, counting with the TC classifiers only: {why}"
        ),
    }
    let drain = Drain::new(&mut datapath, config.max_peers)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (send, receive) = crossbeam_channel::bounded(DATAPATH_CHANNEL);

    let state_file = StateFile::new(&config.state_dir);
    let table = load_table(&state_file, config.disconnect_after);
    let (read_through, read_requests) = crate::pipeline::read_through::ReadThrough::new();
    let shared = Arc::new(Shared {
        read_through,
        table: RwLock::new(table),
        status: RwLock::new(AgentStatus {
            map_capacity: config.max_peers,
            kernel_mode: kernel_mode.is_ok(),
            kernel_mode_detail: match kernel_mode {
                Ok(how) | Err(how) => how,
            },
            ..Default::default()
        }),
        events: events.stats(),
    });

    let drain_stop = stop.clone();
    let interval = config.drain_interval;
    let drain_thread = std::thread::Builder::new()
        .name("wgpulse-drain".into())
        .spawn(move || drain.run(interval, send, drain_stop))
        .map_err(|e| AgentError::Thread("drain", e))?;

    // Spawned here, in the caller's network namespace (a thread inherits its
    // creator's), like the pipeline thread.
    let reader = DeviceReader::start(DiscoveryOptions {
        socket_dir: config.wireguard_socket_dir.clone(),
        only: config.devices.clone(),
    })
    .map_err(|e| AgentError::Thread("device reader", e))?;
    let saver = save::StateSaver::start(state_file, events.stored_waiter())
        .map_err(|e| AgentError::Thread("state writer", e))?;
    let mut pipeline = Pipeline {
        reader,
        node: config.node.clone(),
        alerts: AlertEngine::new(config.alerts.clone()),
        names: config.peers_file.clone().map(NamesWatcher::new),
        saves: SaveSchedule::new(Instant::now()),
        reload_names: Arc::default(),
        save_throttle: crate::throttle::LogThrottle::new(Duration::from_secs(60)),
        config,
        datapath,
        ids: DeviceIds::default(),
        devices: Vec::new(),
        device_summary: Vec::new(),
        observer,
        shared: shared.clone(),
        events,
        saver,
    };
    let pipeline_stop = stop.clone();
    let reload_names = pipeline.reload_names.clone();
    let pipeline_thread = std::thread::Builder::new()
        .name("wgpulse-pipeline".into())
        .spawn(move || pipeline.run(receive, read_requests, pipeline_stop))
        .map_err(|e| AgentError::Thread("pipeline", e))?;
    Ok(RunningAgent {
        stop,
        reload_names,
        threads: vec![drain_thread, pipeline_thread],
        shared,
    })
}

/// The persisted table, or a fresh one when there is none or it cannot be read (an
/// unreadable file is moved aside, not overwritten).
fn load_table(file: &StateFile, disconnect_after: Duration) -> PeerTable {
    match file.load() {
        Ok(Some(saved)) => {
            tracing::info!(
                path = %file.path().display(),
                peers = saved.peers.len(),
                "resuming from saved peer state"
            );
            PeerTable::restore(saved, disconnect_after)
        }
        Ok(None) => {
            tracing::info!(path = %file.path().display(), "no saved peer state: the first device read is the baseline");
            PeerTable::new(disconnect_after)
        }
        Err(err @ PersistError::Invalid { .. }) => {
            match file.set_aside() {
                Ok(aside) => {
                    tracing::error!("{err}; moved to {} and starting fresh", aside.display())
                }
                Err(move_err) => {
                    tracing::error!("{err}; could not move it aside ({move_err}); starting fresh")
                }
            }
            PeerTable::new(disconnect_after)
        }
        Err(err) => {
            tracing::error!("{err}; starting fresh");
            PeerTable::new(disconnect_after)
        }
    }
}

/// Owns the datapath's control side and turns drained data into state and events.
struct Pipeline {
    config: PipelineSettings,
    /// Reads the devices on its own thread.
    reader: DeviceReader,
    node: String,
    datapath: Datapath,
    ids: DeviceIds,
    /// The last read's devices, without their peers (the table holds those).
    devices: Vec<Device>,
    /// Name, port and peer count of each device at the last read (logged when it
    /// changes).
    device_summary: Vec<(String, u16, usize)>,
    observer: Option<crossbeam_channel::Sender<Observation>>,
    shared: Arc<Shared>,
    events: EventQueue,
    /// Copies the state in slices and writes it on its own thread.
    saver: save::StateSaver,
    alerts: AlertEngine,
    names: Option<NamesWatcher>,
    saves: SaveSchedule,
    /// Set by [`RunningAgent::reload_names`].
    reload_names: Arc<AtomicBool>,
    /// Rate limit of "events not stored yet: the save waits".
    save_throttle: crate::throttle::LogThrottle,
}

impl Pipeline {
    fn table(&self) -> std::sync::RwLockReadGuard<'_, PeerTable> {
        self.shared.table.read().expect("not poisoned")
    }

    fn table_mut(&self) -> std::sync::RwLockWriteGuard<'_, PeerTable> {
        self.shared.table.write().expect("not poisoned")
    }
}
