//! A state file written as its peers arrive, slice by slice: the writer never holds
//! a copy of the whole table (at 100k peers that copy was about 90 MiB). The file is
//! the same JSON document [`StateFile::save`] writes (the peers come before the
//! devices, which a reader of the object does not mind), and it replaces the old file
//! the same way: written to the temporary, fsynced, renamed over, the directory
//! fsynced. Until [`StateStream::commit`] the old file stays in force; a stream that
//! is dropped or fails removes its temporary. Each slice is handed to the disk as it
//! is written, so the final fsync is short.

use std::fs::{self, File};
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::persist::{PersistError, StateFile, VERSION};
use super::state::{DeviceState, PeerState};

/// A state file being written.
pub struct StateStream {
    file: StateFile,
    temporary: PathBuf,
    writer: Option<BufWriter<File>>,
    /// Peers written so far (a comma goes before every one after the first).
    peers: usize,
}

impl StateStream {
    /// Creates the temporary and writes the head of the document (version, time).
    pub fn begin(file: &StateFile, saved_at: SystemTime) -> Result<Self, PersistError> {
        let path = file.path();
        let dir = path.parent().unwrap_or(Path::new("."));
        let temporary = path.with_extension("json.tmp");
        fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let created = File::create(&temporary).map_err(io("creating", &temporary))?;
        let mut stream = Self {
            file: file.clone(),
            temporary,
            writer: Some(BufWriter::new(created)),
            peers: 0,
        };
        let saved_at = serde_json::to_string(&saved_at).map_err(|e| stream.invalid(e))?;
        stream.write(
            format!("{{\"version\":{VERSION},\"saved_at\":{saved_at},\"peers\":[").as_bytes(),
        )?;
        Ok(stream)
    }

    /// Appends `peers` to the document.
    pub fn write_peers(&mut self, peers: &[PeerState]) -> Result<(), PersistError> {
        for peer in peers {
            if self.peers > 0 {
                self.write(b",")?;
            }
            let writer = self.writer.as_mut().expect("open until finished");
            if let Err(err) = serde_json::to_writer(writer, peer) {
                return Err(self.failed("writing", std::io::Error::other(err.to_string())));
            }
            self.peers += 1;
        }
        self.start_writeback()
    }

    /// Hands what is written so far to the disk without waiting for it
    /// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`): the final fsync then has little
    /// left to flush, and the outbox's fsyncs meanwhile do not wait behind a
    /// journal commit of the whole state (100 MB at 100k peers).
    fn start_writeback(&mut self) -> Result<(), PersistError> {
        use std::os::fd::AsRawFd as _;
        let writer = self.writer.as_mut().expect("open until finished");
        if let Err(err) = writer.flush() {
            return Err(self.failed("writing", err));
        }
        let fd = writer.get_ref().as_raw_fd();
        // SAFETY: a valid descriptor of our open file; offset 0, length 0 is "to the
        // end of the file". Only a hint: a failure (a file system without it) is
        // not an error, the fsync at the end still makes it durable.
        unsafe { libc::sync_file_range(fd, 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        Ok(())
    }

    /// Ends the document with `devices` and makes the temporary durable (fsync); the
    /// old file is still in force until [`StateStream::commit`].
    pub fn finish(&mut self, devices: &[DeviceState]) -> Result<(), PersistError> {
        self.write(b"],\"devices\":")?;
        let writer = self.writer.as_mut().expect("open until finished");
        if let Err(err) = serde_json::to_writer(&mut *writer, devices) {
            return Err(self.failed("writing", std::io::Error::other(err.to_string())));
        }
        self.write(b"}")?;
        let writer = self.writer.take().expect("open until finished");
        let file = match writer.into_inner() {
            Ok(file) => file,
            Err(err) => return Err(self.failed("writing", err.into_error())),
        };
        file.sync_all().map_err(|err| self.failed("syncing", err))
    }

    /// Renames the finished temporary over the state file and fsyncs the directory.
    pub fn commit(mut self) -> Result<(), PersistError> {
        assert!(self.writer.is_none(), "finished before it is committed");
        let path = self.file.path().to_owned();
        if let Err(err) = fs::rename(&self.temporary, &path) {
            return Err(self.failed_at("renaming over", &path, err));
        }
        // Renamed: nothing to remove any more.
        self.temporary = PathBuf::new();
        let dir = path.parent().unwrap_or(Path::new("."));
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing", dir))
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), PersistError> {
        let writer = self.writer.as_mut().expect("open until finished");
        writer
            .write_all(bytes)
            .map_err(|err| self.failed("writing", err))
    }

    fn invalid(&mut self, err: serde_json::Error) -> PersistError {
        self.failed("writing", std::io::Error::other(err.to_string()))
    }

    /// The error of `op` on the temporary; the temporary is removed.
    fn failed(&mut self, op: &'static str, source: std::io::Error) -> PersistError {
        let temporary = self.temporary.clone();
        self.failed_at(op, &temporary, source)
    }

    fn failed_at(&mut self, op: &'static str, path: &Path, source: std::io::Error) -> PersistError {
        self.remove_temporary();
        PersistError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }

    fn remove_temporary(&mut self) {
        self.writer = None;
        if !self.temporary.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.temporary);
            self.temporary = PathBuf::new();
        }
    }
}

