//! The agent's run loop: loads and attaches the datapath, keeps the port map and the
//! attachments in step with WireGuard devices and interfaces, feeds the drain's
//! snapshots and session notices into the peer table, and sends the table's changes
//! as events on the event queue. Stopping it saves the state and detaches everything.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::alerts::{Alert, AlertEngine};
use crate::config::Config;
use crate::datapath::kprobes::KernelAttribution;
use crate::datapath::links;
use crate::datapath::{Datapath, DeviceIds, LoadOptions, LoaderError};
use crate::drain::{Drain, DrainError};
use crate::events::{self, EventQueue};
use crate::peers::names::NamesWatcher;
use crate::peers::persist::{PersistError, StateFile};
use crate::peers::save_schedule::SaveSchedule;
use crate::peers::{Change, ChangeKind, PeerTable, WireSample};
use crate::snapshot::{DatapathMessage, SessionNotice, Snapshot};
use crate::status::{AgentStatus, Shared};
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

/// How long the pipeline waits for its events to reach the outbox before saving.
const STORE_TIMEOUT: Duration = Duration::from_secs(30);

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
    config: Config,
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
        .map_err(str::to_owned);
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
    let (read_through, read_requests) = crate::read_through::ReadThrough::new();
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

    let mut pipeline = Pipeline {
        node: config.node_id(),
        alerts: AlertEngine::new(config.alerts.clone()),
        names: config.peers_file.clone().map(NamesWatcher::new),
        saves: SaveSchedule::new(Instant::now()),
        reload_names: Arc::default(),
        save_throttle: crate::throttle::LogThrottle::new(Duration::from_secs(60)),
        config,
        datapath,
        ids: DeviceIds::default(),
        devices: Vec::new(),
        observer,
        shared: shared.clone(),
        events,
        state_file,
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
    config: Config,
    node: String,
    datapath: Datapath,
    ids: DeviceIds,
    devices: Vec<Device>,
    observer: Option<crossbeam_channel::Sender<Observation>>,
    shared: Arc<Shared>,
    events: EventQueue,
    state_file: StateFile,
    alerts: AlertEngine,
    names: Option<NamesWatcher>,
    saves: SaveSchedule,
    /// Set by [`RunningAgent::reload_names`].
    reload_names: Arc<AtomicBool>,
    /// Rate limit of "events not stored yet: the save waits".
    save_throttle: crate::throttle::LogThrottle,
}

impl Pipeline {
    fn run(
        &mut self,
        receive: crossbeam_channel::Receiver<DatapathMessage>,
        read_requests: crossbeam_channel::Receiver<()>,
        stop: Arc<AtomicBool>,
    ) {
        self.refresh();
        let mut next_refresh = Instant::now() + self.config.refresh_interval;
        // The connection rule runs after a handshake time may have moved (a session
        // notice, a device read) and when the earliest handshake expires; a drain or a
        // wake-up with nothing new (every 100 ms, to see `stop`) does not scan the
        // peers.
        let mut table_changed = true;
        let mut next_expiry: Option<SystemTime> = None;
        while !stop.load(Ordering::Relaxed) {
            let mut timeout = next_refresh
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            if let Some(expiry) = next_expiry {
                let until = expiry
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                timeout = timeout.min(until);
            }
            if let Some(due) = self.saves.due() {
                timeout = timeout.min(due.saturating_duration_since(Instant::now()));
            }
            let mut refresh_now = false;
            let mut scrape_asked = false;
            crossbeam_channel::select! {
                recv(receive) -> message => match message {
                    // Counters only: a drain moves no handshake time, so the
                    // connection rule has nothing new to decide (its expiries are
                    // timed below).
                    Ok(DatapathMessage::Snapshot(snapshot)) => self.on_snapshot(snapshot),
                    Ok(DatapathMessage::Session(notice)) => {
                        refresh_now = self.on_notice(notice);
                        table_changed = true;
                    }
                    Err(_) => break,
                },
                recv(read_requests) -> _ => scrape_asked = true,
                default(timeout) => {}
            }
            if refresh_now || scrape_asked || Instant::now() >= next_refresh {
                if refresh_now {
                    self.shared
                        .status
                        .write()
                        .expect("not poisoned")
                        .immediate_refreshes += 1;
                }
                self.refresh();
                next_refresh = Instant::now() + self.config.refresh_interval;
                table_changed = true;
            }
            let now = SystemTime::now();
            if table_changed || next_expiry.is_some_and(|expiry| now >= expiry) {
                let (changes, expiry) = {
                    let mut table = self.table_mut();
                    let changes = table.tick(now);
                    (changes, table.next_expiry())
                };
                next_expiry = expiry;
                table_changed = false;
                self.emit(changes);
            }
            if self.saves.is_due(Instant::now()) {
                self.save();
            }
            if self.reload_names.swap(false, Ordering::Relaxed) {
                if let Some(names) = &mut self.names {
                    names.forget_seen();
                }
                self.reload_names();
            }
        }
        self.save();
        self.datapath.detach_all();
    }

