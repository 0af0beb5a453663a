//! Peer names from `peers_file`: public key -> display name, user, email and tags, in
//! TOML or JSON (by extension). The file is re-read when it changes; a bad file is
//! reported with its line and the previous names stay in force.
//!
//! ```toml
//! [peers."UTYZT+mUgf2t58EZEbwDsRkVoZ2NAzLugPkMxpwxUA8="]
//! name = "alice-laptop"
//! user = "alice"
//! email = "alice@example.com"
//! tags = ["laptop", "berlin"]
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::textpos::line_column;
use crate::wg::PublicKey;

/// What a peer is called: display name, user, email and tags from `peers_file`.
///
/// Compact because a fleet's file names every peer (100k entries are common): all of
/// an entry's text is one allocation, fields separated by U+001F (which is removed
/// from the input), with a bit per optional field that is present. Shared with `Arc`
/// between the names and the peers that carry them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PeerName {
    /// name, user, email, then the tags, separated by U+001F.
    text: Box<str>,
    /// Bit 0: name given, bit 1: user given, bit 2: email given.
    present: u8,
}

const SEPARATOR: char = '\u{1f}';

/// The fields of a [`PeerName`] as they are written in the file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerNameFields {
    /// Display name (wg-portal's `DisplayName`).
    #[serde(default)]
    pub name: Option<String>,
    /// User identifier (wg-portal's `UserIdentifier`).
    #[serde(default)]
    pub user: Option<String>,
    /// Contact email.
    #[serde(default)]
    pub email: Option<String>,
    /// Free-form tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

impl From<PeerNameFields> for PeerName {
    fn from(fields: PeerNameFields) -> Self {
        let clean = |s: &str| s.replace(SEPARATOR, "");
        let mut text = String::new();
        let mut present = 0;
        for (bit, field) in [&fields.name, &fields.user, &fields.email]
            .iter()
            .enumerate()
        {
            if bit > 0 {
                text.push(SEPARATOR);
            }
            if let Some(value) = field {
                present |= 1 << bit;
                text.push_str(&clean(value));
            }
        }
        for tag in &fields.tags {
            text.push(SEPARATOR);
            text.push_str(&clean(tag));
        }
        Self {
            text: text.into_boxed_str(),
            present,
        }
    }
}

impl PeerName {
    fn part(&self, index: usize) -> Option<&str> {
        (self.present & (1 << index) != 0)
            .then(|| self.text.split(SEPARATOR).nth(index).unwrap_or(""))
    }

    /// Display name (wg-portal's `DisplayName`).
    pub fn name(&self) -> Option<&str> {
        self.part(0)
    }

    /// User identifier (wg-portal's `UserIdentifier`).
    pub fn user(&self) -> Option<&str> {
        self.part(1)
    }

    /// Contact email.
    pub fn email(&self) -> Option<&str> {
        self.part(2)
    }

    /// Free-form tags.
    pub fn tags(&self) -> impl Iterator<Item = &str> {
        self.text.split(SEPARATOR).skip(3)
    }

    /// The fields, owned.
    pub fn fields(&self) -> PeerNameFields {
        PeerNameFields {
            name: self.name().map(str::to_owned),
            user: self.user().map(str::to_owned),
            email: self.email().map(str::to_owned),
            tags: self.tags().map(str::to_owned).collect(),
        }
    }
}

impl std::fmt::Debug for PeerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.fields().fmt(f)
    }
}

impl Serialize for PeerName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.fields().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for PeerName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        PeerNameFields::deserialize(deserializer).map(PeerName::from)
    }
}

/// The names of a file, by public key.
pub type Names = HashMap<PublicKey, Arc<PeerName>>;

/// Errors reading a names file.
#[derive(Debug, thiserror::Error)]
pub enum NamesError {
    /// The file could not be read.
    #[error("reading peers file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not parse, or a key is not a WireGuard public key.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamesFile {
    /// Keys are parsed straight into [`PublicKey`]s (a bad key is an error at its
    /// line), values into shared compact names: no second copy of the file.
    #[serde(default)]
    peers: Names,
}

fn toml_error(text: &str, path: &Path, e: toml::de::Error) -> NamesError {
    let (line, column) = e
        .span()
        .map(|s| line_column(text, s.start))
        .unwrap_or((1, 1));
    NamesError::Parse {
        path: path.to_owned(),
        line,
        column,
        message: e.message().to_owned(),
    }
}

fn json_error(path: &Path, e: serde_json::Error) -> NamesError {
    NamesError::Parse {
        path: path.to_owned(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    }
}

/// Parses names text; `path` decides the format (`.json`: JSON, else TOML) and names
/// the file in errors.
pub fn parse(text: &str, path: &Path) -> Result<Names, NamesError> {
    let file: NamesFile = if is_json(path) {
        serde_json::from_str(text).map_err(|e| json_error(path, e))?
    } else {
        toml::from_str(text).map_err(|e| toml_error(text, path, e))?
    };
    Ok(file.peers)
}

fn is_json(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "json")
}

