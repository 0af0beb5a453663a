//! Bearer tokens: read once from a file, refused at start when weak (a placeholder,
//! fewer than 16 bytes: [`crate::secrets`]), compared in constant time (over SHA-256
//! digests, so not even the length leaks), never logged.

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ServerError;

/// A token's digest.
#[derive(Clone)]
pub struct Token([u8; 32]);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Reads a token file (surrounding whitespace ignored; must not be empty).
    pub fn from_file(what: &'static str, path: &Path) -> Result<Self, ServerError> {
        let error = |message: String| ServerError::File {
            what,
            path: path.to_owned(),
            message,
        };
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?,
        );
        let token = text.trim();
        if token.is_empty() {
            return Err(error("the file is empty".into()));
        }
        crate::secrets::check_key(token.as_bytes())
            .map_err(|weak| error(format!("the token {weak}")))?;
        Ok(Self::new(token))
    }

    /// A token from its text.
    pub fn new(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// Whether an `Authorization` header value carries this token.
    pub fn accepts(&self, authorization: Option<&str>) -> bool {
        let Some(given) = authorization.and_then(|v| v.strip_prefix("Bearer ")) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
        digest.ct_eq(&self.0).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        let token = Token::new("s3cret");
        assert!(token.accepts(Some("Bearer s3cret")));
        assert!(!token.accepts(Some("Bearer s3cre")));
        assert!(!token.accepts(Some("Basic s3cret")));
        assert!(!token.accepts(None));
        assert!(!format!("{token:?}").contains("s3cret"));
    }

    #[test]
    fn weak_token_files_stop_the_agent_naming_the_key_not_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        for weak in ["change-me-api-token\n", "short-token\n", "  \n"] {
            std::fs::write(&path, weak).unwrap();
            let err = Token::from_file("api.token_file", &path)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("api.token_file "), "{err}");
            assert!(
                !err.contains(weak.trim()) || weak.trim().is_empty(),
                "{err}"
            );
        }
        std::fs::write(&path, "9f2c1e7a4b0d3e6f8a1b2c3d4e5f6a7b\n").unwrap();
        assert!(Token::from_file("api.token_file", &path).is_ok());
    }
}
