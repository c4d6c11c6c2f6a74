//! One struct per configuration section, mirroring `config/default.toml` key for key. No serde
//! defaults here: the compiled-in default file is the one source of defaults.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secret::{Secret, SecretUrl};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSection {
    pub shards: u32,
    pub virtual_nodes: u32,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    pub max_conversations_per_shard: usize,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub status_interval: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisionSection {
    pub max_restarts: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolsSection {
    pub history: usize,
    pub postgres: usize,
    pub embedder: usize,
    pub classifier: usize,
    pub memory: usize,
    pub graph: usize,
    pub neo4j: usize,
    pub redis: usize,
    /// A number, or "auto": see [`Settings::llm_concurrency`](super::Settings::llm_concurrency).
    pub llm_concurrency: AutoCount,
    pub llm_queue: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmSection {
    pub base_url: SecretUrl,
    pub api_key: Secret,
    pub model: String,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub stream_idle_timeout: Duration,
    pub max_retries: u32,
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_backoff_max: Duration,
    /// The model reads images (a character's `[model] vision` overrides it).
    pub vision: bool,
    pub local: LocalLlmSection,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalLlmSection {
    pub server: PathBuf,
    pub model: PathBuf,
    pub threads: u32,
    pub context_size: u32,
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextSection {
    pub history_turns: usize,
    pub token_budget: usize,
    pub image_tokens: usize,
    #[serde(with = "humantime_serde")]
    pub history_deadline: Duration,
    #[serde(with = "humantime_serde")]
    pub profile_deadline: Duration,
    #[serde(with = "humantime_serde")]
    pub classifier_deadline: Duration,
    #[serde(with = "humantime_serde")]
    pub memory_deadline: Duration,
    #[serde(with = "humantime_serde")]
    pub facts_deadline: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemorySection {
    pub top_k: usize,
    pub min_similarity: f32,
    #[serde(with = "humantime_serde")]
    pub recency_half_life: Duration,
    pub recency_weight: f32,
    pub importance_weight: f32,
    pub fusion_k: f32,
    pub guild_memories_in_dm: bool,
    pub chunk_words: usize,
    pub cached_users: usize,
    pub summarise_every: u64,
    pub idle_summary_min_turns: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FactsSection {
    pub extract: bool,
    pub model: String,
    pub min_confidence: f32,
    pub hops: usize,
    pub token_budget: usize,
    pub single_valued: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Messages one user may send per `window` (0: no limit).
    pub messages_per_window: u64,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// The transports whose users are limited (`discord`; the console is the operator's).
    pub transports: Vec<String>,
}

/// What this process does in cluster mode (`all`: everything, one process).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterRole {
    All,
    Gateway,
    Worker,
    Jobs,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    pub role: ClusterRole,
    /// Empty: hostname:pid.
    pub node_id: String,
    pub broker_url: SecretUrl,
    /// Fixed for the life of a deployment: changing it needs every process stopped.
    pub partitions: u32,
    pub standby: u32,
    pub prefetch: u16,
    #[serde(with = "humantime_serde")]
    pub handoff_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    #[serde(with = "humantime_serde")]
    pub member_ttl: Duration,
    /// A worker whose oldest turn in flight is older than this exits (its partitions fail over
    /// to a standby, which re-runs the turn); 0 turns the watchdog off.
    #[serde(with = "humantime_serde")]
    pub watchdog: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Where `/metrics` and `/healthz` listen, e.g. "127.0.0.1:9464"; empty: off.
    pub address: String,
}

/// Who may talk to the bots in direct messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DmPolicy {
    Off,
    Allowlist,
    Open,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscordSection {
    /// Character id to bot token: one Discord bot per character, all in this process.
    pub tokens: std::collections::BTreeMap<String, Secret>,
    /// Where the Discord API is; empty for discord.com (tests point it at an emulator).
    pub api_url: String,
    /// serenity's rate limiter (always on against discord.com; it ignores `api_url`).
    pub ratelimiter: bool,
    pub ignore_bots: bool,
    pub dm_policy: DmPolicy,
    pub dm_allowlist: Vec<u64>,
    pub open_channels: Vec<u64>,
    pub allowed_channels: Vec<u64>,
    pub blocked_channels: Vec<u64>,
    pub allowed_users: Vec<u64>,
    pub blocked_users: Vec<u64>,
    pub allowed_roles: Vec<u64>,
    pub blocked_roles: Vec<u64>,
    pub admins: Vec<u64>,
    pub max_attachment_bytes: u64,
    /// Images per message sent to a vision model; more are skipped with a note.
    pub max_images: usize,
    /// Largest image sent to a vision model, in bytes.
    pub max_image_bytes: u64,
    /// Deadline for downloading one image.
    #[serde(with = "humantime_serde")]
    pub image_timeout: Duration,
    /// Writes (sends and edits) allowed per channel in any `channel_window`.
    pub channel_writes: usize,
    #[serde(with = "humantime_serde")]
    pub channel_window: Duration,
    /// How long a channel that refused the bot (403) is skipped, unless its permissions change.
    #[serde(with = "humantime_serde")]
    pub forbidden_retry: Duration,
    /// How many gateway shards the bot has in all: a number, or "auto" (Discord's
    /// recommendation from `/gateway/bot`).
    pub shard_total: AutoCount,
    /// The shards this process runs, first to last inclusive ("auto" as last: up to the end).
    pub shard_first: u32,
    pub shard_last: AutoCount,
    pub channel_context: ChannelContextSection,
}

/// A count that is either given or decided at start ("auto"). Written as a number or the
/// string "auto" (an environment variable may give the number as a string).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCount {
    Auto,
    Fixed(u32),
}

/// As TOML writes it (a reload prints `"auto" -> 7`).
impl std::fmt::Display for AutoCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AutoCount::Auto => f.write_str("\"auto\""),
            AutoCount::Fixed(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for AutoCount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AutoCount::Auto => s.serialize_str("auto"),
            AutoCount::Fixed(n) => s.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for AutoCount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = AutoCount;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a non-negative number or \"auto\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<AutoCount, E> {
                u32::try_from(v)
                    .map(AutoCount::Fixed)
                    .map_err(|_| E::custom("a number below 2^32"))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<AutoCount, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom("a non-negative number or \"auto\""))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<AutoCount, E> {
                match v.trim() {
                    "auto" => Ok(AutoCount::Auto),
                    n => n
                        .parse::<u32>()
                        .map(AutoCount::Fixed)
                        .map_err(|_| E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// What a character sees of a guild channel's recent conversation.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelContextSection {
    pub enabled: bool,
    pub max_messages: usize,
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    pub max_tokens: usize,
    pub include_bots: bool,
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsSection {
    pub enabled: bool,
    pub max_rounds: u32,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub summaries: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsSection {
    pub workers: usize,
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_backoff_max: Duration,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierSection {
    pub enabled: bool,
    pub intents: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingSection {
    pub enabled: bool,
    pub onnxruntime: PathBuf,
    pub model_dir: PathBuf,
    pub max_length: usize,
    pub threads: usize,
    /// Sentences per inference at most when requests are batched.
    pub max_batch: usize,
    /// How long an inference waits for more requests when a worker is free.
    #[serde(with = "humantime_serde")]
    pub batch_wait: Duration,
    /// ONNX Runtime's CPU memory arena.
    pub arena: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamingSection {
    #[serde(with = "humantime_serde")]
    pub edit_interval: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    pub data_dir: PathBuf,
    pub history: HistoryBackend,
    pub postgres_url: SecretUrl,
    pub jobs: JobsBackend,
    pub memory: MemoryBackend,
    /// Qdrant's gRPC URL (port 6334).
    pub qdrant_url: SecretUrl,
    /// Collections are `<prefix>_<character>`.
    pub qdrant_prefix: String,
    pub facts: FactsBackend,
    pub neo4j_uri: SecretUrl,
    pub neo4j_user: String,
    pub neo4j_password: Secret,
    /// Empty: the server's default database.
    pub neo4j_database: String,
    pub redis_url: SecretUrl,
    /// Namespace of every Redis key (several bots can share a server).
    pub redis_prefix: String,
    /// Cache profiles and keep rate limits in Redis (shared by every bot process).
    pub redis_cache: bool,
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

/// Where vector memories live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryBackend {
    Sqlite,
    Qdrant,
    /// PostgreSQL with pgvector at `storage.postgres_url`.
    Postgres,
}

/// Where the fact graph lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FactsBackend {
    Sqlite,
    Neo4j,
}

/// Where the durable job queue lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobsBackend {
    Sqlite,
    Redis,
}

/// Where conversation history and profiles live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistoryBackend {
    Sqlite,
    Postgres,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CharactersSection {
    pub dir: PathBuf,
    pub default: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingSection {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}
