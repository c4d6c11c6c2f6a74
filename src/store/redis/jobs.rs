//! The durable job queue on Redis Streams, behind the same `JobQueue` trait (and contract tests)
//! as the SQLite one.
//!
//! ```text
//! {p}:jobs       stream, consumer group "workers": ready jobs; a worker's unacked entries are
//!                its leases, and XAUTOCLAIM hands entries idle longer than the lease to another
//! {p}:job:{id}   hash: kind, user, payload, attempts, state, entry, last_error (idempotent ids)
//! {p}:delayed    sorted set: jobs waiting for a retry, scored by when they are due
//! {p}:dead       stream: dead letters (id, kind, user, payload, error)
//! {p}:user:{u}   set: the user's job ids ("forget me")
//! ```
//!
//! Every multi-key change is one Lua script, so a crash between two commands cannot lose or
//! duplicate a job. The scripts reach keys derived from the job id, so this targets a single
//! Redis server (not Redis Cluster).
//!
//! Longer than most modules on purpose: the Lua scripts that make each queue operation atomic
//! sit beside the Rust that calls them, so the two are read and changed together.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::redis::{self, AsyncCommands, Script};
use deadpool_redis::{Config, Pool, Runtime};
use whisper_actors::jobs::{Fate, Job, JobQueue, NewJob, QueueCounts};
use whisper_actors::ports::StoreError;

use crate::store::server::{Unreachable, redact, wait_for};

const STORE: &str = "redis job queue";
const GROUP: &str = "workers";

#[derive(Debug, thiserror::Error)]
pub enum RedisOpenError {
    #[error("storage.redis_url is not a valid Redis URL ({url}): {reason}")]
    Url { url: String, reason: String },
    #[error(transparent)]
    Unreachable(#[from] Unreachable),
    #[error("cannot create the job stream's consumer group at {url}: {reason}")]
    Group { url: String, reason: String },
}

pub struct RedisJobs {
    pool: Pool,
    prefix: String,
    consumer: String,
}

use whisper_actors::clock::unix_ms as now_ms;

fn failed(operation: &'static str) -> impl Fn(redis::RedisError) -> StoreError {
    move |e| {
        if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
            StoreError::Unavailable {
                store: STORE,
                reason: e.to_string(),
            }
        } else {
            StoreError::Failed {
                store: STORE,
                operation,
                reason: e.to_string(),
            }
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable {
        store: STORE,
        reason: e.to_string(),
    }
}

const ENQUEUE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local entry = redis.call('XADD', KEYS[2], '*', 'id', ARGV[1])
redis.call('HSET', KEYS[1], 'kind', ARGV[2], 'user', ARGV[3], 'payload', ARGV[4],
           'attempts', 0, 'state', 'ready', 'entry', entry)
redis.call('SADD', KEYS[3], ARGV[1])
return 1";

/// Moves due retries back into the stream. KEYS: delayed, stream. ARGV: now, prefix.
const PROMOTE: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 16)
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  local job = ARGV[2] .. ':job:' .. id
  if redis.call('EXISTS', job) == 1 then
    local entry = redis.call('XADD', KEYS[2], '*', 'id', id)
    redis.call('HSET', job, 'state', 'ready', 'entry', entry)
  end
end
return #due";

/// Takes a delivered entry: counts the attempt, or drops an entry whose job is gone.
/// KEYS: job hash, stream. ARGV: entry id.
const TAKE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HGET', KEYS[1], 'entry') ~= ARGV[1] then
  redis.call('XACK', KEYS[2], 'workers', ARGV[1])
  redis.call('XDEL', KEYS[2], ARGV[1])
  return false
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'state', 'leased')
local f = redis.call('HMGET', KEYS[1], 'kind', 'user', 'payload')
return {f[1], f[2], f[3], attempts}";

/// KEYS: job hash, stream, user set. ARGV: job id.
const ACK: &str = r"
local entry = redis.call('HGET', KEYS[1], 'entry')
if entry and entry ~= '' then
  redis.call('XACK', KEYS[2], 'workers', entry)
  redis.call('XDEL', KEYS[2], entry)
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], ARGV[1])
return 1";

/// KEYS: job hash, stream, delayed, dead. ARGV: id, error, due, dead?(1/0).
const FAIL: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local entry = redis.call('HGET', KEYS[1], 'entry')
if entry and entry ~= '' then
  redis.call('XACK', KEYS[2], 'workers', entry)
  redis.call('XDEL', KEYS[2], entry)
