//! The Lua scripts: one per write decision, so each is one round trip and
//! atomic. Keys come in `KEYS` (all under the store's hash tag); the replica
//! keys read by `CLUSTER` are derived from the index under the same tag, so a
//! cluster holds them on the same slot.

use std::sync::LazyLock;

use redis::Script;

/// KEYS[1] request hash. ARGV: record JSON, phase, TTL ms.
const ADMIT_LUA: &str = r"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'rec', ARGV[1], 'phase', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";
pub(super) static ADMIT: LazyLock<Script> = LazyLock::new(|| Script::new(ADMIT_LUA));

/// KEYS[1] request hash. ARGV: phase, TTL ms. Returns 0 if the record is gone.
const PHASE_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'phase', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";
pub(super) static PHASE: LazyLock<Script> = LazyLock::new(|| Script::new(PHASE_LUA));

/// KEYS: request hash, done marker, goodput bucket hash.
/// ARGV: dedup TTL ms, bucket TTL ms, field prefix, counter names...
/// Returns 0 if the outcome was already counted.
const OUTCOME_LUA: &str = r"
redis.call('DEL', KEYS[1])
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return 0 end
for i = 4, #ARGV do
  redis.call('HINCRBY', KEYS[3], ARGV[3] .. ARGV[i], 1)
end
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return 1
";
pub(super) static OUTCOME: LazyLock<Script> = LazyLock::new(|| Script::new(OUTCOME_LUA));

/// KEYS: goodput bucket hashes. Returns a flat [field, sum, ...] list.
const GOODPUT_LUA: &str = r"
local acc, order = {}, {}
for i = 1, #KEYS do
  local kv = redis.call('HGETALL', KEYS[i])
  for j = 1, #kv, 2 do
    local f, v = kv[j], tonumber(kv[j + 1])
    if v == nil then
      return redis.error_reply('CORRUPT non-numeric goodput counter in ' .. KEYS[i])
    end
    if acc[f] == nil then order[#order + 1] = f; acc[f] = v else acc[f] = acc[f] + v end
  end
end
local out = {}
for _, f in ipairs(order) do
  out[#out + 1] = f
  out[#out + 1] = string.format('%.0f', acc[f])
end
return out
";
pub(super) static GOODPUT: LazyLock<Script> = LazyLock::new(|| Script::new(GOODPUT_LUA));

/// KEYS: replica key, replica index (sorted set scored by lease expiry, Redis
/// server time). ARGV: state JSON, TTL ms, replica id.
const PUBLISH_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
";
pub(super) static PUBLISH: LazyLock<Script> = LazyLock::new(|| Script::new(PUBLISH_LUA));

/// KEYS: replica index. ARGV: replica key prefix. Prunes expired leases and
/// returns the live replicas' JSON states.
const CLUSTER_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local v = redis.call('GET', ARGV[1] .. id)
  if v then out[#out + 1] = v end
end
return out
";
pub(super) static CLUSTER: LazyLock<Script> = LazyLock::new(|| Script::new(CLUSTER_LUA));

/// Every script's source, for `SCRIPT LOAD` after a (re)connect.
pub(super) const ALL: [&str; 6] = [
    ADMIT_LUA,
    PHASE_LUA,
    OUTCOME_LUA,
    GOODPUT_LUA,
    PUBLISH_LUA,
    CLUSTER_LUA,
];