impl Drop for StateStream {
    /// A stream abandoned before its commit leaves no temporary behind.
    fn drop(&mut self) {
        self.remove_temporary();
    }
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PersistError {
    let path = path.to_owned();
    move |source| PersistError::Io { op, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::PeerTable;
    use crate::wg::{Device, DeviceKind, Peer, PublicKey};
    use std::time::Duration;

    fn table(peers: usize) -> PeerTable {
        let device = Device {
            name: "wgstream0".into(),
            kind: DeviceKind::Userspace,
            public_key: Some(PublicKey([9; 32])),
            listen_port: 51820,
            fwmark: 0,
            peers: (0..peers)
                .map(|i| Peer::new(PublicKey([i as u8; 32])))
                .collect(),
        };
        let mut table = PeerTable::new(Duration::from_secs(180));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        table.apply_devices(&[device], now, now);
        table
    }

    #[test]
    fn a_streamed_file_loads_as_the_state_it_was_written_from() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path());
        let table = table(5);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_100);
        let state = table.save(now);
        let mut stream = StateStream::begin(&file, now).unwrap();
        // In two slices, the second empty-handed in between.
        stream.write_peers(&state.peers[..2]).unwrap();
        stream.write_peers(&[]).unwrap();
        stream.write_peers(&state.peers[2..]).unwrap();
        stream.finish(&state.devices).unwrap();
        assert!(
            file.load().unwrap().is_none(),
            "not in force before the commit"
        );
        stream.commit().unwrap();
        assert_eq!(file.load().unwrap(), Some(state));
        assert!(!dir.path().join("peers.json.tmp").exists());
    }

    #[test]
    fn an_empty_table_streams_to_a_valid_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path());
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_100);
        let mut stream = StateStream::begin(&file, now).unwrap();
        stream.finish(&[]).unwrap();
        stream.commit().unwrap();
        let loaded = file.load().unwrap().expect("saved");
        assert!(loaded.peers.is_empty() && loaded.devices.is_empty());
    }

    #[test]
    fn an_abandoned_stream_keeps_the_old_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path());
        let old = table(1).save(SystemTime::UNIX_EPOCH + Duration::from_secs(1));
        file.save(&old).unwrap();
        let state = table(3).save(SystemTime::UNIX_EPOCH + Duration::from_secs(2));
        let mut stream = StateStream::begin(&file, state.saved_at).unwrap();
        stream.write_peers(&state.peers).unwrap();
        assert!(dir.path().join("peers.json.tmp").exists());
        drop(stream);
        assert!(!dir.path().join("peers.json.tmp").exists());
        assert_eq!(file.load().unwrap(), Some(old));
    }
}
