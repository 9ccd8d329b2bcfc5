//! The fleet key: the one secret shared by the gateways and engines of a fleet.
//!
//! Clients are untrusted; fleet members trust each other through this key. A gateway proves that an engine call
//! comes from the fleet with the header [`FLEET_AUTH_HEADER`] = lowercase hex of
//! `HMAC-SHA256(key, "baton-fleet-v1:" + x-request-id)` ([`FleetKey::request_tag`]); the engine checks it with
//! [`FleetKey::verify_request`] (constant time). [`FleetKey::mac`] serves the other uses (the KV-pull listener's
//! challenge-response, tenant cache salts) with a domain string so that a tag made for one use is never valid for
//! another. The key's bytes never appear in `Debug` output or errors.

use std::fmt;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Header carrying the gateway's tag over the engine call's `x-request-id`.
pub const FLEET_AUTH_HEADER: &str = "x-baton-fleet-auth";
/// Header carrying the tenant label of a fleet-authenticated engine call.
pub const TENANT_HEADER: &str = "x-baton-tenant";
/// Shortest key accepted: below 128 bits a key could be brute-forced from one observed tag.
pub const MIN_KEY_LEN: usize = 16;

const REQUEST_TAG_PREFIX: &[u8] = b"baton-fleet-v1:";

type HmacSha256 = Hmac<Sha256>;

/// Why a fleet key could not be loaded. Messages never contain the key.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FleetKeyError {
    #[error("fleet key is {len} bytes; at least {MIN_KEY_LEN} are required (--fleet-key-file / BATON_FLEET_KEY)")]
    TooShort { len: usize },
    #[error("cannot read fleet key file {path}: {reason}")]
    Unreadable { path: String, reason: String },
}

/// The shared fleet secret.
#[derive(Clone)]
pub struct FleetKey {
    key: Vec<u8>,
}

impl fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FleetKey(..)")
    }
}

