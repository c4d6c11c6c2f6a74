//! Redis in front of the other stores: a read-through cache of user profiles (first and last
//! seen, message count: what the relationship/familiarity score is computed from), invalidated
//! on every write, and the per-user rate limit shared by every bot process.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use deadpool_redis::Pool;
use deadpool_redis::redis::{self, AsyncCommands};
use tracing::warn;
use whisper_actors::limits::RateLimiter;
use whisper_actors::ports::{HistoryStore, Profile, StoreError, Turn};
use whisper_actors::{ConversationKey, Scope};

const STORE: &str = "redis cache";

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable {
        store: STORE,
        reason: e.to_string(),
    }
}

/// `HistoryStore` with profiles cached in Redis. A cache that fails is skipped (the store
/// answers); a write deletes the cached profile *after* the store commits, so a reader never
/// keeps a stale one for longer than the write takes.
pub struct CachedHistory {
    inner: Arc<dyn HistoryStore>,
    pool: Pool,
    prefix: String,
    ttl: Duration,
}

impl CachedHistory {
    pub fn new(inner: Arc<dyn HistoryStore>, pool: Pool, prefix: &str, ttl: Duration) -> Self {
        Self {
            inner,
            pool,
            prefix: prefix.to_owned(),
            ttl,
        }
    }

    fn key(&self, user: &str) -> String {
        format!("{}:profile:{user}", self.prefix)
    }

    async fn invalidate(&self, user: &str) {
        let result: Result<(), String> = async {
            let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
            conn.del::<_, ()>(self.key(user))
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        if let Err(error) = result {
            warn!(%error, user, "could not invalidate a cached profile");
        }
    }
}

#[async_trait]
impl HistoryStore for CachedHistory {
    async fn recent_turns(
        &self,
        key: &ConversationKey,
        scope: &Scope,
        limit: usize,
    ) -> Result<Vec<Turn>, StoreError> {
        self.inner.recent_turns(key, scope, limit).await
    }

    async fn profile(&self, user: &str) -> Result<Option<Profile>, StoreError> {
        if let Ok(mut conn) = self.pool.get().await {
            let cached: redis::RedisResult<Option<String>> = conn.get(self.key(user)).await;
            if let Ok(Some(json)) = cached
                && let Ok(profile) = serde_json::from_str::<Option<Profile>>(&json)
            {
                return Ok(profile);
            }
            let profile = self.inner.profile(user).await?;
            if let Ok(json) = serde_json::to_string(&profile) {
                let _: redis::RedisResult<()> = conn
                    .set_ex(self.key(user), json, self.ttl.as_secs().max(1))
                    .await;
            }
            return Ok(profile);
        }
        self.inner.profile(user).await
    }

    async fn record_turn(&self, turn: &Turn, display_name: &str) -> Result<(), StoreError> {
        let result = self.inner.record_turn(turn, display_name).await;
        self.invalidate(&turn.key.user).await;
        result
    }

    async fn forget_user(&self, user: &str) -> Result<(u64, u64), StoreError> {
        let result = self.inner.forget_user(user).await;
        self.invalidate(user).await;
        result
    }
}

/// A fixed-window counter per user in Redis: every process serving the user counts together.
pub struct RedisRateLimiter {
    pool: Pool,
    prefix: String,
    limit: u64,
    window: Duration,
}

impl RedisRateLimiter {
    pub fn new(pool: Pool, prefix: &str, limit: u64, window: Duration) -> Self {
        Self {
            pool,
            prefix: prefix.to_owned(),
            limit,
            window,
        }
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn allow(&self, user: &str) -> Result<bool, StoreError> {
        let window_ms = self.window.as_millis().max(1) as u64;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let key = format!("{}:rate:{user}:{}", self.prefix, now / window_ms);
        let mut conn = self.pool.get().await.map_err(unavailable)?;
        let (count,): (u64,) = redis::pipe()
            .atomic()
            .incr(&key, 1)
            .pexpire(&key, window_ms as i64)
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(count <= self.limit)
    }
}
