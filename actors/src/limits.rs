//! Per-user message rate limits: a user who floods the bot gets a short notice instead of a
//! model call, so one person cannot take every LLM slot. The limiter is a port: in-process for
//! the embedded default, shared through Redis when several processes serve the same users.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::ports::StoreError;

#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Counts one message of `user`; false when it is over the limit.
    async fn allow(&self, user: &str) -> Result<bool, StoreError>;
}

/// Limits only the users of the listed transports (the part of the user id before `:`, e.g.
/// `discord`): the terminal chat is the operator's own and is never told to slow down.
pub struct ForTransports {
    inner: std::sync::Arc<dyn RateLimiter>,
    transports: Vec<String>,
}

impl ForTransports {
    pub fn new(inner: std::sync::Arc<dyn RateLimiter>, transports: Vec<String>) -> Self {
        Self { inner, transports }
    }

    fn applies_to(&self, user: &str) -> bool {
        let transport = user.split_once(':').map_or(user, |(t, _)| t);
        self.transports.iter().any(|t| t == transport)
    }
}

#[async_trait]
impl RateLimiter for ForTransports {
    async fn allow(&self, user: &str) -> Result<bool, StoreError> {
        if self.applies_to(user) {
            self.inner.allow(user).await
        } else {
            Ok(true)
        }
    }
}

/// A sliding window per user, in this process. Users idle for a whole window are dropped, so
/// the map holds only recent senders.
pub struct LocalRateLimiter {
    limit: usize,
    window: Duration,
    recent: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl LocalRateLimiter {
    pub fn new(limit: usize, window: Duration) -> Self {
        Self {
            limit,
            window,
            recent: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl RateLimiter for LocalRateLimiter {
    async fn allow(&self, user: &str) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() > 10_000 {
            recent.retain(|_, times| times.back().is_some_and(|t| now - *t < self.window));
        }
        let times = recent.entry(user.to_owned()).or_default();
        while times.front().is_some_and(|t| now - *t >= self.window) {
            times.pop_front();
        }
        if times.len() >= self.limit {
            return Ok(false);
        }
        times.push_back(now);
        Ok(true)
    }
}

/// The limits in force, swapped by a reload (`[limits]` is live). `None`: no limit.
pub struct LiveLimiter(crate::live::Live<Option<std::sync::Arc<dyn RateLimiter>>>);

impl LiveLimiter {
    pub fn new(limiter: Option<std::sync::Arc<dyn RateLimiter>>) -> Self {
        Self(crate::live::Live::new(limiter))
    }

    pub fn set(&self, limiter: Option<std::sync::Arc<dyn RateLimiter>>) {
        self.0.set(limiter);
    }
}

#[async_trait]
impl RateLimiter for LiveLimiter {
    async fn allow(&self, user: &str) -> Result<bool, StoreError> {
        let current = self.0.get();
        match current.as_ref() {
            Some(limiter) => limiter.allow(user).await,
            None => Ok(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_listed_transports_are_limited() {
        let inner = std::sync::Arc::new(LocalRateLimiter::new(1, Duration::from_secs(60)));
        let limiter = ForTransports::new(inner, vec!["discord".into()]);
        assert!(limiter.allow("discord:1").await.unwrap());
        assert!(!limiter.allow("discord:1").await.unwrap(), "over the limit");
        for _ in 0..5 {
            assert!(limiter.allow("console:operator").await.unwrap());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides() {
        let limiter = LocalRateLimiter::new(3, Duration::from_secs(60));
        for _ in 0..3 {
            assert!(limiter.allow("a").await.unwrap());
        }
        assert!(!limiter.allow("a").await.unwrap());
        assert!(limiter.allow("b").await.unwrap(), "per user");
    }
}
