//! Cluster mode: users sharded across processes through RabbitMQ.
//!
//! A user's partition is fixed by a hash of the user id (`partition`); which worker consumes a
//! partition is decided by rendezvous hashing over the live members (`placement`), whose
//! membership is a set of TTL keys in Redis (`membership`). Exclusivity comes from the broker
//! (one single-active-consumer queue per partition, `broker`); membership only steers.

pub mod broker;
pub mod gateway;
pub mod membership;
pub mod partition;
pub mod placement;
pub mod wire;
pub mod worker;

/// This process's member name: `cluster.node_id`, or hostname:pid.
pub fn node_id(configured: &str) -> String {
    if !configured.trim().is_empty() {
        return configured.trim().to_owned();
    }
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}", std::process::id())
}
