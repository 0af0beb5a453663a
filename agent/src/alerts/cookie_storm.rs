//! `cookie_storm` (warning): cookie replies sent by a device above
//! `cookie_storm_per_second` (WireGuard under load) over the window.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde_json::json;

use super::{Alert, AlertEngine, AlertType, Severity};

impl AlertEngine {
    /// Alerts for the devices above the rate, from this drain's counts.
    pub(super) fn cookie_storms(
        &mut self,
        cookies: &BTreeMap<&str, u64>,
        now: SystemTime,
    ) -> Vec<Alert> {
        let width = self.config.window;
        let per_second = width.as_secs_f64();
        let mut alerts = Vec::new();
        for (device, count) in cookies {
            let total = self
                .window(AlertType::CookieStorm, device)
                .add(now, *count, width);
            let rate = total as f64 / per_second;
            if *count > 0 && rate >= self.config.cookie_storm_per_second {
                let evidence = json!({
                    "CookieReplies": total,
                    "PerSecond": rate,
                    "WindowSeconds": per_second,
                });
                alerts.extend(self.fire(
                    AlertType::CookieStorm,
                    Severity::Warning,
                    device,
                    (*device).to_owned(),
                    evidence,
                    now,
                ));
            }
        }
        alerts
    }
}
