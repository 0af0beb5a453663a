//! Persisted peer state: one JSON file in `state_dir`, replaced atomically (write a
//! temporary file, fsync it, rename it over the old one, fsync the directory), so a
//! crash leaves either the old or the new state, never a torn one.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::state::{DeviceState, PeerState};

/// Format version of the file; a file of another version is set aside, not misread.
pub const VERSION: u32 = 1;

/// Errors reading or writing the state file.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// An I/O operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid state (corrupt, or another version).
    #[error("{path} is not a wgpulse state file of version {VERSION}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Everything that survives a restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedState {
    /// [`VERSION`].
    pub version: u32,
    /// When it was written.
    pub saved_at: SystemTime,
    /// Devices.
    pub devices: Vec<DeviceState>,
    /// Peers.
    pub peers: Vec<PeerState>,
}

/// The state file `peers.json` in a state directory.
#[derive(Clone, Debug)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The state file of `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join("peers.json"),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the state; `None` if there is none yet.
    pub fn load(&self) -> Result<Option<SavedState>, PersistError> {
        let text = match fs::read(&self.path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(PersistError::Io {
                    op: "reading",
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let state: SavedState =
            serde_json::from_slice(&text).map_err(|err| PersistError::Invalid {
                path: self.path.clone(),
                message: err.to_string(),
            })?;
        if state.version != VERSION {
            return Err(PersistError::Invalid {
                path: self.path.clone(),
                message: format!("version {}", state.version),
            });
        }
        Ok(Some(state))
    }

    /// Moves an unreadable file aside (`peers.json.bad-<unix time>`) so the agent can
    /// start fresh without destroying it; returns the new name.
    pub fn set_aside(&self) -> Result<PathBuf, PersistError> {
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let aside = self.path.with_extension(format!("json.bad-{stamp}"));
        fs::rename(&self.path, &aside).map_err(|source| PersistError::Io {
            op: "moving aside",
            path: self.path.clone(),
            source,
        })?;
        Ok(aside)
    }

    /// Writes the state atomically and durably. A failed write (a full disk) leaves
    /// the old file and no temporary behind.
    pub fn save(&self, state: &SavedState) -> Result<(), PersistError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let temporary = self.path.with_extension("json.tmp");
        let result = self.write_temporary(dir, &temporary, state).and_then(|()| {
            fs::rename(&temporary, &self.path).map_err(|source| PersistError::Io {
                op: "renaming over",
                path: self.path.clone(),
                source,
            })
        });
        if result.is_err() {
            let _ = fs::remove_file(&temporary);
            return result;
        }
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| PersistError::Io {
                op: "syncing",
                path: dir.to_owned(),
                source,
            })
    }

    fn write_temporary(
        &self,
        dir: &Path,
        temporary: &Path,
        state: &SavedState,
    ) -> Result<(), PersistError> {
        let io = |op: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| PersistError::Io { op, path, source }
        };
        fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let file = File::create(temporary).map_err(io("creating", temporary))?;
        // Streamed: no second copy of the whole state in memory.
        let mut writer = std::io::BufWriter::new(file);
        serde_json::to_writer(&mut writer, state)
            .map_err(|e| std::io::Error::other(e.to_string()))
            .map_err(io("writing", temporary))?;
        let file = writer
            .into_inner()
            .map_err(|e| e.into_error())
            .map_err(io("writing", temporary))?;
        file.sync_all().map_err(io("syncing", temporary))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_and_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path());
        assert!(file.load().unwrap().is_none());
        let state = SavedState {
            version: VERSION,
            saved_at: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
            devices: Vec::new(),
            peers: Vec::new(),
        };
        file.save(&state).unwrap();
        assert_eq!(file.load().unwrap(), Some(state));
        assert!(!dir.path().join("peers.json.tmp").exists());

        fs::write(file.path(), b"{\"version\": 1, \"saved_at\"").unwrap();
        let err = file.load().unwrap_err().to_string();
        assert!(err.contains("peers.json"), "{err}");
        let aside = file.set_aside().unwrap();
        assert!(aside.exists());
        assert!(file.load().unwrap().is_none());
    }

    #[test]
    fn another_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path());
        fs::write(
            file.path(),
            br#"{"version": 7, "saved_at": {"secs_since_epoch": 1, "nanos_since_epoch": 0}, "devices": [], "peers": []}"#,
        )
        .unwrap();
        let err = file.load().unwrap_err().to_string();
        assert!(err.contains("version 7"), "{err}");
    }
}
