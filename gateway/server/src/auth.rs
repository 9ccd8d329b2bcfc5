//! Who is calling: client API keys → tenant (and the tightest SLO class it
//! may use), the admin key, and the gateway's own engine credentials.
//!
//! Keys are held as SHA-256 digests and compared in constant time; no key
//! is ever logged, printed by `Debug` or echoed in an error.

use std::fmt;

use baton_protocol::fleet::{hex, FleetKey};
use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::config::{ConfigError, GatewayConfig};
use crate::error::{AuthFailure, ErrorKind, GatewayError, Leg};

pub use crate::secret::Secret;

/// Tenant of `--api-key` holders.
pub const API_KEY_TENANT: &str = "default";
/// Tenant of callers when no client key is configured.
pub const ANONYMOUS: &str = "anonymous";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: String,
    /// The tightest SLO class this caller may use (also its class when it
    /// names none); `None` on an open gateway, where every caller is equal.
    pub ceiling: Option<String>,
}

#[derive(Clone)]
struct KeyEntry {
    digest: [u8; 32],
    tenant: String,
    class: Option<String>,
}

/// Client and admin key checks, built once from the config.
#[derive(Clone)]
pub struct Auth {
    keys: Vec<KeyEntry>,
    admin: Option<[u8; 32]>,
    default_class: String,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("client_keys", &self.keys.len())
            .field("admin_key", &self.admin.is_some())
            .finish()
    }
}

fn digest(s: &[u8]) -> [u8; 32] {
    Sha256::digest(s).into()
}

/// Equality that takes as long whatever the inputs.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let d = |c: u8| (c as char).to_digit(16);
        out[i] = (d(pair[0])? * 16 + d(pair[1])?) as u8;
    }
    Some(out)
}

/// The key a request presents: `Authorization: Bearer KEY` (as OpenAI SDKs
/// send it) or `x-api-key: KEY`.
fn presented(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let v = v.as_bytes();
        let scheme = b"bearer ";
        if v.len() > scheme.len() && v[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return Some(v[scheme.len()..].trim_ascii());
        }
        return Some(b"");
    }
    headers.get("x-api-key").map(|v| v.as_bytes().trim_ascii())
}

impl Auth {
    pub fn new(c: &GatewayConfig) -> Result<Self, ConfigError> {
        let mut keys = Vec::new();
        if let Some(k) = &c.api_key {
            if k.expose().is_empty() {
                return Err(ConfigError::Invalid("--api-key must not be empty".into()));
            }
            keys.push(KeyEntry {
                digest: digest(k.expose().as_bytes()),
                tenant: API_KEY_TENANT.into(),
                class: None,
            });
        }
        for k in &c.slo.api_keys {
            let d = unhex32(&k.sha256).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "API key of tenant '{}': sha256 must be 64 hex digits",
                    k.tenant
                ))
            })?;
            if let Some(class) = &k.class {
                if !c.slo.classes.contains_key(class) {
                    return Err(ConfigError::Invalid(format!(
                        "API key of tenant '{}': unknown SLO class '{class}'",
                        k.tenant
                    )));
                }
            }
            if k.tenant.is_empty() || !k.tenant.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::Invalid(format!(
                    "tenant name {:?}: use visible ASCII characters only",
                    k.tenant
                )));
            }
            keys.push(KeyEntry {
                digest: d,
                tenant: k.tenant.clone(),
                class: k.class.clone(),
            });
        }
        let admin = match &c.admin_api_key {
            Some(k) if k.expose().is_empty() => {
                return Err(ConfigError::Invalid(
                    "--admin-api-key must not be empty".into(),
                ))
            }
            Some(k) => Some(digest(k.expose().as_bytes())),
            None => None,
        };
        Ok(Self {
            keys,
            admin,
            default_class: c.slo.default_class.clone(),
        })
    }

    /// Clients must present a key (some client key is configured).
    pub fn required(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The caller of a client endpoint, or 401 when keys are configured and
    /// the request has none or an unknown one.
    pub fn client(&self, headers: &HeaderMap) -> Result<Caller, GatewayError> {
        if !self.required() {
            return Ok(Caller {
                tenant: ANONYMOUS.into(),
                ceiling: None,
            });
        }
        let fail = |why| GatewayError::new(Leg::Client, ErrorKind::Unauthorized(why));
        let key = presented(headers).ok_or_else(|| fail(AuthFailure::Missing))?;
        let d = digest(key);
        // Every entry is compared (no early exit): the time taken says
        // nothing about which key, if any, matched.
        let mut found: Option<&KeyEntry> = None;
        for k in &self.keys {
            if ct_eq(&k.digest, &d) && found.is_none() {
                found = Some(k);
            }
        }
        let k = found.ok_or_else(|| fail(AuthFailure::Invalid))?;
        Ok(Caller {
            tenant: k.tenant.clone(),
            ceiling: Some(
                k.class
                    .clone()
                    .unwrap_or_else(|| self.default_class.clone()),
            ),
        })
    }

    /// Admin endpoints on the main listener (`/metrics`, `/v1/slo`): open on
    /// a gateway without keys; with an admin key, only for it; with client
    /// keys but no admin key, closed (use the admin listener).
    pub fn admin(&self, headers: &HeaderMap) -> Result<(), GatewayError> {
        let fail = |why| GatewayError::new(Leg::Client, ErrorKind::Unauthorized(why));
        match &self.admin {
            None if !self.required() => Ok(()),
            None => Err(fail(AuthFailure::AdminOnly)),
            Some(want) => {
                let key = presented(headers).ok_or_else(|| fail(AuthFailure::Missing))?;
                if ct_eq(want, &digest(key)) {
                    Ok(())
                } else {
                    Err(fail(AuthFailure::Invalid))
                }
            }
        }
    }
}

