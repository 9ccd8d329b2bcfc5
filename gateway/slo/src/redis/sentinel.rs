//! Redis Sentinel: where the primary is now.
//!
//! Discovery is built on the plain client rather than the `redis` crate's
//! `sentinel` feature: that feature finds a primary (`SENTINEL MASTERS` and a
//! `ROLE` check) but hands back a plain `Client`, so a
//! [`ConnectionManager`](redis::aio::ConnectionManager) made from it keeps
//! reconnecting to the old address after a failover; the store has to notice
//! the failover and swap connections itself anyway (see `failover.rs`), and
//! the feature would change the workspace-wide `redis` build (features are
//! resolved once for every crate, `tests/check-one-build.sh`) for the few
//! lines of discovery below.

use std::fmt;
use std::time::Duration;

use redis::{Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

use super::map_err;
use crate::SloStoreError;

/// Where to find the primary through Redis Sentinel, and how much of a
/// failover the store bridges. Passwords are never printed (`Debug`
/// redacts them).
#[derive(Clone)]
pub struct SentinelConfig {
    /// `host:port` of each sentinel; asked in this order, the first that
    /// names a primary that says it is one wins.
    pub sentinels: Vec<String>,
    /// The monitored master's name (`sentinel monitor <name> ...`).
    pub master_name: String,
    /// `AUTH` to the sentinels (`requirepass` in sentinel.conf), if any.
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
    /// `AUTH` to the primary (and its replicas), if any.
    pub username: Option<String>,
    pub password: Option<String>,
    /// Database index on the primary.
    pub db: i64,
    /// Replicas that must hold an outcome (`WAIT`) before the store stops
    /// keeping it for a replay to a promoted replica (default 1).
    pub confirm_replicas: usize,
    /// Bound on one `WAIT` (on its own connection, never the request
    /// path's; default 100 ms).
    pub confirm_timeout: Duration,
    /// Period of the background task that confirms outcomes and replays
    /// unconfirmed ones after a failover (default 100 ms).
    pub tick: Duration,
    /// The sentinels are asked at least this often even when nothing failed
    /// (a failover that kept the old primary reachable; default 1 s).
    pub check_interval: Duration,
    /// Unconfirmed outcomes kept for a replay (default 10 000; the oldest
    /// are dropped beyond it: they stay counted on the primary, only a
    /// failover before a replica has them would lose them).
    pub unconfirmed_capacity: usize,
}

impl SentinelConfig {
    pub fn new(sentinels: Vec<String>, master_name: impl Into<String>) -> Self {
        Self {
            sentinels,
            master_name: master_name.into(),
            sentinel_username: None,
            sentinel_password: None,
            username: None,
            password: None,
            db: 0,
            confirm_replicas: 1,
            confirm_timeout: Duration::from_millis(100),
            tick: Duration::from_millis(100),
            check_interval: Duration::from_secs(1),
            unconfirmed_capacity: 10_000,
        }
    }

    /// Checks the addresses (`host:port`, port a number) and the name.
    pub fn validate(&self) -> Result<(), String> {
        if self.sentinels.is_empty() {
            return Err("no sentinel addresses".into());
        }
        if self.master_name.is_empty() {
            return Err("empty master name".into());
        }
        for s in &self.sentinels {
            split_addr(s)?;
        }
        Ok(())
    }

    /// Connection settings for one sentinel.
    fn sentinel_info(&self, addr: &str) -> Result<ConnectionInfo, SloStoreError> {
        let (host, port) = split_addr(addr).map_err(SloStoreError::Backend)?;
        let mut redis = RedisConnectionInfo::default();
        if let Some(u) = &self.sentinel_username {
            redis = redis.set_username(u);
        }
        if let Some(p) = &self.sentinel_password {
            redis = redis.set_password(p);
        }
        info(host, port, redis)
    }

    /// Connection settings for the primary at `host:port`.
    pub(super) fn primary_info(&self, addr: &str) -> Result<ConnectionInfo, SloStoreError> {
        let (host, port) = split_addr(addr).map_err(SloStoreError::Backend)?;
        let mut redis = RedisConnectionInfo::default().set_db(self.db);
        if let Some(u) = &self.username {
            redis = redis.set_username(u);
        }
        if let Some(p) = &self.password {
            redis = redis.set_password(p);
        }
        info(host, port, redis)
    }

    /// The primary's `host:port` according to each sentinel that answers,
    /// in the configured order, without repeats. Each sentinel is asked on a
    /// fresh connection bounded by `bound` (discovery is rare: at start,
    /// after a failure, once per `check_interval`).
    pub(super) async fn ask(&self, bound: Duration) -> Result<Vec<String>, SloStoreError> {
        let mut found: Vec<String> = Vec::new();
        let mut last_err = None;
        for s in &self.sentinels {
            match tokio::time::timeout(bound, self.ask_one(s, bound)).await {
                Ok(Ok(Some(addr))) => {
                    if !found.contains(&addr) {
                        found.push(addr);
                    }
                }
                Ok(Ok(None)) => {
                    last_err = Some(SloStoreError::Unavailable(format!(
                        "sentinel {s} does not know master {:?}",
                        self.master_name
                    )))
                }
                Ok(Err(e)) => last_err = Some(e),
                Err(_) => last_err = Some(SloStoreError::Timeout),
            }
        }
        if !found.is_empty() {
            return Ok(found);
        }
        Err(last_err.unwrap_or_else(|| SloStoreError::Unavailable("no sentinel answered".into())))
    }

    async fn ask_one(
        &self,
        sentinel: &str,
        bound: Duration,
    ) -> Result<Option<String>, SloStoreError> {
        let client = Client::open(self.sentinel_info(sentinel)?).map_err(map_err)?;
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(bound))
            .set_response_timeout(Some(bound));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .map_err(map_err)?;
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master_name)
            .query_async(&mut conn)
            .await
            .map_err(map_err)?;
        Ok(addr.map(|(host, port)| join_addr(&host, port)))
    }
}

