//! Bad data in Redis is an error (or, for one replica's state, skipped),
//! never a panic.

mod support;

use std::time::Duration;

use baton_slo::{RedisConfig, RedisStore, SloStore, SloStoreError};
use support::{replica_state, RedisServer, T0, TTL};

async fn raw(server: &RedisServer, args: &[&str]) {
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async::<()>(&mut conn).await.unwrap();
}

#[tokio::test]
async fn corrupt_data_is_an_error_not_a_panic() {
    let server = RedisServer::start();
    let store = RedisStore::connect(RedisConfig::new(server.url()))
        .await
        .unwrap();
    assert_eq!(store.prefix(), "baton:{slo}");

    // Request ids appear in key names only hashed.
    let req = |id: &str| format!("baton:{{slo}}:req:{}", baton_slo::key_id(id));
    raw(&server, &["HSET", &req("bad-json"), "rec", "{nope"]).await;
    raw(&server, &["SET", &req("wrong-type"), "x"]).await;
    let rec = serde_json::to_string(&support::admission("bad-phase", "a")).unwrap();
    raw(
        &server,
        &["HSET", &req("bad-phase"), "rec", &rec, "phase", "?"],
    )
    .await;
    for id in ["bad-json", "wrong-type", "bad-phase"] {
        let err = store.admission(id).await.unwrap_err();
        assert!(matches!(err, SloStoreError::Corrupt(_)), "{id}: {err:?}");
    }

    // One replica's unreadable state is skipped; the others still show.
    store
        .publish_replica_state(&replica_state("good", 1), TTL)
        .await
        .unwrap();
    raw(&server, &["SET", "baton:{slo}:replica:evil", "[1,2"]).await;
    raw(
        &server,
        &["ZADD", "baton:{slo}:replicas", "99999999999999", "evil"],
    )
    .await;
    assert_eq!(
        store.cluster_state().await.unwrap(),
        vec![replica_state("good", 1)]
    );

    let bucket = format!("baton:{{slo}}:gp:{}", T0 / 1000);
    raw(&server, &["HSET", &bucket, "chatbot|acme|requests", "many"]).await;
    let err = store
        .goodput(Duration::from_secs(10), T0)
        .await
        .unwrap_err();
    assert!(matches!(err, SloStoreError::Corrupt(_)), "{err:?}");
    raw(&server, &["HSET", &bucket, "chatbot|acme|requests", "1"]).await;
    assert!(store.goodput(Duration::from_secs(10), T0).await.is_ok());
    raw(&server, &["HSET", &bucket, "no-separators", "1"]).await;
    let err = store
        .goodput(Duration::from_secs(10), T0)
        .await
        .unwrap_err();
    assert!(matches!(err, SloStoreError::Corrupt(_)), "{err:?}");
}

#[tokio::test]
async fn an_unreachable_redis_is_unavailable() {
    let mut server = RedisServer::start();
    let store = RedisStore::connect(RedisConfig::new(server.url()))
        .await
        .unwrap();
    server.kill();
    let err = store.ping().await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    let lazy = RedisStore::connect_lazy(RedisConfig::new(server.url())).unwrap();
    assert!(lazy.ping().await.unwrap_err().is_retryable());
}
