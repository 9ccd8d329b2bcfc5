//! The models the fleet serves, as its engines list them (`GET /v1/models`, read with each health
//! check), so that a request naming a model no engine serves gets OpenAI's 404 from the gateway
//! itself instead of a prefill (or a whole retry round) spent on it.

use serde_json::Value;

use crate::config::{Mode, PdProtocol};
use crate::error::{ErrorKind, GatewayError, Leg};
use crate::pool::Pool;

/// The ids of an OpenAI model list (`{"data": [{"id": ...}, ...]}`); `None` if `body` is not one.
pub fn parse_ids(body: &[u8]) -> Option<Vec<String>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let data = v.get("data")?.as_array()?;
    Some(
        data.iter()
            .filter_map(|m| m.get("id").and_then(Value::as_str).map(str::to_owned))
            .collect(),
    )
}

/// Refuses `model` when the gateway knows every healthy worker's models and some pool has none
/// serving it. Anything unknown lets the request through (the engine decides): a pool with no
/// healthy worker, a worker that has not listed its models (yet, or at all), no `model` in the
/// request, and SGLang PD, whose engines accept any name.
pub fn check(mode: Mode, pools: &[&Pool], model: Option<&str>) -> Result<(), GatewayError> {
    let Some(model) = model else { return Ok(()) };
    if mode == Mode::Pd(PdProtocol::Sglang) {
        return Ok(());
    }
    for pool in pools {
        let mut healthy = pool.workers.iter().filter(|w| w.is_healthy()).peekable();
        if healthy.peek().is_none() {
            continue;
        }
        let mut served = false;
        for w in healthy {
            match w.models() {
                None => return Ok(()),
                Some(ids) => served |= ids.iter().any(|id| id == model),
            }
        }
        if !served {
            return Err(GatewayError::new(
                Leg::Client,
                ErrorKind::ModelNotFound(model.to_owned()),
            ));
        }
    }
    Ok(())
}