end
if ARGV[4] == '1' then
  local f = redis.call('HMGET', KEYS[1], 'kind', 'user', 'payload')
  local dead = redis.call('XADD', KEYS[4], '*', 'id', ARGV[1], 'kind', f[1], 'user', f[2],
                          'payload', f[3], 'error', ARGV[2])
  redis.call('HSET', KEYS[1], 'state', 'dead', 'entry', dead, 'last_error', ARGV[2])
  return 1
end
redis.call('HSET', KEYS[1], 'state', 'delayed', 'entry', '', 'last_error', ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
return 0";

/// KEYS: user set, stream, delayed, dead. ARGV: prefix.
const FORGET: &str = r"
local ids = redis.call('SMEMBERS', KEYS[1])
for _, id in ipairs(ids) do
  local job = ARGV[1] .. ':job:' .. id
  local state = redis.call('HGET', job, 'state')
  local entry = redis.call('HGET', job, 'entry')
  if entry and entry ~= '' then
    if state == 'dead' then
      redis.call('XDEL', KEYS[4], entry)
    else
      redis.call('XACK', KEYS[2], 'workers', entry)
      redis.call('XDEL', KEYS[2], entry)
    end
  end
  redis.call('ZREM', KEYS[3], id)
  redis.call('DEL', job)
end
redis.call('DEL', KEYS[1])
return #ids";

/// A connection pool to the Redis at `url`, once the server answers (waiting up to `wait`).
pub async fn pool(url: &str, size: usize, wait: Duration) -> Result<Pool, RedisOpenError> {
    let mut config = Config::from_url(url);
    config.pool = Some(deadpool_redis::PoolConfig::new(size.max(1)));
    let pool = config
        .create_pool(Some(Runtime::Tokio1))
        .map_err(|e| RedisOpenError::Url {
            url: redact(url),
            reason: e.to_string(),
        })?;
    wait_for("redis", url, wait, || pool.get()).await?;
    Ok(pool)
}

impl RedisJobs {
    /// Connects (waiting up to `wait`), and creates the stream's consumer group if needed.
    /// `prefix` namespaces every key, so several bots (or tests) can share one server.
    pub async fn connect(
        url: &str,
        prefix: &str,
        connections: usize,
        wait: Duration,
    ) -> Result<Self, RedisOpenError> {
        let pool = pool(url, connections, wait).await?;
        let mut conn = pool.get().await.map_err(|e| RedisOpenError::Group {
            url: redact(url),
            reason: e.to_string(),
        })?;
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(format!("{prefix}:jobs"))
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        if let Err(e) = created
            && e.code() != Some("BUSYGROUP")
        {
            return Err(RedisOpenError::Group {
                url: redact(url),
                reason: e.to_string(),
            });
        }
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "bot".into());
        Ok(Self {
            pool,
            prefix: prefix.to_owned(),
            consumer: format!("{host}-{}", std::process::id()),
        })
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.prefix)
    }

    async fn conn(&self) -> Result<deadpool_redis::Connection, StoreError> {
        self.pool.get().await.map_err(unavailable)
    }

    /// The entry ids and job ids a stream reply holds.
    fn entries(reply: &redis::Value) -> Vec<(String, String)> {
        let mut out = Vec::new();
        collect_entries(reply, &mut out);
        out
    }
}

/// Walks an XREADGROUP/XAUTOCLAIM reply for `[entry-id, [field, value, ...]]` pairs and keeps
/// (entry id, the `id` field).
fn collect_entries(value: &redis::Value, out: &mut Vec<(String, String)>) {
    use redis::Value;
    let Value::Array(items) = value else { return };
    if let [Value::BulkString(entry), Value::Array(fields)] = items.as_slice()
        && !fields.is_empty()
        && fields.iter().all(|f| matches!(f, Value::BulkString(_)))
    {
        let mut it = fields.iter();
        while let (Some(Value::BulkString(k)), Some(Value::BulkString(v))) = (it.next(), it.next())
        {
            if k == b"id" {
                out.push((
                    String::from_utf8_lossy(entry).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                ));
            }
        }
        return;
    }
    for item in items {
        collect_entries(item, out);
    }
}

