//! Cluster membership: one Redis key per live member, `<prefix>:cluster:member:<node>`, set
//! with a TTL (`cluster.member_ttl`) and refreshed every second. A member that stops refreshing
//! (killed, hung, partitioned) drops out by itself; one that leaves deletes its key.
//!
//! Membership only steers placement: which partitions a worker subscribes to. That two members
//! briefly disagree about it is harmless, because the broker lets one consumer at a time take a
//! partition's deliveries.

use std::time::Duration;

use deadpool_redis::Pool;
use deadpool_redis::redis;
use whisper_actors::ports::StoreError;

const STORE: &str = "redis membership";

pub struct Membership {
    pool: Pool,
    prefix: String,
    node: String,
    ttl: Duration,
}

fn failed(operation: &'static str) -> impl Fn(redis::RedisError) -> StoreError {
    move |e| StoreError::Failed {
        store: STORE,
        operation,
        reason: e.to_string(),
    }
}

impl Membership {
    pub fn new(pool: Pool, prefix: &str, node: &str, ttl: Duration) -> Self {
        Self {
            pool,
            prefix: prefix.to_owned(),
            node: node.to_owned(),
            ttl,
        }
    }

    fn key(&self, node: &str) -> String {
        format!("{}:cluster:member:{node}", self.prefix)
    }

    async fn conn(&self) -> Result<deadpool_redis::Connection, StoreError> {
        self.pool.get().await.map_err(|e| StoreError::Unavailable {
            store: STORE,
            reason: e.to_string(),
        })
    }

    /// Says this member is alive, with its role, for another `member_ttl`.
    pub async fn refresh(&self, role: &str) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        redis::cmd("SET")
            .arg(self.key(&self.node))
            .arg(role)
            .arg("PX")
            .arg(self.ttl.as_millis().max(1) as u64)
            .query_async::<()>(&mut conn)
            .await
            .map_err(failed("refresh membership"))
    }

    /// The live members with `role`, sorted by name.
    pub async fn members(&self, role: &str) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn().await?;
        let pattern = format!("{}:cluster:member:*", self.prefix);
        let strip = format!("{}:cluster:member:", self.prefix);
        let mut cursor: u64 = 0;
        let mut keys: Vec<String> = Vec::new();
        loop {
            let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await
                .map_err(failed("list members"))?;
            keys.extend(page);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut members = Vec::new();
        for key in keys {
            let value: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .map_err(failed("list members"))?;
            if value.as_deref() == Some(role)
                && let Some(node) = key.strip_prefix(&strip)
            {
                members.push(node.to_owned());
            }
        }
        members.sort();
        members.dedup();
        Ok(members)
    }

    /// Leaves at once (a graceful stop), instead of after the TTL.
    pub async fn leave(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        redis::cmd("DEL")
            .arg(self.key(&self.node))
            .query_async::<()>(&mut conn)
            .await
            .map_err(failed("leave"))
    }
}