impl FleetKey {
    /// A key from raw bytes (at least [`MIN_KEY_LEN`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FleetKeyError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(FleetKeyError::TooShort { len: bytes.len() });
        }
        Ok(Self {
            key: bytes.to_vec(),
        })
    }

    /// The key from `--fleet-key-file` (preferred when both are given) or the `BATON_FLEET_KEY` value; trailing
    /// whitespace (a file's final newline) is trimmed. `Ok(None)` when neither is set (or the variable is empty).
    pub fn load(file: Option<&Path>, env: Option<String>) -> Result<Option<Self>, FleetKeyError> {
        if let Some(path) = file {
            let bytes = std::fs::read(path).map_err(|e| FleetKeyError::Unreadable {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            return Self::from_bytes(trim_end(&bytes)).map(Some);
        }
        match env {
            Some(value) if !value.trim_end().is_empty() => {
                Self::from_bytes(value.trim_end().as_bytes()).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// The [`FLEET_AUTH_HEADER`] value for an engine call with this `x-request-id`.
    pub fn request_tag(&self, request_id: &str) -> String {
        let mut mac = self.hmac();
        mac.update(REQUEST_TAG_PREFIX);
        mac.update(request_id.as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// Whether `tag` (hex, as sent in [`FLEET_AUTH_HEADER`]) is this key's tag for `request_id`. Constant time in
    /// the tag's content.
    pub fn verify_request(&self, request_id: &str, tag: &str) -> bool {
        let Some(tag) = unhex32(tag) else {
            return false;
        };
        let mut mac = self.hmac();
        mac.update(REQUEST_TAG_PREFIX);
        mac.update(request_id.as_bytes());
        mac.verify_slice(&tag).is_ok()
    }

    /// HMAC-SHA256 over `domain` and `parts`, each length-prefixed (8-byte big-endian) so that no two different
    /// inputs encode alike; the domain names the use (e.g. `"baton-kv-pull-v1"`).
    pub fn mac(&self, domain: &str, parts: &[&[u8]]) -> [u8; 32] {
        self.framed(domain, parts).finalize().into_bytes().into()
    }

    /// Whether `tag` is [`FleetKey::mac`] of `domain` and `parts`, compared in constant time.
    pub fn verify_mac(&self, domain: &str, parts: &[&[u8]], tag: &[u8]) -> bool {
        self.framed(domain, parts).verify_slice(tag).is_ok()
    }

    fn framed(&self, domain: &str, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = self.hmac();
        for part in std::iter::once(domain.as_bytes()).chain(parts.iter().copied()) {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    fn hmac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length; the length was checked in `from_bytes`.
        HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length")
    }
}

fn trim_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

fn unhex32(text: &str) -> Option<[u8; 32]> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> FleetKey {
        FleetKey::from_bytes(&[seed; 32]).unwrap()
    }

    #[test]
    fn fleet_request_tag_round_trips() {
        let k = key(1);
        let tag = k.request_tag("req-42");
        assert_eq!(tag.len(), 64);
        assert!(tag
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert!(k.verify_request("req-42", &tag));
    }

    #[test]
    fn fleet_tag_matches_plain_hmac_definition() {
        // The contract defines the tag as HMAC-SHA256(key, "baton-fleet-v1:" + id) in lowercase hex.
        let k = key(3);
        let mut mac = HmacSha256::new_from_slice(&[3; 32]).unwrap();
        mac.update(b"baton-fleet-v1:abc");
        assert_eq!(k.request_tag("abc"), hex(&mac.finalize().into_bytes()));
    }

    #[test]
    fn fleet_rejects_wrong_key_wrong_id_and_garbage() {
        let tag = key(1).request_tag("req-42");
        assert!(!key(2).verify_request("req-42", &tag));
        assert!(!key(1).verify_request("req-43", &tag));
        for garbage in [
            "",
            "zz",
            &tag[..63],
            &format!("{tag}0"),
            &"g".repeat(64),
            "é".repeat(32).as_str(),
        ] {
            assert!(!key(1).verify_request("req-42", garbage), "{garbage:?}");
        }
        // Flipping any nibble breaks it.
        let mut flipped = tag.clone().into_bytes();
        flipped[10] = if flipped[10] == b'0' { b'1' } else { b'0' };
        assert!(!key(1).verify_request("req-42", std::str::from_utf8(&flipped).unwrap()));
    }

    #[test]
    fn fleet_mac_is_domain_separated_and_verifies() {
        let k = key(5);
        let tag = k.mac("baton-kv-pull-v1", &[b"nonce", b"id"]);
        assert!(k.verify_mac("baton-kv-pull-v1", &[b"nonce", b"id"], &tag));
        assert!(!k.verify_mac("baton-cache-salt-v1", &[b"nonce", b"id"], &tag));
        // Length prefixes: moving a byte between parts changes the tag.
        assert!(!k.verify_mac("baton-kv-pull-v1", &[b"nonc", b"eid"], &tag));
        assert!(!key(6).verify_mac("baton-kv-pull-v1", &[b"nonce", b"id"], &tag));
        assert!(!k.verify_mac("baton-kv-pull-v1", &[b"nonce", b"id"], &tag[..31]));
    }

    #[test]
    fn fleet_short_key_rejected() {
        assert_eq!(
            FleetKey::from_bytes(b"short").unwrap_err(),
            FleetKeyError::TooShort { len: 5 }
        );
        assert!(FleetKey::from_bytes(&[0; MIN_KEY_LEN]).is_ok());
        let err = FleetKey::load(None, Some("0123456789abcde \n".into())).unwrap_err();
        assert!(err.to_string().contains("BATON_FLEET_KEY"), "{err}");
    }

    #[test]
    fn fleet_load_from_file_trims_and_prefers_file() {
        let dir = std::env::temp_dir().join(format!("baton-fleet-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        let from_file = FleetKey::load(Some(&path), Some("another-key-entirely-long".into()))
            .unwrap()
            .unwrap();
        let expected = FleetKey::from_bytes(b"0123456789abcdef0123").unwrap();
        assert_eq!(from_file.request_tag("x"), expected.request_tag("x"));
        assert!(FleetKey::load(None, None).unwrap().is_none());
        assert!(FleetKey::load(None, Some(String::new())).unwrap().is_none());
        let missing = FleetKey::load(Some(&dir.join("missing")), None).unwrap_err();
        assert!(matches!(missing, FleetKeyError::Unreadable { .. }));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fleet_debug_does_not_print_the_key() {
        let k = FleetKey::from_bytes(b"super-secret-key-material").unwrap();
        let shown = format!("{k:?} {:?}", Some(&k));
        assert!(!shown.contains("super"), "{shown}");
        assert!(shown.contains("FleetKey(..)"));
    }
}