#[async_trait]
impl JobQueue for RedisJobs {
    async fn enqueue(&self, job: NewJob) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let new: i64 = Script::new(ENQUEUE)
            .key(self.key(&format!("job:{}", job.id)))
            .key(self.key("jobs"))
            .key(self.key(&format!("user:{}", job.user)))
            .arg(&job.id)
            .arg(job.kind.as_str())
            .arg(&job.user)
            .arg(&job.payload)
            .invoke_async(&mut conn)
            .await
            .map_err(failed("enqueue"))?;
        Ok(new == 1)
    }

    async fn lease(&self, lease: Duration) -> Result<Option<Job>, StoreError> {
        let mut conn = self.conn().await?;
        let stream = self.key("jobs");
        let _: i64 = Script::new(PROMOTE)
            .key(self.key("delayed"))
            .key(&stream)
            .arg(now_ms())
            .arg(&self.prefix)
            .invoke_async(&mut conn)
            .await
            .map_err(failed("promote retries"))?;
        loop {
            // New entries first, then entries whose holder kept them past the lease.
            let fresh: redis::Value = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(1)
                .arg("STREAMS")
                .arg(&stream)
                .arg(">")
                .query_async(&mut conn)
                .await
                .map_err(failed("lease"))?;
            let mut found = Self::entries(&fresh);
            if found.is_empty() {
                let claimed: redis::Value = redis::cmd("XAUTOCLAIM")
                    .arg(&stream)
                    .arg(GROUP)
                    .arg(&self.consumer)
                    .arg(lease.as_millis() as u64)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut conn)
                    .await
                    .map_err(failed("reclaim"))?;
                found = Self::entries(&claimed);
            }
            let Some((entry, id)) = found.into_iter().next() else {
                return Ok(None);
            };
            let taken: Option<(String, String, String, u32)> = Script::new(TAKE)
                .key(self.key(&format!("job:{id}")))
                .key(&stream)
                .arg(&entry)
                .invoke_async(&mut conn)
                .await
                .map_err(failed("lease"))?;
            // A stale entry (its job acked, forgotten or retried) was dropped: look again.
            if let Some((kind, user, payload, attempt)) = taken {
                return Ok(Some(Job {
                    id,
                    kind,
                    user,
                    payload,
                    attempt,
                }));
            }
        }
    }

    async fn ack(&self, id: &str) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let user: Option<String> = conn
            .hget(self.key(&format!("job:{id}")), "user")
            .await
            .map_err(failed("ack"))?;
        let _: i64 = Script::new(ACK)
            .key(self.key(&format!("job:{id}")))
            .key(self.key("jobs"))
            .key(self.key(&format!("user:{}", user.unwrap_or_default())))
            .arg(id)
            .invoke_async(&mut conn)
            .await
            .map_err(failed("ack"))?;
        Ok(())
    }

    async fn fail(&self, job: &Job, error: &str, fate: Fate) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let (dead, retry_in) = match fate {
            Fate::DeadLetter => (true, Duration::ZERO),
            Fate::RetryIn(wait) => (false, wait),
        };
        let _: i64 = Script::new(FAIL)
            .key(self.key(&format!("job:{}", job.id)))
            .key(self.key("jobs"))
            .key(self.key("delayed"))
            .key(self.key("dead"))
            .arg(&job.id)
            .arg(error)
            .arg(now_ms() + retry_in.as_millis() as i64)
            .arg(if dead { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await
            .map_err(failed("fail"))?;
        Ok(())
    }

    async fn counts(&self) -> Result<QueueCounts, StoreError> {
        let mut conn = self.conn().await?;
        let stream = self.key("jobs");
        let in_stream: u64 = redis::cmd("XLEN")
            .arg(&stream)
            .query_async(&mut conn)
            .await
            .map_err(failed("count"))?;
        let pending: redis::Value = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(GROUP)
            .query_async(&mut conn)
            .await
            .map_err(failed("count"))?;
        let leased = match &pending {
            redis::Value::Array(items) => match items.first() {
                Some(redis::Value::Int(n)) => *n as u64,
                _ => 0,
            },
            _ => 0,
        };
        let delayed: u64 = conn
            .zcard(self.key("delayed"))
            .await
            .map_err(failed("count"))?;
        let dead: u64 = redis::cmd("XLEN")
            .arg(self.key("dead"))
            .query_async(&mut conn)
            .await
            .map_err(failed("count"))?;
        Ok(QueueCounts {
            ready: in_stream.saturating_sub(leased) + delayed,
            leased,
            dead,
        })
    }

    async fn forget_user(&self, user: &str) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        let n: i64 = Script::new(FORGET)
            .key(self.key(&format!("user:{user}")))
            .key(self.key("jobs"))
            .key(self.key("delayed"))
            .key(self.key("dead"))
            .arg(&self.prefix)
            .invoke_async(&mut conn)
            .await
            .map_err(failed("forget"))?;
        Ok(n as u64)
    }
}
