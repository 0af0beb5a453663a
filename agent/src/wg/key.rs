//! WireGuard public keys: 32 bytes, shown as standard base64 like `wg show`.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;

/// A Curve25519 public key identifying a device or a peer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

/// A string that is not a 32-byte key in the expected encoding.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a WireGuard key ({encoding} of 32 bytes expected)")]
pub struct KeyParseError {
    encoding: &'static str,
}

impl PublicKey {
    /// Parses the lowercase hex form the UAPI protocol uses.
    pub fn from_hex(text: &str) -> Result<Self, KeyParseError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| KeyParseError { encoding: "hex" })?;
        Ok(Self(bytes))
    }

    /// The standard base64 form (`wg show`, wg-portal identifiers).
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }
}

impl FromStr for PublicKey {
    type Err = KeyParseError;

    /// Parses the standard base64 form.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| KeyParseError { encoding: "base64" })?;
        let bytes: [u8; 32] = decoded
            .try_into()
            .map_err(|_| KeyParseError { encoding: "base64" })?;
        Ok(Self(bytes))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_base64())
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_base64_agree() {
        let hex_form = "e84b5a6d2717c1003a13b431570353dbaca9146cf150c5f8575680feba52027a";
        let key = PublicKey::from_hex(hex_form).unwrap();
        let back: PublicKey = key.to_base64().parse().unwrap();
        assert_eq!(key, back);
        assert_eq!(key.to_base64().len(), 44);
    }

    #[test]
    fn wrong_lengths_are_rejected() {
        assert!(PublicKey::from_hex("abcd").is_err());
        assert!("AAAA".parse::<PublicKey>().is_err());
        assert!("not base64!".parse::<PublicKey>().is_err());
    }
}
