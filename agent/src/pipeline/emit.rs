//! Changes out: events on the event queue (in order, blocking while it is full),
//! alerts and observations for tests.

use std::time::{Instant, SystemTime};

use super::{Observation, Pipeline};
use crate::alerts::Alert;
use crate::events;
use crate::peers::{Change, ChangeKind};

impl Pipeline {
    pub(super) fn observe(&self, observation: Observation) {
        if let Some(observer) = &self.observer {
            let _ = observer.try_send(observation);
        }
    }

    /// Sends the changes as events, in order (blocking while the queue is full), and
    /// schedules a save of the state (see [`SaveSchedule`]).
    pub(super) fn emit(&mut self, changes: Vec<Change>) {
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
            if let Change::Handshake {
                peer,
                rtt: Some(rtt),
                ..
            } = change
            {
                alerts.extend(self.alerts.on_round_trip(peer, *rtt, now));
            }
        }
        self.raise(alerts);
        self.saves.changed(Instant::now());
    }

    pub(super) fn send(&self, event: events::Event) {
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

    pub(super) fn raise(&self, alerts: Vec<Alert>) {
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
}
