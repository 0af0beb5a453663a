//! Refuses secrets nobody should run with: values shipped as placeholders in
//! examples and manifests (`change-me` and the like, which anyone who read the
//! repository knows) and bearer tokens too short to resist guessing. The agent stops
//! at start rather than serve with them; the error names the key, never the value.

/// Shortest bearer token (bytes) the listener accepts, and shortest signing key.
pub const MIN_SECRET_BYTES: usize = 16;

/// Fragments of well-known placeholder values, compared after lowercasing and
/// removing `-`, `_`, `.` and spaces (so `Change_Me`, `change-me` and `CHANGEME` all
/// match).
const PLACEHOLDERS: &[&str] = &[
    "changeme",
    "replaceme",
    "placeholder",
    "yourtoken",
    "yoursecret",
    "yourpassword",
    "yourapikey",
    "insertyour",
    "putyour",
    "secretgoeshere",
    "tokengoeshere",
    "tokenhere",
    "secrethere",
    "notasecret",
    "xxxxxxxx",
    "todotodo",
];

/// Why a secret is refused (never contains the secret).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WeakSecret {
    /// It contains a known placeholder.
    #[error("is a placeholder value (it contains {0:?}): generate a real one, e.g. `openssl rand -hex 32`")]
    Placeholder(&'static str),
    /// It is shorter than [`MIN_SECRET_BYTES`].
    #[error("is {0} bytes long, fewer than the {MIN_SECRET_BYTES} required: generate one, e.g. `openssl rand -hex 32`")]
    TooShort(usize),
    /// It is empty.
    #[error("is empty")]
    Empty,
}

/// The placeholder `value` contains, if any.
pub fn placeholder(value: &[u8]) -> Option<&'static str> {
    let normalized: Vec<u8> = value
        .iter()
        .filter(|b| !matches!(b, b'-' | b'_' | b'.' | b' '))
        .map(u8::to_ascii_lowercase)
        .collect();
    PLACEHOLDERS
        .iter()
        .copied()
        .find(|p| normalized.windows(p.len()).any(|w| w == p.as_bytes()))
}

/// Reads a secret configured inline, in a file (its text without the trailing line
/// break) or in an environment variable, whichever is set (the first of them);
/// `None` when none is. The error says what could not be read, never a value.
pub fn read_source(
    inline: Option<&str>,
    file: Option<&std::path::Path>,
    env: Option<&str>,
) -> Result<Option<zeroize::Zeroizing<String>>, String> {
    if let Some(value) = inline {
        return Ok(Some(zeroize::Zeroizing::new(value.to_owned())));
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        return Ok(Some(zeroize::Zeroizing::new(
            text.trim_end_matches(['\n', '\r']).to_owned(),
        )));
    }
    if let Some(name) = env {
        let value =
            std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))?;
        return Ok(Some(zeroize::Zeroizing::new(value)));
    }
    Ok(None)
}

/// Checks a value that is used as it is (an `Authorization` header, a custom header):
/// only placeholders are refused, the receiver decides what else is valid.
pub fn check_value(value: &[u8]) -> Result<(), WeakSecret> {
    match placeholder(value) {
        Some(found) => Err(WeakSecret::Placeholder(found)),
        None => Ok(()),
    }
}

/// Checks a key or bearer token: not empty, not a placeholder, at least
/// [`MIN_SECRET_BYTES`] long.
pub fn check_key(value: &[u8]) -> Result<(), WeakSecret> {
    if value.is_empty() {
        return Err(WeakSecret::Empty);
    }
    check_value(value)?;
    if value.len() < MIN_SECRET_BYTES {
        return Err(WeakSecret::TooShort(value.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_placeholders_are_refused_in_every_spelling() {
        for value in [
            "change-me-api-token",
            "Bearer change-me",
            "CHANGE_ME_PLEASE_0123456789",
            "change-me-change-me-change-me",
            "<your-token>",
            "xxxxxxxxxxxxxxxxxxxx",
        ] {
            assert!(
                matches!(
                    check_value(value.as_bytes()),
                    Err(WeakSecret::Placeholder(_))
                ),
                "{value}"
            );
        }
        assert!(check_value(b"Bearer 9f2c1e7a4b").is_ok());
    }

    #[test]
    fn keys_need_sixteen_bytes_and_the_error_never_holds_the_value() {
        assert_eq!(check_key(b""), Err(WeakSecret::Empty));
        assert_eq!(check_key(b"s3cret"), Err(WeakSecret::TooShort(6)));
        assert!(check_key(b"0123456789abcdef").is_ok());
        let err = check_key(b"change-me-api-token").unwrap_err().to_string();
        assert!(!err.contains("api-token"), "{err}");
        let err = check_key(b"s3cret").unwrap_err().to_string();
        assert!(!err.contains("s3cret"), "{err}");
    }
}