/// Reads a names file: JSON is streamed from the file (a fleet's file is large),
/// TOML read whole. Afterwards the memory the parse used is handed back to the
/// operating system.
pub fn load(path: &Path) -> Result<Names, NamesError> {
    let read_error = |source| NamesError::Read {
        path: path.to_owned(),
        source,
    };
    let names = if is_json(path) {
        let file = std::fs::File::open(path).map_err(read_error)?;
        let reader = std::io::BufReader::with_capacity(64 * 1024, file);
        serde_json::from_reader::<_, NamesFile>(reader)
            .map_err(|e| json_error(path, e))?
            .peers
    } else {
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        parse(&text, path)?
    };
    release_freed_memory();
    Ok(names)
}

/// Returns freed heap memory to the operating system (glibc keeps it otherwise, and
/// the peak of a parse would stay in the RSS for good).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory at the top of glibc's heaps; it
    // has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Watches the names file: [`NamesWatcher::poll`] re-reads it when its modification
/// time or size changed.
#[derive(Debug)]
pub struct NamesWatcher {
    path: PathBuf,
    /// Modification time and size at the last poll (`Some(None)`: it was missing).
    seen: Option<Option<(SystemTime, u64)>>,
}

impl NamesWatcher {
    /// Watches `path`.
    pub fn new(path: PathBuf) -> Self {
        Self { path, seen: None }
    }

    /// Makes the next [`NamesWatcher::poll`] read the file whether or not it changed.
    pub fn forget_seen(&mut self) {
        self.seen = None;
    }

    /// `None` when unchanged since the last poll; otherwise the new names or why
    /// they could not be read (the caller keeps the previous names then).
    pub fn poll(&mut self) -> Option<Result<Names, NamesError>> {
        let metadata = std::fs::metadata(&self.path);
        let stamp = metadata
            .as_ref()
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        if self.seen == Some(stamp) {
            return None;
        }
        self.seen = Some(stamp);
        let read_error = |source| NamesError::Read {
            path: self.path.clone(),
            source,
        };
        Some(match metadata {
            Err(err) => Err(read_error(err)),
            Ok(_) => load(&self.path),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "UTYZT+mUgf2t58EZEbwDsRkVoZ2NAzLugPkMxpwxUA8=";

    #[test]
    fn toml_and_json_give_the_same_names() {
        let toml_text = format!(
            "[peers.\"{KEY}\"]\nname = \"alice-laptop\"\nuser = \"alice\"\nemail = \"a@example.com\"\ntags = [\"laptop\"]\n"
        );
        let json_text = format!(
            r#"{{"peers": {{"{KEY}": {{"name": "alice-laptop", "user": "alice", "email": "a@example.com", "tags": ["laptop"]}}}}}}"#
        );
        let a = parse(&toml_text, Path::new("names.toml")).unwrap();
        let b = parse(&json_text, Path::new("names.json")).unwrap();
        assert_eq!(a, b);
        let name = &a[&KEY.parse::<PublicKey>().unwrap()];
        assert_eq!(name.name(), Some("alice-laptop"));
        assert_eq!(name.tags().collect::<Vec<_>>(), ["laptop"]);
        assert_eq!(name.email(), Some("a@example.com"));
    }

    #[test]
    fn errors_name_the_line() {
        let text = format!("[peers.\"{KEY}\"]\nname = \"x\"\nnickname = \"y\"\n");
        let err = parse(&text, Path::new("names.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("names.toml:3:"), "{err}");
        assert!(err.contains("nickname"), "{err}");
        let text = "[peers.\"not-a-key\"]\nname = \"x\"\n";
        let err = parse(text, Path::new("names.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("names.toml:1:"), "{err}");
        let err = parse("{\"peers\": {\n  \"a\": 3}}", Path::new("n.json"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("n.json:2:"), "{err}");
    }

    #[test]
    fn the_watcher_rereads_only_on_change_and_reports_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("names.toml");
        std::fs::write(&path, format!("[peers.\"{KEY}\"]\nname = \"one\"\n")).unwrap();
        let mut watcher = NamesWatcher::new(path.clone());
        let first = watcher.poll().unwrap().unwrap();
        assert_eq!(first.len(), 1);
        assert!(watcher.poll().is_none(), "unchanged");
        std::fs::write(&path, "[peers.\"x\"\n").unwrap();
        assert!(watcher.poll().unwrap().is_err());
        std::fs::write(&path, format!("[peers.\"{KEY}\"]\nname = \"second\"\n")).unwrap();
        let again = watcher.poll().unwrap().unwrap();
        assert_eq!(again.values().next().unwrap().name(), Some("second"));
    }
}
