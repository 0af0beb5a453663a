//! Request signatures: Standard Webhooks (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`) and the
//! GitHub / VPN Enterprise style `sha256=<hex HMAC-SHA256 of the body>` in a header
//! whose name the webhook chooses. Several secrets (rotation) give several
//! space-separated signatures in every scheme.
//!
//! The key derivation is stated per webhook: `auto` decodes a `whsec_<base64>` secret
//! to its bytes (Standard Webhooks) and takes any other secret's UTF-8 bytes; `raw`
//! always takes the secret string's UTF-8 bytes, `whsec_` prefix included, which is
//! how VPN Enterprise's own Python and Node examples key their HMAC.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

/// A secret that cannot be used (never contains the secret).
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// `whsec_` followed by something that is not base64.
    #[error("a signing secret starting with whsec_ is not valid base64 after the prefix")]
    NotBase64,
    /// A placeholder or too short a key.
    #[error("a signing secret {0}")]
    Weak(#[from] crate::secrets::WeakSecret),
}

/// How the HMAC key is derived from a secret.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyDerivation {
    /// `whsec_<base64>` decoded; any other secret's bytes.
    #[default]
    Auto,
    /// The secret string's UTF-8 bytes, whatever it looks like.
    Raw,
}

/// A signature scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scheme {
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`.
    StandardWebhooks,
    /// `<signature_header>: sha256=<hex HMAC-SHA256 of the body>`.
    Sha256Hex,
}

/// The signing keys of one webhook (never printed).
#[derive(Clone, PartialEq, Eq)]
pub struct Signer {
    keys: Vec<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} keys)", self.keys.len())
    }
}

/// The signature headers of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signatures {
    /// `webhook-signature`.
    pub standard: String,
    /// `X-Signature-256`.
    pub body: String,
}

impl Signer {
    /// Keys from secrets: `whsec_<base64>` decodes to its bytes, anything else is
    /// used as is. A key shorter than 16 bytes or a placeholder (also inside the
    /// base64) is refused.
    pub fn new(secrets: &[String]) -> Result<Self, SecretError> {
        Self::with_derivation(secrets, KeyDerivation::Auto)
    }

    /// Keys from secrets with the stated derivation (see the module documentation).
    pub fn with_derivation(
        secrets: &[String],
        derivation: KeyDerivation,
    ) -> Result<Self, SecretError> {
        let keys = secrets
            .iter()
            .map(|secret| {
                let encoded = match derivation {
                    KeyDerivation::Auto => secret.strip_prefix("whsec_"),
                    KeyDerivation::Raw => None,
                };
                let key = match encoded {
                    Some(encoded) => base64::engine::general_purpose::STANDARD
                        .decode(encoded)
                        .map(Zeroizing::new)
                        .map_err(|_| SecretError::NotBase64)?,
                    None => Zeroizing::new(secret.as_bytes().to_vec()),
                };
                crate::secrets::check_value(secret.as_bytes())?;
                crate::secrets::check_key(&key)?;
                Ok(key)
            })
            .collect::<Result<_, SecretError>>()?;
        Ok(Self { keys })
    }

    /// Signs one request.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> Signatures {
        let mut standard = Vec::new();
        let mut plain = Vec::new();
        for key in &self.keys {
            let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            standard.push(format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
            ));
            let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(body);
            plain.push(format!(
                "sha256={}",
                hex::encode(mac.finalize().into_bytes())
            ));
        }
        Signatures {
            standard: standard.join(" "),
            body: plain.join(" "),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_reference_vector() {
        // The example of the Standard Webhooks specification.
        let signer = Signer::new(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()]).unwrap();
        let body = br#"{"test": 2432232314}"#;
        let signatures = signer.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(
            signatures.standard,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn rotation_gives_one_signature_per_secret() {
        let signer = Signer::new(&[
            "old-secret-0123456789".into(),
            "new-secret-0123456789".into(),
        ])
        .unwrap();
        let signatures = signer.sign("id", 1, b"{}");
        assert_eq!(signatures.standard.split(' ').count(), 2);
        assert_eq!(signatures.body.split(' ').count(), 2);
        assert!(signatures.body.starts_with("sha256="));
        assert!(Signer::new(&["whsec_!!!".into()]).is_err());
    }

    #[test]
    fn raw_keys_are_the_secret_strings_bytes_as_vpn_enterprise_keys_them() {
        // hmac.new(secret.encode('utf-8'), body, sha256).hexdigest() in Python.
        let secret = "whsec_notdecoded-0123456789";
        let signer = Signer::with_derivation(&[secret.into()], KeyDerivation::Raw).unwrap();
        let signatures = signer.sign("id", 1, b"{\"type\":\"vpn.connected\"}");
        let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(b"{\"type\":\"vpn.connected\"}");
        assert_eq!(
            signatures.body,
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        );
    }

    #[test]
    fn placeholder_and_short_keys_are_refused_also_inside_base64() {
        // The secret deploy/kubernetes once shipped: "change-me-change-me-change-me".
        let shipped = "whsec_Y2hhbmdlLW1lLWNoYW5nZS1tZS1jaGFuZ2UtbWU=";
        assert!(matches!(
            Signer::new(&[shipped.into()]),
            Err(SecretError::Weak(crate::secrets::WeakSecret::Placeholder(
                _
            )))
        ));
        assert!(matches!(
            Signer::new(&["short".into()]),
            Err(SecretError::Weak(crate::secrets::WeakSecret::TooShort(5)))
        ));
    }
}
