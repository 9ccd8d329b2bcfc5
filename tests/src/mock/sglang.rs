//! SGLang PD disaggregation (docs/PROTOCOLS.md §2): both legs get the same body carrying
//! `bootstrap_host` / `bootstrap_port` / `bootstrap_room`; the prefill blocks until the decode
//! joined the room, then "transfers" the KV; the decode waits for that transfer.

use serde_json::Value;

use super::openai::Completion;
use super::rendezvous::{Leg, RoomKey};
use super::server::{Call, Reply};

/// The bootstrap fields of a request, one entry per batch item.
#[derive(Debug, PartialEq, Eq)]
struct Bootstrap {
    keys: Vec<RoomKey>,
}

/// Parses the three bootstrap fields. Each is a scalar or an array with one entry per batch item
/// (`items`); the room must be an array when there are several items.
fn parse(body: &Value, items: usize) -> Result<Bootstrap, String> {
    let field = |name: &str| -> Result<Vec<&Value>, String> {
        let v = body
            .get(name)
            .filter(|v| !v.is_null())
            .ok_or_else(|| format!("missing `{name}`"))?;
        match v {
            Value::Array(a) if a.len() == items => Ok(a.iter().collect()),
            Value::Array(a) => Err(format!(
                "`{name}` has {} entries for a batch of {items}",
                a.len()
            )),
            scalar if items == 1 || name != "bootstrap_room" => Ok(vec![scalar; items]),
            _ => Err(format!(
                "`{name}` must be an array of {items} rooms for a batch"
            )),
        }
    };
    let hosts = field("bootstrap_host")?;
    let ports = field("bootstrap_port")?;
    let rooms = field("bootstrap_room")?;
    let keys = hosts
        .into_iter()
        .zip(ports)
        .zip(rooms)
        .map(|((host, port), room)| {
            let host = host.as_str().ok_or("`bootstrap_host` must be a string")?;
            let port = port
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .ok_or("`bootstrap_port` must be a port number")?;
            let room = room
                .as_u64()
                .filter(|r| *r <= i64::MAX as u64)
                .ok_or("`bootstrap_room` must be an integer in [0, 2^63-1]")?;
            Ok(RoomKey {
                host: normalize_host(host),
                port,
                room,
            })
        })
        .collect::<Result<Vec<_>, &str>>()?;
    Ok(Bootstrap { keys })
}

fn normalize_host(host: &str) -> String {
    match host {
        "localhost" | "[::1]" | "::1" => "127.0.0.1".to_owned(),
        h => h.to_owned(),
    }
}

/// An SGLang prefill server whose bootstrap server listens on `bootstrap_port`.
pub(crate) async fn prefill(call: &Call<'_>, bootstrap_port: u16) -> Reply {
    let boot = match parse(&call.body, call.req.choices()) {
        Ok(b) => b,
        Err(m) => return Reply::error(400, &m),
    };
    if let Some(k) = boot.keys.iter().find(|k| k.port != bootstrap_port) {
        return Reply::error(
            400,
            &format!(
                "bootstrap_port {} does not match this prefill server's bootstrap port {bootstrap_port}",
                k.port
            ),
        );
    }
    let completion = if call.eos_first {
        Completion::eos_first()
    } else {
        Completion::length(1)
    };
    if call.cfg().no_rendezvous {
        return call.generate(completion, true).await;
    }
    // The room lives on this server's bootstrap endpoint, whatever host the body names.
    let own_host = call.shared.bootstrap_host();
    let keys = boot
        .keys
        .into_iter()
        .map(|k| RoomKey {
            host: own_host.clone(),
            ..k
        })
        .collect();
    let leg = match call.shared.rendezvous.enter(keys, Leg::Prefill) {
        Ok(leg) => leg,
        Err(k) => return Reply::error(400, &format!("bootstrap_room {} already in use", k.room)),
    };
    let timeout = call.cfg().rendezvous_timeout;
    if tokio::time::timeout(timeout, leg.wait(|r| r.decode))
        .await
        .is_err()
    {
        return Reply::error(500, "bootstrap timeout: no decode joined the room");
    }
    tokio::time::sleep(call.cfg().head_delay).await;
    leg.mark_transferred();
    drop(leg);
    call.generate(completion, false).await
}

/// An SGLang decode server: joins the rooms named by the body and waits for the KV transfer.
pub(crate) async fn decode(call: &Call<'_>) -> Reply {
    let boot = match parse(&call.body, call.req.choices()) {
        Ok(b) => b,
        Err(m) => return Reply::error(400, &m),
    };
    if !call.cfg().no_rendezvous {
        let leg = match call.shared.rendezvous.enter(boot.keys, Leg::Decode) {
            Ok(leg) => leg,
            Err(k) => {
                return Reply::error(400, &format!("bootstrap_room {} already in use", k.room))
            }
        };
        let timeout = call.cfg().rendezvous_timeout;
        if tokio::time::timeout(timeout, leg.wait(|r| r.transferred))
            .await
            .is_err()
        {
            return Reply::error(500, "bootstrap timeout: KV transfer never completed");
        }
    }
    let completion = call.completion();
    call.generate(completion, true).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_scalars_and_batches() {
        let one = parse(
            &json!({"bootstrap_host": "localhost", "bootstrap_port": 8998, "bootstrap_room": 7}),
            1,
        )
        .unwrap();
        assert_eq!(one.keys[0].host, "127.0.0.1");
        assert_eq!(one.keys[0].room, 7);
        let two = json!({"bootstrap_host": ["h", "h"], "bootstrap_port": [1, 1],
                         "bootstrap_room": [3, 4]});
        assert_eq!(parse(&two, 2).unwrap().keys.len(), 2);
        assert!(parse(&two, 3).is_err());
        let scalar_room = json!({"bootstrap_host": "h", "bootstrap_port": 1, "bootstrap_room": 3});
        assert!(parse(&scalar_room, 2).is_err());
        assert!(parse(
            &json!({"bootstrap_host": "h", "bootstrap_port": null,
                               "bootstrap_room": 3}),
            1
        )
        .is_err());
    }
}
