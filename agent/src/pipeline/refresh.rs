//! Device reads: WireGuard devices and peers (netlink, UAPI), the port map, the
//! interfaces the classifiers are attached to, and the peer names.

use std::collections::{BTreeSet, HashMap};
use std::time::{Instant, SystemTime};

use super::device_reader::DeviceRead;
use super::{Observation, Pipeline};
use crate::datapath::links;
use crate::peers::names::NamesWatcher;
use crate::wg::{self, Device};

impl Pipeline {
    /// Reads the devices now and applies the read (the first read, before the loop).
    pub(super) fn refresh(&mut self) {
        if let Some(read) = self.reader.read_now() {
            self.apply_read(read);
        }
    }

    /// Applies a completed device read: updates the port map, the attachments and
    /// the peer table, and asks for another read when a notice still waits for one.
    pub(super) fn apply_read(&mut self, read: DeviceRead) {
        {
            let mut status = self.shared.status.write().expect("not poisoned");
            status.last_device_read = read.took;
            status.last_device_read_cpu = read.cpu;
        }
        self.apply_devices(read.result, read.started_wall);
        self.shared.read_through.completed(read.started, read.took);
        if self.table().awaits_read() {
            // The notices that came during this read wait for the next.
            self.reader.request(true);
        }
    }

    fn apply_devices(
        &mut self,
        result: Result<wg::Discovered, wg::DiscoveryError>,
        read_started: SystemTime,
    ) {
        let (devices, unreadable) = match result {
            Ok(mut found) => {
                // A device that exists but did not answer (stopped or busy daemon)
                // is not gone: its last header keeps its port and attachment, and
                // the table keeps its peers rather than report a delete.
                for name in &found.unreadable {
                    if let Some(last) = self.devices.iter().find(|d| &d.name == name) {
                        found.devices.push(last.clone());
                    }
                }
                found.devices.sort_by(|a, b| a.name.cmp(&b.name));
                (found.devices, found.unreadable)
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
        // Peers per device as read (an unreadable device keeps its last count).
        let summary: Vec<(String, u16, usize)> = devices
            .iter()
            .map(|d| {
                let peers = if unreadable.contains(&d.name) {
                    self.device_summary
                        .iter()
                        .find(|s| s.0 == d.name)
                        .map_or(0, |s| s.2)
                } else {
                    d.peers.len()
                };
                (d.name.clone(), d.listen_port, peers)
            })
            .collect();
        if summary != self.device_summary || self.device_summary.is_empty() {
            tracing::info!(devices = ?summary, "WireGuard devices");
        }
        self.device_summary = summary;
        // Kept: the devices' headers (names, ports, keys), not their peers, which the
        // table holds (at 100k peers the read's peers were about 30 MiB).
        self.devices = devices
            .iter()
            .map(|d| Device {
                name: d.name.clone(),
                kind: d.kind,
                public_key: d.public_key,
                listen_port: d.listen_port,
                fwmark: d.fwmark,
                peers: Vec::new(),
            })
            .collect();
        self.attach_interfaces();
        self.reload_names();
        let changes =
            self.table_mut()
                .apply_read(&devices, &unreadable, read_started, SystemTime::now());
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
            self.observe(Observation::Devices(devices));
        }
    }

    /// Re-reads `peers_file` if it changed; a bad file keeps the previous names.
    pub(super) fn reload_names(&mut self) {
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

    pub(super) fn attach_interfaces(&mut self) {
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
}
