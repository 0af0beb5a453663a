//! What the drain thread sends: a snapshot of the counters (the wire samples, the
//! kernel-mode readings, the alerts they raise) and session notices.

use std::time::SystemTime;

use super::{Observation, Pipeline};
use crate::peers::WireSample;
use crate::snapshot::{SessionNotice, Snapshot};

impl Pipeline {
    pub(super) fn on_snapshot(&mut self, snapshot: Snapshot) {
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
        // Path figures first: the handshake feed below reports them since the
        // previous handshake.
        let paths: Vec<(String, crate::snapshot::PathSample)> = snapshot
            .paths
            .iter()
            .filter_map(|s| Some((self.ids.name(s.endpoint.device)?.to_owned(), s.clone())))
            .collect();
        self.table_mut().apply_paths(&paths);
        let feed = self.table_mut().apply_samples(&samples, taken_at);
        if let Some(readings) = &snapshot.kernel_peers {
            self.table_mut().apply_kernel(readings);
        }
        let alerts = {
            let table = self.shared.table.read().expect("not poisoned");
            let mut alerts = self.alerts.on_drain(
                &samples,
                |device, endpoint| table.owner_of(device, endpoint),
                taken_at,
            );
            alerts.extend(self.alerts.on_paths(
                &paths,
                |device, endpoint| table.owner_of(device, endpoint),
                taken_at,
            ));
            alerts
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
    pub(super) fn on_notice(&mut self, notice: SessionNotice) -> bool {
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
