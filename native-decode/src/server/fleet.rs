//! Which HTTP calls come from the fleet: a gateway holding the fleet key proves it per call with
//! `x-baton-fleet-auth`, an HMAC over the call's `x-request-id` (see `baton_protocol::fleet`).
//!
//! Only such calls may steer fleet internals: `kv_transfer_params` (keeping KV for a puller, pulling from a
//! named host) and the tenant a lease counts against. For everyone else those are ignored and the request is
//! served as a plain one, so a client can neither make this engine connect anywhere nor pin its KV pool.

use baton_protocol::fleet::{FleetKey, FLEET_AUTH_HEADER, TENANT_HEADER};
use http::HeaderMap;

/// Longest tenant label kept (longer ones count as one shared "invalid" bucket).
const MAX_TENANT: usize = 256;

/// Who sent a request, as far as fleet trust goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Caller {
    /// The fleet-auth header verified for this call's `x-request-id`.
    pub fleet: bool,
    /// The gateway's `x-baton-tenant` (fleet calls only; "anonymous" when absent).
    pub tenant: Option<String>,
}

impl Caller {
    pub fn of(key: Option<&FleetKey>, headers: &HeaderMap) -> Self {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let fleet = match (key, header("x-request-id"), header(FLEET_AUTH_HEADER)) {
            (Some(key), Some(id), Some(tag)) => key.verify_request(id, tag),
            _ => false,
        };
        if !fleet {
            return Self::default();
        }
        let tenant = match header(TENANT_HEADER) {
            Some(t) if t.len() <= MAX_TENANT => t,
            Some(_) => "invalid",
            None => "anonymous",
        };
        Self {
            fleet,
            tenant: Some(tenant.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn only_a_valid_tag_for_this_request_id_is_the_fleet() {
        let key = FleetKey::from_bytes(&[9; 32]).unwrap();
        let tag = key.request_tag("req-1");
        let ok = headers(&[
            ("x-request-id", "req-1"),
            (FLEET_AUTH_HEADER, &tag),
            (TENANT_HEADER, "acme"),
        ]);
        assert_eq!(
            Caller::of(Some(&key), &ok),
            Caller {
                fleet: true,
                tenant: Some("acme".into())
            }
        );
        // Without a key nothing is trusted; a tag for another id, another key's tag, or none: not the fleet,
        // and the tenant header is ignored.
        assert_eq!(Caller::of(None, &ok), Caller::default());
        let other_id = headers(&[("x-request-id", "req-2"), (FLEET_AUTH_HEADER, &tag)]);
        assert_eq!(Caller::of(Some(&key), &other_id), Caller::default());
        let other_key = FleetKey::from_bytes(&[8; 32]).unwrap();
        assert_eq!(Caller::of(Some(&other_key), &ok), Caller::default());
        let untagged = headers(&[("x-request-id", "req-1"), (TENANT_HEADER, "acme")]);
        assert_eq!(Caller::of(Some(&key), &untagged), Caller::default());
        let no_tenant = headers(&[("x-request-id", "req-1"), (FLEET_AUTH_HEADER, &tag)]);
        assert_eq!(
            Caller::of(Some(&key), &no_tenant).tenant.as_deref(),
            Some("anonymous")
        );
    }
}
