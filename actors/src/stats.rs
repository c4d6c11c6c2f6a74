//! Live counters for `whisperengine status` and the metrics endpoint.
//!
//! Plain atomics updated where the event happens: reading a status snapshot never sends a
//! message to a busy actor, so status works even when the system is overloaded.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    pub fn dec(&self) {
        // Saturating: a gauge never wraps below zero even if an update is duplicated.
        let _ = self
            .0
            .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(1)));
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct ShardStats {
    pub live_conversations: Gauge,
    pub pending_messages: Gauge,
    pub started: Gauge,
    pub passivated: Gauge,
    pub evicted: Gauge,
    pub restarts: Gauge,
    pub escalations: Gauge,
}

#[derive(Debug, Default)]
pub struct LlmStats {
    pub max_concurrent: Gauge,
    pub queue_capacity: Gauge,
    pub in_flight: Gauge,
    pub queued: Gauge,
    pub completed: Gauge,
    pub retries: Gauge,
    pub timeouts: Gauge,
    pub failures: Gauge,
    pub rejected_overloaded: Gauge,
    pub cancelled: Gauge,
}

#[derive(Debug, Default)]
pub struct PipelineStats {
    pub messages: Gauge,
    pub replies: Gauge,
    pub failed_replies: Gauge,
    pub degraded_context: Gauge,
    pub store_write_failures: Gauge,
    pub tool_calls: Gauge,
    pub tool_failures: Gauge,
    pub rate_limited: Gauge,
}

/// A fixed-size worker pool's view (history store workers and the like).
#[derive(Debug, Default)]
pub struct PoolStats {
    pub size: Gauge,
    /// Requests sent to the pool and not yet answered (waiting or being served).
    pub queue_depth: Gauge,
    pub errors: Gauge,
    /// Members restarted after a panic.
    pub restarts: Gauge,
    /// Members replaced by the pool after spending their restart budget.
    pub escalations: Gauge,
}

/// Restarts after a panic, by actor kind (conversations count per shard, pools per pool).
#[derive(Debug, Default)]
pub struct SupervisionStats {
    pub llm: Gauge,
    pub classifier: Gauge,
    /// Shards restarted fresh after a panic in their own handlers.
    pub shard: Gauge,
}

/// Everything the runtime counts, shared by reference.
#[derive(Debug)]
pub struct RuntimeStats {
    pub supervision: SupervisionStats,
    /// One per running shard, in shard order; re-sharding adds and removes them.
    shards: std::sync::RwLock<Vec<Arc<ShardStats>>>,
    pub llm: LlmStats,
    pub pipeline: PipelineStats,
    pub pools: Vec<(String, Arc<PoolStats>)>,
    /// The configuration in force: 1 at startup, +1 per applied reload, and when it was loaded.
    pub config_generation: Gauge,
    pub config_loaded_at_ms: Gauge,
}

impl RuntimeStats {
    pub fn new(shards: usize, pools: Vec<(String, Arc<PoolStats>)>) -> Self {
        Self {
            supervision: SupervisionStats::default(),
            shards: std::sync::RwLock::new(
                (0..shards)
                    .map(|_| Arc::new(ShardStats::default()))
                    .collect(),
            ),
            llm: LlmStats::default(),
            pipeline: PipelineStats::default(),
            pools,
            config_generation: Gauge::default(),
            config_loaded_at_ms: Gauge::default(),
        }
    }

    /// Shard `id`'s counters (created when a resize starts the shard).
    pub fn shard(&self, id: usize) -> Arc<ShardStats> {
        let mut shards = self.shards.write().expect("shard stats lock");
        while shards.len() <= id {
            shards.push(Arc::new(ShardStats::default()));
        }
        shards[id].clone()
    }

    /// Forgets the counters of shards at `count` and beyond (they were stopped by a shrink).
    pub fn retain_shards(&self, count: usize) {
        self.shards
            .write()
            .expect("shard stats lock")
            .truncate(count);
    }

    pub fn shard_count(&self) -> usize {
        self.shards.read().expect("shard stats lock").len()
    }

