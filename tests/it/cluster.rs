//! Cluster mode's building blocks against the real servers on this machine: RabbitMQ
//! (127.0.0.1:5672) for the partition queues, Redis for membership.

use std::time::Duration;

use whisperengine::cluster::broker::Broker;
use whisperengine::cluster::membership::Membership;

use crate::stores::RedisPrefix;

const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn prefix() -> String {
    format!(
        "test.{}.{}",
        std::process::id(),
        whisper_actors::clock::unix_ms()
    )
}

/// One partition, two consumers: only one gets deliveries (single active consumer); when it
/// yields with messages unacked, the other takes over and sees every message exactly once
/// from the first unacked on, in order.
#[tokio::test(flavor = "multi_thread")]
async fn a_partition_has_one_consumer_and_fails_over_in_order() {
    let prefix = prefix();
    let broker = Broker::connect(BROKER, Duration::from_secs(10), &prefix)
        .await
        .expect("RabbitMQ on 127.0.0.1:5672");
    broker.declare_partitions(1).await.unwrap();
    let mut first = broker.consume(0, 4, "first").await.unwrap();
    let other = Broker::connect(BROKER, Duration::from_secs(10), &prefix)
        .await
        .unwrap();
    let mut second = other.consume(0, 4, "second").await.unwrap();
    for n in 0..20u32 {
        broker.publish(0, &n.to_le_bytes()).await.unwrap();
    }
    let read = |d: &whisperengine::cluster::broker::Delivery| {
        u32::from_le_bytes(d.payload[..4].try_into().unwrap())
    };
    // The first consumer is the active one: it acks 0..5 and holds more, unacked.
    for expected in 0..5u32 {
        let d = tokio::time::timeout(Duration::from_secs(5), first.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read(&d), expected);
        d.ack().await.unwrap();
    }
    let held = tokio::time::timeout(Duration::from_secs(5), first.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read(&held), 5, "in order");
    // Nothing reached the standby meanwhile.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), second.next())
            .await
            .is_err(),
        "the standby got a delivery while the owner was active"
    );
    first.close().await;
    let mut seen = Vec::new();
    while seen.len() < 15 {
        let d = tokio::time::timeout(Duration::from_secs(5), second.next())
            .await
            .expect("the standby takes over")
            .unwrap();
        seen.push(read(&d));
        d.ack().await.unwrap();
    }
    assert_eq!(
        seen,
        (5..20).collect::<Vec<u32>>(),
        "exactly once, in order"
    );
    broker.delete_partitions(1).await.unwrap();
    broker.close().await;
    other.close().await;
}

/// Members announce themselves with a TTL; a member that leaves is gone at once, one that
/// stops refreshing after its TTL.
#[tokio::test(flavor = "multi_thread")]
async fn membership_follows_who_is_alive() {
    let prefix = RedisPrefix::new();
    let pool = whisperengine::store::redis::jobs::pool(
        "redis://127.0.0.1:6379",
        2,
        Duration::from_secs(5),
    )
    .await
    .expect("Redis on 127.0.0.1:6379");
    let ttl = Duration::from_millis(400);
    let a = Membership::new(pool.clone(), &prefix.0, "worker-a", ttl);
    let b = Membership::new(pool.clone(), &prefix.0, "worker-b", ttl);
    let g = Membership::new(pool.clone(), &prefix.0, "gateway-1", ttl);
    a.refresh("worker").await.unwrap();
    b.refresh("worker").await.unwrap();
    g.refresh("gateway").await.unwrap();
    assert_eq!(a.members("worker").await.unwrap(), ["worker-a", "worker-b"]);
    assert_eq!(a.members("gateway").await.unwrap(), ["gateway-1"]);
    b.leave().await.unwrap();
    assert_eq!(a.members("worker").await.unwrap(), ["worker-a"]);
    // worker-a keeps refreshing; gateway-1 stops and expires.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        a.refresh("worker").await.unwrap();
    }
    assert_eq!(a.members("worker").await.unwrap(), ["worker-a"]);
    assert!(a.members("gateway").await.unwrap().is_empty(), "expired");
}

/// Cluster mode with an embedded store refuses to start and names the key.
#[test]
fn cluster_mode_refuses_an_embedded_store() {
    // SAFETY of set_var: nextest runs each test in its own process.
    unsafe { std::env::set_var("WHISPER__CLUSTER__ROLE", "worker") };
    let error = whisperengine::config::load(&whisperengine::config::Overrides {
        config_file: None,
        data_dir: None,
        ignore_environment: false,
    })
    .err()
    .expect("refused");
    let text = error.to_string();
    assert!(text.contains("storage.history"), "{text}");
    assert!(text.contains("server store"), "{text}");
}
