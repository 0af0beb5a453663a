//! `invalid_flood` (warning): invalid datagrams from one source address above
//! `invalid_flood_per_second` over the window.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

use serde_json::json;

use super::{Alert, AlertEngine, AlertType, Severity};

impl AlertEngine {
    /// Alerts for the sources above the rate, from this drain's counts.
    pub(super) fn invalid_floods(
        &mut self,
        invalid: &BTreeMap<(&str, IpAddr), u64>,
        now: SystemTime,
    ) -> Vec<Alert> {
        let width = self.config.window;
        let per_second = width.as_secs_f64();
        let mut alerts = Vec::new();
        for ((device, source), count) in invalid {
            let subject = format!("{device}/{source}");
            let total = self
                .window(AlertType::InvalidFlood, &subject)
                .add(now, *count, width);
            let rate = total as f64 / per_second;
            if *count > 0 && rate >= self.config.invalid_flood_per_second {
                let evidence = json!({
                    "Source": source.to_string(),
                    "InvalidPackets": total,
                    "PerSecond": rate,
                    "WindowSeconds": per_second,
                });
                alerts.extend(self.fire(
                    AlertType::InvalidFlood,
                    Severity::Warning,
                    device,
                    subject,
                    evidence,
                    now,
                ));
            }
        }
        alerts
    }
}