impl fmt::Debug for SentinelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |p: &Option<String>| p.as_ref().map(|_| "<redacted>");
        f.debug_struct("SentinelConfig")
            .field("sentinels", &self.sentinels)
            .field("master_name", &self.master_name)
            .field("sentinel_username", &self.sentinel_username)
            .field("sentinel_password", &redact(&self.sentinel_password))
            .field("username", &self.username)
            .field("password", &redact(&self.password))
            .field("db", &self.db)
            .field("confirm_replicas", &self.confirm_replicas)
            .field("confirm_timeout", &self.confirm_timeout)
            .field("tick", &self.tick)
            .field("check_interval", &self.check_interval)
            .field("unconfirmed_capacity", &self.unconfirmed_capacity)
            .finish()
    }
}

fn info(
    host: &str,
    port: u16,
    redis: RedisConnectionInfo,
) -> Result<ConnectionInfo, SloStoreError> {
    Ok(ConnectionAddr::Tcp(host.to_owned(), port)
        .into_connection_info()
        .map_err(map_err)?
        .set_redis_settings(redis))
}

/// `host:port` (IPv6 as `[::1]:port`) → (host, port).
fn split_addr(addr: &str) -> Result<(&str, u16), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{addr:?} is not host:port"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = port
        .parse()
        .map_err(|_| format!("{addr:?}: port is not a number"))?;
    if host.is_empty() {
        return Err(format!("{addr:?}: empty host"));
    }
    Ok((host, port))
}

fn join_addr(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_and_join() {
        assert_eq!(split_addr("10.0.0.1:26379"), Ok(("10.0.0.1", 26379)));
        assert_eq!(split_addr("[::1]:26379"), Ok(("::1", 26379)));
        assert_eq!(split_addr("sentinel-1:26379"), Ok(("sentinel-1", 26379)));
        assert!(split_addr("nohost").is_err());
        assert!(split_addr(":1").is_err());
        assert!(split_addr("h:port").is_err());
        assert_eq!(join_addr("::1", 6379), "[::1]:6379");
        assert_eq!(join_addr("redis", 6379), "redis:6379");
    }

    #[test]
    fn debug_never_prints_passwords() {
        let mut c = SentinelConfig::new(vec!["s:26379".into()], "m");
        c.sentinel_password = Some("sentinel-secret".into());
        c.password = Some("primary-secret".into());
        let text = format!("{c:?}");
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("<redacted>"));
        assert!(c.validate().is_ok());
        assert!(SentinelConfig::new(vec![], "m").validate().is_err());
        assert!(SentinelConfig::new(vec!["s".into()], "m")
            .validate()
            .is_err());
    }
}
