//! The agent's run loop: loads and attaches the datapath, keeps the port map and the
//! attachments in step with WireGuard devices and interfaces, and consumes the drain's
//! snapshots and session notices. Stopping it detaches everything.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;

use crate::config::Config;
use crate::drain::{Drain, DrainError};
use crate::links;
use crate::loader::{Datapath, DeviceIds, LoadOptions, LoaderError};
use crate::snapshot::{DatapathMessage, SessionNotice, Snapshot};
use crate::wg::{self, Device, DiscoveryOptions};

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

/// Bound of the channel between the drain thread and the pipeline.
const DATAPATH_CHANNEL: usize = 1024;

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
    threads: Vec<JoinHandle<()>>,
}

impl RunningAgent {
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

/// Loads the datapath and starts the drain and pipeline threads. `observer`, if
/// given, receives every device list, snapshot and notice (never blocking the agent:
/// observations are dropped when it is full).
pub fn start(
    config: Config,
    observer: Option<crossbeam_channel::Sender<Observation>>,
) -> Result<RunningAgent, AgentError> {
    let mut datapath = Datapath::load(&LoadOptions {
        max_peers: config.max_peers,
        attach_drop_counter: true,
    })?;
    match datapath.drop_counter_mode() {
        Some(mode) => tracing::info!("socket drops counted {mode}"),
        None => tracing::warn!("socket drops are not counted on this kernel"),
    }
    let drain = Drain::new(&mut datapath, config.max_peers)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (send, receive) = crossbeam_channel::bounded(DATAPATH_CHANNEL);

    let drain_stop = stop.clone();
    let interval = config.drain_interval;
    let drain_thread = std::thread::Builder::new()
        .name("wgpulse-drain".into())
        .spawn(move || drain.run(interval, send, drain_stop))
        .map_err(|e| AgentError::Thread("drain", e))?;

    let mut pipeline = Pipeline {
        config,
        datapath,
        ids: DeviceIds::default(),
        devices: Vec::new(),
        observer,
    };
    let pipeline_stop = stop.clone();
    let pipeline_thread = std::thread::Builder::new()
        .name("wgpulse-pipeline".into())
        .spawn(move || pipeline.run(receive, pipeline_stop))
        .map_err(|e| AgentError::Thread("pipeline", e))?;
    Ok(RunningAgent {
        stop,
        threads: vec![drain_thread, pipeline_thread],
    })
}

/// Owns the datapath's control side and turns drained data into state.
struct Pipeline {
    config: Config,
    datapath: Datapath,
    ids: DeviceIds,
    devices: Vec<Device>,
    observer: Option<crossbeam_channel::Sender<Observation>>,
}

impl Pipeline {
    fn run(
        &mut self,
        receive: crossbeam_channel::Receiver<DatapathMessage>,
        stop: Arc<AtomicBool>,
    ) {
        self.refresh();
        let mut next_refresh = Instant::now() + self.config.refresh_interval;
        while !stop.load(Ordering::Relaxed) {
            let timeout = next_refresh
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            let mut refresh_now = false;
            match receive.recv_timeout(timeout) {
                Ok(DatapathMessage::Snapshot(snapshot)) => self.on_snapshot(snapshot),
                Ok(DatapathMessage::Session(notice)) => refresh_now = self.on_notice(notice),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if refresh_now || Instant::now() >= next_refresh {
                self.refresh();
                next_refresh = Instant::now() + self.config.refresh_interval;
            }
        }
        self.datapath.detach_all();
    }

    fn observe(&self, observation: Observation) {
        if let Some(observer) = &self.observer {
            let _ = observer.try_send(observation);
        }
    }

    /// Re-reads devices and interfaces; updates the port map and the attachments.
    fn refresh(&mut self) {
        let options = DiscoveryOptions {
            socket_dir: self.config.wireguard_socket_dir.clone(),
            only: self.config.devices.clone(),
        };
        let devices = match wg::discover(&options) {
            Ok(devices) => devices,
            Err(err) => {
                tracing::warn!("reading WireGuard devices: {err}");
                return;
            }
        };
        let names: BTreeSet<String> = devices.iter().map(|d| d.name.clone()).collect();
        for gone in self.devices.iter().filter(|d| !names.contains(&d.name)) {
            self.ids.remove(&gone.name);
        }
        let mut ports = HashMap::new();
        for device in &devices {
            match self.ids.id(&device.name) {
                Ok(id) if device.listen_port != 0 => {
                    ports.insert(device.listen_port, id);
                }
                Ok(_) => {}
                Err(err) => tracing::error!(device = %device.name, "{err}"),
            }
        }
        if let Err(err) = self.datapath.set_ports(&ports) {
            tracing::error!("updating the port map: {err}");
        }
        if devices != self.devices {
            tracing::info!(
                devices = ?devices.iter().map(|d| (&d.name, d.listen_port, d.peers.len())).collect::<Vec<_>>(),
                "WireGuard devices"
            );
        }
        self.devices = devices;
        self.attach_interfaces();
        self.observe(Observation::Devices(self.devices.clone()));
    }

    fn attach_interfaces(&mut self) {
        let all = match links::list() {
            Ok(all) => all,
            Err(err) => {
                tracing::warn!("{err}");
                return;
            }
        };
        let device_names: Vec<String> = self.devices.iter().map(|d| d.name.clone()).collect();
        let wanted = match links::select(&all, &self.config.interfaces, &device_names) {
            Ok(wanted) => wanted,
            Err(err) => {
                tracing::error!("{err}");
                return;
            }
        };
        for name in self.datapath.attached() {
            if !wanted.iter().any(|i| i.name == name) {
                self.datapath.detach(&name);
            }
        }
        for interface in &wanted {
            if let Err(err) = self.datapath.attach(interface) {
                tracing::error!("{err}");
            }
        }
    }

    fn on_snapshot(&mut self, snapshot: Snapshot) {
        tracing::debug!(
            sequence = snapshot.sequence,
            endpoints = snapshot.endpoints.len(),
            map_entries = snapshot.map_entries,
            duration = ?snapshot.duration,
            "drained"
        );
        for sample in snapshot
            .endpoints
            .iter()
            .filter(|s| crate::snapshot::has_traffic(&s.delta))
        {
            let device = self.ids.name(sample.endpoint.device).unwrap_or("?");
            tracing::debug!(
                device,
                endpoint = %sample.endpoint.addr,
                rx_packets = sample.totals.rx.packets,
                rx_bytes = sample.totals.rx.bytes,
                tx_packets = sample.totals.tx.packets,
                tx_bytes = sample.totals.tx.bytes,
                invalid = sample.totals.rx.invalid_packets,
                socket_drops = sample.totals.socket_drops,
                "endpoint traffic"
            );
        }
        self.observe(Observation::Snapshot(snapshot));
    }

    /// Returns true when the notice names an endpoint no known peer has: a new peer
    /// connected before the next refresh, so devices are re-read at once.
    fn on_notice(&mut self, notice: SessionNotice) -> bool {
        tracing::info!(?notice, "session");
        let endpoint = match &notice {
            SessionNotice::HandshakeComplete { endpoint, .. } => *endpoint,
            SessionNotice::EndpointChanged { endpoint, .. } => *endpoint,
        };
        let device = self.ids.name(endpoint.device).map(str::to_owned);
        let known = self
            .devices
            .iter()
            .filter(|d| Some(&d.name) == device.as_ref())
            .flat_map(|d| d.peers.iter())
            .any(|p| p.endpoint == Some(endpoint.addr));
        self.observe(Observation::Session(notice));
        !known
    }
}
