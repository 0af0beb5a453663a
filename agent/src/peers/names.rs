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
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::textpos::line_column;
use crate::wg::PublicKey;

/// What a peer is called.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerName {
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
    #[serde(default)]
    peers: HashMap<String, PeerName>,
}

/// Parses names text; `path` decides the format (`.json`: JSON, else TOML) and names
/// the file in errors.
pub fn parse(text: &str, path: &Path) -> Result<HashMap<PublicKey, PeerName>, NamesError> {
    let parse_error = |line, column, message: String| NamesError::Parse {
        path: path.to_owned(),
        line,
        column,
        message,
    };
    let file: NamesFile = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(text).map_err(|e| parse_error(e.line(), e.column(), e.to_string()))?
    } else {
        toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|s| line_column(text, s.start))
                .unwrap_or((1, 1));
            parse_error(line, column, e.message().to_owned())
        })?
    };
    let mut names = HashMap::new();
    for (key, name) in file.peers {
        let public_key: PublicKey = key.parse().map_err(|_| {
            let offset = text.find(&key).unwrap_or(0);
            let (line, column) = line_column(text, offset);
            parse_error(
                line,
                column,
                format!("{key:?} is not a WireGuard public key"),
            )
        })?;
        names.insert(public_key, name);
    }
    Ok(names)
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
    pub fn poll(&mut self) -> Option<Result<HashMap<PublicKey, PeerName>, NamesError>> {
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
            Ok(_) => std::fs::read_to_string(&self.path)
                .map_err(read_error)
                .and_then(|text| parse(&text, &self.path)),
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
        assert_eq!(name.name.as_deref(), Some("alice-laptop"));
        assert_eq!(name.tags, ["laptop"]);
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
        assert_eq!(
            again.values().next().unwrap().name.as_deref(),
            Some("second")
        );
    }
}
