//! `endpoint_new_address` (info): a peer's endpoint moved to an address it never
//! used (the last 64 are remembered).

use std::net::IpAddr;
use std::time::SystemTime;

use serde_json::json;

use super::{Alert, AlertEngine, AlertType, Severity};
use crate::peers::PeerState;

impl AlertEngine {
    /// A peer's endpoint moved to an address it never used before.
    pub fn on_new_address(
        &mut self,
        peer: &PeerState,
        address: IpAddr,
        now: SystemTime,
    ) -> Vec<Alert> {
        if !(self.config.enabled && self.config.endpoint_new_address) {
            return Vec::new();
        }
        let evidence = json!({
            "Peer": peer.key.public_key.to_base64(),
            "Address": address.to_string(),
            "Endpoint": peer.endpoint.map(|e| e.to_string()),
            "AddressesSeen": peer.addresses_seen.len(),
        });
        let subject = format!("{}/{address}", peer.key.public_key.to_base64());
        self.fire(
            AlertType::EndpointNewAddress,
            Severity::Info,
            &peer.key.device,
            subject,
            evidence,
            now,
        )
        .into_iter()
        .collect()
    }
}