    fn table(&self) -> std::sync::RwLockReadGuard<'_, PeerTable> {
        self.shared.table.read().expect("not poisoned")
    }

    fn table_mut(&self) -> std::sync::RwLockWriteGuard<'_, PeerTable> {
        self.shared.table.write().expect("not poisoned")
    }

    fn observe(&self, observation: Observation) {
        if let Some(observer) = &self.observer {
            let _ = observer.try_send(observation);
        }
    }

    /// Sends the changes as events, in order (blocking while the queue is full), and
    /// schedules a save of the state (see [`SaveSchedule`]).
    fn emit(&mut self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let now = SystemTime::now();
        let mut alerts = Vec::new();
        for change in &changes {
            self.send(events::from_change(change, &self.node));
            if let Change::Peer {
                kind: ChangeKind::Update,
                peer,
                new_address: Some(address),
                ..
            } = change
            {
                alerts.extend(self.alerts.on_new_address(peer, *address, now));
            }
        }
        self.raise(alerts);
        self.saves.changed(Instant::now());
    }

    fn send(&self, event: events::Event) {
        if event.event == events::EVENT_HANDSHAKE {
            tracing::debug!(identifier = %event.identifier, id = %event.id, "handshake event");
        } else {
            tracing::info!(
                event = %event.kind(),
                identifier = %event.identifier,
                id = %event.id,
                "event"
            );
        }
        if self.events.send(event).is_err() {
            tracing::error!("the event consumer has stopped: event not sent");
        }
    }

    fn raise(&self, alerts: Vec<Alert>) {
        for alert in alerts {
            tracing::warn!(alert = alert.kind.as_str(), subject = %alert.subject, evidence = %alert.evidence, "alert");
            *self
                .shared
                .status
                .write()
                .expect("not poisoned")
                .alerts
                .entry(alert.kind.as_str().to_owned())
                .or_default() += 1;
            self.send(events::Event::new(
                &self.node,
                events::ENTITY_ALERT,
                alert.kind.as_str(),
                &alert.subject,
                alert.payload(),
            ));
        }
    }

    /// Writes the state, but only once every event sent so far is stored durably:
    /// the state describing a change is saved only after its events are in the
    /// outbox, so a crash in between repeats an event at the next start, never loses
    /// one. Until then, and after a failed write, the schedule tries again later.
    fn save(&mut self) {
        if !self.events.wait_stored(STORE_TIMEOUT) || !self.events.all_durable() {
            if let Some(suppressed) = self.save_throttle.allow(Instant::now()) {
                tracing::warn!(
                    suppressed,
                    "the peer state waits to be saved: its events are not on disk yet"
                );
            }
            self.saves.saved(Instant::now(), false);
            return;
        }
        let state = self.table().save(SystemTime::now());
        let result = self.state_file.save(&state);
        self.saves.saved(Instant::now(), result.is_ok());
        let mut status = self.shared.status.write().expect("not poisoned");
        match result {
            Ok(()) => {
                status.persist_saves += 1;
                if status.persist_error.take().is_some() {
                    tracing::info!("peer state saved again");
                }
            }
            Err(err) => {
                status.persist_failures += 1;
                if status.persist_error.is_none() {
                    tracing::error!(
                        "saving peer state (kept in memory, retried with back-off): {err}"
                    );
                }
                status.persist_error = Some(err.to_string());
            }
        }
    }

    /// Re-reads devices and interfaces; updates the port map, the attachments and
    /// the peer table.
    fn refresh(&mut self) {
        let started = Instant::now();
        self.read_devices();
        self.shared
            .read_through
            .completed(started, started.elapsed());
    }

    /// Re-reads devices and interfaces (see [`Pipeline::refresh`]).
    fn read_devices(&mut self) {
        let options = DiscoveryOptions {
            socket_dir: self.config.wireguard_socket_dir.clone(),
            only: self.config.devices.clone(),
        };
        let read_started = SystemTime::now();
        let devices = match wg::discover_all(&options) {
            Ok(mut found) => {
                // A device that exists but did not answer (stopped or busy daemon)
                // is not gone: keep its last reading rather than report a delete.
                for name in &found.unreadable {
                    if let Some(last) = self.devices.iter().find(|d| &d.name == name) {
                        found.devices.push(last.clone());
                    }
                }
                found.devices.sort_by(|a, b| a.name.cmp(&b.name));
                found.devices
            }
            Err(err) => {
                tracing::warn!("reading WireGuard devices: {err}");
                self.shared
                    .status
                    .write()
                    .expect("not poisoned")
                    .discovery_error = Some(err.to_string());
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
        let summary = |devices: &[Device]| -> Vec<(String, u16, usize)> {
            devices
                .iter()
                .map(|d| (d.name.clone(), d.listen_port, d.peers.len()))
                .collect()
        };
        if summary(&devices) != summary(&self.devices) || self.devices.is_empty() {
            tracing::info!(
                devices = ?devices.iter().map(|d| (&d.name, d.listen_port, d.peers.len())).collect::<Vec<_>>(),
                "WireGuard devices"
            );
        }
        self.devices = devices;
        self.attach_interfaces();
        self.reload_names();
        let changes =
            self.table_mut()
                .apply_devices(&self.devices, read_started, SystemTime::now());
        {
            let mut status = self.shared.status.write().expect("not poisoned");
            status.devices_read_at = Some(SystemTime::now());
            status.discovery_error = None;
            status.attached = self.datapath.attached();
        }
        if !changes.is_empty() {
            self.emit(changes);
        } else {
            // Counters only: saved now and then.
            self.saves.counters_moved(Instant::now());
        }
        if self.observer.is_some() {
            self.observe(Observation::Devices(self.devices.clone()));
        }
    }

    /// Re-reads `peers_file` if it changed; a bad file keeps the previous names.
    fn reload_names(&mut self) {
        let Some(result) = self.names.as_mut().and_then(NamesWatcher::poll) else {
            return;
        };
        let error = match result {
            Ok(names) => {
                tracing::info!(names = names.len(), "peer names loaded");
                self.table_mut().set_names(names);
                None
            }
            Err(err) => {
                tracing::error!("{err}; the previous names stay in force");
                Some(err.to_string())
            }
        };
        self.shared
            .status
            .write()
            .expect("not poisoned")
            .names_error = error;
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
                self.shared
                    .status
                    .write()
                    .expect("not poisoned")
                    .attach_error = Some(err.to_string());
                return;
            }
        };
        for name in self.datapath.attached() {
            if !wanted.iter().any(|i| i.name == name) {
                self.datapath.detach(&name);
            }
        }
        let mut error = None;
        for interface in &wanted {
            if let Err(err) = self.datapath.attach(interface) {
                tracing::error!("{err}");
                error = Some(err.to_string());
            }
        }
        self.shared
            .status
            .write()
            .expect("not poisoned")
            .attach_error = error;
    }

    fn on_snapshot(&mut self, snapshot: Snapshot) {
        tracing::debug!(
            sequence = snapshot.sequence,
            endpoints = snapshot.endpoints.len(),
            map_entries = snapshot.map_entries,
            duration = ?snapshot.duration,
            "drained"
        );
        let samples: Vec<WireSample> = snapshot
            .endpoints
            .iter()
            .filter(|s| crate::snapshot::has_traffic(&s.delta))
            .filter_map(|s| {
                let device = self.ids.name(s.endpoint.device)?;
                Some(WireSample {
                    device: device.to_owned(),
                    endpoint: s.endpoint.addr,
                    delta: s.delta,
                    last_rx: s.last_rx,
                    last_tx: s.last_tx,
                })
            })
            .collect();
        let taken_at = snapshot.taken_at.unwrap_or_else(SystemTime::now);
        let feed = self.table_mut().apply_samples(&samples, taken_at);
        if let Some(readings) = &snapshot.kernel_peers {
            self.table_mut().apply_kernel(readings);
        }
        let alerts = {
            let table = self.shared.table.read().expect("not poisoned");
            self.alerts.on_drain(
                &samples,
                |device, endpoint| table.owner_of(device, endpoint),
                taken_at,
            )
        };
        {
            let mut status = self.shared.status.write().expect("not poisoned");
            status.drains += 1;
            status.last_drain = snapshot.duration;
            status.map_entries = snapshot.map_entries;
            status.map_capacity = snapshot.map_capacity;
            status.globals = snapshot.globals;
        }
        self.emit(feed);
        self.raise(alerts);
        self.observe(Observation::Snapshot(snapshot));
    }

    /// Applies a session notice; returns true when its endpoint belongs to no known
    /// peer yet (a new peer, or a roam with a new handshake): devices are re-read at
    /// once so the connect is reported within the second.
    fn on_notice(&mut self, notice: SessionNotice) -> bool {
        tracing::debug!(?notice, "session notice");
        self.shared.status.write().expect("not poisoned").notices += 1;
        let endpoint = match &notice {
            SessionNotice::HandshakeComplete { endpoint, .. } => *endpoint,
            SessionNotice::EndpointChanged { endpoint, .. } => *endpoint,
        };
        self.observe(Observation::Session(notice.clone()));
        let Some(device) = self.ids.name(endpoint.device).map(str::to_owned) else {
            return false;
        };
        let outcome = self
            .table_mut()
            .apply_notice(&device, &notice, SystemTime::now());
        self.emit(outcome.changes);
        outcome.needs_refresh
    }
}
