//! Opening the outbox file when it may be damaged. A file redb cannot open — an
//! error, or a panic inside redb (a truncated file trips an assertion in its page
//! manager) — would otherwise stop every start, and with `Restart=on-failure` the
//! agent would loop delivering nothing. Such a file is moved aside
//! (`outbox.redb.bad-<unix time>`), a copy of it is opened with redb's repair to
//! salvage what it still holds, a fresh outbox is created with the salvaged events,
//! and the caller says loudly what happened. A zero-length file is reported, never
//! silently taken as an empty outbox. Errors that are not damage (the file is in use
//! by another process, permission denied, a full disk) are returned as they are: the
//! file may be fine.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redb::{Database, DatabaseError, StorageError};

use super::store;

/// What was wrong with the file found at start, and what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// Why it could not be used.
    pub cause: String,
    /// Where it was moved (`None`: nothing to keep, e.g. a 0-byte file).
    pub aside: Option<PathBuf>,
    /// Events salvaged into the fresh outbox (`None`: nothing could be read back, so
    /// how many were lost is unknown).
    pub salvaged: Option<usize>,
}

/// An open outbox database: the highest sequence number and bytes stored, and the
/// damage found on the way, if any.
pub(super) struct Opened {
    pub db: Database,
    pub last_seq: u64,
    pub bytes: u64,
    pub damage: Option<Damage>,
}

enum Attempt {
    Opened(Database, u64, u64),
    Damaged(String),
    Failed(String),
}

/// The message of the last panic on this process (captured while redb is opened).
static PANIC_MESSAGE: Mutex<Option<String>> = Mutex::new(None);

/// Runs `f`, turning a panic into `Err(message)` without the default hook's output.
fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        *PANIC_MESSAGE.lock().unwrap_or_else(|p| p.into_inner()) = Some(info.to_string());
    }));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    result.map_err(|_| {
        PANIC_MESSAGE
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| "a panic".into())
    })
}

/// Whether an error opening the file means the file itself is damaged.
fn is_damage(err: &DatabaseError) -> bool {
    match err {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::RepairAborted => false,
        DatabaseError::UpgradeRequired(_) => true,
        DatabaseError::Storage(StorageError::Io(io)) => matches!(
            io.kind(),
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
        ),
        DatabaseError::Storage(_) => true,
        _ => true,
    }
}

fn attempt(path: &Path) -> Attempt {
    let opened = catch(|| {
        let db = match super::store::open_database(path) {
            Ok(db) => db,
            Err(err) if is_damage(&err) => return Attempt::Damaged(err.to_string()),
            Err(err) => return Attempt::Failed(err.to_string()),
        };
        match store::scan(&db) {
            Ok(Some((last, bytes))) => Attempt::Opened(db, last, bytes),
            Ok(None) => match store::init(&db) {
                Ok(()) => Attempt::Opened(db, 0, 0),
                Err(e) => Attempt::Failed(format!("{}: {}", e.op, e.message)),
            },
            Err(e) => Attempt::Damaged(format!("{}: {}", e.op, e.message)),
        }
    });
    match opened {
        Ok(attempt) => attempt,
        Err(panic) => Attempt::Damaged(format!("redb panicked: {panic}")),
    }
}

/// Reads back what a damaged file still holds, from a repaired copy (the file
/// itself stays as it was, for a post-mortem).
pub(super) fn salvage(aside: &Path) -> Option<Vec<store::Dumped>> {
    let copy = aside.with_extension("salvage");
    std::fs::copy(aside, &copy).ok()?;
    let dumped = catch(|| {
        let db = Database::open(&copy).ok()?;
        store::dump(&db).ok()
    })
    .ok()
    .flatten();
    let _ = std::fs::remove_file(&copy);
    dumped
}

/// Opens (or creates) the outbox file at `path`, recovering from a damaged one.
pub(super) fn open(path: &Path) -> Result<Opened, String> {
    let mut damage = None;
    if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
        // redb would take a zero-length file as a new, empty outbox.
        std::fs::remove_file(path).map_err(|e| format!("removing the empty file: {e}"))?;
        damage = Some(Damage {
            cause: "the file is empty (0 bytes): whatever it held is gone".into(),
            aside: None,
            salvaged: None,
        });
    }
    match attempt(path) {
        Attempt::Opened(db, last_seq, bytes) => Ok(Opened {
            db,
            last_seq,
            bytes,
            damage,
        }),
        Attempt::Failed(message) => Err(message),
        Attempt::Damaged(cause) => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let aside = path.with_file_name(format!(
                "{}.bad-{stamp}",
                path.file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("outbox.redb")
            ));
            std::fs::rename(path, &aside)
                .map_err(|e| format!("{cause}; moving it aside failed: {e}"))?;
            let salvaged = salvage(&aside);
            let Attempt::Opened(db, _, _) = attempt(path) else {
                return Err(format!(
                    "{cause}; a fresh outbox could not be created either"
                ));
            };
            let mut last_seq = 0;
            let mut bytes = 0;
            if let Some(rows) = &salvaged {
                let rows: Vec<store::Row<'_>> = rows
                    .iter()
                    .map(|d| store::Row {
                        seq: d.seq,
                        body: &d.body,
                        pending: d.pending.iter().map(String::as_str).collect(),
                        dead: d
                            .dead
                            .iter()
                            .map(|(w, r)| (w.as_str(), r.as_str()))
                            .collect(),
                    })
                    .collect();
                bytes = store::write(&db, &rows)
                    .map_err(|e| format!("{cause}; storing the salvaged events: {}", e.message))?;
                last_seq = rows.last().map(|r| r.seq).unwrap_or(0);
            }
            Ok(Opened {
                db,
                last_seq,
                bytes,
                damage: Some(Damage {
                    cause,
                    aside: Some(aside),
                    salvaged: salvaged.map(|rows| rows.len()),
                }),
            })
        }
    }
}
