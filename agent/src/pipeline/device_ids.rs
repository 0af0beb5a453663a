//! Device ids: the small numbers the datapath's port map and per-device arrays use
//! for WireGuard devices, stable while a device exists and reused after it is gone.

use std::collections::{BTreeMap, HashMap};

use agent_common::MAX_DEVICES;

use crate::datapath::LoaderError;

/// Stable small ids for WireGuard device names: the datapath keys endpoints by id.
#[derive(Clone, Debug, Default)]
pub struct DeviceIds {
    by_name: BTreeMap<String, u32>,
}

impl DeviceIds {
    /// The id of `name`, assigning the lowest free one on first use.
    pub fn id(&mut self, name: &str) -> Result<u32, LoaderError> {
        if let Some(id) = self.by_name.get(name) {
            return Ok(*id);
        }
        let used: std::collections::BTreeSet<u32> = self.by_name.values().copied().collect();
        let id = (0..MAX_DEVICES)
            .find(|id| !used.contains(id))
            .ok_or(LoaderError::TooManyDevices)?;
        self.by_name.insert(name.to_owned(), id);
        Ok(id)
    }

    /// The name of a device id, if assigned.
    pub fn name(&self, id: u32) -> Option<&str> {
        self.by_name
            .iter()
            .find(|(_, v)| **v == id)
            .map(|(k, _)| k.as_str())
    }

    /// Every (id, name) pair.
    pub fn names(&self) -> HashMap<u32, String> {
        self.by_name.iter().map(|(k, v)| (*v, k.clone())).collect()
    }

    /// Forgets a device that disappeared (its id may be reused).
    pub fn remove(&mut self, name: &str) {
        self.by_name.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_stable_and_reused() {
        let mut ids = DeviceIds::default();
        assert_eq!(ids.id("wg0").unwrap(), 0);
        assert_eq!(ids.id("wg1").unwrap(), 1);
        assert_eq!(ids.id("wg0").unwrap(), 0);
        assert_eq!(ids.name(1), Some("wg1"));
        ids.remove("wg0");
        assert_eq!(ids.id("wg2").unwrap(), 0);
        assert_eq!(ids.names().len(), 2);
    }
}