/// The prefix-cache salt of a tenant: lowercase hex of the first 16 bytes of
/// a MAC under the gateway secret (the fleet key, so that every replica
/// salts a tenant alike; else a per-process random key).
pub fn cache_salt(secret: &FleetKey, tenant: &str) -> String {
    let mac = secret.mac("baton-cache-salt-v1", &[tenant.as_bytes()]);
    hex(&mac[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slo::config::ApiKeyConfig;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn keyed() -> Auth {
        let mut c = GatewayConfig {
            api_key: Some(Secret::new("sk-main")),
            admin_api_key: Some(Secret::new("sk-admin")),
            ..Default::default()
        };
        c.slo.api_keys.push(ApiKeyConfig {
            sha256: hex(&digest(b"sk-acme")),
            tenant: "acme".into(),
            class: Some("batch".into()),
        });
        Auth::new(&c).unwrap()
    }

    #[test]
    fn keys_map_to_tenants_and_ceilings() {
        let a = keyed();
        let c = a
            .client(&headers(&[("authorization", "Bearer sk-acme")]))
            .unwrap();
        assert_eq!(
            (c.tenant.as_str(), c.ceiling.as_deref()),
            ("acme", Some("batch"))
        );
        let c = a.client(&headers(&[("x-api-key", "sk-main")])).unwrap();
        assert_eq!(
            (c.tenant.as_str(), c.ceiling.as_deref()),
            (API_KEY_TENANT, Some("standard"))
        );
        let c = a
            .client(&headers(&[("authorization", "bearer   sk-main ")]))
            .unwrap();
        assert_eq!(c.tenant, API_KEY_TENANT);
        for bad in [
            headers(&[]),
            headers(&[("authorization", "Bearer sk-nope")]),
            headers(&[("authorization", "Basic c2stbWFpbg==")]),
            headers(&[("authorization", "sk-main")]),
            headers(&[("authorization", "Bearer ")]),
            headers(&[("x-api-key", "sk-admin")]),
        ] {
            let e = a.client(&bad).unwrap_err();
            assert!(matches!(e.kind, ErrorKind::Unauthorized(_)), "{bad:?}");
            assert!(!e.to_string().contains("sk-"), "{e}");
        }
    }

    #[test]
    fn open_gateway_serves_anonymous_callers_without_a_ceiling() {
        let a = Auth::new(&GatewayConfig::default()).unwrap();
        assert!(!a.required());
        let c = a
            .client(&headers(&[("authorization", "Bearer whatever")]))
            .unwrap();
        assert_eq!((c.tenant.as_str(), c.ceiling), (ANONYMOUS, None));
        assert!(a.admin(&HeaderMap::new()).is_ok());
    }

    #[test]
    fn admin_endpoints_need_the_admin_key_or_are_closed() {
        let a = keyed();
        assert!(a
            .admin(&headers(&[("authorization", "Bearer sk-admin")]))
            .is_ok());
        assert!(a
            .admin(&headers(&[("authorization", "Bearer sk-main")]))
            .is_err());
        assert!(a.admin(&HeaderMap::new()).is_err());
        let mut c = GatewayConfig {
            api_key: Some(Secret::new("sk-main")),
            ..Default::default()
        };
        let closed = Auth::new(&c).unwrap();
        let e = closed
            .admin(&headers(&[("authorization", "Bearer sk-main")]))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unauthorized(AuthFailure::AdminOnly));
        c.slo.api_keys.push(ApiKeyConfig {
            sha256: "xyz".into(),
            tenant: "t".into(),
            class: None,
        });
        assert!(Auth::new(&c).unwrap_err().to_string().contains("64 hex"));
    }

    #[test]
    fn secrets_and_auth_never_debug_print_keys() {
        let shown = format!("{:?} {:?}", Secret::new("sk-main"), keyed());
        assert!(!shown.contains("sk-"), "{shown}");
    }

    #[test]
    fn cache_salts_differ_per_tenant_and_secret() {
        let k1 = FleetKey::from_bytes(&[1; 32]).unwrap();
        let k2 = FleetKey::from_bytes(&[2; 32]).unwrap();
        let s = cache_salt(&k1, "acme");
        assert_eq!(s.len(), 32);
        assert_eq!(s, cache_salt(&k1, "acme"));
        assert_ne!(s, cache_salt(&k1, "globex"));
        assert_ne!(s, cache_salt(&k2, "acme"));
    }
}