    pub fn snapshot(&self) -> StatusSnapshot {
        StatusSnapshot {
            shards: self
                .shards
                .read()
                .expect("shard stats lock")
                .iter()
                .enumerate()
                .map(|(id, s)| ShardStatus {
                    id,
                    live_conversations: s.live_conversations.get(),
                    pending_messages: s.pending_messages.get(),
                    started: s.started.get(),
                    passivated: s.passivated.get(),
                    evicted: s.evicted.get(),
                    restarts: s.restarts.get(),
                    escalations: s.escalations.get(),
                })
                .collect(),
            llm: LlmStatus {
                max_concurrent: self.llm.max_concurrent.get(),
                queue_capacity: self.llm.queue_capacity.get(),
                in_flight: self.llm.in_flight.get(),
                queued: self.llm.queued.get(),
                completed: self.llm.completed.get(),
                retries: self.llm.retries.get(),
                timeouts: self.llm.timeouts.get(),
                failures: self.llm.failures.get(),
                rejected_overloaded: self.llm.rejected_overloaded.get(),
                cancelled: self.llm.cancelled.get(),
                restarts: self.supervision.llm.get(),
            },
            classifier_restarts: self.supervision.classifier.get(),
            shard_restarts: self.supervision.shard.get(),
            pools: self
                .pools
                .iter()
                .map(|(name, p)| PoolStatus {
                    name: name.clone(),
                    size: p.size.get(),
                    queue_depth: p.queue_depth.get(),
                    errors: p.errors.get(),
                    restarts: p.restarts.get(),
                    escalations: p.escalations.get(),
                })
                .collect(),
            messages: self.pipeline.messages.get(),
            replies: self.pipeline.replies.get(),
            failed_replies: self.pipeline.failed_replies.get(),
            degraded_context: self.pipeline.degraded_context.get(),
            store_write_failures: self.pipeline.store_write_failures.get(),
            tool_calls: self.pipeline.tool_calls.get(),
            tool_failures: self.pipeline.tool_failures.get(),
            rate_limited: self.pipeline.rate_limited.get(),
            config_generation: self.config_generation.get(),
            config_loaded_at_ms: self.config_loaded_at_ms.get(),
        }
    }
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct ShardStatus {
    pub id: usize,
    pub live_conversations: u64,
    pub pending_messages: u64,
    pub started: u64,
    pub passivated: u64,
    pub evicted: u64,
    pub restarts: u64,
    pub escalations: u64,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct LlmStatus {
    pub max_concurrent: u64,
    pub queue_capacity: u64,
    pub in_flight: u64,
    pub queued: u64,
    pub completed: u64,
    pub retries: u64,
    pub timeouts: u64,
    pub failures: u64,
    pub rejected_overloaded: u64,
    pub cancelled: u64,
    /// LlmActor restarts after a panic.
    #[serde(default)]
    pub restarts: u64,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct PoolStatus {
    pub name: String,
    pub size: u64,
    pub queue_depth: u64,
    pub errors: u64,
    #[serde(default)]
    pub restarts: u64,
    #[serde(default)]
    pub escalations: u64,
}

/// A point-in-time view of the runtime, serialisable for the status file.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct StatusSnapshot {
    pub shards: Vec<ShardStatus>,
    pub llm: LlmStatus,
    /// ClassifierActor restarts after a panic.
    #[serde(default)]
    pub classifier_restarts: u64,
    /// Shards restarted fresh after a panic in their own handlers.
    #[serde(default)]
    pub shard_restarts: u64,
    pub pools: Vec<PoolStatus>,
    pub messages: u64,
    pub replies: u64,
    pub failed_replies: u64,
    pub degraded_context: u64,
    pub store_write_failures: u64,
    #[serde(default)]
    pub tool_calls: u64,
    #[serde(default)]
    pub tool_failures: u64,
    #[serde(default)]
    pub rate_limited: u64,
    /// The configuration's generation (1 at startup, +1 per applied reload) and load time.
    #[serde(default)]
    pub config_generation: u64,
    #[serde(default)]
    pub config_loaded_at_ms: u64,
}

impl StatusSnapshot {
    pub fn live_conversations(&self) -> u64 {
        self.shards.iter().map(|s| s.live_conversations).sum()
    }
    pub fn restarts(&self) -> u64 {
        self.shards.iter().map(|s| s.restarts).sum()
    }
    pub fn escalations(&self) -> u64 {
        self.shards.iter().map(|s| s.escalations).sum()
    }

    /// The one-line summary logged at startup and on SIGUSR1.
    pub fn summary_line(&self) -> String {
        let per_shard: Vec<String> = self
            .shards
            .iter()
            .map(|s| s.live_conversations.to_string())
            .collect();
        let pools: Vec<String> = self
            .pools
            .iter()
            .map(|p| format!("{}={} (queue {})", p.name, p.size, p.queue_depth))
            .collect();
        format!(
            "config=generation {} shards={} conversations=[{}] llm={}/{} in flight, {} queued (cap {}) pools: {} restarts={} escalations={} replies={} failed={}",
            self.config_generation,
            self.shards.len(),
            per_shard.join(","),
            self.llm.in_flight,
            self.llm.max_concurrent,
            self.llm.queued,
            self.llm.queue_capacity,
            pools.join(", "),
            self.restarts(),
            self.escalations(),
            self.replies,
            self.failed_replies,
        )
    }
}
